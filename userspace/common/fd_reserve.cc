#include "ktrust/common/fd_reserve.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <cerrno>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "ktrust/common/error_text.h"

namespace ktrust {

void FdReserve::Refill() {
  if (!spare_.valid()) spare_.Reset(open("/dev/null", O_RDONLY | O_CLOEXEC));
}

absl::StatusOr<UniqueFd> FdReserve::AcceptWithReserve(int listen_fd) {
  Refill();  // a reserve another thread took last time may be free again
  if (!spare_.valid()) return absl::ErrnoToStatus(EMFILE, "no descriptor in reserve");
  // Non-blocking for this one call: the connection that failed to be
  // accepted may be gone (reset) by now, and the caller's thread must not wait.
  int flags = fcntl(listen_fd, F_GETFL);
  bool blocking = flags >= 0 && !(flags & O_NONBLOCK);
  if (blocking) (void)fcntl(listen_fd, F_SETFL, flags | O_NONBLOCK);
  spare_.Reset();
  UniqueFd conn(accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
  int error = errno;
  if (blocking) (void)fcntl(listen_fd, F_SETFL, flags);
  Refill();
  if (!conn.valid()) return absl::ErrnoToStatus(error, "accept4");
  return conn;
}

int DescriptorErrorOf(const absl::Status& status) {
  if (!absl::IsResourceExhausted(status)) return 0;
  // ENFILE's text contains EMFILE's: the longer first.
  if (absl::StrContains(status.message(), ErrnoText(ENFILE))) return ENFILE;
  if (absl::StrContains(status.message(), ErrnoText(EMFILE))) return EMFILE;
  return 0;
}

int MemoryErrorOf(const absl::Status& status) {
  if (!absl::IsResourceExhausted(status)) return 0;
  if (absl::StrContains(status.message(), ErrnoText(ENOBUFS))) return ENOBUFS;
  // OpenSSL's ERR_R_MALLOC_FAILURE reads "malloc failure".
  if (absl::StrContains(status.message(), ErrnoText(ENOMEM)) ||
      absl::StrContains(status.message(), "malloc failure")) {
    return ENOMEM;
  }
  return 0;
}

std::string OutOfMemoryReason(int error) {
  return absl::StrCat("the node is short of memory (", ErrnoText(error),
                      "): new connections are refused until memory is free; live connections "
                      "stay as they are");
}

std::string OutOfDescriptorsReason(int error) {
  if (error == ENFILE) {
    return absl::StrCat("the system is out of file descriptors (", ErrnoText(error),
                        "): new connections are refused until some close");
  }
  rlimit limit{};
  std::string which = getrlimit(RLIMIT_NOFILE, &limit) == 0
                          ? absl::StrCat("RLIMIT_NOFILE ", limit.rlim_cur)
                          : std::string("RLIMIT_NOFILE");
  return absl::StrCat("the agent is out of file descriptors (", ErrnoText(error), ", ", which,
                      "): new connections are refused until some close; live connections and "
                      "enrolled workloads stay as they are");
}

}  // namespace ktrust
