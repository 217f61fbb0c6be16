#include "ktrust/control/views.h"

namespace ktrust::control {

namespace {

using nlohmann::json;

// A missing or null field keeps its default; a mistyped one throws
// MistypedField with the field's path.
template <typename T>
void Get(const json& j, const char* key, T& value) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  try {
    it->get_to(value);
  } catch (const MistypedField& inner) {
    absl::string_view inner_path = inner.what();
    throw MistypedField(inner_path.empty() ? std::string(key) : absl::StrCat(key, ".", inner_path));
  } catch (const json::exception&) {
    throw MistypedField(key);
  }
}

}  // namespace

// "namespace" is a C++ keyword: written by hand.
void to_json(json& j, const PodView& v) {
  j = json{{"namespace", v.namespace_name},
           {"name", v.name},
           {"service_account", v.service_account},
           {"uid", v.uid}};
}
void from_json(const json& j, PodView& v) {
  if (!j.is_object()) throw MistypedField("");
  Get(j, "namespace", v.namespace_name);
  Get(j, "name", v.name);
  Get(j, "service_account", v.service_account);
  Get(j, "uid", v.uid);
}

// Each view's fields are listed once; the macros below make both directions.
#define KTRUST_PUT(field) j[#field] = v.field;
#define KTRUST_GET(field) Get(j, #field, v.field);
#define KTRUST_VIEW_JSON(View, FIELDS)           \
  void to_json(json& j, const View& v) {         \
    j = json::object();                          \
    FIELDS(KTRUST_PUT)                           \
  }                                              \
  void from_json(const json& j, View& v) {       \
    if (!j.is_object()) throw MistypedField(""); \
    FIELDS(KTRUST_GET)                           \
  }

// Field lists, one per view (clang-format does not settle on macro bodies).
// clang-format off
#define KERNEL_FEATURE_FIELDS(F) F(name) F(present) F(detail)
#define ZERO_HOP_LISTENER_FIELDS(F) F(pid) F(source) F(workload) F(data_path)
#define ZERO_HOP_FIELDS(F) F(holder_connected) F(holder_socket) F(holder_problem) F(listeners)
#define KUBERNETES_FIELDS(F) \
  F(enabled) F(synced) F(api_server) F(node) F(pods) F(namespaces_opted_in) F(pods_enrolled) \
  F(pods_refused) F(problem)
#define BPF_FIELDS(F) F(attached) F(pin_dir) F(attachments) F(adopted)
#define CONFIG_FIELDS(F) F(path) F(generation) F(loaded_at) F(last_reload_ok) F(last_reload_error)
#define CA_FIELDS(F) F(trust_domain) F(expires_at)
#define COUNTS_FIELDS(F) \
  F(connections_active) F(connections_total) F(handshakes_failed) F(denied) F(workloads)
#define DRAIN_FIELDS(F) \
  F(draining) F(reason) F(since) F(deadline) F(connections) F(handshakes) F(successor) \
  F(predecessor) F(moved) F(moved_in)
#define STATUS_FIELDS(F) \
  F(version) F(node) F(started) F(data_path) F(data_path_reason) F(kernel_features) \
  F(zero_hop) F(kubernetes) F(bpf) F(config) F(ca) F(bundle_expires_at) F(counts) F(drain) F(ready) \
  F(not_ready_reason) F(warnings)
#define CONNECTION_FIELDS(F) \
  F(id) F(direction) F(workload) F(local_id) F(peer_id) F(app_address) F(wire_local) \
  F(wire_peer) F(tls_version) F(cipher) F(data_path) F(state) F(bytes_to_wire) \
  F(bytes_from_wire) F(age_seconds) F(pod)
#define WORKLOAD_FIELDS(F) \
  F(name) F(cgroup) F(cgroup_id) F(spiffe_id) F(mode) F(ports) F(svid_expires_at) F(network) \
  F(problem) F(data_path) F(pod)
#define POLICY_CHECK_FIELDS(F) F(allowed) F(reason) F(rule)
#define DENIAL_FIELDS(F) \
  F(time) F(direction) F(workload) F(peer_id) F(peer_address) F(local_address) F(port) \
  F(result) F(reason)
#define CONNECTION_LIST_FIELDS(F) F(connections)
#define WORKLOAD_LIST_FIELDS(F) F(workloads)
#define DENIAL_LIST_FIELDS(F) F(denials)
// clang-format on

KTRUST_VIEW_JSON(KernelFeatureView, KERNEL_FEATURE_FIELDS)
KTRUST_VIEW_JSON(ZeroHopListenerView, ZERO_HOP_LISTENER_FIELDS)
KTRUST_VIEW_JSON(ZeroHopView, ZERO_HOP_FIELDS)
KTRUST_VIEW_JSON(KubernetesView, KUBERNETES_FIELDS)
KTRUST_VIEW_JSON(BpfView, BPF_FIELDS)
KTRUST_VIEW_JSON(ConfigView, CONFIG_FIELDS)
KTRUST_VIEW_JSON(CaView, CA_FIELDS)
KTRUST_VIEW_JSON(CountsView, COUNTS_FIELDS)
KTRUST_VIEW_JSON(DrainView, DRAIN_FIELDS)
KTRUST_VIEW_JSON(StatusView, STATUS_FIELDS)
KTRUST_VIEW_JSON(ConnectionView, CONNECTION_FIELDS)
KTRUST_VIEW_JSON(WorkloadView, WORKLOAD_FIELDS)
KTRUST_VIEW_JSON(PolicyCheckView, POLICY_CHECK_FIELDS)
KTRUST_VIEW_JSON(DenialView, DENIAL_FIELDS)
KTRUST_VIEW_JSON(ConnectionListView, CONNECTION_LIST_FIELDS)
KTRUST_VIEW_JSON(WorkloadListView, WORKLOAD_LIST_FIELDS)
KTRUST_VIEW_JSON(DenialListView, DENIAL_LIST_FIELDS)

}  // namespace ktrust::control
