#include "ktrust/agent/enrolment_plan.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"

namespace ktrust {

WorkloadConfig WorkloadOf(const Config& config, const RegisteredWorkload& r) {
  if (!r.pod) return config.workloads[r.workload_index];
  return {r.pod->workload,        r.cgroup_path, config.kubernetes.spiffe_id,
          WorkloadMode::kEnforce, r.pod->ports,  WorkloadDataPath::kProxy};
}

EnrolmentPlan PlanEnrolment(const Config& config, std::shared_ptr<const Config> routing_config,
                            const CgroupScan& scan, const RoutingTable& before, uint64_t own_cgroup,
                            const IdentityLookup& identity_of, const PodNetnsLookup& pod_netns) {
  const std::vector<RegisteredWorkload>& found = scan.found;
  const std::set<uint64_t>& every_cgroup = scan.every_cgroup;
  EnrolmentPlan plan;
  plan.complete = scan.complete;
  plan.incomplete = scan.unread;
  // Where each cgroup's processes lived at the last pass, for one whose
  // namespace cannot be read now.
  std::map<uint64_t, uint64_t> pod_netns_before;
  for (const EnrolledWorkload& e : before.enrolled) {
    pod_netns_before[e.registered.cgroup_id] = e.pod_netns;
  }
  plan.routing.config = std::move(routing_config);
  std::map<uint64_t, PodNetns> pods;
  std::map<uint64_t, CgroupToEnrol> enrol;
  std::set<std::string> serving_with_id;
  for (const RegisteredWorkload& r : found) {
    const WorkloadConfig w = WorkloadOf(config, r);
    if (r.cgroup_id == own_cgroup) {
      // Enrolling itself would send the agent's own connections back to it
      // (the SO_MARK check in the programs is the second line of defence).
      plan.own_cgroup_path = r.cgroup_path;
      continue;
    }
    EnrolledWorkload enrolled{r, w.name, w.mode, w.ports};
    absl::StatusOr<std::optional<PodNetns>> looked_up = pod_netns(r);
    std::optional<PodNetns> pod = looked_up.ok() ? *looked_up : std::nullopt;
    if (pod) enrolled.pod_netns = pod->inode;
    if (!looked_up.ok()) {
      // Not "no pod": its pod stays served as it is, and the pass removes nothing.
      plan.complete = false;
      plan.incomplete.push_back(absl::StrCat(
          "cgroup ", r.cgroup_path, ": its network namespace: ", looked_up.status().message()));
      enrolled.pod_netns = pod_netns_before[r.cgroup_id];
    }
    plan.routing.enrolled.push_back(enrolled);
    if (w.mode == WorkloadMode::kOff) continue;
    // No ID is treated as an SVID that cannot be issued.
    absl::StatusOr<SvidProvider> identity = absl::FailedPreconditionError(r.id_problem);
    if (r.id) identity = identity_of(*r.id, w.name);
    if (!identity.ok()) {
      // Still enrolled, so its connections keep coming to the agent, which
      // refuses them (no SVID to present) instead of letting them out in
      // plaintext. The next rescan tries to issue again.
      identity = SvidProvider([] { return std::shared_ptr<const Svid>(); });
    }
    // A refused pod's connections are refused by the route, with its reason.
    plan.routing.by_cgroup[r.cgroup_id] = {
        w.name, *identity,
        r.pod && !r.pod->refusal_code.empty()
            ? absl::StrCat(r.pod->refusal_code, " (", w.name, "): ", r.pod->refusal)
            : ""};
    enrol[r.cgroup_id] = {r.cgroup_id,
                          r.cgroup_path,
                          w.name,
                          w.mode,
                          static_cast<uint32_t>(r.workload_index),
                          r.id ? r.id->ToString() : ""};
    if (pod) {
      auto& in_pod = pods[pod->inode];
      if (in_pod.path.empty()) in_pod = *pod;
      // A pod's containers are one workload: served once.
      bool served = r.pod && std::any_of(in_pod.workloads.begin(), in_pod.workloads.end(),
                                         [&](const PodWorkload& p) { return p.name == w.name; });
      if (!served)
        in_pod.workloads.push_back({w.name, r.id ? r.id->ToString() : "",
                                    static_cast<uint32_t>(r.workload_index), w.mode, w.ports,
                                    *identity});
    }
    // The first cgroup with an ID serves the workload's inbound ports; one
    // without (refusing) only while no other has one.
    if (!w.ports.empty() && !serving_with_id.count(w.name)) {
      plan.routing.serving[w.name] = *identity;
      if (r.id) serving_with_id.insert(w.name);
    }
  }
  for (auto& [cgroup_id, cgroup] : enrol) plan.enrol.push_back(std::move(cgroup));
  for (auto& [inode, pod] : pods) plan.pods.push_back(std::move(pod));
  if (!plan.complete) {
    // What the scan did not see may still be there: the last pass's
    // cgroups stay routed as they were (their kernel entries stay too),
    // until a complete pass says they are gone.
    std::set<uint64_t> listed;
    for (const EnrolledWorkload& e : plan.routing.enrolled) listed.insert(e.registered.cgroup_id);
    for (const EnrolledWorkload& e : before.enrolled) {
      if (!listed.count(e.registered.cgroup_id)) plan.routing.enrolled.push_back(e);
    }
    plan.routing.by_cgroup.insert(before.by_cgroup.begin(), before.by_cgroup.end());
    plan.routing.serving.insert(before.serving.begin(), before.serving.end());
  }
  for (uint64_t cgroup_id : every_cgroup) {
    if (!plan.routing.by_cgroup.count(cgroup_id)) plan.not_enrolled.insert(cgroup_id);
  }
  for (const auto& [cgroup_id, workload] : before.by_cgroup) {
    if (!plan.routing.by_cgroup.count(cgroup_id))
      plan.unenrolled.push_back({workload.name, cgroup_id});
  }
  plan.keep = every_cgroup;
  for (const auto& [cgroup_id, workload] : plan.routing.by_cgroup) plan.keep.insert(cgroup_id);
  return plan;
}

}  // namespace ktrust
