#include "ktrust/agent/agent_control.h"

#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "ktrust/common/log.h"
#include "ktrust/common/log_limiter.h"
#include "ktrust/common/version.h"
#include "ktrust/control/methods.h"
#include "ktrust/control/metrics.h"
#include "ktrust/control/views.h"

namespace ktrust {
namespace {

int64_t UnixSeconds(absl::Time t) { return t == absl::InfinitePast() ? 0 : absl::ToUnixSeconds(t); }

uint16_t PortOf(const std::string& address) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos) return 0;
  return static_cast<uint16_t>(std::atoi(address.c_str() + colon + 1));
}

// What the kernel offers zero-hop, one direction: what it uses, or the
// first thing missing.
control::KernelFeatureView ZeroHopKernelFeature(const char* name, const std::string& missing) {
  if (!missing.empty()) return {name, false, missing};
  return {name, true, "seccomp user notification, pidfd_getfd, kernel TLS"};
}

control::ZeroHopView ZeroHop(const Agent& agent, const Config& config) {
  ZeroHopStatus z = agent.zero_hop().status();
  control::ZeroHopView v{z.holder_connected, config.agent.holder_socket, z.holder_problem, {}};
  for (const ZeroHopListener& l : z.listeners) {
    v.listeners.push_back({l.pid, l.source, l.workload, l.data_path});
  }
  return v;
}

// A workload's data path in words: how its registered processes are served.
std::string WorkloadDataPath(const Agent& agent, const Config& config, const EnrolledWorkload& w,
                             const ZeroHopStatus& zero_hop) {
  bool zero_hop_configured = false;
  for (const WorkloadConfig& c : config.workloads) {
    if (c.name == w.name) zero_hop_configured = c.data_path == WorkloadDataPath::kZeroHop;
  }
  if (!zero_hop_configured) return "proxy";
  if (std::string missing = agent.zero_hop().features().inbound_missing(); !missing.empty()) {
    return absl::StrCat("proxy (zero-hop unavailable: ", missing, ")");
  }
  int processes = 0;
  std::string proxied;  // a registered process's "proxy (why)"
  for (const ZeroHopListener& l : zero_hop.listeners) {
    if (l.cgroup_id != w.registered.cgroup_id) continue;
    if (absl::StartsWith(l.data_path, "zero-hop")) {
      ++processes;
    } else if (proxied.empty()) {
      proxied = l.data_path;
    }
  }
  if (processes == 0 && !zero_hop.holder_connected) {
    return absl::StrCat("proxy (the zero-hop holder is not reachable: ", zero_hop.holder_problem,
                        ")");
  }
  // Its processes' own reason (no CAP_SYS_PTRACE for their uid, ...), not
  // "none started".
  if (processes == 0 && !proxied.empty()) return proxied;
  if (processes == 0) return "proxy (no process started with ktrust exec or an OCI listenerPath)";
  return absl::StrCat("zero-hop (", processes, processes == 1 ? " process)" : " processes)");
}

control::KubernetesView Kubernetes(const Agent& agent, const Config& config) {
  control::KubernetesView v;
  const ClusterWatcher* cluster = agent.cluster();
  if (cluster == nullptr) return v;
  v.enabled = true;
  v.api_server = config.kubernetes.api_server;
  v.node = config.kubernetes.node_name;
  std::shared_ptr<const ClusterSnapshot> snapshot = cluster->Snapshot();
  v.synced = snapshot->synced;
  v.pods = static_cast<int64_t>(snapshot->pods->size());
  for (const auto& [name, ns] : *snapshot->namespaces) {
    auto label = ns.labels.find(config.kubernetes.namespace_label_key);
    if (label != ns.labels.end() && label->second == config.kubernetes.namespace_label_value) {
      ++v.namespaces_opted_in;
    }
  }
  // A pod's containers are workloads of their own: count pods by UID.
  std::set<std::string> enrolled, refused;
  for (const EnrolledWorkload& w : agent.workloads()) {
    if (!w.registered.pod) continue;
    const PodEnrolment& pod = *w.registered.pod;
    (pod.refusal_code.empty() ? enrolled : refused).insert(pod.uid);
  }
  v.pods_enrolled = static_cast<int64_t>(enrolled.size());
  v.pods_refused = static_cast<int64_t>(refused.size());
  ClusterWatcherStatus status = cluster->Status();
  std::vector<std::string> problems;
  for (const auto& [what, r] :
       {std::pair<const char*, const KubernetesResourceStatus&>{"pods", status.pods},
        {"namespaces", status.namespaces}}) {
    if (r.last_error.empty()) continue;
    problems.push_back(absl::StrCat(what, ": ", r.last_error, " (", r.consecutive_failures,
                                    " failures in a row, next try in ",
                                    absl::FormatDuration(r.last_backoff), ")"));
  }
  v.problem = absl::StrJoin(problems, "; ");
  return v;
}

