// Which Kubernetes pod (and container) a cgroup belongs to, read from the
// names kubelet and the container runtimes give cgroups:
//
//   systemd driver:  kubepods.slice/kubepods-burstable.slice/
//                      kubepods-burstable-pod<UID, '_' for '-'>.slice/
//                      cri-containerd-<64 hex>.scope      (also crio-, docker-)
//                    guaranteed pods have no QoS level:
//                    kubepods.slice/kubepods-pod<UID with _>.slice/...
//   cgroupfs driver: kubepods/burstable/pod<UID>/<64 hex>  (also crio-<64 hex>)
//                    guaranteed: kubepods/pod<UID>/<64 hex>
//
// The parse is anchored on the pod-level component, never on "kubepods":
// a cgroup namespace hides every component above its root, so the path may
// begin anywhere. Every component is looked at, so a pod that creates a
// cgroup named after another pod below its own (cgroup delegation) gets a
// conflict and is refused, not the other pod's identity.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ktrust {

struct PodCgroup {
  std::string pod_uid;       // RFC 4122 text form, lowercase, with '-'
  std::string container_id;  // 64 lowercase hex; empty for the pod-level cgroup itself
};

// NotFound: no component of the path is a pod's (not a pod cgroup: a
// systemd service, the node's own slices). InvalidArgument: the path names
// a pod but cannot be trusted to name one pod and one container (two pod
// components with different UIDs, a malformed UID, an unknown cgroup right
// below the pod's); the message says which component and why, and the
// cgroup's connections are to be refused.
absl::StatusOr<PodCgroup> PodOfCgroup(absl::string_view cgroup_path);

// Whether `text` is a pod UID as kubelet writes it: an RFC 4122 UUID in its
// text form with lowercase hex (8-4-4-4-12), or for a static pod (one
// kubelet reads from a file) 32 lowercase hex digits, the md5 of its
// manifest. A static pod's mirror pod in the API server has a UID of its
// own and names this one in its kubernetes.io/config.mirror annotation.
bool IsPodUid(absl::string_view text);

}  // namespace ktrust
