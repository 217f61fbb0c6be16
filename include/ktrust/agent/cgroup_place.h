// Where the agent stands among the cgroups: the root its globs are relative
// to, its own cgroup (never enrolled; where the kernel learns which sockets
// are the agent's), and how other processes' /proc/<pid>/cgroup paths name
// directories.
//
// On a host this is the cgroup2 mount and /proc/self/cgroup. In a container
// with a cgroup namespace both lie: /proc/self/cgroup says "/" and the
// host's hierarchy, bind-mounted in, has a root of "/../../..": nothing
// the agent reads names its own cgroup's place in the host's tree. The agent
// then finds itself by its pid in the cgroup.procs files under the root
// (docs/configuration.md, agent.cgroup_root, says why this and not setns).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ktrust/bpf/cgroup2.h"

namespace ktrust {

// The inode of the initial cgroup namespace (PROC_CGROUP_INIT_INO): a
// process whose /proc/self/ns/cgroup has it sees the host's hierarchy.
inline constexpr uint64_t kInitialCgroupNamespace = 0xEFFFFFFBu;

enum class CgroupNamespaceKind {
  kHost,     // the agent reads cgroup paths as the host does
  kOwn,      // a cgroup namespace of its own; pid 1 (hostPID: the host's init) is elsewhere
  kUnknown,  // cannot tell
};

struct CgroupNamespaceFacts {
  int64_t own_pid = 0;
  uint64_t own_namespace = 0;              // inode of /proc/self/ns/cgroup
  std::optional<uint64_t> init_namespace;  // of /proc/1/ns/cgroup; unset: unreadable
  std::string init_error;                  // why it is unreadable
};

struct CgroupNamespaceVerdict {
  CgroupNamespaceKind kind = CgroupNamespaceKind::kUnknown;
  std::string why;  // in words, for the log and for errors
};

// kHost in the initial namespace, or in pid 1's when pid 1 is not the agent
// (a Kubernetes node that is itself a container has its own). kOwn when pid
// 1's differs. Otherwise kUnknown: pid 1 unreadable, or the agent is pid 1
// (a container without hostPID, whose pid 1 proves nothing).
CgroupNamespaceVerdict ClassifyCgroupNamespace(const CgroupNamespaceFacts& facts);

// The host's cgroup2 root seen through pid 1's root directory: the first
// cgroup2 mount of pid 1's mountinfo, under /proc/1/root. For hostPID,
// where pid 1 is the host's init.
absl::StatusOr<std::string> HostCgroupRootFromInit(absl::string_view init_mountinfo);

// The directory under root (root included) whose cgroup.procs lists pid, by
// a walk that follows no symlink. NotFound when none does.
absl::StatusOr<std::string> FindProcessCgroupUnder(const std::string& root, int64_t pid);

struct CgroupPlace {
  std::string root;     // agent.cgroup_root, or the one found
  std::string own_dir;  // the agent's cgroup, verified by its pid in cgroup.procs
  CgroupView view;      // names other processes' cgroups (zero-hop registrations)
  CgroupNamespaceVerdict cgroup_namespace;
  std::string how;  // how own_dir was found, for the startup log
};

// configured_root: agent.cgroup_root, empty to find it. Fails closed, with
// what to set, when the agent cannot tell where it is.
absl::StatusOr<CgroupPlace> FindCgroupPlace(const std::string& configured_root);

}  // namespace ktrust
