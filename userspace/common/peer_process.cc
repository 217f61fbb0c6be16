#include "ktrust/common/peer_process.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77  // Linux 6.5; Debian 12's headers predate it
#endif

namespace ktrust {

absl::StatusOr<UniqueFd> PeerPidfd(int sock, pid_t pid, bool* exact) {
  int fd = -1;
  socklen_t len = sizeof(fd);
  if (::getsockopt(sock, SOL_SOCKET, SO_PEERPIDFD, &fd, &len) == 0 && fd >= 0) {
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    if (exact) *exact = true;
    return UniqueFd(fd);
  }
  if (exact) *exact = false;
  UniqueFd opened(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!opened.valid()) return absl::ErrnoToStatus(errno, absl::StrCat("pidfd_open(", pid, ")"));
  return opened;
}

bool PidfdExited(int pidfd) {
  pollfd p{pidfd, POLLIN, 0};
  return ::poll(&p, 1, 0) != 0;
}

}  // namespace ktrust
