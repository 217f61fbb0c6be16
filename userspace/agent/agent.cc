#include "ktrust/agent/agent.h"

#include <poll.h>
#include <sys/inotify.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "ktrust/bpf/cgroup2.h"
#include "ktrust/common/files.h"
#include "ktrust/common/log.h"
#include "ktrust/common/log_limiter.h"

namespace ktrust {
namespace {

void AppendRules(const MeshEntry& entry, MeshAction action, std::vector<PortRule>& rules) {
  if (entry.ports.empty()) {
    rules.push_back({1, 65535, action});
    return;
  }
  for (const PortRange& r : entry.ports) rules.push_back({r.first, r.last, action});
}

// The trie holds one entry per configured prefix, and the kernel consults
// only the longest match: each entry carries the bypass rules and then the
// mesh rules of every configured prefix that contains it, longest first.
absl::StatusOr<std::map<std::string, std::pair<IpPrefix, std::vector<PortRule>>>> MeshTable(
    const Config& config) {
  std::vector<const MeshEntry*> bypass, mesh;
  for (const auto& e : config.bypass) bypass.push_back(&e);
  for (const auto& e : config.mesh) mesh.push_back(&e);
  auto longest_first = [](const MeshEntry* a, const MeshEntry* b) {
    return a->prefix.mapped_length() > b->prefix.mapped_length();
  };
  std::stable_sort(bypass.begin(), bypass.end(), longest_first);
  std::stable_sort(mesh.begin(), mesh.end(), longest_first);

  std::map<std::string, std::pair<IpPrefix, std::vector<PortRule>>> table;
  for (const auto* group : {&bypass, &mesh}) {
    for (const MeshEntry* e : *group) {
      std::string key = e->prefix.ToString();
      if (table.count(key)) continue;
      std::vector<PortRule> rules;
      for (const MeshEntry* b : bypass) {
        if (PrefixContains(b->prefix, e->prefix)) AppendRules(*b, MeshAction::kBypass, rules);
      }
      for (const MeshEntry* m : mesh) {
        if (PrefixContains(m->prefix, e->prefix)) AppendRules(*m, MeshAction::kRedirect, rules);
      }
      if (rules.size() > KTRUST_MESH_RULES_PER_PREFIX) {
        return absl::InvalidArgumentError(
            absl::StrCat("mesh prefix ", key, " ends up with ", rules.size(),
                         " port rules (its own and those of the prefixes containing it); at most ",
                         KTRUST_MESH_RULES_PER_PREFIX, " fit"));
      }
      table.emplace(key, std::make_pair(e->prefix, std::move(rules)));
    }
  }
  return table;
}

absl::Time ModificationTime(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return absl::InfinitePast();
  return absl::TimeFromTimespec(st.st_mtim);
}

// Taken before the files are read: a write landing during the read changes
// the time again, and the next Maintain() reloads.
std::vector<std::pair<std::string, absl::Time>> TrustInputTimes(const Config& config) {
  std::vector<std::pair<std::string, absl::Time>> out;
  for (const TrustBundleFile& f : config.trust_bundles) {
    out.emplace_back(f.path, ModificationTime(f.path));
  }
  for (const std::string& path : config.crls) out.emplace_back(path, ModificationTime(path));
  return out;
}

bool TrustInputsChanged(const std::vector<std::pair<std::string, absl::Time>>& seen) {
  for (const auto& [path, mtime] : seen) {
    if (ModificationTime(path) != mtime) return true;
  }
  return false;
}

EnforcementMode KernelMode(WorkloadMode mode) {
  return mode == WorkloadMode::kPermissive ? EnforcementMode::kPermissive
                                           : EnforcementMode::kEnforce;
}

// Inbound listeners: one per workload that serves ports, in config order.
std::vector<const WorkloadConfig*> ServingWorkloads(const Config& config) {
  std::vector<const WorkloadConfig*> out;
  for (const auto& w : config.workloads) {
    if (!w.ports.empty() && w.mode != WorkloadMode::kOff) out.push_back(&w);
  }
  return out;
}

// What a reload cannot change in place: sockets bound at start, the BPF
// setup, logging and the identity source. A difference means a restart.
std::string RestartOnlyShape(const Config& config) {
  const AgentSettings& a = config.agent;
  std::string shape = absl::StrJoin(
      {a.node_name, a.cgroup_root, a.bpf_pin_dir, absl::StrCat(a.outbound_port), a.upstream_source,
       a.upstream_source6, absl::StrCat(a.socket_mark), a.control_socket, a.control_group,
       a.metrics_address, a.log_format, a.log_level, a.data_path,
       absl::StrCat(static_cast<int>(config.identity.source)),
       absl::FormatDuration(config.identity.svid_ttl), config.identity.svid_dir},
      "/");
  // The engine's handshake admission is fixed when it starts.
  absl::StrAppend(&shape, "/", a.max_inbound_handshakes, "/", a.max_outbound_handshakes, "/",
                  a.max_handshakes_per_source, "/", absl::FormatDuration(a.first_byte_timeout));
  for (const WorkloadConfig* w : ServingWorkloads(config)) {
    absl::StrAppend(&shape, ";", w->name, ":", absl::StrJoin(w->ports, ","), ":",
                    WorkloadModeName(w->mode));
  }
  return shape;
}

// Loudly, at every load: without a rule a mesh destination's server may be
// any workload of the trust domain (`ktrust status` repeats it).
void WarnUnpinnedServers(const Config& config) {
  for (const std::string& warning : ServerIdentityWarnings(config)) {
    LogEvent(spdlog::level::warn, {{"event", "server_identity_unpinned"}, {"reason", warning}});
  }
}

}  // namespace

// The registration as the outbound route and inbound listeners read it.
struct Agent::Routing {
  struct Workload {
    std::string name;
    SvidProvider identity;
  };
  std::map<uint64_t, Workload> by_cgroup;
  std::map<std::string, SvidProvider> serving;  // workload name -> its inbound identity
  std::vector<EnrolledWorkload> enrolled;
  std::shared_ptr<const Config> config;
};

absl::StatusOr<std::unique_ptr<Agent>> Agent::Start(const std::string& config_path,
                                                    AgentHooks hooks) {
  auto loaded = LoadConfig(config_path);
  if (!loaded.ok()) return loaded.status();
  auto config = std::make_shared<const Config>(*std::move(loaded));
  std::unique_ptr<Agent> agent(new Agent());
  agent->started_ = absl::Now();
  agent->config_path_ = config_path;
  const AgentSettings& settings = config->agent;

  agent->cgroup_root_ = settings.cgroup_root;
  if (agent->cgroup_root_.empty()) {
    auto mount = Cgroup2Mount();
    if (!mount.ok()) return mount.status();
    agent->cgroup_root_ = *mount;
  }

  struct stat own {};
  if (stat("/proc/self/ns/net", &own) != 0) return absl::ErrnoToStatus(errno, "/proc/self/ns/net");
  agent->own_netns_ = own.st_ino;
  // The agent's own cgroup: never enrolled, and where the kernel learns
  // which connections are the agent's (AttachAgentSockops).
  auto own_cgroup = OwnCgroupPath(agent->cgroup_root_);
  if (!own_cgroup.ok()) return own_cgroup.status();
  auto own_cgroup_id = CgroupIdOf(*own_cgroup);
  if (!own_cgroup_id.ok()) return own_cgroup_id.status();
  agent->own_cgroup_ = *own_cgroup_id;

  auto ids = WorkloadIdentities::Create(*config, absl::Now());
  if (!ids.ok()) return ids.status();
  agent->identities_ = *std::move(ids);
  auto trust_inputs = TrustInputTimes(*config);
  auto trust = agent->identities_->LoadTrustStore(*config);
  if (!trust.ok()) return trust.status();

  // Probe and load before binding anything: a kernel that cannot enforce
  // stops the agent here, with the missing feature named.
  auto bpf = BpfLoader::Create({settings.bpf_pin_dir});
  if (!bpf.ok()) return bpf.status();
  agent->bpf_ = *std::move(bpf);

  auto policy = std::make_shared<const PolicyAuthorizer>(*config);
  EngineOptions options;
  options.data_path =
      settings.data_path == "userspace" ? DataPathMode::kUserspace : DataPathMode::kAuto;
  options.socket_mark = settings.socket_mark;
  options.max_inbound_handshakes = settings.max_inbound_handshakes;
  options.max_outbound_handshakes = settings.max_outbound_handshakes;
  options.max_handshakes_per_source = settings.max_handshakes_per_source;
  options.first_byte_timeout = settings.first_byte_timeout;
  options.on_closed = hooks.connection_closed;
  auto upstream4 = SocketAddress::Parse(absl::StrCat(settings.upstream_source, ":0"));
  if (!upstream4.ok()) return upstream4.status();
  options.upstream_source4 = *upstream4;
  if (!settings.upstream_source6.empty()) {
    auto upstream6 = SocketAddress::Parse(absl::StrCat("[", settings.upstream_source6, "]:0"));
    if (!upstream6.ok()) return upstream6.status();
    options.upstream_source6 = *upstream6;
  }

  Agent* self = agent.get();
  // Every listener binds an ephemeral port: sk_lookup steers to it by
  // socket, so no port a local user could take first stops the agent, and
  // no listener of anyone else's receives what was meant for the agent.
  // One listener per family: sk_lookup hands each family's connections only
  // to a socket of that family.
  const SocketAddress any4 = *SocketAddress::Parse("127.0.0.1:0");
  const SocketAddress any6 = *SocketAddress::Parse("[::1]:0");
  std::vector<OutboundListener> outbound;
  for (const SocketAddress& addr : {any4, any6}) {
    outbound.push_back({addr, [self](int fd) { return self->Route(fd); }});
  }
  std::vector<InboundListener> inbound;
  for (const WorkloadConfig* w : ServingWorkloads(*config)) {
    std::string name = w->name;
    SvidProvider identity = [self, name]() -> std::shared_ptr<const Svid> {
      std::shared_ptr<const Routing> routing;
      {
        absl::MutexLock lock(&self->mu_);
        routing = self->routing_;
      }
      auto it = routing->serving.find(name);
      // No cgroup of this workload yet: nothing to present, refused.
      if (it == routing->serving.end()) return nullptr;
      return it->second();
    };
    for (const SocketAddress& addr : {any4, any6}) {
      inbound.push_back({addr, name, identity, std::nullopt, w->mode == WorkloadMode::kPermissive});
    }
  }
  {
    absl::MutexLock lock(&agent->mu_);
    agent->config_ = config;
    agent->policy_ = policy;
    agent->routing_ = std::make_shared<const Routing>(Routing{{}, {}, {}, config});
    agent->reload_.loaded_at = absl::Now();
    agent->config_mtime_ = ModificationTime(config_path);
    agent->trust_inputs_ = std::move(trust_inputs);
  }
  auto engine = Engine::Create(options, *trust, policy, std::move(outbound), std::move(inbound));
  if (!engine.ok()) return engine.status();
  agent->engine_ = *std::move(engine);
  if (auto st = agent->engine_->Start(); !st.ok()) return st;

  // The listeners exist: now tell the kernel where they are.
  InterceptionMaps& maps = agent->bpf_->maps();
  InterceptionSettings interception;
  interception.outbound_port = settings.outbound_port;
  interception.agent_mark = settings.socket_mark;
  if (auto st = maps.Configure(interception); !st.ok()) return st;
  // Before any upstream connection: sk_lookup lets through exactly the
  // connections this records.
  if (auto st = agent->bpf_->AttachAgentSockops(*own_cgroup); !st.ok()) return st;
  uint32_t slot = 0;
  std::vector<SocketAddress> enforced;
  for (const WorkloadConfig* w : ServingWorkloads(*config)) {
    for (size_t family = 0; family < 2; ++family) {
      int fd = agent->engine_->inbound_listen_fd(2 * slot + family);
      if (auto st = maps.SetInboundListener(slot, fd); !st.ok()) return st;
    }
    size_t index = static_cast<size_t>(w - config->workloads.data());
    for (uint16_t p : w->ports) {
      auto any = SocketAddress::Parse(absl::StrCat("0.0.0.0:", p));
      enforced.push_back(*any);
      if (auto st =
              maps.AddInboundPort(*any, KernelMode(w->mode), slot, static_cast<uint32_t>(index));
          !st.ok())
        return st;
    }
    ++slot;
  }
  // The pods an earlier run served keep refusing until served again, and
  // never reach a listener this run gives to another pod.
  if (auto parked = maps.ParkExactInboundRules(KTRUST_PARKED_SLOT); !parked.ok()) {
    return parked.status();
  }
  // (After the parking, which would take these rules too.) The host's mesh connections: to
  // 127.0.0.1 / ::1 on outbound_port, which only this slot's listeners take.
  auto host_netns = NetnsCookieOf(agent->engine_->outbound_listen_fd(0));
  if (!host_netns.ok()) return host_netns.status();
  const OutboundTarget host_target{any4, any6};
  for (size_t family = 0; family < 2; ++family) {
    if (auto st = maps.SetInboundListener(slot, agent->engine_->outbound_listen_fd(family));
        !st.ok())
      return st;
  }
  if (auto st = maps.SetOutboundTarget(*host_netns, host_target, settings.outbound_port, slot);
      !st.ok())
    return st;
  for (const SocketAddress& addr : {any4, any6}) {
    SocketAddress rule = addr;
    rule.set_port(settings.outbound_port);
    enforced.push_back(rule);
  }
  ++slot;
  agent->pods_ = std::make_unique<PodNetworks>(
      *agent->engine_, *agent->bpf_, agent->bpf_mu_,
      PodNetworkSettings{settings.outbound_port, options.upstream_source6, slot,
                         [self](int fd) { return self->Route(fd); }});
  if (auto st = agent->Apply(config); !st.ok()) return st;
  WarnUnpinnedServers(*config);
  // Every cgroup under the root is classified now: from here on one without
  // an entry is new, and refused for the mesh until Enroll sees it.
  auto root_id = CgroupIdOf(agent->cgroup_root_);
  if (!root_id.ok()) return root_id.status();
  if (auto st = maps.WatchOnlyCgroups({*root_id}); !st.ok()) return st;
  // Ports an earlier run enforced that this configuration does not, once
  // the pods found are served again (their rules kept refusing meanwhile).
  std::vector<SocketAddress> in_pods = agent->pods_->enforced();
  enforced.insert(enforced.end(), in_pods.begin(), in_pods.end());
  if (auto removed = maps.KeepOnlyInboundPorts(enforced); !removed.ok()) return removed.status();
  std::set<uint64_t> served_netns = agent->pods_->netns_cookies();
  served_netns.insert(*host_netns);
  if (auto removed = maps.KeepOnlyOutboundTargets(served_netns); !removed.ok()) {
    return removed.status();
  }
  if (auto st = agent->bpf_->AttachCgroup(agent->cgroup_root_); !st.ok()) return st;
  {
    absl::MutexLock lock(&agent->bpf_mu_);
    if (auto st = agent->bpf_->AttachNetns("/proc/self/ns/net"); !st.ok()) return st;
  }

  agent->cgroup_events_ = UniqueFd(inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  if (!agent->cgroup_events_.valid()) return absl::ErrnoToStatus(errno, "inotify_init1");
  agent->WatchTree(agent->cgroup_root_);

  auto events = InterceptionEventReader::Create(
      agent->bpf_->events_fd(), [intercepted = hooks.intercepted](const InterceptionEvent& e) {
        if (intercepted) intercepted(e);
      });
  if (!events.ok()) return events.status();
  agent->events_ = *std::move(events);
  return agent;
}

Agent::~Agent() {
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

std::vector<EnrolledWorkload> Agent::workloads() const {
  absl::MutexLock lock(&mu_);
  return routing_->enrolled;
}

std::string Agent::not_ready_reason() const {
  if (!engine_ || !events_) return "starting";
  if (bpf_attachments().empty()) return "the interception programs are not attached";
  std::shared_ptr<const Routing> routing;
  {
    absl::MutexLock lock(&mu_);
    routing = routing_;
  }
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

absl::StatusOr<OutboundRoute> Agent::Route(int app_fd) const {
  auto original = bpf_->maps().OriginalDestinationOf(app_fd);
  if (!original.ok()) {
    return absl::NotFoundError(absl::StrCat(
        "no original destination for this connection (not redirected by ktrust, or already "
        "closed): ",
        original.status().message()));
  }
  std::shared_ptr<const Routing> routing;
  {
    absl::MutexLock lock(&mu_);
    routing = routing_;
  }
  auto it = routing->by_cgroup.find(original->cgroup_id);
  if (it == routing->by_cgroup.end()) {
    return absl::NotFoundError(absl::StrCat("cgroup ", original->cgroup_id,
                                            " is enrolled in the kernel but not registered"));
  }
  OutboundRoute route{original->destination, it->second.name, it->second.identity, std::nullopt};
  // The first expected-server rule covering the destination pins the server.
  std::string ip = original->destination.ToString();
  ip = ip.substr(0, ip.rfind(':'));
  if (!ip.empty() && ip.front() == '[') ip = ip.substr(1, ip.size() - 2);
  auto host = IpPrefix::Parse(ip);
  const ExpectedServerRule* rule =
      host.ok() ? ExpectedServerFor(*routing->config, *host, original->destination.port())
                : nullptr;
  if (rule != nullptr) {
    route.expected_server = rule->server;
  } else if (routing->config->require_expected_server) {
    // Refused before anything is sent: no rule says who the server must be.
    return absl::PermissionDeniedError(absl::StrCat(
        "no expected_servers rule covers ", original->destination.ToString(), " (from workload ",
        it->second.name,
        "), and mesh.require_expected_server refuses a server that could be any workload of ",
        routing->config->trust_domain));
  }
  return route;
}

absl::Status Agent::Apply(std::shared_ptr<const Config> config) {
  // Mesh destinations: write the new table, then remove what is gone.
  auto table = MeshTable(*config);
  if (!table.ok()) return table.status();
  InterceptionMaps& maps = bpf_->maps();
  std::vector<IpPrefix> written;
  for (const auto& [key, entry] : *table) {
    if (auto st = maps.AddMeshDestination(entry.first, entry.second); !st.ok()) return st;
    written.push_back(entry.first);
  }
  // Also what an earlier run (or configuration) left in the pinned trie.
  if (auto removed = maps.KeepOnlyMeshDestinations(written); !removed.ok()) {
    return removed.status();
  }
  return Enroll(*config);
}

std::vector<BpfLoader::Attachment> Agent::bpf_attachments() const {
  absl::MutexLock lock(&bpf_mu_);
  return bpf_->attachments();
}

// The namespace of a cgroup's processes, when it is not the agent's own.
std::optional<PodNetns> Agent::PodNetnsOf(const RegisteredWorkload& r) const {
  auto procs = ReadFile(absl::StrCat(cgroup_root_, "/", r.cgroup_path, "/cgroup.procs"));
  if (!procs.ok() || procs->empty()) return std::nullopt;  // no process yet: the next pass
  std::string pid = procs->substr(0, procs->find('\n'));
  std::string netns = absl::StrCat("/proc/", pid, "/ns/net");
  struct stat st {};
  if (stat(netns.c_str(), &st) != 0 || st.st_ino == own_netns_) return std::nullopt;
  return PodNetns{st.st_ino, netns, {}};
}

void Agent::WatchTree(const std::string& dir) {
  // IN_MODIFY: cgroup.events changes when a cgroup gains its first process,
  // which may live in a pod's namespace that needs serving.
  constexpr uint32_t kMask = IN_CREATE | IN_DELETE | IN_MODIFY | IN_ONLYDIR | IN_DONT_FOLLOW;
  if (inotify_add_watch(cgroup_events_.get(), dir.c_str(), kMask) < 0) return;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_directory(ec) && !it->is_symlink(ec)) WatchTree(it->path().string());
  }
}

void Agent::WatchCgroups(absl::Duration timeout) {
  // The pods' address changes wake this thread too: a new address of a
  // served pod is enforced now, not at the next pass.
  pollfd pfd[2] = {{cgroup_events_.get(), POLLIN, 0}, {pods_->events_fd(), POLLIN, 0}};
  if (poll(pfd, 2, static_cast<int>(absl::ToInt64Milliseconds(timeout))) <= 0) return;
  if (pfd[1].revents & POLLIN) {
    absl::MutexLock serialize(&enroll_mu_);
    pods_->RefreshAddresses();
  }
  if (!(pfd[0].revents & POLLIN)) return;
  alignas(inotify_event) char buf[16384];
  bool changed = false;
  ssize_t n;
  while ((n = read(cgroup_events_.get(), buf, sizeof(buf))) > 0) {
    for (char* p = buf; p < buf + n;) {
      auto* event = reinterpret_cast<inotify_event*>(p);
      p += sizeof(inotify_event) + event->len;
      changed |= (event->mask & (IN_ISDIR | IN_Q_OVERFLOW)) != 0 ||
                 ((event->mask & IN_MODIFY) && event->len > 0 &&
                  std::string_view(event->name) == "cgroup.events");
    }
  }
  if (!changed) return;
  // New cgroups get watches of their own (re-adding a watch is a no-op).
  WatchTree(cgroup_root_);
  if (auto st = Enroll(*config()); !st.ok()) {
    LogEvent(spdlog::level::err, {{"event", "enrolment_failed"}, {"reason", st.message()}});
  }
}

absl::Status Agent::Enroll(const Config& config) {
  absl::MutexLock serialize(&enroll_mu_);
  std::vector<std::string> problems;
  std::set<uint64_t> every_cgroup;
  auto found = ScanCgroups(config, cgroup_root_, &problems, &every_cgroup);
  if (!found.ok()) return found.status();
  // Rescans repeat every second: say each problem once, when it appears.
  std::set<std::string> now(problems.begin(), problems.end());
  if (reported_problems_.count("own cgroup")) now.insert("own cgroup");
  for (const std::string& p : now) {
    if (!reported_problems_.count(p)) {
      LogEvent(spdlog::level::warn, {{"event", "cgroup_skipped"}, {"reason", p}});
    }
  }
  // A cgroup with no ID is enrolled and refused, not skipped: said once too.
  for (const RegisteredWorkload& r : *found) {
    if (r.id || r.cgroup_id == own_cgroup_) continue;
    const WorkloadConfig& w = config.workloads[r.workload_index];
    std::string key = absl::StrCat("no id: ", r.cgroup_path, ": ", r.id_problem);
    if (!reported_problems_.count(key)) {
      LogEvent(spdlog::level::err,
               {{"event", "spiffe_id_render_failed"},
                {"workload", w.name},
                {"cgroup", r.cgroup_path},
                {"reason",
                 absl::StrCat(r.id_problem, w.mode == WorkloadMode::kOff
                                                ? " (mode off: not intercepted)"
                                                : "; enrolled, and its connections are refused")}});
    }
    now.insert(std::move(key));
  }
  reported_problems_ = std::move(now);
  std::shared_ptr<const Routing> before;
  std::shared_ptr<const Config> current;
  {
    absl::MutexLock lock(&mu_);
    before = routing_;
    current = config_;
  }
  auto next = std::make_shared<Routing>();
  next->config = current;
  std::map<uint64_t, PodNetns> pods;
  std::set<std::string> serving_with_id;
  InterceptionMaps& maps = bpf_->maps();
  for (const RegisteredWorkload& r : *found) {
    const WorkloadConfig& w = config.workloads[r.workload_index];
    if (r.cgroup_id == own_cgroup_) {
      // Enrolling itself would send the agent's own connections back to it
      // (the SO_MARK check in the programs is the second line of defence).
      if (reported_problems_.insert("own cgroup").second) {
        LogEvent(spdlog::level::err,
                 {{"event", "cgroup_skipped"},
                  {"cgroup", r.cgroup_path},
                  {"reason", "this is ktrustd's own cgroup; the agent is never enrolled"}});
      }
      continue;
    }
    EnrolledWorkload enrolled{r, w.name, w.mode, w.ports};
    std::optional<PodNetns> pod = PodNetnsOf(r);
    if (pod) enrolled.pod_netns = pod->inode;
    next->enrolled.push_back(enrolled);
    if (w.mode == WorkloadMode::kOff) continue;
    // No ID (said above) is treated as an SVID that cannot be issued.
    absl::StatusOr<SvidProvider> identity = absl::FailedPreconditionError(r.id_problem);
    if (r.id) {
      identity = identities_->ProviderFor(*r.id, w.name);
      if (!identity.ok()) {
        LogEvent(spdlog::level::err, {{"event", "svid_issue_failed"},
                                      {"workload", w.name},
                                      {"id", r.id->ToString()},
                                      {"reason", identity.status().message()}});
      }
    }
    if (!identity.ok()) {
      // Still enrolled, so its connections keep coming to the agent, which
      // refuses them (no SVID to present) instead of letting them out in
      // plaintext. The next rescan tries to issue again.
      identity = SvidProvider([] { return std::shared_ptr<const Svid>(); });
    }
    next->by_cgroup[r.cgroup_id] = {w.name, *identity};
    if (pod) {
      auto& in_pod = pods[pod->inode];
      if (in_pod.path.empty()) in_pod = *pod;
      in_pod.workloads.push_back({w.name, r.id ? r.id->ToString() : "",
                                  static_cast<uint32_t>(r.workload_index), w.mode, w.ports,
                                  *identity});
    }
    // The first cgroup with an ID serves the workload's inbound ports; one
    // without (refusing) only while no other has one.
    if (!w.ports.empty() && !serving_with_id.count(w.name)) {
      next->serving[w.name] = *identity;
      if (r.id) serving_with_id.insert(w.name);
    }
  }
  // Route first, then enrol: the kernel never redirects a connection the
  // agent cannot route.
  {
    absl::MutexLock lock(&mu_);
    routing_ = next;
  }
  for (const auto& [cgroup_id, workload] : next->by_cgroup) {
    const EnrolledWorkload* e = nullptr;
    for (const auto& x : next->enrolled) {
      if (x.registered.cgroup_id == cgroup_id) e = &x;
    }
    bool known = before->by_cgroup.count(cgroup_id) > 0;
    // sockops before the enrolment: a connection redirected without it could
    // not be found by the agent (refused, but needlessly).
    absl::Status sockops;
    {
      absl::MutexLock lock(&bpf_mu_);
      sockops = bpf_->AttachSockops(absl::StrCat(cgroup_root_, "/", e->registered.cgroup_path));
    }
    if (!sockops.ok()) {
      LogEvent(spdlog::level::err, {{"event", "sockops_attach_failed"},
                                    {"cgroup", e->registered.cgroup_path},
                                    {"reason", sockops.message()}});
    }
    if (auto st = maps.EnrollCgroup(cgroup_id, KernelMode(e->mode),
                                    static_cast<uint32_t>(e->registered.workload_index));
        !st.ok())
      return st;
    if (!known) {
      LogEvent(spdlog::level::info,
               {{"event", "workload_enrolled"},
                {"workload", workload.name},
                {"cgroup", e->registered.cgroup_path},
                {"id", e->registered.id ? e->registered.id->ToString() : "(none: refused)"},
                {"mode", WorkloadModeName(e->mode)}});
    }
  }
  for (const auto& [cgroup_id, workload] : before->by_cgroup) {
    if (next->by_cgroup.count(cgroup_id)) continue;
    LogEvent(
        spdlog::level::info,
        {{"event", "workload_unenrolled"}, {"workload", workload.name}, {"cgroup_id", cgroup_id}});
  }
  // Every other cgroup (the agent's own, `mode: off` workloads', the rest)
  // is classified as left alone: under the watched root, a cgroup with no
  // entry is one created since, refused for the mesh until the next pass. One
  // that cannot be written stays refused; the others still go in. Entries
  // an earlier pass wrote are not written again every second.
  absl::Status classified;
  std::set<uint64_t> not_enrolled;
  for (uint64_t cgroup_id : every_cgroup) {
    if (next->by_cgroup.count(cgroup_id)) continue;
    if (!not_enrolled_written_.count(cgroup_id)) {
      if (auto st = maps.MarkCgroupNotEnrolled(cgroup_id); !st.ok()) {
        if (classified.ok()) classified = st;
        continue;  // tried again next pass
      }
    }
    not_enrolled.insert(cgroup_id);
  }
  not_enrolled_written_ = std::move(not_enrolled);
  // Gone cgroups, and what an earlier run enrolled that this one does not.
  std::set<uint64_t> keep = every_cgroup;
  for (const auto& [cgroup_id, workload] : next->by_cgroup) keep.insert(cgroup_id);
  if (auto st = maps.KeepOnlyEnrolledCgroups(keep).status(); !st.ok()) return st;
  std::vector<PodNetns> wanted;
  for (auto& [inode, pod] : pods) wanted.push_back(std::move(pod));
  pods_->Reconcile(wanted);
  return classified;
}

absl::Status Agent::Reload() {
  // The file's time before reading it: a write landing during the read
  // changes it again, and the next Maintain() reloads.
  absl::Time mtime = ModificationTime(config_path_);
  auto loaded = LoadConfig(config_path_);
  absl::Status result = loaded.status();
  std::shared_ptr<const Config> config;
  std::vector<std::pair<std::string, absl::Time>> trust_inputs;
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
    } else if (auto table = MeshTable(*config); !table.ok()) {
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
                   "agent settings, identity source or TTL, or workload ports changed: they "
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
  absl::Time mtime;
  absl::Time seen;
  std::vector<std::pair<std::string, absl::Time>> inputs;
  {
    absl::MutexLock lock(&mu_);
    seen = config_mtime_;
    inputs = trust_inputs_;
  }
  mtime = ModificationTime(config_path_);
  // A new CRL or bundle file takes effect like a new configuration.
  if (mtime != seen || TrustInputsChanged(inputs)) {
    (void)Reload();
    return;
  }
  // New and vanished cgroups (a service started or stopped).
  std::shared_ptr<const Config> config = this->config();
  if (auto st = Enroll(*config); !st.ok()) {
    LogEvent(spdlog::level::err, {{"event", "enrolment_failed"}, {"reason", st.message()}});
  }
  // The pins of links the kernel detached: gone cgroups' sockops, gone pods.
  absl::StatusOr<size_t> pruned;
  {
    absl::MutexLock lock(&bpf_mu_);
    pruned = bpf_->PruneDetachedLinks();
  }
  if (!pruned.ok()) {
    LogEvent(spdlog::level::warn,
             {{"event", "link_prune_failed"}, {"reason", pruned.status().message()}});
  }
}

void Agent::PollEvents(absl::Duration timeout) {
  if (events_) (void)events_->Poll(timeout);
}

absl::Status UninstallAgent(const std::string& pin_dir) {
  return BpfLoader::UninstallPinned(pin_dir);
}

}  // namespace ktrust
