#include "ktrust/zerohop/proc_mem.h"

#include <errno.h>
#include <netinet/in.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "ktrust/common/files.h"

namespace ktrust::zerohop {
namespace {

// The shortest sockaddr_in6 the kernel takes (no sin6_scope_id): RFC 2133's.
constexpr size_t kShortestSockaddrIn6 = 24;

absl::Status Untrusted(const absl::Status& valid, absl::string_view what) {
  return absl::Status(valid.code(), absl::StrCat(what, " is not trusted: ", valid.message()));
}

// The process a thread belongs to, from /proc/<tid>/status.
absl::StatusOr<pid_t> ProcessOfThread(pid_t tid) {
  std::string path = absl::StrCat("/proc/", tid, "/status");
  absl::StatusOr<std::string> status = ReadFile(path, 64 << 10);
  if (!status.ok()) return status.status();
  for (absl::string_view line : absl::StrSplit(*status, '\n')) {
    if (!absl::ConsumePrefix(&line, "Tgid:")) continue;
    pid_t tgid = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &tgid) && tgid > 0) return tgid;
    break;
  }
  return absl::InternalError(absl::StrCat(path, ": no Tgid line"));
}

}  // namespace

absl::StatusOr<ConnectTarget> ReadConnectTarget(const NotificationListener& listener,
                                                const Notification& n) {
  if (n.syscall_nr != SYS_connect) {
    return absl::InvalidArgumentError(
        absl::StrCat("notification ", n.id, " is syscall ", n.syscall_nr, ", not connect"));
  }
  uint64_t pointer = n.args[1];
  // The kernel refuses a longer address (EINVAL) before looking at it; read
  // no more than it would.
  uint64_t length = n.args[2];
  sockaddr_storage raw{};
  size_t want = std::min<uint64_t>(length, sizeof(raw));
  ConnectTarget target;
  if (want > 0) {
    iovec local{&raw, want};
    iovec remote{reinterpret_cast<void*>(pointer), want};
    ssize_t got = process_vm_readv(n.pid, &local, 1, &remote, 1, 0);
    if (got < 0) {
      return absl::ErrnoToStatus(
          errno, absl::StrCat("read the connect address of thread ", n.pid, " (process_vm_readv)"));
    }
    // A short read means unmapped memory: the kernel's copy would fail with
    // EFAULT, so there is no address to judge.
    if (static_cast<size_t>(got) != want) {
      return absl::OutOfRangeError(absl::StrCat("read the connect address of thread ", n.pid, ": ",
                                                got, " of ", want, " bytes readable"));
    }
  }
  if (absl::Status valid = listener.IdValid(n.id); !valid.ok()) {
    return Untrusted(valid, "the connect address read");
  }
  if (want >= sizeof(sa_family_t)) target.family = raw.ss_family;
  if (length > sizeof(raw)) return target;
  if (target.family == AF_INET && want >= sizeof(sockaddr_in)) {
    target.address =
        SocketAddress::FromSockaddr(reinterpret_cast<const sockaddr*>(&raw), sizeof(sockaddr_in));
  } else if (target.family == AF_INET6 && want >= kShortestSockaddrIn6) {
    // A short form has no scope id: the zeroed rest of `raw` supplies 0.
    target.address =
        SocketAddress::FromSockaddr(reinterpret_cast<const sockaddr*>(&raw), sizeof(sockaddr_in6));
  }
  return target;
}

absl::StatusOr<UniqueFd> PidfdOpen(pid_t pid) {
  UniqueFd fd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, absl::StrCat("pidfd_open(", pid, ")"));
  return fd;
}

absl::StatusOr<UniqueFd> PidfdGetfd(int pidfd, int target_fd) {
  UniqueFd fd(static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, target_fd, 0)));
  if (!fd.valid())
    return absl::ErrnoToStatus(errno, absl::StrCat("pidfd_getfd(fd ", target_fd, ")"));
  return fd;
}

absl::StatusOr<UniqueFd> TakeNotifiedFd(const NotificationListener& listener,
                                        const Notification& n) {
  // fds are ints; anything larger cannot be one the kernel would accept.
  if (n.args[0] > static_cast<uint64_t>(INT32_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat("notification ", n.id, ": fd argument ", n.args[0], " is not an fd"));
  }
  absl::StatusOr<pid_t> process = ProcessOfThread(n.pid);
  if (!process.ok()) return process.status();
  absl::StatusOr<UniqueFd> pidfd = PidfdOpen(*process);
  if (!pidfd.ok()) return pidfd.status();
  absl::StatusOr<UniqueFd> fd = PidfdGetfd(pidfd->get(), static_cast<int>(n.args[0]));
  if (!fd.ok()) return fd.status();
  if (absl::Status valid = listener.IdValid(n.id); !valid.ok()) {
    return Untrusted(valid, absl::StrCat("the fd taken from process ", *process));
  }
  return fd;
}

}  // namespace ktrust::zerohop
