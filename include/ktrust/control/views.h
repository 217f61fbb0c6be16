// What the agent reports over the control socket and the CLI prints: plain
// structs with nlohmann to_json/from_json (found by ADL, so
// `nlohmann::json(view)` and `json.get<StatusView>()` work).
//
// Times are unix seconds; 0 means "not known / not yet". from_json takes
// missing fields as their defaults (an older agent may not send them) but
// throws nlohmann::json::exception on a mistyped one: use ViewFromJson to get
// a Status instead.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace ktrust::control {

struct KernelFeatureView {
  std::string name;  // "btf", "ktls", "sk_lookup", ...
  bool present = false;
  std::string detail;  // why not, or which version
};

struct BpfView {
  bool attached = false;
  std::string pin_dir;
  std::vector<std::string> attachments;  // e.g. "connect4 on /sys/fs/cgroup/unified"
  int64_t adopted = 0;                   // links kept from a previous agent run
};

struct ConfigView {
  std::string path;
  int64_t generation = 0;  // bumped on each successful (re)load
  int64_t loaded_at = 0;
  bool last_reload_ok = true;
  std::string last_reload_error;
};

struct CaView {
  std::string trust_domain;
  int64_t expires_at = 0;
};

struct CountsView {
  int64_t connections_active = 0;
  int64_t connections_total = 0;
  int64_t handshakes_failed = 0;
  int64_t denied = 0;
  int64_t workloads = 0;
};

// A seccomp listener of a process started by `ktrust exec` or an OCI
// runtime, as the agent serves it.
struct ZeroHopListenerView {
  int64_t pid = 0;
  std::string source;    // "exec" or "oci"
  std::string workload;  // empty: no workload claims its cgroup
  // "zero-hop", "zero-hop inbound (outbound proxied: ...)" or "proxy (why)".
  std::string data_path;
};

struct ZeroHopView {
  bool holder_connected = false;
  std::string holder_socket;
  std::string holder_problem;  // why not connected, in words
  std::vector<ZeroHopListenerView> listeners;
};

// A stopping agent, and the agents around it in an upgrade.
struct DrainView {
  bool draining = false;  // no longer accepting; carrying what is open
  std::string reason;     // why: "SIGTERM", "handed over to ktrustd pid 123"
  int64_t since = 0;
  int64_t deadline = 0;     // then what is still open is closed
  int64_t connections = 0;  // still open (handshakes included)
  int64_t handshakes = 0;   // of which still in their handshake
  std::string successor;    // in words; empty: none
  std::string predecessor;  // in words; empty: none
  // Handover: connections moved to the successor, and taken from the
  // predecessor.
  int64_t moved = 0;
  int64_t moved_in = 0;
};

// Kubernetes mode: the API server's list and watch, and this node's pods.
struct KubernetesView {
  bool enabled = false;
  bool synced = false;  // a complete list of pods and namespaces has been read
  std::string api_server;
  std::string node;  // the spec.nodeName whose pods are watched
  int64_t pods = 0;  // this node's pods the API server lists
  int64_t namespaces_opted_in = 0;
  int64_t pods_enrolled = 0;  // running here, with their identity
  int64_t pods_refused = 0;   // running here, their mesh connections refused (`ktrust workloads`)
  std::string problem;        // the watch's last failure in words; empty while healthy
};

// Method "status".
struct StatusView {
  std::string version;  // ktrustd's
  std::string node;
  int64_t started = 0;
  std::string data_path;  // "ktls-sw" or "userspace"
  std::string data_path_reason;
  std::vector<KernelFeatureView> kernel_features;
  ZeroHopView zero_hop;
  KubernetesView kubernetes;
  BpfView bpf;
  ConfigView config;
  CaView ca;
  int64_t bundle_expires_at = 0;
  CountsView counts;
  DrainView drain;
  bool ready = false;
  std::string not_ready_reason;
  // What the operator should know about the configuration in force, in
  // words: e.g. mesh destinations whose servers may be any workload of the
  // trust domain (no expected_servers rule). Empty when there is nothing.
  std::vector<std::string> warnings;
};

// The Kubernetes pod a workload is (Kubernetes mode), as JSON
// {"namespace", "name", "service_account", "uid"}; every field empty for a
// workload that is no pod.
struct PodView {
  std::string namespace_name;  // "namespace" in JSON
  std::string name;
  std::string service_account;
  std::string uid;  // the UID its cgroups name (kubelet's, for a static pod)
  bool empty() const { return namespace_name.empty() && name.empty() && uid.empty(); }
};

