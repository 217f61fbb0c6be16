// ktrustd's node agent: the configuration made real. It loads and attaches
// the interception programs, enrols the registered cgroups, runs the engine
// with one outbound listener and one inbound listener per serving workload,
// issues and renews workload SVIDs, and reloads its configuration.
//
// Agent coordinates; each part has one job:
//   CgroupEnrolment   scans and watches the cgroup tree, decides
//                     (PlanEnrolment) and enrols in the kernel
//   OutboundRouting   routes redirected connections after the last pass
//   PodNetworks       the listeners and rules of pods' namespaces
//   WorkloadIdentities  SVIDs, the CA and the trust store
//   BuildMeshTable, AgentListeners, config_reload.h: pure helpers
//
// Start order keeps every step fail closed: the listeners are bound before
// the kernel is told where they are, and a cgroup is enrolled only after the
// agent can serve it; the host's listener slots are pointed at the
// listeners only after the first enrolment pass (an agent being taken over
// from serves until then). When the agent stops, the pinned programs stay:
// it drains (BeginDrain), and its enrolled workloads' new mesh connections
// are refused (ECONNREFUSED) and SYNs to enforced ports dropped until it,
// or a successor, is back.
//
// Threads (ktrustd, main.cc):
//   main thread      Start, then Maintain every second and Reload on SIGHUP;
//                    owns the reload bookkeeping (config_mtime_,
//                    trust_inputs_, reload_; under mu_)
//   event thread     PollEvents: the interception ring buffer (events_)
//   cluster watcher  Kubernetes mode: ClusterWatcher's two threads (list and
//                    watch pods, namespaces); a change only wakes the cgroup
//                    watcher (CgroupEnrolment::ClusterChanged)
//   cgroup watcher   WatchCgroups: inotify, pod address and cluster changes; its
//                    enrolment passes and Maintain's are serialized inside
//                    CgroupEnrolment
//   control server   and the metrics/probe endpoint, a thread each: the
//                    const accessors below (config, policy, workloads, pods,
//                    reload_state, ready, ...), each taking the lock of what
//                    it reads
//   engine loops     the route and inbound-identity callbacks: OutboundRouting,
//                    which reads the routing table under its own lock; the
//                    zero-hop hand-over (ZeroHopPath::Deliver)
//   zero-hop         ZeroHopPath's holder link and its supervisor's thread:
//                    ZeroHopPath locks inside, reads OutboundRouting
// BpfLoader, OutboundRouting and WorkloadIdentities lock inside themselves;
// PodNetworks changes only within an enrolment pass (CgroupEnrolment's
// lock) and locks what its readers see.
#pragma once

#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ktrust/agent/agent_listeners.h"
#include "ktrust/agent/cgroup_enrolment.h"
#include "ktrust/agent/config_reload.h"
#include "ktrust/agent/outbound_routing.h"
#include "ktrust/agent/pod_networks.h"
#include "ktrust/agent/workload_identities.h"
#include "ktrust/agent/zero_hop_path.h"
#include "ktrust/bpf/bpf_loader.h"
#include "ktrust/bpf/event_reader.h"
#include "ktrust/common/recurring_problem.h"
#include "ktrust/config/config.h"
#include "ktrust/config/policy.h"
#include "ktrust/config/registry.h"
#include "ktrust/dataplane/engine.h"
#include "ktrust/kubernetes/cluster_watcher.h"

namespace ktrust {

struct ReloadState {
  uint64_t generation = 1;  // configurations applied since start
  absl::Time loaded_at;
  bool last_ok = true;
  std::string last_error;  // of the last reload attempt; empty when it succeeded
};

// A stopping agent's state, for `ktrust status` (docs/operations.md).
struct DrainState {
  bool draining = false;  // no longer accepting; carrying what is open
  std::string reason;     // "SIGTERM", "handed over to ktrustd pid 123", ...
  absl::Time since;
  absl::Time deadline;  // then whatever is still open is closed
  // The agent around this one in an upgrade, in words (empty: none): the
  // successor it handed over to, or the predecessor still draining.
  std::string successor;
  std::string predecessor;
  // Handover: connections handed to the successor, and taken from the
  // predecessor (docs/operations.md).
  uint64_t moved = 0;
  uint64_t moved_in = 0;
};

// Called on the agent's threads for every connection that ended and every
// interception event (denial log, metrics); must be fast and thread-safe.
struct AgentHooks {
  std::function<void(const ClosedConnection&)> connection_closed;
  std::function<void(const InterceptionEvent&)> intercepted;
};

class Agent {
 public:
  // config: loaded from config_path by the caller; later reloads read it again.
  static absl::StatusOr<std::unique_ptr<Agent>> Start(std::shared_ptr<const Config> config,
                                                      const std::string& config_path,
                                                      AgentHooks hooks = {});
  // Stops the engine and closes this process's handles; pinned programs stay.
  ~Agent();

  // Validates the file, then swaps policy, mesh destinations, expected
  // servers, enrolments and trust bundles. A bad file changes nothing and is
  // reported by reload_state(). Listener settings (agent:, workload ports)
  // apply at the next start; a reload that changes them says so.
  absl::Status Reload();
  // Renewals, cgroup rescans, config file changes: called about every second.
  void Maintain(absl::Time now);
  // Waits up to timeout (InfiniteDuration: no limit) for interception
  // events and handles them; returns early once `wake_fd` (an eventfd the
  // caller writes to stop) is readable.
  void PollEvents(absl::Duration timeout, int wake_fd = -1);
  // Waits up to timeout for cgroups to appear or vanish under the cgroup
  // root, and enrols or unenrols them at once: a service started after the
  // agent is intercepted from its first connection unless it connects
  // within the moment between its cgroup's mkdir and this reaction (see
  // docs/operations.md). Maintain() rescans as a safety net
  // (CgroupEnrolment::EnrollIfDue). `wake_fd` as for PollEvents.
  void WatchCgroups(absl::Duration timeout, int wake_fd = -1);

