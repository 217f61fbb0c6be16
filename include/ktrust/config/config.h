// ktrustd's configuration: one YAML file (docs/configuration.md has the
// complete commented example). LoadConfig validates everything it can without
// touching the machine; an error names the file, line and column and says
// what was expected there.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ktrust/common/ip_prefix.h"
#include "ktrust/common/socket_address.h"
#include "ktrust/identity/spiffe_id.h"

namespace ktrust {

enum class WorkloadMode {
  kEnforce,     // mTLS only; anything else is refused
  kPermissive,  // plaintext from non-mesh peers allowed and logged
  kOff,         // registered, not intercepted
};

// "enforce", "permissive", "off": the words the configuration uses.
absl::string_view WorkloadModeName(WorkloadMode mode);
absl::StatusOr<WorkloadMode> ParseWorkloadMode(absl::string_view name);

// Who carries a workload's mesh bytes once the handshake is done.
enum class WorkloadDataPath {
  kProxy,    // the agent: the workload's connections end at its listeners
  kZeroHop,  // the workload's own sockets, with kernel TLS (docs/dataplane.md)
};

// "proxy", "zero_hop".
absl::string_view WorkloadDataPathName(WorkloadDataPath path);

struct PortRange {
  uint16_t first = 0;  // inclusive
  uint16_t last = 0;   // inclusive
  bool Contains(uint16_t port) const { return port >= first && port <= last; }
};

struct IdentityConfig {
  enum class Source { kEmbeddedCa, kSvidFiles };
  Source source = Source::kEmbeddedCa;
  // Embedded CA: the directory holding ca.crt and ca.key (mode 0600); the
  // agent generates them there when both are missing.
  std::string ca_dir = "/var/lib/ktrust/ca";
  // SVID files (cert-manager / spiffe-helper layout: tls.crt, tls.key, ca.crt).
  std::string svid_dir;
  absl::Duration svid_ttl = absl::Hours(1);
};

struct WorkloadConfig {
  std::string name;  // unique; what policy rules and the CLI call it
  // Glob over cgroup v2 paths relative to the agent's cgroup root, e.g.
  // "system.slice/nginx.service" or "kubepods.slice/*/pod*". '*' does not
  // cross '/'; "**" does.
  std::string cgroup;
  // SPIFFE ID template: {trust_domain}, {node}, {name}, {unit} (the systemd
  // unit the cgroup belongs to, without its suffix) and {cgroup}; with
  // kubernetes.enabled also {namespace}, {service_account}, {pod_name} and
  // {pod_uid}, the pod's as the API server gives them.
  std::string spiffe_id;
  WorkloadMode mode = WorkloadMode::kEnforce;
  std::vector<uint16_t> ports;  // inbound ports enforced for this workload
  // kZeroHop applies to the workload's processes started by `ktrust exec`
  // or by an OCI runtime with the holder's listenerPath; others, and every
  // process when the kernel lacks what zero-hop needs, are proxied.
  WorkloadDataPath data_path = WorkloadDataPath::kProxy;
};

struct MeshEntry {
  IpPrefix prefix;
  std::vector<PortRange> ports;  // empty: every port
};

struct ExpectedServerRule {
  IpPrefix prefix;
  std::vector<PortRange> ports;  // empty: every port
  SpiffeIdPattern server;
};

struct PolicyRule {
  // Exactly one of these: a workload name, or a pattern over the local
  // workload's SPIFFE ID.
  std::string to_workload;
  std::optional<SpiffeIdPattern> to_id;
  std::vector<PortRange> ports;  // empty: every port
  std::vector<SpiffeIdPattern> from;
  // Where the rule is written ("config.yaml:42"), for `ktrust policy check`.
  std::string origin;
};

struct AgentSettings {
  std::string node_name;  // default: kubernetes.node_name when enabled, else the host name
  // The directory cgroup globs are relative to: the host's cgroup2 root (or
  // a directory below it) as mounted in the agent's mount namespace. Empty:
  // found at startup (FindCgroupPlace, docs/configuration.md); an agent in a
  // cgroup namespace of its own that is not hostPID must set it.
  std::string cgroup_root;
  std::string bpf_pin_dir = "/sys/fs/bpf/ktrust";
  // Where enrolled workloads' mesh connections are sent in their network
  // namespace; sk_lookup hands them to the agent's listener alone. The
  // agent's listeners themselves bind ephemeral ports nobody can take first.
  uint16_t outbound_port = 15001;
  std::string upstream_source = "127.0.0.6";  // IPv4: any 127/8 address works
  // IPv6 has no spare loopback block: an address the operator put on lo.
  // Empty: inbound IPv6 connections to enforced ports are refused.
  std::string upstream_source6;
  uint32_t socket_mark = 0x6b74;  // "kt"; non-zero: how the kernel knows the agent's sockets
  std::string control_socket = "/run/ktrust/control.sock";
  std::string control_group;  // empty: root only
  // Where a successor agent finds this one (docs/operations.md, "Stopping
  // and upgrading"). Empty: handover.sock beside control_socket. Both
  // agents of an upgrade must see the same file (a DaemonSet: a hostPath).
  std::string handover_socket;
  std::string metrics_address = "127.0.0.1:9464";  // empty: no metrics listener
  std::string log_format = "json";                 // json | text
  std::string log_level = "info";
  std::string data_path = "auto";  // auto | userspace
  // The zero-hop fd holder (`ktrustd holder`): the agent's socket to it, and
  // the sockets it serves to `ktrust exec` and to OCI runtimes (listenerPath).
  std::string holder_socket = "/run/ktrust/holder.sock";
  std::string registration_socket = "/run/ktrust/zerohop.sock";
  std::string oci_socket = "/run/ktrust/oci-seccomp.sock";
  // Handshake admission (EngineOptions of the same names).
  int max_inbound_handshakes = 1024;
  int max_outbound_handshakes = 1024;
  int max_handshakes_per_source = 128;
  absl::Duration first_byte_timeout = absl::Seconds(3);
  // TLS 1.3 session resumption with ktrust peers that have it on
  // (docs/security.md, "Session resumption"). Off by default.
  bool tls_resumption = false;
  // How long a stopping agent (SIGTERM, or handed over to a successor) keeps
  // carrying its open connections before it closes them.
  absl::Duration drain_timeout = absl::Seconds(30);
};

// Kubernetes mode: pods are identified from the API server (namespace,
// service account) by the pod UID in their cgroup path (PodOfCgroup).
struct KubernetesSettings {
  bool enabled = false;
  // This node's name, as the pods' spec.nodeName has it. Default: the
  // NODE_NAME environment variable (the downward API's spec.nodeName);
  // required when enabled.
  std::string node_name;
  // https://host:port. Default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT,
  // which kubelet sets in every pod.
  std::string api_server;
  std::string token_file = "/var/run/secrets/kubernetes.io/serviceaccount/token";
  std::string ca_file = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
  // The namespace label that opts a namespace's pods in. A namespace label,
  // not a pod annotation: namespaces are the cluster admin's, pods their
  // authors', and a pod author must not be able to opt out of enforcement.
  std::string namespace_label_key = "ktrust.io/mesh";
  std::string namespace_label_value = "enabled";
  // The SPIFFE ID template of opted-in pods ({trust_domain}, {node},
  // {namespace}, {service_account}, {pod_name}, {pod_uid}).
  std::string spiffe_id = "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}";
  // The pod annotation listing the inbound ports to enforce ("8080,9000-9100"),
  // instead of the ports its containers declare.
  std::string ports_annotation = "ktrust.io/inbound-ports";
};

// What the configuration takes from the environment when the file does not
// say: FromProcess() reads the agent's own; tests give their own.
struct ConfigEnvironment {
  std::optional<std::string> node_name;     // NODE_NAME
  std::optional<std::string> service_host;  // KUBERNETES_SERVICE_HOST
  std::optional<std::string> service_port;  // KUBERNETES_SERVICE_PORT
  static ConfigEnvironment FromProcess();
};

// A file of roots and the one trust domain they may vouch for. A plain path
// in the YAML means the local trust domain.
struct TrustBundleFile {
  std::string trust_domain;  // valid per TrustDomain::Parse
  std::string path;
};

struct Config {
  std::string source_path;   // the file it was loaded from
  std::string trust_domain;  // valid per TrustDomain::Parse
  IdentityConfig identity;
  std::vector<TrustBundleFile> trust_bundles;  // extra roots, per trust domain
  std::vector<std::string> crls;               // PEM files of CRLs (`ktrust ca revoke`)
  std::vector<WorkloadConfig> workloads;
  std::vector<MeshEntry> mesh;
  std::vector<MeshEntry> bypass;
  std::vector<ExpectedServerRule> expected_servers;
  // mesh.require_expected_server: refuse an outbound connection no
  // expected_servers rule covers, instead of accepting any SVID of the trust
  // domain as its server. Off by default: turning it on for existing
  // configurations would refuse their traffic on upgrade.
  bool require_expected_server = false;
  std::vector<PolicyRule> policy;
  AgentSettings agent;
  KubernetesSettings kubernetes;
};

// The first expected_servers rule covering host (a host prefix) and port, in
// file order; nullptr when none does.
const ExpectedServerRule* ExpectedServerFor(const Config& config, const IpPrefix& host,
                                            uint16_t port);

// One sentence per mesh destination that some outbound connections may reach
// with no expected_servers rule, so that any SVID of the trust domain is
// accepted as their server. A destination counts as covered only when a
// single rule covers all of its addresses and ports. Empty when
// require_expected_server is set (those connections are refused instead).
std::vector<std::string> ServerIdentityWarnings(const Config& config);

// Errors are InvalidArgument, one line each:
//   <file>:<line>:<col>: <key path such as workloads[1].mode>: expected ..., got "..."
// Unknown and repeated keys are errors: a typo in a security configuration
// must not silently drop a rule.
absl::StatusOr<Config> LoadConfig(const std::string& path);
absl::StatusOr<Config> LoadConfig(const std::string& path, const ConfigEnvironment& environment);
// For tests and the fuzzer: source_name stands in for the path in messages.
// Pure apart from the default node name (the host name) and the
// environment (ConfigEnvironment::FromProcess() unless given).
absl::StatusOr<Config> ParseConfig(absl::string_view yaml, absl::string_view source_name);
absl::StatusOr<Config> ParseConfig(absl::string_view yaml, absl::string_view source_name,
                                   const ConfigEnvironment& environment);

}  // namespace ktrust
