// The agent's end of a zero-hop workload's seccomp filter: receives the
// workload's connect/accept notifications and answers them.
//
// A received notification is never delivered again (not even to a restarted
// agent): only its id can answer it, and until then the workload's thread
// waits. Every path that receives one must answer it.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ktrust/common/unique_fd.h"

namespace ktrust::zerohop {

// One intercepted system call, as the kernel reported it.
struct Notification {
  uint64_t id = 0;
  // The calling thread's id in the receiver's pid namespace (a tid, not
  // necessarily the process id).
  pid_t pid = 0;
  int syscall_nr = -1;  // SYS_connect, SYS_accept, SYS_accept4
  uint32_t arch = 0;
  std::array<uint64_t, 6> args{};
};

// Where an agent records the notifications it makes wait (an outbound
// handshake, a held accept), so that they are answered even if it dies
// first: the fd holder answers them (HolderJournal, holder_client.h).
class HeldNotifications {
 public:
  virtual ~HeldNotifications() = default;
  virtual void Held(uint64_t key, uint64_t id, int fallback_errno) = 0;
  // Called for every answer; a no-op for an id that was not held.
  virtual void Released(uint64_t key, uint64_t id) = 0;
};

class NotificationListener {
 public:
  // Takes ownership of a seccomp listener fd (InstallFilter(), or one
  // received from a workload) and asks the kernel for its structure sizes.
  static absl::StatusOr<NotificationListener> Create(UniqueFd fd);

  int fd() const { return fd_.get(); }

  // Records the notifications made to wait (Hold) in `journal` under `key`
  // (the holder's id for this listener); every answer releases them.
  void JournalTo(std::shared_ptr<HeldNotifications> journal, uint64_t key) {
    journal_ = std::move(journal);
    journal_key_ = key;
  }
  // Notification `id` will wait for this process (for a handshake, for a
  // connection to deliver): if the process dies first, whoever keeps the
  // journal answers it with -1 and `fallback_errno`. A no-op without one.
  void Hold(uint64_t id, int fallback_errno) const {
    if (journal_) journal_->Held(journal_key_, id, fallback_errno);
  }

  // Waits until a notification can be received. DeadlineExceeded on timeout;
  // FailedPrecondition once no task uses the filter any more (POLLHUP): the
  // workload has exited and the listener can be dropped.
  absl::Status WaitReadable(absl::Duration timeout) const;

  // Receives one notification; blocks if none is pending (WaitReadable
  // first). NotFound when the caller left its syscall (was killed) between
  // the wakeup and the receive: nothing to answer, receive again.
  absl::StatusOr<Notification> Receive() const;

  // OK while the notification's thread is still in that syscall. Anything
  // read from the workload (its memory, its fds) is trusted only if this
  // holds after the read: otherwise the thread may be gone and its pid
  // reused. NotFound otherwise.
  absl::Status IdValid(uint64_t id) const;

  // The syscall returns -1 with errno `err` (> 0) in the workload.
  absl::Status RespondError(uint64_t id, int err) const;
  // The syscall returns `value` in the workload, without having run.
  absl::Status RespondValue(uint64_t id, int64_t value) const;
  // The kernel runs the syscall as the workload asked, after this.
  //
  // Only for "not ours" (non-mesh, not TCP) and fallback: the workload can
  // change the pointed-to arguments (the sockaddr) between our read and the
  // kernel's, so a decision made on what we read is not enforced by this
  // (the uapi header warns the same). For mesh destinations the eBPF connect
  // hook, which sees the final copy, stays the guard.
  absl::Status Continue(uint64_t id) const;
  // Installs a copy of `fd` in the workload and makes the syscall return its
  // number, atomically (SECCOMP_ADDFD_FLAG_SEND, Linux 5.14): the answer to
  // an accept. `newfd_flags` is O_CLOEXEC or 0. Returns the workload's fd.
  absl::StatusOr<int> AddFdSend(uint64_t id, int fd, unsigned newfd_flags) const;

 private:
  NotificationListener(UniqueFd fd, size_t notif_size, size_t resp_size)
      : fd_(std::move(fd)), notif_size_(notif_size), resp_size_(resp_size) {}
  absl::Status Send(uint64_t id, int64_t value, int error, uint32_t flags) const;
  // After an answer: answered, or gone (the thread left its syscall).
  void Answered(uint64_t id, const absl::Status& st) const {
    if (journal_ && (st.ok() || absl::IsNotFound(st))) journal_->Released(journal_key_, id);
  }

  UniqueFd fd_;
  std::shared_ptr<HeldNotifications> journal_;
  uint64_t journal_key_ = 0;
  // The kernel's struct sizes, which may exceed the headers ours were built
  // with; the buffers handed to the ioctls are at least this large.
  size_t notif_size_ = 0;
  size_t resp_size_ = 0;
};

}  // namespace ktrust::zerohop
