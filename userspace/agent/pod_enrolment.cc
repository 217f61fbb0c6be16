#include "ktrust/agent/pod_enrolment.h"

#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "ktrust/agent/pod_cgroup.h"

namespace ktrust {
namespace {

absl::StatusOr<uint16_t> PortNumber(absl::string_view text) {
  uint32_t port = 0;
  if (text.empty() || !std::all_of(text.begin(), text.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(text, &port) || port == 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", text, "\" is not a port (a number from 1 to 65535)"));
  }
  return static_cast<uint16_t>(port);
}

std::string PodName(const KubernetesPod& pod) {
  return absl::StrCat(pod.namespace_name, "/", pod.name);
}

// The pods that claim a cgroup's UID: the pod of that UID, and a mirror
// pod naming it (a static pod's). More than one is a conflict.
std::map<std::string, std::vector<const KubernetesPod*>> PodsByCgroupUid(
    const ClusterSnapshot& cluster) {
  std::map<std::string, std::vector<const KubernetesPod*>> by_uid;
  for (const auto& [uid, pod] : *cluster.pods) {
    by_uid[uid].push_back(&pod);
    auto mirror = pod.annotations.find(kMirrorPodAnnotation);
    if (mirror != pod.annotations.end() && mirror->second != uid) {
      by_uid[mirror->second].push_back(&pod);
    }
  }
  return by_uid;
}

// The declared TCP ports of the pod's containers (the API server fills in
// "TCP" when a port names no protocol).
std::vector<uint16_t> DeclaredTcpPorts(const KubernetesPod& pod) {
  std::set<uint16_t> ports;
  for (const KubernetesContainerPort& p : pod.ports) {
    if ((p.protocol.empty() || p.protocol == "TCP") && p.port != 0) ports.insert(p.port);
  }
  return {ports.begin(), ports.end()};
}

// The inbound ports a pod asks to have enforced: its ports annotation, or
// else its containers' declared ports; `from` (if given) says which.
absl::StatusOr<std::vector<uint16_t>> InboundPortsOf(const Config& config, const KubernetesPod& pod,
                                                     std::string* from) {
  auto a = pod.annotations.find(config.kubernetes.ports_annotation);
  if (a == pod.annotations.end()) {
    if (from != nullptr) *from = "its containers' declared ports";
    return DeclaredTcpPorts(pod);
  }
  if (from != nullptr) *from = absl::StrCat("annotation ", config.kubernetes.ports_annotation);
  auto parsed = ParsePortsAnnotation(a->second);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "annotation ", config.kubernetes.ports_annotation, ": ", parsed.status().message()));
  }
  return parsed;
}

// What the last pass enrolled this cgroup as, when it was a resolved pod.
const PodEnrolment* ResolvedBefore(const RoutingTable& before, uint64_t cgroup_id) {
  for (const EnrolledWorkload& e : before.enrolled) {
    if (e.registered.cgroup_id != cgroup_id || !e.registered.pod) continue;
    const PodEnrolment& pod = *e.registered.pod;
    // Resolved, deleted, or refused with its ports still enforced (its
    // namespace could not be read): a pod whose ports were enforced keeps
    // them, refusing, until its cgroup goes.
    if (pod.refusal_code.empty() || pod.refusal_code == pod_refusal::kDeleted ||
        !pod.ports.empty()) {
      return &pod;
    }
  }
  return nullptr;
}

