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

// The id the kernel gives a cgroup v2 directory: what
// bpf_get_current_cgroup_id() returns for its processes.
absl::StatusOr<uint64_t> CgroupIdOf(absl::string_view cgroup_dir);

}  // namespace ktrust