control::StatusView Status(const Agent& agent) {
  control::StatusView s;
  std::shared_ptr<const Config> config = agent.config();
  s.version = kVersion;
  s.node = config->agent.node_name;
  s.started = UnixSeconds(agent.started());
  s.data_path = agent.engine().data_path();
  s.data_path_reason = agent.engine().data_path_reason();
  const KernelFeatures& f = agent.bpf().features();
  s.kernel_features = {
      {"btf", f.btf(), "/sys/kernel/btf/vmlinux"},
      {"cgroup2", !f.cgroup2_mount().empty(), f.cgroup2_mount()},
      {"sock_addr_hooks", f.sock_addr_hooks(), "cgroup connect/sendmsg/getpeername hooks"},
      {"sk_lookup", f.sk_lookup(), "inbound steering (Linux 5.9+)"},
      {"ring_buffer", f.ring_buffer(), "interception events (Linux 5.8+)"},
      {"ktls", agent.engine().data_path() != "userspace", agent.engine().data_path_reason()},
  };
  const zerohop::ZeroHopFeatures& z = agent.zero_hop().features();
  s.kernel_features.push_back(ZeroHopKernelFeature("zero_hop_outbound", z.outbound_missing()));
  s.kernel_features.push_back(ZeroHopKernelFeature("zero_hop_inbound", z.inbound_missing()));
  s.zero_hop = ZeroHop(agent, *config);
  s.kubernetes = Kubernetes(agent, *config);
  std::vector<BpfLoader::Attachment> attachments = agent.bpf().attachments();
  s.bpf.attached = !attachments.empty();
  s.bpf.pin_dir = config->agent.bpf_pin_dir;
  for (const auto& a : attachments) {
    s.bpf.attachments.push_back(a.pin_path);
    if (a.adopted) ++s.bpf.adopted;
  }
  ReloadState reload = agent.reload_state();
  s.config = {config->source_path, static_cast<int64_t>(reload.generation),
              UnixSeconds(reload.loaded_at), reload.last_ok, reload.last_error};
  s.ca = {config->trust_domain, UnixSeconds(agent.identities().ca_expires_at())};
  s.bundle_expires_at = s.ca.expires_at;
  const EngineCounters& c = agent.engine().counters();
  s.counts.connections_active = static_cast<int64_t>(c.active.load());
  s.counts.connections_total = static_cast<int64_t>(c.accepted.load());
  s.counts.handshakes_failed = static_cast<int64_t>(c.handshake_failures.load());
  s.counts.denied = static_cast<int64_t>(c.denied.load());
  s.counts.workloads = static_cast<int64_t>(agent.workloads().size());
  DrainState drain = agent.drain();
  s.drain = {drain.draining,
             drain.reason,
             drain.draining ? UnixSeconds(drain.since) : 0,
             drain.draining ? UnixSeconds(drain.deadline) : 0,
             drain.draining ? s.counts.connections_active : 0,
             drain.draining ? static_cast<int64_t>(c.handshaking.load()) : 0,
             drain.successor,
             drain.predecessor,
             static_cast<int64_t>(drain.moved),
             static_cast<int64_t>(drain.moved_in)};
  s.warnings = ServerIdentityWarnings(*config);
  s.not_ready_reason = agent.not_ready_reason();
  s.ready = s.not_ready_reason.empty();
  return s;
}

control::PodView PodOf(const EnrolledWorkload& w) {
  if (!w.registered.pod) return {};
  const PodEnrolment& pod = *w.registered.pod;
  return {pod.namespace_name, pod.name, pod.service_account, pod.uid};
}

