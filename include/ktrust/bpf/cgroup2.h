// Finding the cgroup v2 hierarchy and naming cgroups by id. The mount point
// is read from mountinfo because layouts differ: /sys/fs/cgroup on unified
// hosts, /sys/fs/cgroup/unified on hybrid ones (such as the CI machines).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ktrust {

// The mount point of the first cgroup2 filesystem in a /proc/<pid>/mountinfo
// text, with mountinfo's octal escapes (\040 for a space) decoded.
absl::StatusOr<std::string> FindCgroup2Mount(absl::string_view mountinfo);

// FindCgroup2Mount over this process's /proc/self/mountinfo.
absl::StatusOr<std::string> Cgroup2Mount();

// Every cgroup2 mount point of a mountinfo text, in its order.
std::vector<std::string> FindCgroup2Mounts(absl::string_view mountinfo);
// Of `mounts`, the longest that holds the path `within`; empty if none.
std::string Cgroup2MountHolding(const std::vector<std::string>& mounts, absl::string_view within);

// The cgroup this process runs in (the "0::" line of /proc/self/cgroup), as
// a path under the cgroup2 mount that holds `within` (e.g. the agent's
// cgroup root), or under Cgroup2Mount() if none does. Not simply the first
// mount: other mounts of the hierarchy may come and go (a test's, say).
absl::StatusOr<std::string> OwnCgroupPath(absl::string_view within);
// OwnCgroupPath over given /proc/<pid>/cgroup and mountinfo texts.
absl::StatusOr<std::string> FindOwnCgroupPath(absl::string_view proc_cgroup,
                                              absl::string_view mountinfo,
                                              absl::string_view within);

// A cgroup2 mount as /proc/<pid>/mountinfo shows it to the reader.
struct Cgroup2MountEntry {
  std::string mount_point;
  // The mount's root within the hierarchy, relative to the reader's cgroup
  // namespace: "/" for a whole-hierarchy mount seen from the host, and
  // "/../../.." for that same mount seen from a cgroup namespace three
  // levels down.
  std::string root;
};
std::vector<Cgroup2MountEntry> ParseCgroup2Mounts(absl::string_view mountinfo);

// The "0::" line of a /proc/<pid>/cgroup text: the process's cgroup relative
// to the reader's cgroup namespace ("/", "/system.slice/x.service",
// "/../web" for a cgroup beside the reader's namespace root).
absl::StatusOr<std::string> CgroupV2PathOf(absl::string_view proc_cgroup);

// Whether a cgroup.procs text lists pid.
bool CgroupProcsLists(absl::string_view cgroup_procs, int64_t pid);

// How cgroup paths as this process reads them (/proc/<pid>/cgroup, relative
// to its cgroup namespace) become directories of its mount namespace: one
// known pair (a cgroup path and its directory), and by ".." and names from
// there, never above `floor` (the cgroup2 mount, or the root the agent was
// given): in a cgroup namespace nothing above its root has a name the
// process could read.
struct CgroupView {
  std::string anchor_path;  // a cgroup path as read here, e.g. "/" or "/system.slice"
  std::string anchor_dir;   // its directory
  std::string floor;        // anchor_dir and every result are at or below it

  absl::StatusOr<std::string> DirOf(absl::string_view cgroup_path) const;
};

// The view through the cgroup2 mount that holds `within` (or, when none
// does, the first whose root this process can name), anchored at the
// mount's root. NotFound without a usable mount.
absl::StatusOr<CgroupView> MountView(absl::string_view mountinfo, absl::string_view within);

// The id the kernel gives a cgroup v2 directory: what
// bpf_get_current_cgroup_id() returns for its processes.
absl::StatusOr<uint64_t> CgroupIdOf(absl::string_view cgroup_dir);

}  // namespace ktrust
