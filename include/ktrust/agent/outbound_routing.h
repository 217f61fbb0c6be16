// Outbound routing: where a connection the kernel redirected to the agent
// goes, and as whom. Reads the routing table the last enrolment pass
// published (cgroup_enrolment.h), which also names the identity each
// serving workload's inbound listeners present.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "ktrust/bpf/interception_maps.h"
#include "ktrust/config/config.h"
#include "ktrust/config/registry.h"
#include "ktrust/dataplane/engine.h"

namespace ktrust {

// What the agent found and enrolled, for status and `ktrust workloads`.
struct EnrolledWorkload {
  RegisteredWorkload registered;
  std::string name;
  WorkloadMode mode = WorkloadMode::kEnforce;
  std::vector<uint16_t> ports;
  uint64_t pod_netns = 0;  // the inode of its pod's network namespace; 0: the agent's
};

// The registration as the outbound route and inbound listeners read it.
struct RoutingTable {
  struct Workload {
    std::string name;
    SvidProvider identity;
    // Not empty: every connection of the cgroup is refused with this reason
    // (a pod the agent cannot resolve: "pod_unknown: ...").
    std::string refusal;
  };
  std::map<uint64_t, Workload> by_cgroup;       // the cgroups enrolled in the kernel
  std::map<std::string, SvidProvider> serving;  // workload name -> its inbound identity
  std::vector<EnrolledWorkload> enrolled;       // every registered cgroup but the agent's own
  std::shared_ptr<const Config> config;
};

// The server a connection to `destination` must present: the first
// expected_servers rule covering it, or nullopt (any workload of the trust
// domain) when none does. PermissionDenied when none does and
// mesh.require_expected_server is set; `workload` (the client) names the
// refusal.
absl::StatusOr<std::optional<SpiffeIdPattern>> ExpectedServerOf(const Config& config,
                                                                const SocketAddress& destination,
                                                                const std::string& workload);

// Where the kernel says an accepted connection was going, and whose it was
// (InterceptionMaps::OriginalDestinationOf; a fake in tests).
using OriginalDestinationLookup = std::function<absl::StatusOr<OriginalDestination>(int app_fd)>;

// Thread-safe: Route runs on the engine's loops while enrolment publishes.
class OutboundRouting {
 public:
  // Starts with no cgroup enrolled: every connection refused.
  OutboundRouting(OriginalDestinationLookup lookup, std::shared_ptr<const Config> config);

  // An outbound listener's route: the original destination, the client
  // workload's identity and the server it must present. An error refuses
  // the connection.
  absl::StatusOr<OutboundRoute> Route(int app_fd) const;
  // What workload's inbound listeners present: fetched per handshake, so
  // a cgroup enrolled later (or an SVID renewed) takes effect at once.
  // Nothing while none of its cgroups exists: refused.
  SvidProvider ServingIdentity(const std::string& workload) const;

  std::shared_ptr<const RoutingTable> current() const;
  void Publish(std::shared_ptr<const RoutingTable> next);

 private:
  OriginalDestinationLookup lookup_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const RoutingTable> table_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ktrust
