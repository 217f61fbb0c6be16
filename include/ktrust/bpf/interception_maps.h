// Typed access to the interception maps (include/ktrust/bpf/abi.h): what the
// agent writes (settings, mesh destinations, enrolled cgroups, inbound
// ports and listeners) and what it reads (original destinations, counters).
// The fds are borrowed from the BpfLoader that owns the maps.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "ktrust/bpf/abi.h"
#include "ktrust/common/ip_prefix.h"
#include "ktrust/common/socket_address.h"

namespace ktrust {

// What the kernel enforces for an enrolled cgroup or an inbound port: the
// configuration's WorkloadMode without `off` (an `off` cgroup is classified
// not enrolled instead), so no `off` can reach a map by mistake. The agent
// converts in one place (agent/kernel_mode.h); AbiMode() in
// interception_maps.cc is the one encoding into KTRUST_MODE_*.
enum class EnforcementMode {
  kEnforce,     // no plaintext: anything that cannot be intercepted is refused
  kPermissive,  // plaintext allowed where interception cannot work
};

enum class MeshAction {
  kRedirect,  // TCP through the agent; other protocols refused in enforce mode
  kBypass,    // left alone (DNS, say), counted and reported
};

struct PortRule {
  uint16_t first_port = 0;  // inclusive
  uint16_t last_port = 0;   // inclusive
  MeshAction action = MeshAction::kRedirect;
};

// How the kernel knows the agent's traffic and where it sends intercepted
// connections.
struct InterceptionSettings {
  // Required; the port of every namespace's outbound target (see
  // SetOutboundTarget), which sk_lookup hands to the agent's listener.
  uint16_t outbound_port = 0;
  // SO_MARK of the agent's sockets: never redirected, and the agent's own
  // connections reach enforced applications (ktrust_sockops_agent). 0: none,
  // which leaves the agent unable to deliver inbound connections.
  uint32_t agent_mark = 0;

  absl::Status Validate() const;
};

// A network namespace's outbound target: the local addresses connect4/6
// rewrite its enrolled workloads' mesh connections to (port:
// InterceptionSettings::outbound_port). Each namespace needs addresses of its
// own, since sk_lookup cannot tell namespaces apart: 127.0.0.1 and ::1 on the
// host, a pod's own addresses in a pod.
struct OutboundTarget {
  std::optional<SocketAddress> ip4;  // port ignored
  std::optional<SocketAddress> ip6;  // port ignored; unset: IPv6 mesh connects refused
};

// Where an intercepted connection was going, and whose it was.
struct OriginalDestination {
  SocketAddress destination;  // AF_INET for IPv4, even from an AF_INET6 socket
  uint64_t cgroup_id = 0;
  uint32_t workload = 0;
  uint32_t pid = 0;
  EnforcementMode mode = EnforcementMode::kEnforce;
  uint64_t netns_cookie = 0;  // the application's network namespace (SO_NETNS_COOKIE)
};

struct TrackedConnectionCounts {
  size_t by_cookie = 0;  // connect() seen, not yet closed
  size_t by_tuple = 0;   // established, not yet closed
};

using ReasonCounters = std::array<uint64_t, KTRUST_REASON_MAX>;

// The network namespace a socket lives in (SO_NETNS_COOKIE, Linux 5.14).
absl::StatusOr<uint64_t> NetnsCookieOf(int fd);

class InterceptionMaps {
 public:
  struct Fds {
    int mesh = -1;
    int cgroups = -1;
    int watched = -1;
    int config = -1;
    int orig_by_cookie = -1;
    int orig_by_tuple = -1;
    int inbound = -1;
    int listeners = -1;
    int counters = -1;
    int outbound_targets = -1;
  };
  explicit InterceptionMaps(Fds fds) : fds_(fds) {}

  // Until this is called (outbound_port 0), enrolled connections to the mesh
  // are refused (enforce) or left alone (permissive).
  absl::Status Configure(const InterceptionSettings& settings);

  // Sets the port rules of exactly this prefix (at most
  // KTRUST_MESH_RULES_PER_PREFIX, first match wins). The kernel uses only the
  // longest matching prefix, so a longer prefix must repeat the rules it
  // inherits from shorter ones.
  absl::Status AddMeshDestination(const IpPrefix& prefix, const std::vector<PortRule>& rules);
  absl::Status RemoveMeshDestination(const IpPrefix& prefix);

  // Pinned maps outlive the agent, so a restarted agent with a changed
  // configuration finds entries it no longer wants. These remove every
  // entry not in `keep` (after the wanted ones are written, so nothing
  // wanted is ever missing) and return how many went.
  absl::StatusOr<size_t> KeepOnlyMeshDestinations(const std::vector<IpPrefix>& keep);
  absl::StatusOr<size_t> KeepOnlyEnrolledCgroups(const std::set<uint64_t>& keep);
  absl::StatusOr<size_t> KeepOnlyInboundPorts(const std::vector<SocketAddress>& keep);

