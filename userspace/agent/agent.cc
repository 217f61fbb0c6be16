#include "ktrust/agent/agent.h"

#include <poll.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "ktrust/agent/agent_listeners.h"
#include "ktrust/agent/cgroup_place.h"
#include "ktrust/agent/kernel_mode.h"
#include "ktrust/agent/mesh_table.h"
#include "ktrust/agent/pod_enrolment.h"
#include "ktrust/bpf/cgroup2.h"
#include "ktrust/common/log.h"
#include "ktrust/common/log_limiter.h"
#include "ktrust/common/poll_timeout.h"

namespace ktrust {
namespace {

absl::StatusOr<EngineOptions> EngineOptionsFor(const AgentSettings& settings,
                                               const AgentHooks& hooks) {
  EngineOptions options;
  options.data_path =
      settings.data_path == "userspace" ? DataPathMode::kUserspace : DataPathMode::kAuto;
  options.socket_mark = settings.socket_mark;
  options.max_inbound_handshakes = settings.max_inbound_handshakes;
  options.max_outbound_handshakes = settings.max_outbound_handshakes;
  options.max_handshakes_per_source = settings.max_handshakes_per_source;
  options.first_byte_timeout = settings.first_byte_timeout;
  options.tls.resumption = settings.tls_resumption;
  options.on_closed = hooks.connection_closed;
  auto upstream4 = SocketAddress::Parse(absl::StrCat(settings.upstream_source, ":0"));
  if (!upstream4.ok()) return upstream4.status();
  options.upstream_source4 = *upstream4;
  if (!settings.upstream_source6.empty()) {
    auto upstream6 = SocketAddress::Parse(absl::StrCat("[", settings.upstream_source6, "]:0"));
    if (!upstream6.ok()) return upstream6.status();
    options.upstream_source6 = *upstream6;
  }
  return options;
}

// KTRUST_TEST_RECORD_LIMIT lowers the AEAD record limit after which the
// agent ends a zero-hop connection, so tests reach it in seconds. It can
// only make the agent end connections sooner; it says so when set.
uint64_t RecordLimitOverride() {
  const char* text = getenv("KTRUST_TEST_RECORD_LIMIT");
  uint64_t limit = 0;
  if (text == nullptr || !absl::SimpleAtoi(text, &limit) || limit == 0) return 0;
  LogEvent(spdlog::level::warn,
           {{"event", "test_record_limit"},
            {"reason", absl::StrCat("KTRUST_TEST_RECORD_LIMIT: zero-hop connections end after ",
                                    limit - limit / 4, " records in a direction")}});
  return limit;
}

// Loudly, at every load: without a rule a mesh destination's server may be
// any workload of the trust domain (`ktrust status` repeats it).
void WarnUnpinnedServers(const Config& config) {
  for (const std::string& warning : ServerIdentityWarnings(config)) {
    LogEvent(spdlog::level::warn, {{"event", "server_identity_unpinned"}, {"reason", warning}});
  }
}

}  // namespace

// What the host's steering leaves for the later steps of Start.
struct Agent::HostSteering {
  std::vector<SocketAddress> enforced;  // the inbound rules this run wrote
  uint64_t netns_cookie = 0;            // the host's namespace (SO_NETNS_COOKIE)
  uint32_t next_slot = 0;               // the first listener slot the pods may use
  // The pods' slots the pinned rules name (see PodNetworkSettings).
  std::map<std::string, uint32_t> inherited_slots;
};

absl::StatusOr<std::unique_ptr<Agent>> Agent::Start(std::shared_ptr<const Config> config,
                                                    const std::string& config_path,
                                                    AgentHooks hooks) {
  std::unique_ptr<Agent> agent(new Agent());
  agent->started_ = absl::Now();
  agent->config_path_ = config_path;
  const AgentSettings& settings = config->agent;
  if (auto st = agent->FindOwnPlace(settings); !st.ok()) return st;
  auto trust = agent->LoadIdentities(*config);
  if (!trust.ok()) return trust.status();
  // Probe and load before binding anything: a kernel that cannot enforce
  // stops the agent here, with the missing feature named.
  auto bpf = BpfLoader::Create({settings.bpf_pin_dir});
  if (!bpf.ok()) return bpf.status();
  agent->bpf_ = *std::move(bpf);
  auto options = EngineOptionsFor(settings, hooks);
  if (!options.ok()) return options.status();
  if (auto st = agent->StartEngine(config, *options, *trust); !st.ok()) return st;
  // The listeners exist: now tell the kernel where they are.
  auto host = agent->StartHostSteering(*config);
  if (!host.ok()) return host.status();
  agent->pods_ = std::make_unique<PodNetworks>(
      *agent->engine_, *agent->bpf_,
      PodNetworkSettings{
          settings.outbound_port, options->upstream_source6, host->next_slot, host->inherited_slots,
          [routing = agent->routing_.get()](int fd) { return routing->Route(fd); },
          [zero_hop = agent->zero_hop_.get()](const std::string& workload, uint64_t netns) {
            return ZeroHopDeliver(*zero_hop, workload, netns);
          }});
  if (auto st = agent->StartEnrolment(*config); !st.ok()) return st;
  if (auto st = agent->Apply(config); !st.ok()) return st;
  // Only now, with the workloads enrolled and their SVIDs issued, does the
  // kernel hand the host's connections to these listeners: before, an
  // inbound one would find no identity to present. Until then they go to
  // the agent being taken over from, if any, or are refused.
  if (auto st = agent->SteerHostSlots(); !st.ok()) return st;
  WarnUnpinnedServers(*config);
  if (auto st = agent->KeepOnlyWhatThisRunServes(*host); !st.ok()) return st;
  if (auto st = agent->AttachPrograms(); !st.ok()) return st;
  if (auto st = agent->StartWatching(hooks); !st.ok()) return st;
  // Enrolled first: a listener the holder hands over is matched to its
  // workload through the routing table the first pass published.
  agent->zero_hop_->Start(*agent->engine_);
  return agent;
}

absl::Status Agent::StartEnrolment(const Config& config) {
  std::function<std::shared_ptr<const ClusterSnapshot>()> cluster;
  if (config.kubernetes.enabled) {
    auto options = ApiOptionsOf(config.kubernetes);
    if (!options.ok()) return options.status();
    auto watcher = ClusterWatcher::Create(*std::move(options),
                                          [this](const std::shared_ptr<const ClusterSnapshot>&) {
                                            if (enrolment_) enrolment_->ClusterChanged();
                                          });
    if (!watcher.ok()) return watcher.status();
    cluster_ = *std::move(watcher);
    cluster = [watcher = cluster_.get()] { return watcher->Snapshot(); };
  }
  enrolment_ = std::make_unique<CgroupEnrolment>(
      place_, *bpf_, *identities_, *routing_, *pods_, [this] { return this->config(); },
      std::move(cluster));
  if (!cluster_) return absl::OkStatus();
  cluster_->Start();
  // The first pass resolves the pods if the API server answers soon; until
  // it has, every pod's mesh connections are refused (kubernetes_not_synced).
  if (!cluster_->WaitUntil([](const ClusterWatcherStatus& s) { return s.synced; },
                           kFirstSyncWait)) {
    ClusterWatcherStatus status = cluster_->Status();
    std::string error =
        !status.pods.last_error.empty() ? status.pods.last_error : status.namespaces.last_error;
    LogEvent(spdlog::level::warn,
             {{"event", "kubernetes_not_synced"},
              {"api_server", config.kubernetes.api_server},
              {"reason", absl::StrCat("this node's pods and the namespaces are not read from the "
                                      "API server yet",
                                      error.empty() ? "" : absl::StrCat(" (", error, ")"),
                                      "; pods' mesh connections are refused until they are")}});
  }
  return absl::OkStatus();
}

absl::Status Agent::FindOwnPlace(const AgentSettings& settings) {
  // The agent's own cgroup: never enrolled, and where the kernel learns
  // which connections are the agent's (AttachAgentSockops).
  auto place = FindCgroupPlace(settings.cgroup_root);
  if (!place.ok()) return place.status();
  place_.cgroup_root = place->root;
  struct stat own {};
  if (stat("/proc/self/ns/net", &own) != 0) return absl::ErrnoToStatus(errno, "/proc/self/ns/net");
  place_.own_netns = own.st_ino;
  auto own_cgroup_id = CgroupIdOf(place->own_dir);
  if (!own_cgroup_id.ok()) return own_cgroup_id.status();
  own_cgroup_path_ = place->own_dir;
  place_.own_cgroup = *own_cgroup_id;
  cgroup_view_ = place->view;
  LogEvent(spdlog::level::info, {{"event", "cgroup_place"},
                                 {"cgroup_root", place->root},
                                 {"own_cgroup", place->own_dir},
                                 {"own_cgroup_id", *own_cgroup_id},
                                 {"reason", place->how}});
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const TrustStore>> Agent::LoadIdentities(const Config& config) {
  auto ids = WorkloadIdentities::Create(config, absl::Now());
  if (!ids.ok()) return ids.status();
  identities_ = *std::move(ids);
  FileTimes trust_inputs = TrustInputTimes(config);
  auto trust = identities_->LoadTrustStore(config);
  if (!trust.ok()) return trust.status();
  absl::MutexLock lock(&mu_);
  trust_inputs_ = std::move(trust_inputs);
  return trust;
}

absl::Status Agent::StartEngine(std::shared_ptr<const Config> config, EngineOptions options,
                                std::shared_ptr<const TrustStore> trust) {
  auto policy = std::make_shared<const PolicyAuthorizer>(*config);
  routing_ = std::make_unique<OutboundRouting>(
      [bpf = bpf_.get()](int fd) { return bpf->maps().OriginalDestinationOf(fd); }, config);
  zero_hop_ = std::make_unique<ZeroHopPath>(
      ZeroHopSettings{config->agent.holder_socket, cgroup_view_, options.socket_mark,
                      options.upstream_source4, options.upstream_source6,
                      // Beside the control socket: the agent's own runtime directory.
                      (std::filesystem::path(config->agent.control_socket).parent_path() /
                       "zero-hop-connections.journal")
                          .string(),
                      options.on_closed, RecordLimitOverride()},
      zerohop::ProbeZeroHopFeatures(), *routing_);
  std::vector<ServingListener> serving;
  for (const WorkloadConfig* w : ServingWorkloads(*config)) {
    serving.push_back({w->name, routing_->ServingIdentity(w->name),
                       w->mode == WorkloadMode::kPermissive,
                       ZeroHopDeliver(*zero_hop_, w->name, place_.own_netns)});
  }
  NetnsListeners listeners =
      AgentListeners([routing = routing_.get()](int fd) { return routing->Route(fd); }, serving);
  {
    absl::MutexLock lock(&mu_);
    config_ = config;
    policy_ = policy;
    reload_.loaded_at = absl::Now();
    config_mtime_ = ModificationTime(config_path_);
  }
  auto engine = Engine::Create(std::move(options), std::move(trust), policy,
                               std::move(listeners.outbound), std::move(listeners.inbound));
  if (!engine.ok()) return engine.status();
  engine_ = *std::move(engine);
  return engine_->Start();
}

absl::StatusOr<Agent::HostSteering> Agent::StartHostSteering(const Config& config) {
  const AgentSettings& settings = config.agent;
  auto fds = AgentListenerFdsOf(engine_->own_listeners());
  if (!fds.ok()) return fds.status();
  InterceptionMaps& maps = bpf_->maps();
  InterceptionSettings interception;
  interception.outbound_port = settings.outbound_port;
  interception.agent_mark = settings.socket_mark;
  if (auto st = maps.Configure(interception); !st.ok()) return st;
  // Before any upstream connection: sk_lookup lets through exactly the
  // connections this records.
  if (auto st = bpf_->AttachAgentSockops(own_cgroup_path_); !st.ok()) return st;
  HostSteering host;
  uint32_t slot = 0;
  for (const WorkloadConfig* w : ServingWorkloads(config)) {
    // Steered after the first enrolment pass (SteerHostSlots).
    host_slots_.push_back({slot, fds->inbound[slot]});
    size_t index = static_cast<size_t>(w - config.workloads.data());
    for (uint16_t p : w->ports) {
      auto any = SocketAddress::Parse(absl::StrCat("0.0.0.0:", p));
      host.enforced.push_back(*any);
      if (auto st =
              maps.AddInboundPort(*any, KernelMode(w->mode), slot, static_cast<uint32_t>(index));
          !st.ok())
        return st;
    }
    ++slot;
  }
  // The host's mesh connections: to 127.0.0.1 / ::1 on outbound_port, which
  // only this slot's listeners take.
  auto host_netns = NetnsCookieOf(fds->outbound.v4);
  if (!host_netns.ok()) return host_netns.status();
  host.netns_cookie = *host_netns;
  const OutboundTarget host_target{*SocketAddress::Parse("127.0.0.1:0"),
                                   *SocketAddress::Parse("[::1]:0")};
  host_slots_.push_back({slot, fds->outbound});
  if (auto st = maps.SetOutboundTarget(*host_netns, host_target, settings.outbound_port, slot);
      !st.ok())
    return st;
  std::set<std::string> host_target_rules;
  for (const auto& addr : {host_target.ip4, host_target.ip6}) {
    SocketAddress rule = *addr;
    rule.set_port(settings.outbound_port);
    host.enforced.push_back(rule);
    host_target_rules.insert(rule.ToString());
  }
  host.next_slot = slot + 1;
  // The pods' rules an earlier run, or the agent being taken over from,
  // wrote name its listener slots. A pod served again keeps its slot
  // (PodNetworks reuses it), so a takeover never points a pod's port at an
  // empty slot, and no other pod is given it. Only a rule naming a slot this
  // run's host listeners take is parked (refusing until its pod is served).
  auto parked = maps.ParkExactInboundRules(
      KTRUST_PARKED_SLOT, [&](const SocketAddress& local, uint32_t named) {
        return named < host.next_slot && !host_target_rules.count(local.ToString());
      });
  if (!parked.ok()) return parked.status();
  auto inherited = maps.ExactInboundSlots();
  if (!inherited.ok()) return inherited.status();
  for (const auto& [local, named] : *inherited) {
    if (named >= host.next_slot && named < KTRUST_PARKED_SLOT) host.inherited_slots[local] = named;
  }
  return host;
}

absl::Status Agent::KeepOnlyWhatThisRunServes(const HostSteering& host) {
  InterceptionMaps& maps = bpf_->maps();
  // Every cgroup under the root is classified now: from here on one without
  // an entry is new, and refused for the mesh until Enroll sees it.
  auto root_id = CgroupIdOf(place_.cgroup_root);
  if (!root_id.ok()) return root_id.status();
  if (auto st = maps.WatchOnlyCgroups({*root_id}); !st.ok()) return st;
  // Ports an earlier run enforced that this configuration does not, once
  // the pods found are served again (their rules kept refusing meanwhile).
  // Not after a first pass that could not read everything: a pod it did not
  // see keeps its parked rules (refusing), rather than lose them and be
  // reachable past the agent. A later restart prunes them.
  // Nor after one made before Kubernetes mode's first sync: it refused every
  // pod for want of the cluster's answer and enforced none of their ports,
  // so pruning would leave every pod's inbound ports taking plaintext, an
  // upgrade's successor included, until the API server answered.
  if (!enrolment_->last_pass_complete() || !enrolment_->last_pass_knew_pods()) {
    LogEvent(spdlog::level::warn,
             {{"event", "pinned_rules_kept"},
              {"reason", absl::StrCat(enrolment_->last_pass_complete()
                                          ? "the first enrolment pass was made before this "
                                            "node's pods were read from the Kubernetes API server"
                                          : "the first enrolment pass could not read everything",
                                      ": the inbound rules and outbound targets an earlier run "
                                      "left stay (refusing) until the next start")}});
    return absl::OkStatus();
  }
  std::vector<SocketAddress> enforced = host.enforced;
  std::vector<SocketAddress> in_pods = pods_->enforced();
  enforced.insert(enforced.end(), in_pods.begin(), in_pods.end());
  if (auto removed = maps.KeepOnlyInboundPorts(enforced); !removed.ok()) return removed.status();
  std::set<uint64_t> served_netns = pods_->netns_cookies();
  served_netns.insert(host.netns_cookie);
  if (auto removed = maps.KeepOnlyOutboundTargets(served_netns); !removed.ok()) {
    return removed.status();
  }
  // The rules left are the served pods': no other rule names a slot now.
  pods_->ForgetInheritedSlots();
  return absl::OkStatus();
}

absl::Status Agent::AttachPrograms() {
  if (auto st = bpf_->AttachCgroup(place_.cgroup_root); !st.ok()) return st;
  return bpf_->AttachNetns("/proc/self/ns/net");
}

absl::Status Agent::StartWatching(const AgentHooks& hooks) {
  if (auto st = enrolment_->StartWatching(); !st.ok()) return st;
  auto events = InterceptionEventReader::Create(
      bpf_->events_fd(), [intercepted = hooks.intercepted](const InterceptionEvent& e) {
        if (intercepted) intercepted(e);
      });
  if (!events.ok()) return events.status();
  events_ = *std::move(events);
  return absl::OkStatus();
}

Agent::~Agent() {
  // Its callback reaches the enrolment.
  if (cluster_) cluster_->Stop();
  // The supervisor answers what it holds before the engine it asks goes.
  if (zero_hop_) zero_hop_->Stop();
  if (engine_) engine_->Stop();
}

std::shared_ptr<const Config> Agent::config() const {
  absl::MutexLock lock(&mu_);
  return config_;
}

std::shared_ptr<const PolicyAuthorizer> Agent::policy() const {
  absl::MutexLock lock(&mu_);
  return policy_;
}

std::vector<EnrolledWorkload> Agent::workloads() const { return routing_->current()->enrolled; }

std::string Agent::not_ready_reason() const {
  if (!engine_ || !events_) return "starting";
  if (bpf_->attachments().empty()) return "the interception programs are not attached";
  if (cluster_ && !cluster_->Snapshot()->synced) {
    return "the Kubernetes API server's pods and namespaces are not read yet (pods refused)";
  }
  std::shared_ptr<const RoutingTable> routing = routing_->current();
  for (const WorkloadConfig* w : ServingWorkloads(*routing->config)) {
    if (!routing->serving.count(w->name)) {
      return absl::StrCat("workload ", w->name, " serves ports but none of its cgroups exists yet");
    }
  }
  return "";
}

ReloadState Agent::reload_state() const {
  absl::MutexLock lock(&mu_);
  return reload_;
}

absl::Status Agent::Apply(std::shared_ptr<const Config> config) {
  // Mesh destinations: write the new table, then remove what is gone.
  auto table = BuildMeshTable(*config);
  if (!table.ok()) return table.status();
  InterceptionMaps& maps = bpf_->maps();
  std::vector<IpPrefix> written;
  for (const auto& [key, entry] : *table) {
    if (auto st = maps.AddMeshDestination(entry.prefix, entry.rules); !st.ok()) return st;
    written.push_back(entry.prefix);
  }
  // Also what an earlier run (or configuration) left in the pinned trie.
  if (auto removed = maps.KeepOnlyMeshDestinations(written); !removed.ok()) {
    return removed.status();
  }
  return enrolment_->Enroll(*config);
}

void Agent::WatchCgroups(absl::Duration timeout, int wake_fd) {
  enrolment_->WatchCgroups(timeout, wake_fd);
}

absl::Status Agent::Reload() {
  // The file's time before reading it: a write landing during the read
  // changes it again, and the next Maintain() reloads.
  absl::Time mtime = ModificationTime(config_path_);
  auto loaded = LoadConfig(config_path_);
  absl::Status result = loaded.status();
  std::shared_ptr<const Config> config;
  FileTimes trust_inputs;
  if (result.ok()) {
    config = std::make_shared<const Config>(*std::move(loaded));
    trust_inputs = TrustInputTimes(*config);
    absl::Time now = absl::Now();
    // Everything is read and checked before anything changes: a CA
    // directory that does not load fails the reload as a bad file does. The
    // trust store takes its roots from the CA about to be installed.
    auto ca = identities_->LoadChangedCa(*config, now);
    auto trust = ca.ok() ? identities_->LoadTrustStore(*config, ca->get())
                         : absl::StatusOr<std::shared_ptr<const TrustStore>>(ca.status());
    if (!trust.ok()) {
      result = trust.status();
    } else if (auto table = BuildMeshTable(*config); !table.ok()) {
      result = table.status();
    } else {
      std::shared_ptr<const Config> before = this->config();
      auto policy = std::make_shared<const PolicyAuthorizer>(*config);
      {
        absl::MutexLock lock(&mu_);
        config_ = config;
        policy_ = policy;
      }
      // Trust first: peers' SVIDs from a new root are accepted before this
      // node presents its own.
      engine_->SetTrustStore(*trust);
      engine_->SetAuthorizer(policy);
      // Zero-hop connections have no engine to re-check them.
      zero_hop_->Recheck(**trust, *policy);
      if (*ca) {
        size_t reissued = identities_->InstallCa(*ca, now);
        LogEvent(spdlog::level::info, {{"event", "ca_changed"},
                                       {"ca_dir", config->identity.ca_dir},
                                       {"svids_reissued", reissued}});
      }
      result = Apply(config);
      if (result.ok()) WarnUnpinnedServers(*config);
      if (result.ok() && RestartOnlyShape(*before) != RestartOnlyShape(*config)) {
        LogEvent(spdlog::level::warn,
                 {{"event", "restart_needed"},
                  {"reason",
                   "agent settings, identity source or TTL, workload ports or the Kubernetes "
                   "API connection changed: they "
                   "take effect when ktrustd restarts; everything else is applied"}});
      }
    }
  }
  absl::MutexLock lock(&mu_);
  config_mtime_ = mtime;
  // After a bad configuration file, what the last good one named stays watched.
  if (config) trust_inputs_ = std::move(trust_inputs);
  reload_.last_ok = result.ok();
  reload_.last_error = result.ok() ? "" : std::string(result.message());
  if (result.ok()) {
    ++reload_.generation;
    reload_.loaded_at = absl::Now();
    LogEvent(spdlog::level::info,
             {{"event", "config_reloaded"}, {"generation", reload_.generation}});
  } else {
    LogEvent(spdlog::level::err, {{"event", "config_reload_failed"},
                                  {"reason", result.message()},
                                  {"kept_generation", reload_.generation}});
  }
  return result;
}

void Agent::Maintain(absl::Time now) {
  FlushSuppressedRefusals(now);
  for (const std::string& error : identities_->RotateDue(now)) {
    LogEvent(spdlog::level::err, {{"event", "svid_renewal_failed"}, {"reason", error}});
  }
  absl::Time seen;
  FileTimes inputs;
  {
    absl::MutexLock lock(&mu_);
    seen = config_mtime_;
    inputs = trust_inputs_;
  }
  // A new CRL or bundle file takes effect like a new configuration.
  if (ModificationTime(config_path_) != seen || AnyFileChanged(inputs)) {
    (void)Reload();
    return;
  }
  // What the cgroup watcher could not see; see EnrollIfDue for how often.
  // A failure is said by Enroll (rate-limited), and retried each second.
  if (!enrolment_->EnrollIfDue(*config(), now)) return;
  // The pins of links the kernel detached: gone cgroups' sockops, gone
  // pods. Only links the kernel reports detached go; one that cannot be
  // read (EMFILE) stays.
  if (auto pruned = bpf_->PruneDetachedLinks(); !pruned.ok()) {
    prune_trouble_.Met(spdlog::level::warn, {{"reason", pruned.status().message()}}, now);
  } else {
    prune_trouble_.Cleared(now);
  }
}

absl::Status Agent::SteerHostSlots() {
  for (const auto& [slot, pair] : host_slots_) {
    if (auto st = SteerSlotTo(bpf_->maps(), slot, pair); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::Status Agent::RestoreSteering() {
  // Both, whatever fails: a pod is not left refusing for the host's sake.
  absl::Status host = SteerHostSlots();
  absl::Status pods = pods_->Resteer();
  if (!host.ok()) return host;
  if (!pods.ok()) return pods;
  LogEvent(spdlog::level::info,
           {{"event", "steering_restored"},
            {"slots", host_slots_.size()},
            {"pods", pods_->served().size()},
            {"note",
             "the host's and the served pods' listener slots point at this agent's listeners "
             "again"}});
  return absl::OkStatus();
}

void Agent::BeginDrain(const std::string& reason, absl::Duration timeout) {
  {
    absl::MutexLock lock(&mu_);
    if (drain_.draining) return;
    drain_.draining = true;
    drain_.reason = reason;
    drain_.since = absl::Now();
    drain_.deadline = drain_.since + timeout;
  }
  engine_->StopAccepting();
  const EngineCounters& c = engine_->counters();
  LogEvent(spdlog::level::info,
           {{"event", "draining"},
            {"reason", reason},
            {"connections", c.active.load()},
            {"handshakes", c.handshaking.load()},
            {"drain_timeout_ms", absl::ToInt64Milliseconds(timeout)},
            {"note",
             "open connections are carried until they end or the drain timeout; the "
             "interception programs stay attached, so new ones are refused unless a "
             "successor agent serves them"}});
}

void Agent::EndDrain() {
  uint64_t left = engine_->counters().active.load();
  if (left > 0) {
    LogEvent(spdlog::level::warn,
             {{"event", "drain_timeout"},
              {"connections", left},
              {"reason", "the drain timeout passed: the connections still open are closed"}});
  }
  engine_->EndConnections(CloseReason::kDrainTimeout,
                          "the agent was stopping and the connection was still open at "
                          "agent.drain_timeout");
}

bool Agent::Drained() const { return drain().draining && engine_->counters().active.load() == 0; }

DrainState Agent::drain() const {
  absl::MutexLock lock(&mu_);
  return drain_;
}

void Agent::SetSuccessor(std::string successor) {
  absl::MutexLock lock(&mu_);
  drain_.successor = std::move(successor);
}

void Agent::SetPredecessor(std::string predecessor) {
  absl::MutexLock lock(&mu_);
  drain_.predecessor = std::move(predecessor);
}

std::vector<DetachedConnection> Agent::DetachForHandover(size_t max, absl::Duration timeout) {
  return engine_->DetachForHandover(max, timeout);
}

void Agent::CountMovedOut() {
  absl::MutexLock lock(&mu_);
  ++drain_.moved;
}

absl::Status Agent::AdoptConnection(DetachedConnection& connection, bool moved_in) {
  absl::Status adopted = engine_->Adopt(connection);
  if (adopted.ok() && moved_in) {
    absl::MutexLock lock(&mu_);
    ++drain_.moved_in;
  }
  return adopted;
}

void Agent::PollEvents(absl::Duration timeout, int wake_fd) {
  // The ring buffer's epoll fd is readable when events wait.
  pollfd p[2] = {{events_ ? events_->epoll_fd() : -1, POLLIN, 0}, {wake_fd, POLLIN, 0}};
  if (poll(p, 2, PollMilliseconds(timeout)) > 0 && (p[0].revents & POLLIN)) {
    (void)events_->Drain();
  }
}

absl::Status UninstallAgent(const std::string& pin_dir) {
  return BpfLoader::UninstallPinned(pin_dir);
}

}  // namespace ktrust
