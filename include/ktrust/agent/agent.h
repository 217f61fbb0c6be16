// ktrustd's node agent: the configuration made real. It loads and attaches
// the interception programs, enrols the registered cgroups, runs the engine
// with one outbound listener and one inbound listener per serving workload,
// issues and renews workload SVIDs, and reloads its configuration.
//
// Start order keeps every step fail closed: the listeners are bound before
// the kernel is told where they are, and a cgroup is enrolled only after the
// agent can serve it. When the agent stops, the pinned programs stay: its
// enrolled workloads' mesh connections are refused (ECONNREFUSED) and SYNs
// to enforced ports dropped until it is back.
#pragma once

#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ktrust/agent/pod_networks.h"
#include "ktrust/agent/workload_identities.h"
#include "ktrust/bpf/bpf_loader.h"
#include "ktrust/bpf/event_reader.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/config/config.h"
#include "ktrust/config/policy.h"
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

struct ReloadState {
  uint64_t generation = 1;  // configurations applied since start
  absl::Time loaded_at;
  bool last_ok = true;
  std::string last_error;  // of the last reload attempt; empty when it succeeded
};

// Called on the agent's threads for every connection that ended and every
// interception event (denial log, metrics); must be fast and thread-safe.
struct AgentHooks {
  std::function<void(const ClosedConnection&)> connection_closed;
  std::function<void(const InterceptionEvent&)> intercepted;
};

class Agent {
 public:
  static absl::StatusOr<std::unique_ptr<Agent>> Start(const std::string& config_path,
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
  // Waits up to timeout for interception events and handles them.
  void PollEvents(absl::Duration timeout);
  // Waits up to timeout for cgroups to appear or vanish under the cgroup
  // root, and enrols or unenrols them at once: a service started after the
  // agent is intercepted from its first connection unless it connects
  // within the moment between its cgroup's mkdir and this reaction (see
  // docs/operations.md). Maintain() rescans every second regardless.
  void WatchCgroups(absl::Duration timeout);

  const Engine& engine() const { return *engine_; }
  const BpfLoader& bpf() const { return *bpf_; }
  // What the loader has attached; safe while enrolment attaches more.
  std::vector<BpfLoader::Attachment> bpf_attachments() const;
  std::shared_ptr<const Config> config() const;
  std::shared_ptr<const PolicyAuthorizer> policy() const;
  std::vector<EnrolledWorkload> workloads() const;
  std::vector<ServedPod> pods() const { return pods_->served(); }
  ReloadState reload_state() const;
  const WorkloadIdentities& identities() const { return *identities_; }
  absl::Time started() const { return started_; }
  // Ready once programs are attached, listeners open and identities loaded;
  // not while a serving workload has no SVID.
  bool ready() const { return not_ready_reason().empty(); }
  std::string not_ready_reason() const;

 private:
  struct Routing;  // what the outbound route reads; swapped atomically
  Agent() = default;
  absl::Status Apply(std::shared_ptr<const Config> config);
  absl::Status Enroll(const Config& config);
  void WatchTree(const std::string& dir);
  std::optional<PodNetns> PodNetnsOf(const RegisteredWorkload& r) const;
  absl::StatusOr<OutboundRoute> Route(int app_fd) const;

  absl::Time started_;
  std::string config_path_;
  std::string cgroup_root_;
  std::unique_ptr<BpfLoader> bpf_;
  std::unique_ptr<InterceptionEventReader> events_;
  std::unique_ptr<WorkloadIdentities> identities_;
  std::unique_ptr<Engine> engine_;
  UniqueFd cgroup_events_;  // inotify on every directory under cgroup_root_
  absl::Mutex enroll_mu_;   // one enrolment pass at a time
  std::set<std::string> reported_problems_ ABSL_GUARDED_BY(enroll_mu_);
  uint64_t own_netns_ = 0;             // inode of the agent's network namespace
  uint64_t own_cgroup_ = 0;            // the agent's cgroup id, never enrolled
  mutable absl::Mutex bpf_mu_;         // BpfLoader is not thread-safe: attach vs status
  std::unique_ptr<PodNetworks> pods_;  // Reconcile: under enroll_mu_
  // Cgroups whose KTRUST_MODE_NOT_ENROLLED entry the last pass left in place.
  std::set<uint64_t> not_enrolled_written_ ABSL_GUARDED_BY(enroll_mu_);

  mutable absl::Mutex mu_;
  std::shared_ptr<const Config> config_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const PolicyAuthorizer> policy_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const Routing> routing_ ABSL_GUARDED_BY(mu_);
  ReloadState reload_ ABSL_GUARDED_BY(mu_);
  absl::Time config_mtime_ ABSL_GUARDED_BY(mu_);
  // The trust bundle and CRL files the last reload read, with their times:
  // a changed one reloads as a changed configuration does.
  std::vector<std::pair<std::string, absl::Time>> trust_inputs_ ABSL_GUARDED_BY(mu_);
};

// `ktrustd uninstall`: detaches and unpins everything under pin_dir.
absl::Status UninstallAgent(const std::string& pin_dir);

}  // namespace ktrust
