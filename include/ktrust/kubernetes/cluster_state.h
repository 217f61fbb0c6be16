// The cluster's view of this node, as the agent keeps it: only the fields of
// pods and namespaces it uses to resolve, enrol and enforce.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace ktrust {

using KubernetesLabels = std::map<std::string, std::string>;

// One entry of a container's spec.ports.
struct KubernetesContainerPort {
  std::string name;  // may be empty
  uint16_t port = 0;
  std::string protocol;  // "TCP" (the default the API server fills in), "UDP" or "SCTP"

  bool operator==(const KubernetesContainerPort&) const = default;
};

struct KubernetesPod {
  std::string uid;  // metadata.uid: the key, and what the pod-level cgroup names
  std::string name;
  std::string namespace_name;
  std::string service_account;  // spec.serviceAccountName; empty if the server gave none
  std::string node_name;
  std::string phase;  // status.phase: Pending, Running, Succeeded, Failed, Unknown
  // status.podIPs (status.podIP from servers that predate dual stack); empty
  // until the network is set up.
  std::vector<std::string> ips;
  bool host_network = false;
  // metadata.deletionTimestamp is set: the pod is terminating.
  bool deleting = false;
  KubernetesLabels labels;
  KubernetesLabels annotations;
  // Ports declared by the containers, and by restartable init containers
  // (sidecars, which serve like containers).
  std::vector<KubernetesContainerPort> ports;

  // What keeping it costs, for the bounds of KubernetesApiOptions.
  size_t ApproxBytes() const;
  bool operator==(const KubernetesPod&) const = default;
};

struct KubernetesNamespace {
  std::string name;
  KubernetesLabels labels;

  size_t ApproxBytes() const;
  bool operator==(const KubernetesNamespace&) const = default;
};

using KubernetesPodMap = std::map<std::string, KubernetesPod>;              // by uid
using KubernetesNamespaceMap = std::map<std::string, KubernetesNamespace>;  // by name

// An immutable view: the watcher publishes a new one at every change, so a
// reader keeps a consistent picture for as long as it holds one.
struct ClusterSnapshot {
  // False until a complete list of both pods and namespaces has been read.
  // Before that nothing may be concluded from the maps (one may be filled,
  // the other not yet).
  bool synced = false;
  // Incremented at every published change (never for a no-op event).
  uint64_t generation = 0;
  std::shared_ptr<const KubernetesPodMap> pods = std::make_shared<KubernetesPodMap>();
  std::shared_ptr<const KubernetesNamespaceMap> namespaces =
      std::make_shared<KubernetesNamespaceMap>();

  const KubernetesPod* FindPod(absl::string_view uid) const;
  const KubernetesNamespace* FindNamespace(absl::string_view name) const;
};

}  // namespace ktrust