// Each pod workload's pod, by workload name (what a connection carries).
std::map<std::string, control::PodView> PodsByWorkload(const Agent& agent) {
  std::map<std::string, control::PodView> pods;
  for (const EnrolledWorkload& w : agent.workloads()) {
    if (w.registered.pod) pods.emplace(w.name, PodOf(w));
  }
  return pods;
}

control::ConnectionListView Connections(const Agent& agent,
                                        const control::ConnectionsParams& filter) {
  control::ConnectionListView out;
  absl::Time now = absl::Now();
  std::map<std::string, control::PodView> pods = PodsByWorkload(agent);
  auto pod_of = [&pods](const std::string& workload) {
    auto it = pods.find(workload);
    return it == pods.end() ? control::PodView{} : it->second;
  };
  for (const ConnectionSnapshot& c : agent.engine().connections().Snapshot()) {
    if (!control::Matches(filter, c.workload, c.info.peer_id)) continue;
    control::ConnectionView v;
    v.id = c.id;
    v.direction = std::string(DirectionName(c.direction));
    v.workload = c.workload;
    v.local_id = c.info.local_id;
    v.peer_id = c.info.peer_id;
    v.app_address = c.info.app_address;
    v.wire_local = c.info.wire_local;
    v.wire_peer = c.info.wire_peer;
    v.tls_version = c.info.tls_version;
    v.cipher = c.info.cipher;
    v.data_path = c.info.data_path;
    v.state = std::string(StateName(c.state));
    v.bytes_to_wire = c.bytes_to_wire;
    v.bytes_from_wire = c.bytes_from_wire;
    v.age_seconds = absl::ToDoubleSeconds(now - c.started);
    v.pod = pod_of(v.workload);
    out.connections.push_back(std::move(v));
  }
  // Zero-hop ones: the agent only knows them, the workloads hold them.
  for (const zerohop::ZeroHopConnection& c : agent.zero_hop().connections()) {
    if (!control::Matches(filter, c.workload, c.peer_id)) continue;
    control::ConnectionView v;
    v.id = c.cookie;
    v.direction = c.direction;
    v.workload = c.workload;
    v.local_id = c.local_id;
    v.peer_id = c.peer_id;
    v.wire_local = c.local;
    v.wire_peer = c.peer;
    v.tls_version = "TLSv1.3";
    v.cipher = c.cipher;
    v.data_path = "zero-hop";
    v.state = "established";
    v.bytes_to_wire = c.bytes_sent;
    v.bytes_from_wire = c.bytes_received;
    v.age_seconds = absl::ToDoubleSeconds(now - c.started);
    v.pod = pod_of(v.workload);
    out.connections.push_back(std::move(v));
  }
  return out;
}

control::WorkloadListView Workloads(const Agent& agent) {
  control::WorkloadListView out;
  std::map<std::string, absl::Time> expiry;
  for (const auto& issued : agent.identities().Snapshot()) expiry[issued.id] = issued.not_after;
  std::map<uint64_t, ServedPod> pods;
  for (ServedPod& p : agent.pods()) pods[p.netns_inode] = std::move(p);
  std::shared_ptr<const Config> config = agent.config();
  ZeroHopStatus zero_hop = agent.zero_hop().status();
  for (const EnrolledWorkload& w : agent.workloads()) {
    control::WorkloadView v;
    v.data_path = WorkloadDataPath(agent, *config, w, zero_hop);
    v.name = w.name;
    v.cgroup = w.registered.cgroup_path;
    v.cgroup_id = w.registered.cgroup_id;
    v.spiffe_id = w.registered.id ? w.registered.id->ToString() : "";
    v.problem = w.registered.id_problem;
    v.mode = std::string(WorkloadModeName(w.mode));
    v.ports = w.ports;
    v.pod = PodOf(w);
    auto it = expiry.find(v.spiffe_id);
    v.svid_expires_at = it == expiry.end() ? 0 : UnixSeconds(it->second);
    if (w.pod_netns == 0) {
      v.network = "node";
    } else if (auto pod = pods.find(w.pod_netns); pod == pods.end()) {
      v.network = "pod (not served yet)";
    } else if (!pod->second.problem.empty()) {
      v.network = absl::StrCat("pod (not served: ", pod->second.problem, ")");
    } else {
      const ServedPod& served = pod->second;
      v.network = served.addresses.empty()
                      ? "pod (no address yet)"
                      : absl::StrCat("pod ", absl::StrJoin(served.addresses, ","));
      if (!served.shared.empty()) {
        absl::StrAppend(&v.network,
                        " (refused, on another pod too: ", absl::StrJoin(served.shared, ","), ")");
      }
    }
    out.workloads.push_back(std::move(v));
  }
  return out;
}

