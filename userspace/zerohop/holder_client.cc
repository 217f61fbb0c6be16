#include "ktrust/zerohop/holder_client.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "ktrust/zerohop/holder.h"

namespace ktrust::zerohop {

absl::StatusOr<HolderClient> HolderClient::Connect(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path too long: ", path));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("connect to the fd holder at ", path));
  }
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return absl::ErrnoToStatus(errno, "SO_PEERCRED");
  }
  if (cred.uid != 0 && cred.uid != ::geteuid()) {
    return absl::PermissionDeniedError(
        absl::StrCat(path, " is served by uid ", cred.uid, ", not root: not the ktrust holder"));
  }
  return HolderClient(std::move(fd));
}

absl::StatusOr<HolderMessage> HolderClient::Receive(absl::Duration timeout) const {
  pollfd p{fd_.get(), POLLIN, 0};
  int ms = timeout == absl::InfiniteDuration()
               ? -1
               : static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(timeout)));
  int n;
  do {
    n = ::poll(&p, 1, ms);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return absl::ErrnoToStatus(errno, "poll");
  if (n == 0) return absl::DeadlineExceededError("no message from the holder");
  auto m = ReceiveWithFds(fd_.get(), kMaxHolderMessageBytes);
  if (!m.ok()) return m.status();
  if (m->eof) return absl::UnavailableError("the fd holder closed the connection");
  auto msg = DecodeHolderMessage(m->data, std::move(m->fds));
  if (!msg.ok()) return msg.status();
  if (auto* reg = std::get_if<ListenerRegistration>(&*msg)) {
    if (auto st = CheckSeccompListener(reg->listener.get()); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("holder entry ", reg->id, ": ", st.message()));
    }
  }
  return msg;
}

}  // namespace ktrust::zerohop