// One element of method "connections".
struct ConnectionView {
  uint64_t id = 0;
  std::string direction;  // "outbound" or "inbound"
  std::string workload;
  std::string local_id;  // our SPIFFE ID
  std::string peer_id;   // the verified peer's SPIFFE ID, empty before the handshake
  std::string app_address;
  std::string wire_local;
  std::string wire_peer;
  std::string tls_version;
  std::string cipher;
  std::string data_path;
  std::string state;
  uint64_t bytes_to_wire = 0;
  uint64_t bytes_from_wire = 0;
  double age_seconds = 0;
  PodView pod;  // the local workload's pod, in Kubernetes mode
};

// One element of method "workloads".
struct WorkloadView {
  std::string name;
  std::string cgroup;
  uint64_t cgroup_id = 0;
  std::string spiffe_id;
  std::string mode;  // "enforce" or "permissive"
  std::vector<uint16_t> ports;
  int64_t svid_expires_at = 0;  // 0: no SVID issued yet
  // "node" (the agent's network namespace), "pod <its addresses>", or
  // "pod (not served: <why>)".
  std::string network;
  // Why this cgroup has no SPIFFE ID (its template gives none), in words;
  // empty when it has one. Such a cgroup is enrolled and its connections refused.
  std::string problem;
  // "proxy"; for data_path zero_hop "zero-hop (N processes)", or "proxy (why
  // not zero-hop)".
  std::string data_path;
  // Kubernetes mode: the pod this cgroup belongs to. A pod the agent could
  // not resolve has its uid only, and `problem` says why it is refused.
  PodView pod;
};

// Method "policy.check".
struct PolicyCheckView {
  bool allowed = false;
  std::string reason;
  std::string rule;  // where the deciding rule is written, e.g. "policy.yaml:12"; may be empty
};

// One element of method "denials".
struct DenialView {
  double time = 0;        // unix seconds
  std::string direction;  // "outbound" or "inbound"
  std::string workload;
  std::string peer_id;
  std::string peer_address;
  std::string local_address;
  uint16_t port = 0;
  // Stable code: a connection's ("denied", "expired", ...: CloseResult::code()
  // in the dataplane) or the interception programs' ("udp_denied", ...).
  std::string result;
  std::string reason;  // words
};

// The results of the list methods: {"connections": [...]} and so on.
struct ConnectionListView {
  std::vector<ConnectionView> connections;
};
struct WorkloadListView {
  std::vector<WorkloadView> workloads;
};
struct DenialListView {
  std::vector<DenialView> denials;
};

#define KTRUST_CONTROL_VIEW_JSON(View)            \
  void to_json(nlohmann::json& j, const View& v); \
  void from_json(const nlohmann::json& j, View& v);
KTRUST_CONTROL_VIEW_JSON(PodView)
KTRUST_CONTROL_VIEW_JSON(KernelFeatureView)
KTRUST_CONTROL_VIEW_JSON(ZeroHopListenerView)
KTRUST_CONTROL_VIEW_JSON(ZeroHopView)
KTRUST_CONTROL_VIEW_JSON(BpfView)
KTRUST_CONTROL_VIEW_JSON(ConfigView)
KTRUST_CONTROL_VIEW_JSON(CaView)
KTRUST_CONTROL_VIEW_JSON(CountsView)
KTRUST_CONTROL_VIEW_JSON(DrainView)
KTRUST_CONTROL_VIEW_JSON(StatusView)
KTRUST_CONTROL_VIEW_JSON(ConnectionView)
KTRUST_CONTROL_VIEW_JSON(WorkloadView)
KTRUST_CONTROL_VIEW_JSON(PolicyCheckView)
KTRUST_CONTROL_VIEW_JSON(DenialView)
KTRUST_CONTROL_VIEW_JSON(ConnectionListView)
KTRUST_CONTROL_VIEW_JSON(WorkloadListView)
KTRUST_CONTROL_VIEW_JSON(DenialListView)
#undef KTRUST_CONTROL_VIEW_JSON

// from_json reports a mistyped field as this, naming the field ("bpf.adopted").
struct MistypedField : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// A view from a result, with a mistyped field as an InvalidArgument error.
template <typename View>
absl::StatusOr<View> ViewFromJson(const nlohmann::json& j) {
  if (!j.is_object()) return absl::InvalidArgumentError("the result is not a JSON object");
  try {
    return j.get<View>();
  } catch (const MistypedField& e) {
    return absl::InvalidArgumentError(absl::StrCat("field \"", e.what(), "\" has the wrong type"));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("unexpected result: ", e.what()));
  }
}

}  // namespace ktrust::control