absl::StatusOr<control::PolicyCheckView> PolicyCheck(const Agent& agent,
                                                     const control::PolicyCheckParams& p) {
  auto from = SpiffeId::Parse(p.from);
  if (!from.ok())
    return absl::InvalidArgumentError(absl::StrCat("from: ", from.status().message()));
  std::shared_ptr<const Config> config = agent.config();
  bool known = false;
  for (const auto& w : config->workloads) known |= w.name == p.to;
  if (!known) return absl::NotFoundError(absl::StrCat("no workload named \"", p.to, "\""));
  // The workload's ID when one of its cgroups is registered.
  std::optional<SpiffeId> to_id;
  for (const EnrolledWorkload& w : agent.workloads()) {
    if (w.name == p.to && w.registered.id) to_id = w.registered.id;
  }
  PolicyCheckResult r = agent.policy()->Check(*from, p.to, to_id ? &*to_id : nullptr, p.port);
  return control::PolicyCheckView{r.allowed, r.reason, r.origin};
}

}  // namespace

std::optional<control::DenialView> DenialOf(const ClosedConnection& closed) {
  // Identity, policy and unfinished handshakes; not I/O failures.
  if (!closed.result.refusal()) return std::nullopt;
  control::DenialView d;
  d.direction = std::string(DirectionName(closed.direction));
  d.workload = closed.workload;
  const ConnectionInfo& info = closed.info;
  d.peer_id = info.peer_id;
  d.result = std::string(closed.result.code());
  d.reason = closed.reason;
  if (closed.direction == Direction::kInbound) {
    d.peer_address = info.wire_peer;
    d.local_address = info.wire_local;
    d.port = PortOf(info.wire_local);
  } else {
    d.peer_address = info.wire_peer;
    d.local_address = info.app_address;
    d.port = PortOf(info.wire_peer);
  }
  return d;
}

void AgentStats::ConnectionClosed(const ClosedConnection& closed) {
  if (auto denial = DenialOf(closed)) denials_.Add(*std::move(denial));
  absl::MutexLock lock(&mu_);
  ++totals_.closed[{std::string(DirectionName(closed.direction)),
                    closed.info.data_path.empty() ? "none" : closed.info.data_path,
                    std::string(closed.result.code())}];
  totals_.bytes_to_wire += closed.bytes_to_wire;
  totals_.bytes_from_wire += closed.bytes_from_wire;
}

void AgentStats::Intercepted(const InterceptionEvent& event) {
  std::string reason(ReasonName(event.reason));
  {
    absl::MutexLock lock(&mu_);
    ++totals_.events[reason];
  }
  if (event.type == KTRUST_EVENT_DENIED) {
    control::DenialView d;
    d.direction = event.cgroup_id ? "outbound" : "inbound";
    d.peer_address = event.cgroup_id ? event.destination.ToString() : event.source.ToString();
    d.local_address = event.cgroup_id ? event.source.ToString() : event.destination.ToString();
    d.port = event.destination.port();
    d.result = reason;
    d.reason =
        reason == "udp_denied"
            ? "UDP to a mesh destination: ktrust tunnels TCP only, so enforce mode refuses it"
        : reason == "sk_lookup_no_listener"
            ? "enforced port and no ktrustd listener (agent down or restarting)"
        : reason == "sk_lookup_unserved_netns"
            ? "enforced port of a pod that has no ktrustd listener (agent down or restarting, "
              "or the pod not served: see ktrust workloads)"
        : reason == "connect_unclassified"
            ? "a new cgroup the agent had not classified yet: refused until it is (a moment)"
        : reason == "connect_unserved_netns"
            ? "mesh connection from a network namespace where ktrustd has no outbound listener "
              "(agent down or restarting, or the pod not served: see ktrust workloads)"
        : reason == "sk_lookup_udp_refused"
            ? "UDP to an enforced port: datagrams carry no identity, so enforce mode drops them"
            : absl::StrCat("refused by the interception programs (", reason, ")");
    denials_.Add(std::move(d));
  }
  // A workload spraying UDP at the mesh must not flood the log: counted
  // above and in the denial log, logged to a budget per reason.
  LogRefusal(event.type == KTRUST_EVENT_DENIED ? spdlog::level::warn : spdlog::level::debug,
             {{"event", absl::StrCat("intercept_", EventTypeName(event.type))},
              {"reason", reason},
              {"cgroup_id", event.cgroup_id},
              {"pid", event.pid},
              {"protocol", event.protocol},
              {"source", event.source.ToString()},
              {"destination", event.destination.ToString()}},
             reason);
}

