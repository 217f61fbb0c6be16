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

// 0 is what the kernel reports for a thread outside the receiver's pid
// namespace; any pid call with it would mean "this process".
absl::Status RequireVisible(const Notification& n) {
  if (n.pid > 0) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "notification ", n.id, ": the thread is not visible in the agent's pid namespace"));
}

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

// One process_vm_readv/writev of `len` bytes at `remote` in thread `pid`.
absl::Status CopyWith(bool write, pid_t pid, void* local, uint64_t remote, size_t len,
                      absl::string_view what) {
  iovec l{local, len};
  iovec r{reinterpret_cast<void*>(remote), len};
  ssize_t done =
      write ? process_vm_writev(pid, &l, 1, &r, 1, 0) : process_vm_readv(pid, &l, 1, &r, 1, 0);
  if (done < 0) return absl::ErrnoToStatus(errno, absl::StrCat(what, " of thread ", pid));
  // Short: the range runs into unmapped memory, where the kernel's own copy
  // would fail with EFAULT.
  if (static_cast<size_t>(done) != len) {
    return absl::OutOfRangeError(
        absl::StrCat(what, " of thread ", pid, ": ", done, " of ", len, " bytes accessible"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ConnectTarget> ReadConnectTarget(const NotificationListener& listener,
                                                const Notification& n) {
  if (n.syscall_nr != SYS_connect) {
    return absl::InvalidArgumentError(
        absl::StrCat("notification ", n.id, " is syscall ", n.syscall_nr, ", not connect"));
  }
  if (absl::Status st = RequireVisible(n); !st.ok()) return st;
  uint64_t pointer = n.args[1];
  // The kernel refuses a longer address (EINVAL) before looking at it; read
  // no more than it would.
  uint64_t length = n.args[2];
  sockaddr_storage raw{};
  size_t want = std::min<uint64_t>(length, sizeof(raw));
  ConnectTarget target;
  if (want > 0) {
    absl::Status read = CopyWith(false, n.pid, &raw, pointer, want, "read the connect address");
    if (!read.ok()) return read;
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

absl::Status WriteAcceptPeer(const NotificationListener& listener, const Notification& n,
                             const SocketAddress& peer) {
  if (n.syscall_nr != SYS_accept && n.syscall_nr != SYS_accept4) {
    return absl::InvalidArgumentError(
        absl::StrCat("notification ", n.id, " is syscall ", n.syscall_nr, ", not accept"));
  }
  uint64_t addr = n.args[1];
  uint64_t addrlen = n.args[2];
  if (addr == 0) return absl::OkStatus();
  if (absl::Status st = RequireVisible(n); !st.ok()) return st;
  if (absl::Status valid = listener.IdValid(n.id); !valid.ok()) {
    return Untrusted(valid, "the accepting thread");
  }
  int offered = 0;
  absl::Status st =
      CopyWith(false, n.pid, &offered, addrlen, sizeof(offered), "read accept's addrlen");
  if (!st.ok()) return st;
  if (offered < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("notification ", n.id, ": accept's addrlen is negative (", offered, ")"));
  }
  size_t copy = std::min<size_t>(static_cast<size_t>(offered), peer.size());
  if (copy > 0) {
    sockaddr_storage out{};
    std::memcpy(&out, peer.get(), copy);
    st = CopyWith(true, n.pid, &out, addr, copy, "write the accepted peer's address");
    if (!st.ok()) return st;
  }
  int full = static_cast<int>(peer.size());
  return CopyWith(true, n.pid, &full, addrlen, sizeof(full), "write accept's addrlen");
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
  if (absl::Status st = RequireVisible(n); !st.ok()) return st;
  // Most calls come from a process's main thread, whose id is the process's:
  // pidfd_open takes only a thread-group leader (another thread: EINVAL, on
  // recent kernels ENOENT), which spares reading /proc/<tid>/status on every
  // connect and accept. On any failure, the slow way says what is wrong.
  // Either way the pid could be reused before it is opened; the IdValid
  // check below, after the fd was taken, is what rules that out.
  pid_t process = n.pid;
  absl::StatusOr<UniqueFd> pidfd = PidfdOpen(process);
  if (!pidfd.ok()) {
    absl::StatusOr<pid_t> leader = ProcessOfThread(n.pid);
    if (!leader.ok()) return leader.status();
    process = *leader;
    pidfd = PidfdOpen(process);
  }
  if (!pidfd.ok()) return pidfd.status();
  absl::StatusOr<UniqueFd> fd = PidfdGetfd(pidfd->get(), static_cast<int>(n.args[0]));
  if (!fd.ok()) return fd.status();
  if (absl::Status valid = listener.IdValid(n.id); !valid.ok()) {
    return Untrusted(valid, absl::StrCat("the fd taken from process ", process));
  }
  return fd;
}

}  // namespace ktrust::zerohop
