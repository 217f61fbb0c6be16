// The agent's end of the fd holder (holder.h): connects to its agent socket
// and receives every listener the holder keeps, then new ones and removals
// as they happen.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/zerohop/holder_protocol.h"
#include "ktrust/zerohop/notify.h"

namespace ktrust::zerohop {

class HolderClient {
 public:
  // Connects to the holder's agent socket (DIR/holder.sock). Refuses a peer
  // that is neither root nor this process's user: the listeners and pidfds
  // it would hand over must come from the real holder.
  static absl::StatusOr<HolderClient> Connect(const std::string& path);

  // Readable (poll POLLIN) when Receive() has a message.
  int fd() const { return fd_.get(); }

  // Waits up to `timeout` (InfiniteDuration: forever) for the next message.
  // DeadlineExceeded on timeout; Unavailable once the holder closed the
  // connection (connect again: it sends every entry again). A malformed
  // message is InvalidArgument, its fds closed; the next may be fine.
  // Every received listener is checked to be a seccomp listener. Cancelled,
  // without reading it, once `wake_fd` (if >= 0) is readable.
  absl::StatusOr<HolderMessage> Receive(absl::Duration timeout = absl::InfiniteDuration(),
                                        int wake_fd = -1) const;

 private:
  explicit HolderClient(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

// The agent's held notifications, kept by the holder: each Held() is sent
// on the agent's holder connection, and when that connection ends (the
// agent crashed or was killed) the holder answers every notification still
// held with its fallback errno, so no workload thread waits for a dead
// agent. Thread-safe; every send is non-blocking.
class HolderJournal : public HeldNotifications {
 public:
  // The connection to send on (a dup of HolderClient::fd()); an invalid fd
  // while there is none. Forgets what was held: the holder behind the old
  // connection answered it when the connection ended, or is gone.
  void Connect(UniqueFd fd);
  void Held(uint64_t key, uint64_t id, int fallback_errno) override;
  void Released(uint64_t key, uint64_t id) override;
  // How many notifications are held now.
  size_t held() const;

 private:
  void Send(const AgentMessage& m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  UniqueFd fd_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::pair<uint64_t, uint64_t>> held_ ABSL_GUARDED_BY(mu_);
  absl::Time last_warned_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();  // a failed send
};

}  // namespace ktrust::zerohop