AgentStats::Totals AgentStats::totals() const {
  absl::MutexLock lock(&mu_);
  return totals_;
}

std::map<std::string, control::ControlHandler> ControlHandlers(const Agent& agent,
                                                               const AgentStats& stats) {
  std::map<std::string, control::ControlHandler> h;
  h[control::kMethodStatus] = [&agent](const nlohmann::json&) -> absl::StatusOr<nlohmann::json> {
    return nlohmann::json(Status(agent));
  };
  h[control::kMethodConnections] =
      [&agent](const nlohmann::json& params) -> absl::StatusOr<nlohmann::json> {
    auto p = control::ParseConnectionsParams(params);
    if (!p.ok()) return p.status();
    return nlohmann::json(Connections(agent, *p));
  };
  h[control::kMethodWorkloads] = [&agent](const nlohmann::json&) -> absl::StatusOr<nlohmann::json> {
    return nlohmann::json(Workloads(agent));
  };
  h[control::kMethodPolicyCheck] =
      [&agent](const nlohmann::json& params) -> absl::StatusOr<nlohmann::json> {
    auto p = control::ParsePolicyCheckParams(params);
    if (!p.ok()) return p.status();
    auto r = PolicyCheck(agent, *p);
    if (!r.ok()) return r.status();
    return nlohmann::json(*r);
  };
  h[control::kMethodDenials] =
      [&stats](const nlohmann::json& params) -> absl::StatusOr<nlohmann::json> {
    auto p = control::ParseDenialsParams(params);
    if (!p.ok()) return p.status();
    absl::Time since =
        p->since_seconds ? absl::Now() - absl::Seconds(*p->since_seconds) : absl::InfinitePast();
    return nlohmann::json(control::DenialListView{stats.denials().Since(since)});
  };
  return h;
}

