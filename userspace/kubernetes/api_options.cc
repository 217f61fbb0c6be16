#include "ktrust/kubernetes/api_options.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace ktrust {

std::string KubernetesApiOptions::Endpoint() const {
  if (absl::StrContains(host, ':')) return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

absl::Status KubernetesApiOptions::Validate() const {
  if (host.empty()) return absl::InvalidArgumentError("kubernetes: the API server host is empty");
  if (port == 0) return absl::InvalidArgumentError("kubernetes: the API server port is 0");
  if (token_file.empty()) return absl::InvalidArgumentError("kubernetes: token_file is empty");
  // Without a CA file the client would fall back to the system's roots.
  if (ca_file.empty()) return absl::InvalidArgumentError("kubernetes: ca_file is empty");
  if (node_name.empty()) {
    return absl::InvalidArgumentError(
        "kubernetes: node_name is empty (give the agent's pod spec.nodeName through the downward "
        "API)");
  }
  if (connect_timeout <= absl::ZeroDuration() || request_timeout <= absl::ZeroDuration() ||
      watch_timeout < absl::Seconds(1)) {
    return absl::InvalidArgumentError(
        "kubernetes: timeouts must be positive (watch_timeout at least 1s)");
  }
  if (backoff_initial <= absl::ZeroDuration() || backoff_max < backoff_initial) {
    return absl::InvalidArgumentError(
        "kubernetes: backoff_initial must be positive and at most backoff_max");
  }
  if (!(backoff_jitter >= 0 && backoff_jitter < 1)) {
    return absl::InvalidArgumentError("kubernetes: backoff_jitter must be in [0, 1)");
  }
  if (list_page_size < 1) return absl::InvalidArgumentError("kubernetes: list_page_size < 1");
  if (max_response_bytes == 0 || max_event_bytes == 0 || max_pods == 0 || max_namespaces == 0 ||
      max_object_bytes == 0 || max_state_bytes == 0) {
    return absl::InvalidArgumentError("kubernetes: a size limit is 0");
  }
  return absl::OkStatus();
}

absl::StatusOr<KubernetesApiOptions> InClusterApiOptions(
    std::string node_name, const std::function<const char*(const char*)>& getenv) {
  const char* host = getenv("KUBERNETES_SERVICE_HOST");
  const char* port = getenv("KUBERNETES_SERVICE_PORT");
  if (host == nullptr || *host == '\0' || port == nullptr || *port == '\0') {
    return absl::FailedPreconditionError(
        "not in a Kubernetes pod: KUBERNETES_SERVICE_HOST or KUBERNETES_SERVICE_PORT is not set");
  }
  uint32_t port_number = 0;
  if (!absl::SimpleAtoi(port, &port_number) || port_number == 0 || port_number > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("KUBERNETES_SERVICE_PORT is not a port number: ", port));
  }
  KubernetesApiOptions options;
  options.host = host;
  options.port = static_cast<uint16_t>(port_number);
  options.node_name = std::move(node_name);
  return options;
}

}  // namespace ktrust