// One pod cgroup's answer: left out (nullopt), or its workload.
std::optional<RegisteredWorkload> Resolve(
    const Config& config, const ClusterSnapshot& cluster,
    const std::map<std::string, std::vector<const KubernetesPod*>>& by_uid,
    const ScannedCgroup& cgroup, const RoutingTable& before) {
  auto named = PodOfCgroup(cgroup.path);
  if (absl::IsNotFound(named.status())) return std::nullopt;
  RegisteredWorkload r{kPodWorkloadIndex, cgroup.path, cgroup.id, std::nullopt, "", PodEnrolment{}};
  PodEnrolment& pod = *r.pod;
  if (!named.ok()) {
    pod.workload = "pod:invalid";
    RefusePod(
        r, pod_refusal::kCgroupInvalid,
        absl::StrCat(named.status().message(), ": the cgroup cannot be trusted to name one pod"));
    return r;
  }
  pod.uid = named->pod_uid;
  pod.workload = absl::StrCat("pod:", pod.uid);
  if (!cluster.synced) {
    RefusePod(r, pod_refusal::kNotSynced,
              "the agent has not read this node's pods and the namespaces from the Kubernetes "
              "API server yet; pods' mesh connections are refused until it has");
    return r;
  }
  auto claimed = by_uid.find(pod.uid);
  if (claimed == by_uid.end()) {
    if (const PodEnrolment* was = ResolvedBefore(before, cgroup.id)) {
      // Deleted (or force-deleted) while its processes run: its ports stay
      // enforced, and refuse, until kubelet removes the cgroup.
      pod = *was;
      RefusePod(r, pod_refusal::kDeleted,
                absl::StrCat("pod ", was->namespace_name, "/", was->name,
                             " is no longer in the Kubernetes API server but its cgroup remains; "
                             "its connections are refused until the cgroup goes"));
      return r;
    }
    RefusePod(r, pod_refusal::kUnknown,
              absl::StrCat("pod ", pod.uid,
                           " is not among this node's pods in the Kubernetes API server (not "
                           "created there yet, or not this node's)"));
    return r;
  }
  if (claimed->second.size() > 1) {
    std::vector<std::string> names;
    for (const KubernetesPod* p : claimed->second) names.push_back(PodName(*p));
    RefusePod(r, pod_refusal::kUidConflict,
              absl::StrCat("pod UID ", pod.uid, " is claimed by ", names.size(),
                           " pods in the Kubernetes API server (", absl::StrJoin(names, ", "),
                           ", by UID or kubernetes.io/config.mirror): none is trusted"));
    // Anyone who may create a pod can claim another's UID with the mirror
    // annotation: that must not open the ports of the pod whose own UID it
    // is, nor those an earlier pass enforced. They stay enforced, refusing.
    std::set<uint16_t> kept;
    for (const KubernetesPod* p : claimed->second) {
      if (p->uid != pod.uid) continue;
      auto ports = InboundPortsOf(config, *p, nullptr);
      for (uint16_t port : ports.ok() ? *ports : DeclaredTcpPorts(*p)) kept.insert(port);
    }
    if (const PodEnrolment* was = ResolvedBefore(before, cgroup.id)) {
      kept.insert(was->ports.begin(), was->ports.end());
    }
    pod.ports.assign(kept.begin(), kept.end());
    return r;
  }
  const KubernetesPod& found = *claimed->second.front();
  pod.namespace_name = found.namespace_name;
  pod.name = found.name;
  pod.service_account = found.service_account;
  pod.ips = found.ips;
  pod.workload = PodName(found);
  if (found.node_name != config.kubernetes.node_name) {
    RefusePod(r, pod_refusal::kOtherNode,
              absl::StrCat("pod ", pod.workload, " is on node \"", found.node_name,
                           "\" according to the Kubernetes API server, not on this node (",
                           config.kubernetes.node_name, ")"));
    return r;
  }
  const KubernetesNamespace* ns = cluster.FindNamespace(found.namespace_name);
  if (ns == nullptr) {
    RefusePod(r, pod_refusal::kNamespaceUnknown,
              absl::StrCat("the namespace of pod ", pod.workload,
                           " is not known to the agent yet (the API server has not sent it), so "
                           "whether it is opted in is not known"));
    return r;
  }
  auto label = ns->labels.find(config.kubernetes.namespace_label_key);
  if (label == ns->labels.end() || label->second != config.kubernetes.namespace_label_value) {
    return std::nullopt;  // not opted in: left alone
  }
  if (found.host_network) {
    RefusePod(r, pod_refusal::kHostNetwork,
              absl::StrCat("pod ", pod.workload,
                           " uses the node's network (hostNetwork): its connections cannot be told "
                           "from the node's, so it is not given an identity"));
    return r;
  }
  std::string ports_from;
  auto inbound = InboundPortsOf(config, found, &ports_from);
  if (!inbound.ok()) {
    RefusePod(r, pod_refusal::kPortsInvalid,
              absl::StrCat("pod ", pod.workload, ": ", inbound.status().message()));
    return r;
  }
  std::vector<uint16_t> ports = *std::move(inbound);
  if (ports.size() > kMaxPodPorts) {
    RefusePod(r, pod_refusal::kPortsInvalid,
              absl::StrCat("pod ", pod.workload, ": ", ports_from, " name ", ports.size(),
                           " inbound ports, more than ", kMaxPodPorts));
    return r;
  }
  if (std::count(ports.begin(), ports.end(), config.agent.outbound_port) != 0) {
    RefusePod(r, pod_refusal::kPortsInvalid,
              absl::StrCat("pod ", pod.workload, ": ", ports_from, " include port ",
                           config.agent.outbound_port,
                           ", where the agent takes the pod's mesh connections "
                           "(agent.outbound_port)"));
    return r;
  }
  TemplateValues values;
  values.trust_domain = config.trust_domain;
  values.node = config.agent.node_name;
  values.pod_namespace = found.namespace_name;
  values.service_account = found.service_account;
  values.pod_name = found.name;
  values.pod_uid = pod.uid;
  auto id = RenderSpiffeId(config.kubernetes.spiffe_id, values);
  if (!id.ok()) {
    RefusePod(
        r, pod_refusal::kIdInvalid,
        absl::StrCat("pod ", pod.workload, ": the SPIFFE ID template ", config.kubernetes.spiffe_id,
                     " gives no valid ID: ", id.status().message()));
    return r;
  }
  r.id = *std::move(id);
  pod.ports = std::move(ports);
  return r;
}

}  // namespace

