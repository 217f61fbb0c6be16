// The enrolment decisions, as a pure function: from the configuration and
// the cgroups a scan found, which cgroup is enrolled with which mode and
// identity, which serves a workload's ports, which pods need serving, and
// which cgroups are left alone. CgroupEnrolment (cgroup_enrolment.h) scans,
// then programs the kernel after this plan.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ktrust/agent/outbound_routing.h"
#include "ktrust/agent/pod_networks.h"
#include "ktrust/config/config.h"
#include "ktrust/config/registry.h"

namespace ktrust {

// One cgroup the kernel enrols (KTRUST_MODE_ENFORCE or _PERMISSIVE).
struct CgroupToEnrol {
  uint64_t cgroup_id = 0;
  std::string cgroup_path;  // relative to the cgroup root
  std::string workload;
  WorkloadMode mode = WorkloadMode::kEnforce;  // never kOff
  uint32_t workload_index = 0;
  std::string id;  // its SPIFFE ID; empty: it has none, and is refused
};

// A cgroup the last pass routed and this one does not.
struct UnenrolledCgroup {
  std::string workload;
  uint64_t cgroup_id = 0;
};

struct EnrolmentPlan {
  // To publish before the kernel enrols anything: the route first.
  RoutingTable routing;
  std::vector<CgroupToEnrol> enrol;  // routing.by_cgroup's cgroups, by id
  std::vector<PodNetns> pods;        // the namespaces to serve, by inode
  // Every other cgroup found: the agent's own, `mode: off` workloads', the
  // rest. The kernel classifies them not enrolled.
  std::set<uint64_t> not_enrolled;
  // The agent's own cgroup when a workload's glob matched it: never
  // enrolled (it would send the agent's own connections back to it).
  std::optional<std::string> own_cgroup_path;
  // The cgroups the kernel keeps entries for: every cgroup found, and
  // every one routed. The others (gone, or enrolled by an earlier run)
  // are removed, but only when `complete`.
  std::set<uint64_t> keep;
  std::vector<UnenrolledCgroup> unenrolled;  // the last pass's, routed no more
  // False when the scan, or a cgroup's pod lookup, failed for a reason
  // other than "gone": what was not seen may still be there. Then this pass
  // removes nothing: no cgroup leaves the kernel's maps, and served pods
  // stay as they are. `incomplete` says what failed.
  bool complete = true;
  std::vector<std::string> incomplete;
};

// The SVID provider for a cgroup's ID; an error when none can be issued
// (the cgroup is still enrolled, and refused).
using IdentityLookup =
    std::function<absl::StatusOr<SvidProvider>(const SpiffeId& id, const std::string& workload)>;
// The pod namespace a cgroup's processes live in, when not the agent's;
// nothing when it is the agent's or the cgroup has no process. An error
// when that could not be read (a transient /proc error).
using PodNetnsLookup =
    std::function<absl::StatusOr<std::optional<PodNetns>>(const RegisteredWorkload& cgroup)>;

// The workload a registered cgroup is: its entry in config.workloads, or
// for a pod's cgroup (Kubernetes mode) the one its PodEnrolment describes.
WorkloadConfig WorkloadOf(const Config& config, const RegisteredWorkload& r);

// scan: what ScanCgroupTree found, with the pods' cgroups (ResolvePodCgroups)
// in scan.found too; before: the routing table the last pass
// published. routing_config becomes the new table's configuration (the one
// the agent holds now).
EnrolmentPlan PlanEnrolment(const Config& config, std::shared_ptr<const Config> routing_config,
                            const CgroupScan& scan, const RoutingTable& before, uint64_t own_cgroup,
                            const IdentityLookup& identity, const PodNetnsLookup& pod_netns);

}  // namespace ktrust
