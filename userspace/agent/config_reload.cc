#include "ktrust/agent/config_reload.h"

#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ktrust {

absl::Time ModificationTime(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return absl::InfinitePast();
  return absl::TimeFromTimespec(st.st_mtim);
}

FileTimes TrustInputTimes(const Config& config) {
  FileTimes out;
  for (const TrustBundleFile& f : config.trust_bundles) {
    out.emplace_back(f.path, ModificationTime(f.path));
  }
  for (const std::string& path : config.crls) out.emplace_back(path, ModificationTime(path));
  // A renewed intermediate put in place (in Kubernetes, the kubelet
  // updating the CA Secret's volume) takes effect without a restart.
  if (config.identity.source == IdentityConfig::Source::kEmbeddedCa) {
    for (const char* file : {"ca.crt", "ca.key", "bundle.crt"}) {
      std::string path = config.identity.ca_dir + "/" + file;
      out.emplace_back(path, ModificationTime(path));
    }
  }
  return out;
}

bool AnyFileChanged(const FileTimes& seen) {
  for (const auto& [path, mtime] : seen) {
    if (ModificationTime(path) != mtime) return true;
  }
  return false;
}

std::vector<const WorkloadConfig*> ServingWorkloads(const Config& config) {
  std::vector<const WorkloadConfig*> out;
  for (const auto& w : config.workloads) {
    if (!w.ports.empty() && w.mode != WorkloadMode::kOff) out.push_back(&w);
  }
  return out;
}

std::string RestartOnlyShape(const Config& config) {
  const AgentSettings& a = config.agent;
  std::string shape = absl::StrJoin(
      {a.node_name, a.cgroup_root, a.bpf_pin_dir, absl::StrCat(a.outbound_port), a.upstream_source,
       a.upstream_source6, absl::StrCat(a.socket_mark), a.control_socket, a.control_group,
       a.handover_socket, a.metrics_address, a.log_format, a.log_level, a.data_path,
       absl::StrCat(static_cast<int>(config.identity.source)),
       absl::FormatDuration(config.identity.svid_ttl), config.identity.svid_dir},
      "/");
  // The engine's handshake admission is fixed when it starts.
  absl::StrAppend(&shape, "/", a.max_inbound_handshakes, "/", a.max_outbound_handshakes, "/",
                  a.max_handshakes_per_source, "/", absl::FormatDuration(a.first_byte_timeout));
  // The API server connection (list/watch) is made once, at start.
  const KubernetesSettings& k = config.kubernetes;
  absl::StrAppend(&shape, "/k8s:", k.enabled, "/", k.node_name, "/", k.api_server, "/",
                  k.token_file, "/", k.ca_file);
  for (const WorkloadConfig* w : ServingWorkloads(config)) {
    absl::StrAppend(&shape, ";", w->name, ":", absl::StrJoin(w->ports, ","), ":",
                    WorkloadModeName(w->mode));
  }
  return shape;
}

}  // namespace ktrust
