#include "ktrust/agent/agent_listeners.h"

#include "absl/strings/str_cat.h"

namespace ktrust {
namespace {

// IPv4 first, then IPv6: the order ListenerPair reads back.
const SocketAddress& Loopback(int family) {
  static const SocketAddress v4 = *SocketAddress::Parse("127.0.0.1:0");
  static const SocketAddress v6 = *SocketAddress::Parse("[::1]:0");
  return family == 0 ? v4 : v6;
}

}  // namespace

NetnsListeners AgentListeners(const RouteFunction& route,
                              const std::vector<ServingListener>& serving) {
  NetnsListeners listeners;
  for (int family = 0; family < 2; ++family) {
    listeners.outbound.push_back({Loopback(family), route});
  }
  for (const ServingListener& w : serving) {
    for (int family = 0; family < 2; ++family) {
      InboundListener inbound{Loopback(family), w.workload, w.identity, std::nullopt, w.permissive};
      inbound.deliver = w.deliver;
      listeners.inbound.push_back(std::move(inbound));
    }
  }
  return listeners;
}

absl::StatusOr<AgentListenerFds> AgentListenerFdsOf(const ListenerGroupHandle& opened) {
  if (opened.outbound_fds.size() != 2 || opened.inbound_fds.size() % 2 != 0) {
    return absl::InternalError(absl::StrCat(
        "listener group ", opened.id, " has ", opened.outbound_fds.size(), " outbound and ",
        opened.inbound_fds.size(), " inbound sockets, not pairs of the agent's"));
  }
  AgentListenerFds fds;
  fds.outbound = {opened.outbound_fds[0], opened.outbound_fds[1]};
  for (size_t i = 0; i < opened.inbound_fds.size(); i += 2) {
    fds.inbound.push_back({opened.inbound_fds[i], opened.inbound_fds[i + 1]});
  }
  return fds;
}

absl::Status SteerSlotTo(InterceptionMaps& maps, uint32_t slot, const ListenerPair& pair) {
  for (int fd : {pair.v4, pair.v6}) {
    if (auto st = maps.SetInboundListener(slot, fd); !st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace ktrust