  // Stops accepting (the engine closes its listeners; the programs stay
  // attached, so new connections are refused, fail closed) and records
  // why, until `timeout` from now. Live connections go on; Drained() says
  // when they are done. Idempotent: the first reason and deadline stay.
  void BeginDrain(const std::string& reason, absl::Duration timeout);
  // Past the deadline: ends what is still open, each with a log line.
  void EndDrain();
  // Draining and nothing left open.
  bool Drained() const;
  DrainState drain() const;
  // The agents around this one in an upgrade (DrainState), in words.
  void SetSuccessor(std::string successor);
  void SetPredecessor(std::string predecessor);

  // Handover (docs/operations.md): the connections that can move to a
  // successor, taken out of the engine (Engine::DetachForHandover).
  std::vector<DetachedConnection> DetachForHandover(size_t max, absl::Duration timeout);
  // One of them is the successor's now.
  void CountMovedOut();
  // Carries a moved connection: one from the predecessor (`moved_in`), or
  // one of this agent's that did not move after all (Engine::Adopt).
  absl::Status AdoptConnection(DetachedConnection& connection, bool moved_in);

  // After a successor that went away mid-handover: points the kernel's
  // steering of the host's namespace and of every served pod's back at
  // this agent's listeners (the successor had pointed both at its own).
  absl::Status RestoreSteering();

  const Engine& engine() const { return *engine_; }
  const BpfLoader& bpf() const { return *bpf_; }
  const ZeroHopPath& zero_hop() const { return *zero_hop_; }
  ZeroHopPath& zero_hop() { return *zero_hop_; }
  // Null outside Kubernetes mode.
  const ClusterWatcher* cluster() const { return cluster_.get(); }
  std::shared_ptr<const Config> config() const;
  std::shared_ptr<const PolicyAuthorizer> policy() const;
  std::vector<EnrolledWorkload> workloads() const;
  std::vector<ServedPod> pods() const { return pods_->served(); }
  // Enrolment passes that failed or could not read everything (and so
  // removed nothing), since the start.
  uint64_t incomplete_enrolment_passes() const { return enrolment_->incomplete_passes(); }
  ReloadState reload_state() const;
  const WorkloadIdentities& identities() const { return *identities_; }
  absl::Time started() const { return started_; }
  // Ready once programs are attached, listeners open and identities loaded;
  // not while a serving workload has no SVID.
  bool ready() const { return not_ready_reason().empty(); }
  std::string not_ready_reason() const;

 private:
  struct HostSteering;  // what StartHostSteering leaves for the later steps
  Agent() = default;
  // The steps of Start, in order.
  absl::Status FindOwnPlace(const AgentSettings& settings);
  absl::StatusOr<std::shared_ptr<const TrustStore>> LoadIdentities(const Config& config);
  absl::Status StartEngine(std::shared_ptr<const Config> config, EngineOptions options,
                           std::shared_ptr<const TrustStore> trust);
  absl::StatusOr<HostSteering> StartHostSteering(const Config& config);
  // The enrolment, and in Kubernetes mode the cluster watcher it reads
  // (waiting up to kFirstSyncWait for its first sync).
  absl::Status StartEnrolment(const Config& config);
  static constexpr absl::Duration kFirstSyncWait = absl::Seconds(3);
  absl::Status KeepOnlyWhatThisRunServes(const HostSteering& host);
  // Points the host's listener slots (host_slots_) at this agent's listeners.
  absl::Status SteerHostSlots();
  absl::Status AttachPrograms();
  absl::Status StartWatching(const AgentHooks& hooks);

  // Writes the mesh table, then enrols.
  absl::Status Apply(std::shared_ptr<const Config> config);

  absl::Time started_;
  std::string config_path_;
  AgentPlace place_;
  std::string own_cgroup_path_;
  CgroupView cgroup_view_;  // how other processes' cgroup paths name directories
  std::unique_ptr<BpfLoader> bpf_;
  std::unique_ptr<InterceptionEventReader> events_;
  std::unique_ptr<WorkloadIdentities> identities_;
  std::unique_ptr<OutboundRouting> routing_;  // the engine's listeners call it
  std::unique_ptr<ZeroHopPath> zero_hop_;     // before engine_: the listeners call it
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<PodNetworks> pods_;
  std::unique_ptr<CgroupEnrolment> enrolment_;
  // Kubernetes mode: this node's pods and the namespaces; stopped first.
  std::unique_ptr<ClusterWatcher> cluster_;
  // Maintain's link pruning, which fails pass after pass at the fd limit.
  RecurringProblem prune_trouble_{"link_prune_failed", "link_prune_recovered"};

  mutable absl::Mutex mu_;
  std::shared_ptr<const Config> config_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const PolicyAuthorizer> policy_ ABSL_GUARDED_BY(mu_);
  ReloadState reload_ ABSL_GUARDED_BY(mu_);
  absl::Time config_mtime_ ABSL_GUARDED_BY(mu_);
  // The trust bundle and CRL files the last reload read, with their times:
  // a changed one reloads as a changed configuration does.
  FileTimes trust_inputs_ ABSL_GUARDED_BY(mu_);
  DrainState drain_ ABSL_GUARDED_BY(mu_);
  // The host's listener slots as StartHostSteering pointed them, for
  // RestoreSteering.
  std::vector<std::pair<uint32_t, ListenerPair>> host_slots_;
};

// `ktrustd uninstall`: detaches and unpins everything under pin_dir.
absl::Status UninstallAgent(const std::string& pin_dir);

}  // namespace ktrust
