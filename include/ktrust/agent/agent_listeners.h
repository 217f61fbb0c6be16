// The listeners the agent opens in a network namespace, the host's or a
// pod's, built by one helper so both are the same shape:
//
//   outbound  one pair (IPv4, IPv6): takes the namespace's mesh connections
//             (connect4/6 rewrite them to its outbound target, sk_lookup
//             hands them to this pair alone)
//   inbound   one pair per serving workload, in the order given
//
// Every listener binds an ephemeral port on loopback: sk_lookup steers to it
// by socket, so no port a local user could take first stops the agent, and
// no listener of anyone else's receives what was meant for the agent. One
// listener per family: sk_lookup hands each family's connections only to a
// socket of that family.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "ktrust/bpf/interception_maps.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/dataplane/engine.h"

namespace ktrust {

// Hands an authenticated inbound socket to a zero-hop process of the
// workload (ZeroHopPath::Deliver); false: the engine proxies it.
using DeliverFunction =
    std::function<bool(UniqueFd& socket, const ConnectionInfo& info, const VerifiedPeer& peer)>;

// A workload whose enforced ports the namespace's inbound pair serves.
struct ServingListener {
  std::string workload;
  SvidProvider identity;
  bool permissive = false;  // its mode is `permissive`
  DeliverFunction deliver;  // unset: always proxied
};

using RouteFunction = std::function<absl::StatusOr<OutboundRoute>(int app_fd)>;

// The listeners to open (netns_fd left unset: the caller's namespace, or
// set by the caller for a pod's).
NetnsListeners AgentListeners(const RouteFunction& route,
                              const std::vector<ServingListener>& serving);

// One listener per address family, as opened.
struct ListenerPair {
  int v4 = -1;
  int v6 = -1;
};

// The sockets of a group AgentListeners described, per listener.
struct AgentListenerFds {
  ListenerPair outbound;
  std::vector<ListenerPair> inbound;  // per serving workload, in AgentListeners' order
};

// Fails when the group is not AgentListeners' shape.
absl::StatusOr<AgentListenerFds> AgentListenerFdsOf(const ListenerGroupHandle& opened);

// Points sk_lookup's listener slot at the pair: both families.
absl::Status SteerSlotTo(InterceptionMaps& maps, uint32_t slot, const ListenerPair& pair);

}  // namespace ktrust
