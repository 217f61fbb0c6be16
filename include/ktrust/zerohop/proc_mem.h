// Reading a notified workload: the connect destination from its memory and
// its socket through a pidfd.
//
// The rule for both (design: read, then IdValid, then trust): what was read
// counts only if the notification is still valid afterwards, i.e. the thread
// is still inside that connect and its pid has not been reused by another
// process. Both functions here apply it before returning.
//
// Both need PTRACE_MODE_ATTACH on the workload: CAP_SYS_PTRACE for another
// user's process. Without it they fail with PermissionDenied (EPERM).
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <optional>

#include "absl/status/statusor.h"
#include "ktrust/common/socket_address.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/zerohop/notify.h"

namespace ktrust::zerohop {

// What a workload passed to connect().
struct ConnectTarget {
  // sa_family as written, AF_UNSPEC if the length leaves no room for it.
  int family = AF_UNSPEC;
  // Set only for a complete AF_INET or AF_INET6 address the kernel would
  // accept (length at least sockaddr_in / the RFC 2133 sockaddr_in6, at most
  // sockaddr_storage). Anything else is not a mesh destination: answer it
  // with Continue and let the kernel judge it.
  std::optional<SocketAddress> address;
  bool is_inet() const { return address.has_value(); }
};

// Reads connect(fd, addr, len)'s address from the notifying thread's memory
// with process_vm_readv, bounded to sizeof(sockaddr_storage), then re-checks
// the notification (IdValid). InvalidArgument if `n` is not a connect.
absl::StatusOr<ConnectTarget> ReadConnectTarget(const NotificationListener& listener,
                                                const Notification& n);

// Answers the address part of accept(fd, addr, addrlen) / accept4 as the
// kernel would: writes `peer` into the workload's buffer, truncated to the
// length it offered in *addrlen, and stores the full length in *addrlen.
// Nothing to do when addr is NULL. Call right before AddFdSend. IdValid is
// checked *before* writing, since a write must never reach a process that
// merely reuses the thread's pid. InvalidArgument for a negative *addrlen (the
// kernel's EINVAL); a failed read or write (EFAULT: the workload passed a bad
// pointer) is returned as is: answer the notification with that error.
absl::Status WriteAcceptPeer(const NotificationListener& listener, const Notification& n,
                             const SocketAddress& peer);

// pidfd_open(2) and pidfd_getfd(2), called through syscall() so that glibc
// before 2.36 links too.
absl::StatusOr<UniqueFd> PidfdOpen(pid_t pid);
absl::StatusOr<UniqueFd> PidfdGetfd(int pidfd, int target_fd);

// Duplicates the fd the notified syscall works on (args[0]: the socket of a
// connect, the listener of an accept) into this process: the same open file,
// so the workload sees everything done to it. pidfd_open needs the process,
// not the thread, so the thread id is resolved to its process through /proc;
// the IdValid re-check afterwards proves the thread, and so its process, was
// alive throughout.
absl::StatusOr<UniqueFd> TakeNotifiedFd(const NotificationListener& listener,
                                        const Notification& n);

}  // namespace ktrust::zerohop
