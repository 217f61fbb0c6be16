// Kubernetes mode, as pure functions: which pod each cgroup belongs to
// (PodOfCgroup), what the cluster says about that pod (ClusterSnapshot), and
// so whether the cgroup is enrolled, with which SPIFFE ID and inbound ports,
// or enrolled and refused with a reason. CgroupEnrolment runs them at every
// pass, then PlanEnrolment (enrolment_plan.h) plans the pods' cgroups with
// the configured workloads'.
//
// Fail closed: every question without a clear answer (not synced yet, an
// unknown UID, another node's pod, a hostNetwork pod, two pods for one UID,
// a network namespace that does not hold the pod's IP) enrols the cgroup and
// refuses its mesh connections with the reason, in words, in `ktrust
// denials`. Only a pod the cluster places in a namespace not opted in is
// left alone.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ktrust/agent/outbound_routing.h"
#include "ktrust/config/config.h"
#include "ktrust/config/registry.h"
#include "ktrust/kubernetes/api_options.h"
#include "ktrust/kubernetes/cluster_state.h"

namespace ktrust {

// The refusal codes (PodEnrolment::refusal_code), stable for logs and tests.
namespace pod_refusal {
inline constexpr char kNotSynced[] = "kubernetes_not_synced";
inline constexpr char kCgroupInvalid[] = "pod_cgroup_invalid";
inline constexpr char kUnknown[] = "pod_unknown";
inline constexpr char kDeleted[] = "pod_deleted";
inline constexpr char kUidConflict[] = "pod_uid_conflict";
inline constexpr char kOtherNode[] = "pod_other_node";
inline constexpr char kHostNetwork[] = "pod_host_network";
inline constexpr char kNamespaceUnknown[] = "namespace_unknown";
inline constexpr char kPortsInvalid[] = "pod_ports_invalid";
inline constexpr char kIdInvalid[] = "pod_id_invalid";
inline constexpr char kNoIp[] = "pod_ip_unknown";
inline constexpr char kNetnsMismatch[] = "pod_netns_mismatch";
}  // namespace pod_refusal

// The annotation that marks a mirror pod: its value is the UID kubelet gave
// the static pod, which is what the pod's cgroups name.
inline constexpr char kMirrorPodAnnotation[] = "kubernetes.io/config.mirror";

// The most inbound ports one pod may have enforced (the kernel's rule map
// holds 16384 for all pods, each port once per address).
inline constexpr size_t kMaxPodPorts = 64;

// The value of the ports annotation (kubernetes.ports_annotation): a
// comma-separated list of ports and "first-last" ranges ("8080,9000-9010"),
// spaces allowed around items; "" or "none" enforces no port. Sorted,
// without duplicates. An error names what is wrong.
absl::StatusOr<std::vector<uint16_t>> ParsePortsAnnotation(absl::string_view value);

// Each cgroup of `cgroups` (CgroupScan::unclaimed) that names a pod, as a
// workload to enrol (workload_index kPodWorkloadIndex, `pod` set): resolved
// (id and pod->ports set) or refused (pod->refusal set, no id). A cgroup
// naming no pod, or a pod of a namespace that is not opted in, is left out:
// the kernel leaves it alone. own_cgroup (the agent's) is never a pod's.
// before: the last pass's table. A pod that was resolved and is gone from
// the cluster while its cgroup remains (deleted with its processes still
// running) keeps its ports, refused, until the cgroup goes.
std::vector<RegisteredWorkload> ResolvePodCgroups(const Config& config,
                                                  const ClusterSnapshot& cluster,
                                                  const std::vector<ScannedCgroup>& cgroups,
                                                  uint64_t own_cgroup, const RoutingTable& before);

// Where a pod cgroup's processes live, as CgroupEnrolment read it.
struct PodNetnsFacts {
  bool node = false;                   // the agent's own (the node's) namespace
  std::vector<std::string> addresses;  // its addresses (EnforcedPodAddresses), when not the node's
  // Not OK: the namespace (or the cgroup's processes) could not be read this
  // pass (EMFILE, ENOMEM), which says nothing about the pod.
  absl::Status read = absl::OkStatus();
};

// Refuses `pod` (a resolved one) when its processes' namespace is not the
// pod's: the pod has no IP yet, or none of its podIPs is in that namespace
// (the node's included: a pod that is not hostNetwork never lives there),
// or it could not be read (facts.read), when its ports stay enforced.
void CheckPodNetns(RegisteredWorkload& pod, const PodNetnsFacts& facts);

// Sets the refusal of `pod`: no ID, the reason in id_problem too; its
// ports are cleared (not enforced) except for a deleted pod.
void RefusePod(RegisteredWorkload& pod, absl::string_view code, std::string reason);

// The API server connection the `kubernetes:` section describes.
absl::StatusOr<KubernetesApiOptions> ApiOptionsOf(const KubernetesSettings& settings);

}  // namespace ktrust