  // Processes in exactly this cgroup (not its children) are intercepted.
  absl::Status EnrollCgroup(uint64_t cgroup_id, EnforcementMode mode, uint32_t workload);
  // Classified and left alone: a cgroup that is no workload's (or a `mode:
  // off` one's) under a watched cgroup. Kept by KeepOnlyEnrolledCgroups like
  // an enrolment.
  absl::Status MarkCgroupNotEnrolled(uint64_t cgroup_id);
  absl::Status UnenrollCgroup(uint64_t cgroup_id);
  // The cgroups under which every cgroup is classified (enrolled or
  // MarkCgroupNotEnrolled): a descendant with neither is new, and refused
  // for mesh destinations until it is classified. Only these stay watched.
  // Only set once every existing descendant is classified.
  absl::Status WatchOnlyCgroups(const std::set<uint64_t>& roots);

  // netns_cookie: the accepted socket's network namespace (SO_NETNS_COOKIE);
  // app: its peer; listener: its local address. NotFound when the
  // connection was not redirected (or has closed).
  absl::StatusOr<OriginalDestination> LookupOriginalDestination(
      uint64_t netns_cookie, const SocketAddress& app, const SocketAddress& listener) const;
  // The same for a socket accepted on an outbound listener, in whichever
  // namespace: what OutboundListener::destination needs. Any error (the
  // kernel lacks SO_NETNS_COOKIE, say) is returned: the caller refuses.
  absl::StatusOr<OriginalDestination> OriginalDestinationOf(int accepted_fd) const;

  // Enforces local (address, port); an unspecified address (0.0.0.0 or ::)
  // covers the port on every address of the host's namespace (a pod's
  // namespace takes exact addresses only). listener_slot: see
  // SetInboundListener.
  absl::Status AddInboundPort(const SocketAddress& local, EnforcementMode mode,
                              uint32_t listener_slot, uint32_t workload);
  absl::Status RemoveInboundPort(const SocketAddress& local);
  // The exact-address rules (the pods' and the outbound targets') and the
  // slot each names, by SocketAddress::ToString of (address, port): what an
  // earlier run, or the agent being taken over from, wrote.
  absl::StatusOr<std::map<std::string, uint32_t>> ExactInboundSlots() const;
  // Points the exact-address rules `park` picks at `slot`, which the caller
  // never fills: a restarted agent's pod rules name the slots of the run
  // before, some of which this run gives to other listeners.
  absl::StatusOr<size_t> ParkExactInboundRules(
      uint32_t slot, const std::function<bool(const SocketAddress& local, uint32_t slot)>& park);
  // Puts a listening TCP socket in a slot (below
  // KTRUST_MAX_INBOUND_LISTENERS): an AF_INET socket takes the slot's IPv4
  // connections, an AF_INET6 one its IPv6 connections. The kernel drops it
  // from the slot when it closes, which makes enforced ports refuse
  // connections.
  absl::Status SetInboundListener(uint32_t slot, int listen_fd);
  // Empties both families of a slot, so it can be given to another
  // listener; an empty slot already is fine.
  absl::Status ClearInboundListener(uint32_t slot);

  // Where connect4/6 send the mesh connections of the namespace with this
  // cookie (SO_NETNS_COOKIE), and the rules that take them to `slot`'s
  // listeners only, refused while the slot is empty (an outbound target is
  // the agent's or nobody's). Replaces what the namespace had.
  absl::Status SetOutboundTarget(uint64_t netns_cookie, const OutboundTarget& target,
                                 uint16_t outbound_port, uint32_t slot);
  // Forgets the namespace's target (its mesh connections are then refused)
  // and its rules. Nothing set is not an error.
  absl::Status RemoveOutboundTarget(uint64_t netns_cookie, const OutboundTarget& target,
                                    uint16_t outbound_port);
  // A restart's pruning: the targets of every namespace not in `keep` go
  // (their rules were parked with the pods'). Returns how many.
  absl::StatusOr<size_t> KeepOnlyOutboundTargets(const std::set<uint64_t>& keep);

  // Per reason, summed over CPUs.
  absl::StatusOr<ReasonCounters> Counters() const;
  absl::StatusOr<TrackedConnectionCounts> TrackedConnections() const;

 private:
  // Every rule of an exact (pod, outbound target) address, never the
  // wildcard ones; the first error `visit` returns ends the walk.
  absl::Status ForEachExactInboundRule(
      const std::function<absl::Status(const ktrust_inbound_key&, ktrust_inbound_value&)>& visit)
      const;

  Fds fds_;
};

}  // namespace ktrust