absl::StatusOr<std::vector<uint16_t>> ParsePortsAnnotation(absl::string_view value) {
  std::set<uint16_t> ports;
  absl::string_view whole = absl::StripAsciiWhitespace(value);
  if (whole.empty() || whole == "none") return std::vector<uint16_t>{};
  for (absl::string_view item : absl::StrSplit(whole, ',')) {
    item = absl::StripAsciiWhitespace(item);
    if (item.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("\"", value, "\" has an empty item"));
    }
    size_t dash = item.find('-');
    auto first = PortNumber(item.substr(0, dash));
    if (!first.ok()) return first.status();
    uint16_t last = *first;
    if (dash != absl::string_view::npos) {
      auto parsed = PortNumber(item.substr(dash + 1));
      if (!parsed.ok()) return parsed.status();
      if (*parsed < *first) {
        return absl::InvalidArgumentError(
            absl::StrCat("range \"", item, "\" ends before it starts"));
      }
      last = *parsed;
    }
    // Bounded before it is expanded: "1-65535" must not fill memory.
    if (static_cast<size_t>(last - *first) + ports.size() >= kMaxPodPorts) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", value, "\" names more than ", kMaxPodPorts, " ports"));
    }
    for (uint32_t p = *first; p <= last; ++p) ports.insert(static_cast<uint16_t>(p));
  }
  return std::vector<uint16_t>(ports.begin(), ports.end());
}

void RefusePod(RegisteredWorkload& pod, absl::string_view code, std::string reason) {
  pod.id.reset();
  pod.id_problem = absl::StrCat(code, ": ", reason);
  pod.pod->refusal_code = std::string(code);
  pod.pod->refusal = std::move(reason);
  // Only a deleted pod keeps its ports (refusing); the others enforce none.
  if (code != pod_refusal::kDeleted) pod.pod->ports.clear();
}

