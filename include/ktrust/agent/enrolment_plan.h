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
};

// The SVID provider for a cgroup's ID; an error when none can be issued
// (the cgroup is still enrolled, and refused).
using IdentityLookup =
    std::function<absl::StatusOr<SvidProvider>(const SpiffeId& id, const std::string& workload)>;
// The pod namespace a cgroup's processes live in, when not the agent's.
using PodNetnsLookup = std::function<std::optional<PodNetns>(const RegisteredWorkload& cgroup)>;

// found: the registered cgroups (ScanCgroups), every_cgroup: every cgroup
// found, workload or not. routing_config becomes the routing table's
// configuration (the one the agent holds now).
EnrolmentPlan PlanEnrolment(const Config& config, std::shared_ptr<const Config> routing_config,
                            const std::vector<RegisteredWorkload>& found,
                            const std::set<uint64_t>& every_cgroup, uint64_t own_cgroup,
                            const IdentityLookup& identity, const PodNetnsLookup& pod_netns);

}  // namespace ktrust
