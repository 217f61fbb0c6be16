// Which cgroups are which workloads, and the SPIFFE ID each one gets: the
// configuration's cgroup globs matched against the cgroup v2 tree.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ktrust/config/config.h"
#include "ktrust/identity/spiffe_id.h"

namespace ktrust {

// '*' matches any run of characters within one path segment, "**" any run
// including '/', '?' exactly one character other than '/'. Everything else is
// literal: cgroup names are full of '.', '@' and '\' that must not be magic.
// "system.slice/**" matches every cgroup below system.slice, not itself.
bool CgroupGlobMatch(absl::string_view glob, absl::string_view path);

// The systemd unit a cgroup belongs to: the deepest path component ending in
// ".service" or ".scope", without that suffix. systemd's escapes
// ("foo\x2dbar") are kept as they are. NotFound when there is none.
absl::StatusOr<std::string> SystemdUnitOf(absl::string_view cgroup_path);

struct TemplateValues {
  std::string trust_domain;
  std::string node;
  std::string name;    // the workload's name
  std::string cgroup;  // relative to the cgroup root, e.g. "system.slice/web.service"
  // The pod's, from the API server (Kubernetes mode); empty when unknown.
  std::string pod_namespace;
  std::string service_account;
  std::string pod_name;
  std::string pod_uid;
};

// The placeholders only Kubernetes mode fills: {namespace},
// {service_account}, {pod_name}, {pod_uid}.
bool TemplateUsesKubernetes(absl::string_view tmpl);

// Fills {trust_domain}, {node}, {name}, {unit}, {cgroup} and the Kubernetes
// placeholders and checks that the result is a workload SPIFFE ID in
// values.trust_domain: a cgroup name can never move a workload into another
// trust domain. A Kubernetes value must be one whole SPIFFE path segment
// (letters, digits, '.', '-', '_'; not "." or ".."): one that is not, or is
// empty (the pod is not known), is refused, never escaped or left out.
absl::StatusOr<SpiffeId> RenderSpiffeId(absl::string_view tmpl, const TemplateValues& values);

// Kubernetes mode: a pod's cgroup, enrolled from the cluster's answer rather
// than a glob (ResolvePodCgroups, pod_enrolment.h). Every cgroup of one
// pod gets the same answer.
struct PodEnrolment {
  // The workload's name: "<namespace>/<pod name>" (never a configured
  // workload's, which has no '/'), or "pod:<uid>" while the pod is unresolved.
  std::string workload;
  std::string uid;  // what the cgroup names (for a static pod kubelet's, not its mirror's)
  std::string namespace_name;
  std::string name;
  std::string service_account;
  std::vector<std::string> ips;  // status.podIPs
  std::vector<uint16_t> ports;   // the inbound ports enforced
  // Empty when the pod is enrolled with its ID. Otherwise a stable code
  // (kubernetes_not_synced, pod_unknown, ...) and the reason in words: the
  // cgroup is enrolled all the same and its mesh connections are refused
  // with them, never let out in plaintext.
  std::string refusal_code;
  std::string refusal;

  bool operator==(const PodEnrolment&) const = default;
};

// The workload_index of a pod's cgroup: it has no entry in Config::workloads.
inline constexpr size_t kPodWorkloadIndex = 0xFFFFFFFFu;

struct RegisteredWorkload {
  size_t workload_index = 0;  // into Config::workloads; kPodWorkloadIndex for a pod
  std::string cgroup_path;    // relative to the cgroup root
  uint64_t cgroup_id = 0;     // the directory's inode: what bpf_get_current_cgroup_id() returns
  // Unset when the workload's template makes no valid ID for this cgroup;
  // id_problem then says why. Such a cgroup is still the workload's: the
  // agent enrols it and refuses its connections (it has nothing to present),
  // rather than leave it unenforced.
  std::optional<SpiffeId> id;
  std::string id_problem;
  std::optional<PodEnrolment> pod;  // Kubernetes mode, a pod's cgroup
};

// A cgroup the scan found, by path (relative to the root) and id.
struct ScannedCgroup {
  std::string path;
  uint64_t id = 0;
};

// The subdirectories of a cgroup directory, symlinks not followed. The
// error keeps its errno's code: NotFound only when the directory is gone.
// ScanCgroupTree takes another in tests, to make a listing fail.
using CgroupLister =
    std::function<absl::StatusOr<std::vector<std::string>>(const std::string& dir)>;
absl::StatusOr<std::vector<std::string>> ListCgroupDirectory(const std::string& dir);

struct CgroupScan {
  std::vector<RegisteredWorkload> found;  // sorted by path
  std::set<uint64_t> every_cgroup;        // the id of every cgroup found, the root included
  std::vector<std::string> problems;      // left out on purpose (too deep), and why
  // False when part of the tree could not be read for a reason other than
  // being gone (EMFILE, ENOMEM, EACCES...): what the scan did not see may
  // still be there, so nothing may be removed on its word. `unread` says
  // what could not be read, and why.
  bool complete = true;
  std::vector<std::string> unread;
  // Every cgroup no glob claimed (the root excluded), in scan order: where
  // Kubernetes mode looks for pods.
  std::vector<ScannedCgroup> unclaimed;
  // The cgroups of every_cgroup by path relative to the root ("" is the
  // root): what RescanCgroupSubtrees replaces a subtree of.
  std::map<std::string, uint64_t> cgroups;
  // The directories this scan listed (a measure of its cost).
  size_t listed = 0;
};

// Walks the tree under cgroup_root (symlinks not followed) and gives every
// directory whose relative path matches a workload's glob to the first such
// workload in configuration order. A cgroup that vanished while it was
// scanned is simply not there; any other error reading a subtree makes the
// scan incomplete (`unread`); only an unreadable root is an error. A cgroup
// whose name makes an invalid SPIFFE ID is registered without one (see
// RegisteredWorkload::id_problem).
absl::StatusOr<CgroupScan> ScanCgroupTree(const Config& config, const std::string& cgroup_root,
                                          const CgroupLister& list = ListCgroupDirectory);

// What ScanCgroupTree would find now when only the subtrees under `changed`
// (paths relative to the root; "" is the whole tree) changed since
// `previous`, a complete scan with the same configuration: those subtrees
// are walked again (a changed cgroup whose parent `previous` does not know
// is walked from its nearest known ancestor), everything else is taken from
// `previous` without reading it. A changed subtree that cannot be read
// keeps what `previous` had under it (never "nothing is there") and makes
// the result incomplete; one that is gone loses it.
absl::StatusOr<CgroupScan> RescanCgroupSubtrees(const Config& config,
                                                const std::string& cgroup_root,
                                                const CgroupScan& previous,
                                                const std::set<std::string>& changed,
                                                const CgroupLister& list = ListCgroupDirectory);

// Whether `path` is `dir` or below it (paths relative to the root; every
// path is below "").
bool CgroupPathWithin(absl::string_view path, absl::string_view dir);

}  // namespace ktrust