std::vector<RegisteredWorkload> ResolvePodCgroups(const Config& config,
                                                  const ClusterSnapshot& cluster,
                                                  const std::vector<ScannedCgroup>& cgroups,
                                                  uint64_t own_cgroup, const RoutingTable& before) {
  std::vector<RegisteredWorkload> out;
  auto by_uid = PodsByCgroupUid(cluster);
  for (const ScannedCgroup& cgroup : cgroups) {
    if (cgroup.id == own_cgroup) continue;
    if (auto r = Resolve(config, cluster, by_uid, cgroup, before)) out.push_back(*std::move(r));
  }
  return out;
}

void CheckPodNetns(RegisteredWorkload& r, const PodNetnsFacts& facts) {
  if (!r.pod || !r.pod->refusal_code.empty()) return;
  const PodEnrolment& pod = *r.pod;
  if (!facts.read.ok()) {
    // Not shown to be the pod's, so refused this pass; but a failed read
    // (EMFILE, ENOMEM) says nothing about the pod: its ports stay enforced,
    // refusing, instead of taking plaintext until the next pass reads it.
    std::vector<uint16_t> ports = pod.ports;
    RefusePod(r, pod_refusal::kNetnsMismatch,
              absl::StrCat("the network namespace of the cgroup's processes could not be read (",
                           facts.read.message(), "); looked at again at the next pass"));
    r.pod->ports = std::move(ports);
    return;
  }
  if (pod.ips.empty()) {
    RefusePod(r, pod_refusal::kNoIp,
              absl::StrCat("pod ", pod.workload,
                           " has no IP in the Kubernetes API server yet (status.podIPs), so its "
                           "network namespace cannot be checked"));
    return;
  }
  if (facts.node) {
    RefusePod(r, pod_refusal::kNetnsMismatch,
              absl::StrCat("the cgroup's processes are in the node's network namespace, but pod ",
                           pod.workload, " is not hostNetwork"));
    return;
  }
  for (const std::string& ip : pod.ips) {
    if (std::count(facts.addresses.begin(), facts.addresses.end(), ip) != 0) return;
  }
  RefusePod(r, pod_refusal::kNetnsMismatch,
            absl::StrCat("the network namespace of the cgroup's processes holds none of pod ",
                         pod.workload, "'s IPs (", absl::StrJoin(pod.ips, ", "), "; it has ",
                         facts.addresses.empty() ? "none" : absl::StrJoin(facts.addresses, ", "),
                         "): it is not the pod's"));
}

absl::StatusOr<KubernetesApiOptions> ApiOptionsOf(const KubernetesSettings& settings) {
  KubernetesApiOptions options;
  absl::string_view url = settings.api_server;
  if (!absl::ConsumePrefix(&url, "https://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("kubernetes.api_server \"", settings.api_server, "\" is not an https URL"));
  }
  absl::ConsumeSuffix(&url, "/");
  absl::string_view port;
  if (absl::ConsumePrefix(&url, "[")) {
    size_t close = url.find(']');
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("kubernetes.api_server \"", settings.api_server, "\": no closing ']'"));
    }
    options.host = std::string(url.substr(0, close));
    url.remove_prefix(close + 1);
    if (absl::ConsumePrefix(&url, ":")) port = url;
  } else {
    size_t colon = url.find(':');
    options.host = std::string(url.substr(0, colon));
    if (colon != absl::string_view::npos) port = url.substr(colon + 1);
  }
  if (!port.empty()) {
    auto number = PortNumber(port);
    if (!number.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "kubernetes.api_server \"", settings.api_server, "\": ", number.status().message()));
    }
    options.port = *number;
  }
  options.token_file = settings.token_file;
  options.ca_file = settings.ca_file;
  options.node_name = settings.node_name;
  if (auto st = options.Validate(); !st.ok()) return st;
  return options;
}

}  // namespace ktrust
