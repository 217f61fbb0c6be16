#include "ktrust/zerohop/holder_client.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>

#include "absl/strings/str_cat.h"
#include "ktrust/zerohop/holder.h"

namespace ktrust::zerohop {

absl::StatusOr<HolderClient> HolderClient::Connect(const std::string& path) {
  auto fd = ConnectUnixSocket(path, SOCK_SEQPACKET);
  if (!fd.ok()) return fd.status();
  if (auto st = CheckPeerIsRootOrSelf(fd->get(), path); !st.ok()) return st;
  return HolderClient(*std::move(fd));
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
