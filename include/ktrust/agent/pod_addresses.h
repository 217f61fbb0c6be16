// A served pod's addresses: which ones ktrust enforces, how it hears that
// they changed, and which exact sk_lookup rules the served pods need
// together.
//
// The inbound rules live in one map shared by every namespace, keyed by
// (address, port) without the namespace: sk_lookup sees fe80::1, not
// fe80::1%eth0, and cannot tell which pod it runs in. Pod IPs are unique,
// but link-local addresses need not be (static fe80::1, a copied MAC). An
// address carried by two served pods therefore gets a rule that refuses in
// both (fail closed): a rule naming one pod's listener would hand the other
// pod's connections to it, and no rule would leave one pod plaintext.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ktrust/bpf/interception_maps.h"
#include "ktrust/common/socket_address.h"
#include "ktrust/common/unique_fd.h"

struct ifaddrs;
struct sockaddr;

namespace ktrust {

// Whether a pod's address is enforced: every address but loopback ones
// (127/8, ::1, which only the pod itself reaches) and the agent's own IPv6
// upstream source it puts on the pod's loopback. Link-local addresses
// (fe80::/10, 169.254/16) are enforced: a neighbour on the pod's link
// reaches them. Whatever device the address is on: a routable address on
// `lo` is reachable from outside too.
bool IsEnforcedPodAddress(const sockaddr* address, const std::optional<SocketAddress>& own_source6);

// The enforced addresses of a getifaddrs() list, as text without scope
// (what sk_lookup matches), sorted and without duplicates.
std::vector<std::string> EnforcedPodAddresses(const ifaddrs* list,
                                              const std::optional<SocketAddress>& own_source6);

// The enforced addresses of the network namespace `netns_fd`, read from
// inside it (EnforcedPodAddresses).
absl::StatusOr<std::vector<std::string>> NetnsAddresses(
    int netns_fd, const std::optional<SocketAddress>& own_source6);
// (address, port) for one of those addresses: "10.1.2.3" or "fd00::3".
absl::StatusOr<SocketAddress> PodSocketAddress(const std::string& address, uint16_t port);

// Where a pod's mesh connections are sent (connect4/6 rewrite them to it on
// the agent's outbound port): its first IPv4 and first IPv6 address that is
// not link-local, since those need a scope to be dialled. Neither: the pod
// has nowhere to send them yet, and they are refused.
OutboundTarget PodOutboundTarget(const std::vector<std::string>& addresses);
bool SameOutboundTarget(const OutboundTarget& a, const OutboundTarget& b);

// A netlink socket in the calling thread's namespace, non-blocking,
// subscribed to its IPv4 and IPv6 address changes. It stays in that
// namespace whatever thread reads it.
absl::StatusOr<UniqueFd> SubscribeAddressEvents();

enum class AddressEvents {
  kNone,     // nothing to read
  kChanged,  // an address came or went: rescan
  kLost,     // the socket overran (ENOBUFS) or failed: rescan, events were lost
};
// Reads everything pending on a SubscribeAddressEvents socket.
AddressEvents DrainAddressEvents(int fd);

// What one served pod claims: its enforced addresses, and per serving
// workload the ports enforced on each of them and where they go.
struct PodPortClaim {
  uint32_t slot = 0;
  EnforcementMode mode = EnforcementMode::kEnforce;
  uint32_t workload = 0;
  std::vector<uint16_t> ports;
};
struct PodClaim {
  uint64_t netns = 0;
  std::vector<std::string> addresses;
  std::vector<PodPortClaim> serving;
};

struct PodRule {
  SocketAddress local;
  uint32_t slot = 0;
  EnforcementMode mode = EnforcementMode::kEnforce;
  uint32_t workload = 0;
  bool operator==(const PodRule& o) const {
    return local.ToString() == o.local.ToString() && slot == o.slot && mode == o.mode &&
           workload == o.workload;
  }
};

struct PodRules {
  std::map<std::string, PodRule> rules;  // by local.ToString()
  // Per namespace, its addresses another served pod carries too, whose
  // rules refuse (parked_slot, enforce).
  std::map<uint64_t, std::set<std::string>> shared;
};

// The exact rules the served pods need together; an address carried by
// more than one of them is enforced on each of their ports with
// parked_slot, which no listener ever fills.
PodRules ResolvePodRules(const std::vector<PodClaim>& pods, uint32_t parked_slot);

}  // namespace ktrust