std::string RenderMetrics(const Agent& agent, const AgentStats& stats) {
  control::PrometheusText m;
  const EngineCounters& c = agent.engine().counters();
  std::map<std::pair<std::string, std::string>, int> active;
  uint64_t live_to = 0, live_from = 0;
  for (const ConnectionSnapshot& s : agent.engine().connections().Snapshot()) {
    ++active[{std::string(DirectionName(s.direction)),
              s.info.data_path.empty() ? "none" : s.info.data_path}];
    live_to += s.bytes_to_wire;
    live_from += s.bytes_from_wire;
  }
  for (const char* dir : {"outbound", "inbound"}) {
    for (const char* path : {"ktls-sw", "userspace", "plaintext", "none"}) {
      m.Gauge("ktrust_connections_active", "Connections open now (none: still handshaking)",
              {{"direction", dir}, {"data_path", path}}, active[{dir, path}]);
    }
  }
  AgentStats::Totals t = stats.totals();
  for (const auto& [key, n] : t.closed) {
    const auto& [dir, path, result] = key;
    m.Counter("ktrust_connections_total", "Connections ended, by how they ended",
              {{"direction", dir}, {"data_path", path}, {"result", result}},
              static_cast<double>(n));
  }
  m.Counter("ktrust_connections_accepted_total", "Connections accepted by the engine", {},
            static_cast<double>(c.accepted.load()));
  m.Counter("ktrust_handshakes_failed_total", "TLS handshakes that failed or were refused", {},
            static_cast<double>(c.handshake_failures.load()));
  m.Counter("ktrust_handshakes_resumed_total",
            "TLS handshakes that resumed a session (verified and authorized as any other)", {},
            static_cast<double>(c.resumed_handshakes.load()));
  m.Counter("ktrust_refused_limit_total", "Connections refused over the connection limits", {},
            static_cast<double>(c.refused_limit.load()));
  for (const auto& [limit, n] :
       {std::pair<const char*, uint64_t>{"connections", c.refused_connections.load()},
        {"inbound_handshakes", c.refused_inbound_handshakes.load()},
        {"outbound_handshakes", c.refused_outbound_handshakes.load()},
        {"source_handshakes", c.refused_source_handshakes.load()},
        {"fds", c.refused_fd_limit.load()},
        {"memory", c.refused_memory.load()}}) {
    m.Counter("ktrust_refused_at_accept_total", "Connections refused at accept, by the limit",
              {{"limit", limit}}, static_cast<double>(n));
  }
  m.Counter("ktrust_handshakes_evicted_total",
            "Pending inbound handshakes reset to make room for a new client while the inbound "
            "handshake budget was full",
            {}, static_cast<double>(c.evicted_handshakes.load()));
  m.Gauge("ktrust_handshakes_pending", "Handshakes in progress", {{"direction", "inbound"}},
          static_cast<double>(c.handshaking_inbound.load()));
  m.Gauge("ktrust_handshakes_pending", "Handshakes in progress", {{"direction", "outbound"}},
          static_cast<double>(c.handshaking_outbound.load()));
  for (const auto& [result, n] : stats.denials().CountsByResult()) {
    m.Counter("ktrust_denials_total", "Refused connections and failed handshakes, by reason",
              {{"result", result}}, static_cast<double>(n));
  }
  m.Counter("ktrust_bytes_total", "Application bytes carried", {{"direction", "to_wire"}},
            static_cast<double>(t.bytes_to_wire + live_to));
  m.Counter("ktrust_bytes_total", "Application bytes carried", {{"direction", "from_wire"}},
            static_cast<double>(t.bytes_from_wire + live_from));
  absl::Time now = absl::Now();
  for (const auto& issued : agent.identities().Snapshot()) {
    m.Gauge("ktrust_svid_expiry_seconds", "Seconds until the workload SVID expires",
            {{"workload", issued.workload}, {"spiffe_id", issued.id}},
            absl::ToDoubleSeconds(issued.not_after - now));
  }
  absl::Time ca = agent.identities().ca_expires_at();
  if (ca != absl::InfinitePast()) {
    m.Gauge("ktrust_ca_expiry_seconds", "Seconds until the issuing CA expires", {},
            absl::ToDoubleSeconds(ca - now));
  }
  ReloadState reload = agent.reload_state();
  m.Gauge("ktrust_config_generation", "Configurations applied since start", {},
          static_cast<double>(reload.generation));
  m.Gauge("ktrust_config_last_reload_ok", "1 if the last reload succeeded", {},
          reload.last_ok ? 1 : 0);
  if (auto counters = agent.bpf().maps().Counters(); counters.ok()) {
    for (uint32_t i = 0; i < KTRUST_REASON_MAX; ++i) {
      m.Counter("ktrust_bpf_events_total", "Interception decisions in the kernel, by reason",
                {{"reason", std::string(ReasonName(i))}}, static_cast<double>((*counters)[i]));
    }
  }
  m.Counter("ktrust_enrolment_incomplete_total",
            "Enrolment passes that failed or could not read the whole cgroup tree or a pod's "
            "namespace, and so removed nothing",
            {}, static_cast<double>(agent.incomplete_enrolment_passes()));
  m.Gauge("ktrust_workloads", "Registered workload cgroups", {},
          static_cast<double>(agent.workloads().size()));
  double served = 0, unserved = 0;
  for (const ServedPod& pod : agent.pods()) (pod.problem.empty() ? served : unserved) += 1;
  m.Gauge("ktrust_pod_namespaces", "Pod network namespaces of enrolled workloads, by state",
          {{"state", "served"}}, served);
  m.Gauge("ktrust_pod_namespaces", "Pod network namespaces of enrolled workloads, by state",
          {{"state", "unserved"}}, unserved);
  return m.Finish();
}

}  // namespace ktrust
