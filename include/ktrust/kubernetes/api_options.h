// Where the agent reaches the Kubernetes API server, as whom, and how much it
// accepts from it. The agent fills it from the `kubernetes:` configuration
// section; InClusterApiOptions gives what a pod of a DaemonSet sees.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ktrust {

// Where the kubelet mounts a pod's service-account credentials.
inline constexpr char kServiceAccountTokenFile[] =
    "/var/run/secrets/kubernetes.io/serviceaccount/token";
inline constexpr char kServiceAccountCaFile[] =
    "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

struct KubernetesApiOptions {
  // The API server, as its certificate names it (an IP address or a DNS name).
  std::string host;
  uint16_t port = 443;
  // The bearer token, read again at every connection: bound service-account
  // tokens are rotated by the kubelet (hourly by default).
  std::string token_file = kServiceAccountTokenFile;
  // The only roots the API server's certificate is verified against (read
  // again at every connection too). Verification is never skipped.
  std::string ca_file = kServiceAccountCaFile;
  // This node, as the pods' spec.nodeName says it (the downward API gives it
  // to the agent's own pod). Only this node's pods are listed and kept.
  std::string node_name;

  absl::Duration connect_timeout = absl::Seconds(10);
  // One list page, from request to last byte.
  absl::Duration request_timeout = absl::Seconds(60);
  // Each watch asks the server to end it after a random time in
  // [watch_timeout, 2 * watch_timeout), as client-go does, so that the agents
  // of a cluster do not all reconnect at once; it is then resumed from the
  // last resourceVersion.
  absl::Duration watch_timeout = absl::Minutes(5);

  // After a failure (no connection, TLS error, HTTP error, a watch that ends
  // at once): wait backoff_initial, doubled per consecutive failure up to
  // backoff_max, less a random fraction up to backoff_jitter of it.
  absl::Duration backoff_initial = absl::Milliseconds(800);
  absl::Duration backoff_max = absl::Seconds(30);
  double backoff_jitter = 0.5;

  // What a broken or hostile server can make the agent hold: each is checked
  // before the data is kept, and a breach is an error, never a truncation.
  int list_page_size = 500;               // objects per list request (limit=)
  size_t max_response_bytes = 32u << 20;  // one list page
  size_t max_event_bytes = 4u << 20;      // one watch event (etcd keeps objects under 1.5 MiB)
  size_t max_pods = 1000;                 // pods on this node
  size_t max_namespaces = 10000;
  // The fields kept of one object (labels, annotations, ports, ...). Kubernetes
  // itself refuses annotations over 256 KiB in total.
  size_t max_object_bytes = 512u << 10;
  // All the pods kept, and all the namespaces kept, each.
  size_t max_state_bytes = 64u << 20;

  // "host:port", with brackets around an IPv6 address.
  std::string Endpoint() const;
  absl::Status Validate() const;
};

// What a pod sees: the API server from KUBERNETES_SERVICE_HOST and
// KUBERNETES_SERVICE_PORT, the token and CA of its service account.
// `getenv` is replaceable for tests.
absl::StatusOr<KubernetesApiOptions> InClusterApiOptions(
    std::string node_name, const std::function<const char*(const char*)>& getenv = ::getenv);

}  // namespace ktrust
