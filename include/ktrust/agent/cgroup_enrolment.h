// Enrolment of cgroups: scans the cgroup tree for the registered
// workloads, decides (PlanEnrolment, enrolment_plan.h), publishes the
// routing table, then programs the kernel: sockops and the enrolment of
// each cgroup, the not-enrolled classification of every other, the pods to
// serve. Watches the tree (inotify) so a service started after the agent is
// enrolled at once.
//
// Thread-safe: one pass at a time (Enroll from Maintain and a reload,
// WatchCgroups from the cgroup watcher thread).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ktrust/agent/enrolment_plan.h"
#include "ktrust/agent/outbound_routing.h"
#include "ktrust/agent/pod_networks.h"
#include "ktrust/agent/workload_identities.h"
#include "ktrust/bpf/bpf_loader.h"
#include "ktrust/common/recurring_problem.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/config/config.h"
#include "ktrust/kubernetes/cluster_state.h"

namespace ktrust {

// Where the agent itself lives: never enrolled, never a pod.
struct AgentPlace {
  std::string cgroup_root;  // the watched root (agent.cgroup_root, or the cgroup2 mount)
  uint64_t own_netns = 0;   // inode of the agent's network namespace
  uint64_t own_cgroup = 0;  // the agent's cgroup id
};

class CgroupEnrolment {
 public:
  // current_config: the configuration the agent holds now, which the
  // published routing table carries.
  // cluster: the cluster's view in Kubernetes mode (ClusterWatcher's
  // Snapshot); unset outside it, when pods are enrolled by globs only.
  CgroupEnrolment(AgentPlace place, BpfLoader& bpf, WorkloadIdentities& identities,
                  OutboundRouting& routing, PodNetworks& pods,
                  std::function<std::shared_ptr<const Config>()> current_config,
                  std::function<std::shared_ptr<const ClusterSnapshot>()> cluster = nullptr);

  // One full pass: scan the whole tree, decide, route, then enrol. Every
  // problem is logged once, when it appears (rescans repeat). A pass that
  // cannot read everything (EMFILE at the fd limit, a /proc error) removes
  // nothing, and says so once when it starts, once a minute while it lasts,
  // and once when a pass is complete again (enrolment_incomplete, _complete).
  absl::Status Enroll(const Config& config);
  // The safety net under the inotify watches (Maintain calls it every
  // second). Inotify cannot see a process of a populated cgroup entering a
  // network namespace of its own, which a runtime may do just after the
  // cgroup filled: a changed cgroup that holds a workload's is looked at
  // again each second for kSettling (only it, not the tree); a full pass
  // runs every kFullRescan, and each second after a pass that failed or
  // could not read everything. Returns the pass's result, or nullopt if
  // none was due.
  std::optional<absl::Status> EnrollIfDue(const Config& config, absl::Time now);
  static constexpr absl::Duration kSettling = absl::Seconds(5);
  static constexpr absl::Duration kFullRescan = absl::Seconds(30);
  // Passes that failed or could not read everything, since the start.
  uint64_t incomplete_passes() const { return incomplete_passes_.load(); }
  // Whether the last pass read everything and was applied.
  bool last_pass_complete() const { return last_pass_complete_.load(); }
  // Kubernetes mode: whether the last pass had the cluster's answer (the
  // first sync); before it every pod is refused, which says nothing about
  // which of their ports an earlier run enforced. Always true outside it.
  bool last_pass_knew_pods() const { return last_pass_knew_pods_.load(); }
  // Opens the inotify watches on every directory under the root.
  absl::Status StartWatching();
  // Waits up to timeout for cgroups to appear or vanish (or a served pod's
  // addresses to change, or the cluster's view) and acts on them at once;
  // returns early once `wake_fd` is readable (-1: none).
  void WatchCgroups(absl::Duration timeout, int wake_fd = -1);
  // Kubernetes mode: the cluster's view changed (ClusterWatcher's callback).
  // Returns at once; WatchCgroups makes the pass.
  void ClusterChanged();

