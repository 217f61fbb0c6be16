#include "ktrust/zerohop/holder_client.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>

#include "absl/strings/str_cat.h"
#include "ktrust/common/log.h"
#include "ktrust/common/poll_timeout.h"
#include "ktrust/zerohop/holder.h"

namespace ktrust::zerohop {

absl::StatusOr<HolderClient> HolderClient::Connect(const std::string& path) {
  auto fd = ConnectUnixSocket(path, SOCK_SEQPACKET);
  if (!fd.ok()) return fd.status();
  if (auto st = CheckPeerIsRootOrSelf(fd->get(), path); !st.ok()) return st;
  return HolderClient(*std::move(fd));
}

absl::StatusOr<HolderMessage> HolderClient::Receive(absl::Duration timeout, int wake_fd) const {
  pollfd p[2] = {{fd_.get(), POLLIN, 0}, {wake_fd, POLLIN, 0}};
  int n;
  do {
    n = ::poll(p, 2, PollMilliseconds(timeout));
  } while (n < 0 && errno == EINTR);
  if (n < 0) return absl::ErrnoToStatus(errno, "poll");
  if (n == 0) return absl::DeadlineExceededError("no message from the holder");
  if (p[0].revents == 0) return absl::CancelledError("woken");
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

void HolderJournal::Connect(UniqueFd fd) {
  absl::MutexLock lock(&mu_);
  fd_ = std::move(fd);
  held_.clear();
}

void HolderJournal::Held(uint64_t key, uint64_t id, int fallback_errno) {
  absl::MutexLock lock(&mu_);
  if (!fd_.valid()) return;  // no holder: nobody could answer it anyway
  held_.insert({key, id});
  Send(HeldNotification{key, id, fallback_errno});
}

void HolderJournal::Released(uint64_t key, uint64_t id) {
  absl::MutexLock lock(&mu_);
  if (held_.erase({key, id}) == 0 || !fd_.valid()) return;
  Send(ReleasedNotification{key, id});
}

size_t HolderJournal::held() const {
  absl::MutexLock lock(&mu_);
  return held_.size();
}

void HolderJournal::Send(const AgentMessage& m) {
  absl::Status st = SendWithFds(fd_.get(), EncodeAgentMessage(m), {}, MSG_DONTWAIT);
  if (st.ok()) return;
  // The notification is answered as usual while the agent lives; only its
  // protection against the agent's death is lost.
  absl::Time now = absl::Now();
  if (now - last_warned_ >= absl::Seconds(10)) {
    last_warned_ = now;
    LogEvent(spdlog::level::warn,
             {{"event", "zero_hop_holder_journal_failed"},
              {"reason",
               absl::StrCat("cannot tell the holder about a waiting notification (", st.message(),
                            "): if the agent dies now, that workload thread waits "
                            "until it is killed")}});
  }
}

}  // namespace ktrust::zerohop
