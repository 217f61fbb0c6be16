#include "ktrust/zerohop/notify.h"

#include <errno.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace ktrust::zerohop {
namespace {

absl::Status AnswerFailure(int err, uint64_t id, absl::string_view what) {
  if (err == ENOENT) {
    return absl::NotFoundError(absl::StrCat(what, " notification ", id,
                                            ": the thread left the syscall (killed) or the id is "
                                            "unknown; nothing was delivered"));
  }
  return absl::ErrnoToStatus(err, absl::StrCat(what, " notification ", id));
}

}  // namespace

absl::StatusOr<NotificationListener> NotificationListener::Create(UniqueFd fd) {
  if (!fd.valid()) return absl::InvalidArgumentError("seccomp listener: no fd");
  seccomp_notif_sizes sizes{};
  if (syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0) {
    return absl::ErrnoToStatus(errno, "seccomp listener: SECCOMP_GET_NOTIF_SIZES");
  }
  return NotificationListener(
      std::move(fd), std::max<size_t>(sizes.seccomp_notif, sizeof(seccomp_notif)),
      std::max<size_t>(sizes.seccomp_notif_resp, sizeof(seccomp_notif_resp)));
}

absl::Status NotificationListener::WaitReadable(absl::Duration timeout) const {
  absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    pollfd p{fd_.get(), POLLIN, 0};
    int ms = static_cast<int>(std::max<int64_t>(
        0, absl::ToInt64Milliseconds(absl::Ceil(deadline - absl::Now(), absl::Milliseconds(1)))));
    int n = poll(&p, 1, ms);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::ErrnoToStatus(errno, "seccomp listener: poll");
    if (n == 0) return absl::DeadlineExceededError("seccomp listener: no notification in time");
    if (p.revents & POLLIN) return absl::OkStatus();
    return absl::FailedPreconditionError(
        "seccomp listener: no task uses the filter any more (the workload exited)");
  }
}

absl::StatusOr<Notification> NotificationListener::Receive() const {
  // The kernel insists on a zeroed buffer of its own size.
  std::vector<unsigned char> buffer(notif_size_, 0);
  for (;;) {
    if (ioctl(fd_.get(), SECCOMP_IOCTL_NOTIF_RECV, buffer.data()) == 0) break;
    if (errno == EINTR) continue;
    if (errno == ENOENT) {
      return absl::NotFoundError(
          "seccomp listener: the notifying thread left its syscall before it was received");
    }
    return absl::ErrnoToStatus(errno, "seccomp listener: SECCOMP_IOCTL_NOTIF_RECV");
  }
  seccomp_notif raw;
  std::memcpy(&raw, buffer.data(), sizeof(raw));
  Notification n;
  n.id = raw.id;
  n.pid = static_cast<pid_t>(raw.pid);
  n.syscall_nr = raw.data.nr;
  n.arch = raw.data.arch;
  std::copy(std::begin(raw.data.args), std::end(raw.data.args), n.args.begin());
  return n;
}

absl::Status NotificationListener::IdValid(uint64_t id) const {
  if (ioctl(fd_.get(), SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0) return absl::OkStatus();
  absl::Status st = AnswerFailure(errno, id, "check");
  // Gone: nobody can answer it any more, held or not.
  if (absl::IsNotFound(st)) Answered(id, st);
  return st;
}

absl::Status NotificationListener::Send(uint64_t id, int64_t value, int error,
                                        uint32_t flags) const {
  std::vector<unsigned char> buffer(resp_size_, 0);
  seccomp_notif_resp resp{};
  resp.id = id;
  resp.val = value;
  resp.error = error;
  resp.flags = flags;
  std::memcpy(buffer.data(), &resp, sizeof(resp));
  absl::Status st;
  for (;;) {
    if (ioctl(fd_.get(), SECCOMP_IOCTL_NOTIF_SEND, buffer.data()) == 0) break;
    if (errno != EINTR) {
      st = AnswerFailure(errno, id, "answer");
      break;
    }
  }
  Answered(id, st);
  return st;
}

absl::Status NotificationListener::RespondError(uint64_t id, int err) const {
  // error 0 would mean "success with val": refuse to turn a failure into one.
  if (err <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("answer notification ", id, ": errno ", err, " is not an error number"));
  }
  return Send(id, 0, -err, 0);
}

absl::Status NotificationListener::RespondValue(uint64_t id, int64_t value) const {
  return Send(id, value, 0, 0);
}

absl::Status NotificationListener::Continue(uint64_t id) const {
  return Send(id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE);
}

absl::StatusOr<int> NotificationListener::AddFdSend(uint64_t id, int fd,
                                                    unsigned newfd_flags) const {
  seccomp_notif_addfd addfd{};
  addfd.id = id;
  addfd.flags = SECCOMP_ADDFD_FLAG_SEND;
  addfd.srcfd = static_cast<uint32_t>(fd);
  addfd.newfd_flags = newfd_flags;
  // No retry on EINTR: the kernel may already have installed the fd and
  // answered, and a second ADDFD would then fail or add a second copy.
  int target = ioctl(fd_.get(), SECCOMP_IOCTL_NOTIF_ADDFD, &addfd);
  absl::Status st = target >= 0 ? absl::OkStatus() : AnswerFailure(errno, id, "hand an fd to");
  Answered(id, st);
  if (!st.ok()) return st;
  return target;
}

}  // namespace ktrust::zerohop