 private:
  // Watches `relative` (to the root) and every directory below it.
  void WatchTree(const std::string& relative);
  // A pass over the subtrees under `changed` (relative paths), the rest
  // taken from the last pass; a full pass when there was no complete one
  // with this configuration. `why` is logged (debug) with its cost.
  absl::Status EnrollChanged(const Config& config, const std::set<std::string>& changed,
                             const char* why);
  // changed: nullopt for a full pass.
  absl::Status EnrollLocked(const Config& config,
                            const std::optional<std::set<std::string>>& changed, const char* why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(enroll_mu_);
  // The namespace of a cgroup's processes, when it is not the agent's own
  // (*in_node_netns says when it is).
  absl::StatusOr<std::optional<PodNetns>> PodNetnsOf(const RegisteredWorkload& r,
                                                     bool* in_node_netns = nullptr) const;
  // Kubernetes mode: the pods' cgroups, resolved against the cluster and
  // their network namespaces checked; `netns` keeps what was read of each,
  // for the plan to use the very namespace that was checked.
  std::vector<RegisteredWorkload> ResolvePods(
      const Config& config, const CgroupScan& scan, const RoutingTable& before,
      std::map<uint64_t, absl::StatusOr<std::optional<PodNetns>>>& netns)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(enroll_mu_);
  // Logs each pod's state when it changes (enrolled, refused and why, released).
  void ReportPods(const std::vector<RegisteredWorkload>& pods, bool complete)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(enroll_mu_);
  void ReportProblems(const Config& config, const std::vector<RegisteredWorkload>& found,
                      const std::vector<std::string>& problems)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(enroll_mu_);
  // full: write every entry again (a full pass); otherwise only what
  // changed since the last pass.
  absl::Status ApplyPlan(const EnrolmentPlan& plan, const RoutingTable& before, bool full)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(enroll_mu_);
  void NoteTrouble(spdlog::level::level_enum level, const std::string& what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(enroll_mu_);

  const AgentPlace place_;
  BpfLoader& bpf_;
  WorkloadIdentities& identities_;
  OutboundRouting& routing_;
  PodNetworks& pods_;
  std::function<std::shared_ptr<const Config>()> current_config_;
  std::function<std::shared_ptr<const ClusterSnapshot>()> cluster_;
  UniqueFd cgroup_events_;  // inotify on every directory under the root
  // Each watch's directory relative to the root ("" is the root). Only the
  // watcher thread (and StartWatching before it) touches it.
  std::map<int, std::string> watched_;
  UniqueFd cluster_events_;  // eventfd: the cluster's view changed
  absl::Mutex enroll_mu_;    // one enrolment pass at a time
  std::set<std::string> reported_problems_ ABSL_GUARDED_BY(enroll_mu_);
  // Each pod's state as last logged ("enrolled <id>" or its refusal), by UID.
  std::map<std::string, std::string> reported_pods_ ABSL_GUARDED_BY(enroll_mu_);
  absl::Time last_full_pass_ ABSL_GUARDED_BY(enroll_mu_) = absl::InfinitePast();
  // A full pass each second until then (the last one failed or was incomplete).
  absl::Time retry_until_ ABSL_GUARDED_BY(enroll_mu_) = absl::InfinitePast();
  // Changed cgroups holding a workload's, looked at again until their time.
  std::map<std::string, absl::Time> settling_ ABSL_GUARDED_BY(enroll_mu_);
  // The last complete pass's scan, and what its configuration scans by
  // (ScanShape): what a pass over changed subtrees starts from.
  std::optional<CgroupScan> last_scan_ ABSL_GUARDED_BY(enroll_mu_);
  std::string last_scan_shape_ ABSL_GUARDED_BY(enroll_mu_);
  // What the last pass read of each cgroup's network namespace, by cgroup id:
  // a pass over changed subtrees reads only theirs again.
  std::map<uint64_t, std::optional<PodNetns>> netns_seen_ ABSL_GUARDED_BY(enroll_mu_);
  // What the last pass wrote for each enrolled cgroup (mode, workload index).
  std::map<uint64_t, std::pair<WorkloadMode, uint32_t>> enrolled_written_
      ABSL_GUARDED_BY(enroll_mu_);
  std::set<uint64_t> kept_ ABSL_GUARDED_BY(enroll_mu_);  // the last applied plan's keep
  // Cgroups whose KTRUST_MODE_NOT_ENROLLED entry the last pass left in place.
  std::set<uint64_t> not_enrolled_written_ ABSL_GUARDED_BY(enroll_mu_);
  // Enrolled cgroups whose sockops attach failed and was said.
  std::set<uint64_t> sockops_failing_ ABSL_GUARDED_BY(enroll_mu_);
  RecurringProblem trouble_ ABSL_GUARDED_BY(enroll_mu_){"enrolment_incomplete",
                                                        "enrolment_complete"};
  std::atomic<uint64_t> incomplete_passes_{0};
  std::atomic<bool> last_pass_complete_{false};
  std::atomic<bool> last_pass_knew_pods_{true};
};

}  // namespace ktrust
