// `ktrust ca kubernetes-secret`: a CA directory as the Secret the DaemonSet
// in tools/kubernetes mounts at identity.ca_dir (docs/kubernetes.md, "The CA").
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ktrust/common/secret.h"

namespace ktrust::cli {

struct CaSecretOptions {
  std::string ca_dir;  // an intermediate's directory (`ktrust ca intermediate --dir`)
  // The DaemonSet's `ca` volume (tools/kubernetes/daemonset.yaml).
  std::string name = "ktrust-ca";
  std::string kubernetes_namespace = "ktrust-system";
};

struct CaSecret {
  Secret yaml;  // holds the CA's private key
  // For the operator, one line each: which CA, until when, what it may sign.
  std::vector<std::string> summary;
};

// Loads `ca_dir` with the agent's own checks (key matches, a CA of a trust
// domain, valid now, chains to its bundle) and refuses a root: the root key
// never enters the cluster. The Secret carries ca.crt, ca.key and
// bundle.crt as they are on disk.
absl::StatusOr<CaSecret> KubernetesCaSecret(const CaSecretOptions& options, absl::Time now);

}  // namespace ktrust::cli
