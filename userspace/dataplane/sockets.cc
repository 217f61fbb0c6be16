#include "sockets.h"

#include <sys/socket.h>

#include <cerrno>

#include "ktrust/common/netns.h"

namespace ktrust {

absl::StatusOr<UniqueFd> SocketIn(SocketNetns netns, int family) {
  constexpr int kType = SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC;
  UniqueFd fd;
  auto make = [&]() -> absl::Status {
    fd.Reset(socket(family, kType, 0));
    if (!fd.valid()) return absl::ErrnoToStatus(errno, "socket");
    return absl::OkStatus();
  };
  absl::Status made = netns.fd < 0
                          ? make()
                          : RunInNetns(netns.fd, netns.home, "the listener's network namespace",
                                       "the engine's network namespace", make);
  if (!made.ok()) return made;
  return fd;
}

void ArmReset(int fd) {
  if (fd < 0) return;
  linger lg{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

}  // namespace ktrust

namespace ktrust {

void KillSocket(int fd) {
  if (fd < 0) return;
  ArmReset(fd);
  // ENOTCONN on a socket that never connected still marks both directions
  // shut (inet_shutdown sets sk_shutdown before it reports the error).
  shutdown(fd, SHUT_RDWR);
}

}  // namespace ktrust
