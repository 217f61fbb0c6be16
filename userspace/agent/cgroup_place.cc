#include "ktrust/agent/cgroup_place.h"

#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "ktrust/common/error_text.h"
#include "ktrust/common/files.h"

namespace ktrust {
namespace {

// cgroup trees are shallow; the bound keeps a hostile tree from exhausting
// the stack (as the enrolment scan's).
constexpr int kMaxDepth = 64;
// A process moved between cgroups during the search is searched for again.
constexpr int kSearchAttempts = 3;

constexpr absl::string_view kSetRoot =
    "set agent.cgroup_root to the host's cgroup2 root as mounted in the agent's mount namespace";

CgroupNamespaceFacts ReadFacts() {
  CgroupNamespaceFacts facts;
  facts.own_pid = getpid();
  struct stat st {};
  if (stat("/proc/self/ns/cgroup", &st) == 0) facts.own_namespace = st.st_ino;
  if (stat("/proc/1/ns/cgroup", &st) == 0) {
    facts.init_namespace = st.st_ino;
  } else {
    facts.init_error = absl::StrCat("/proc/1/ns/cgroup: ", ErrnoText(errno));
  }
  return facts;
}

absl::Status CheckCgroup2Dir(const std::string& dir, absl::string_view what) {
  struct statfs fs {};
  if (statfs(dir.c_str(), &fs) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(what, " ", dir, ": ", ErrnoText(errno)));
  }
  if (static_cast<unsigned long>(fs.f_type) != CGROUP2_SUPER_MAGIC) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, " ", dir, " is not on a cgroup2 filesystem"));
  }
  return absl::OkStatus();
}

bool Lists(const std::string& dir, int64_t pid) {
  auto procs = ReadFile(absl::StrCat(dir, "/cgroup.procs"));
  return procs.ok() && CgroupProcsLists(*procs, pid);
}

bool Search(const std::filesystem::path& dir, int64_t pid, int depth, std::string* found) {
  if (Lists(dir.string(), pid)) {
    *found = dir.string();
    return true;
  }
  if (depth >= kMaxDepth) return false;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    auto status = it->symlink_status(ec);
    if (ec) break;
    if (std::filesystem::is_directory(status) && Search(it->path(), pid, depth + 1, found)) {
      return true;
    }
  }
  return false;
}

absl::StatusOr<std::string> DefaultRoot(const CgroupNamespaceVerdict& verdict) {
  switch (verdict.kind) {
    case CgroupNamespaceKind::kHost: {
      auto mountinfo = ReadFile("/proc/self/mountinfo");
      if (!mountinfo.ok()) return mountinfo.status();
      // The whole hierarchy: a mount of a subtree would hide cgroups.
      for (const Cgroup2MountEntry& m : ParseCgroup2Mounts(*mountinfo)) {
        if (m.root == "/") return m.mount_point;
      }
      return absl::FailedPreconditionError(absl::StrCat(
          "no cgroup2 mount of the whole hierarchy in /proc/self/mountinfo: ", kSetRoot));
    }
    case CgroupNamespaceKind::kOwn: {
      auto init_mountinfo = ReadFile("/proc/1/mountinfo");
      if (!init_mountinfo.ok()) {
        return absl::FailedPreconditionError(
            absl::StrCat(verdict.why, ", and the host's cgroup mount cannot be read from pid 1 (",
                         init_mountinfo.status().message(),
                         "): run with hostPID and CAP_SYS_PTRACE, or ", kSetRoot));
      }
      auto root = HostCgroupRootFromInit(*init_mountinfo);
      if (!root.ok()) {
        return absl::FailedPreconditionError(
            absl::StrCat(verdict.why, ": ", root.status().message(), "; ", kSetRoot));
      }
      return root;
    }
    case CgroupNamespaceKind::kUnknown:
      break;
  }
  return absl::FailedPreconditionError(
      absl::StrCat("agent.cgroup_root is not set and the agent cannot tell whether it sees the "
                   "host's cgroups (",
                   verdict.why, "): ", kSetRoot));
}

}  // namespace

CgroupNamespaceVerdict ClassifyCgroupNamespace(const CgroupNamespaceFacts& facts) {
  if (facts.own_namespace == kInitialCgroupNamespace) {
    return {CgroupNamespaceKind::kHost, "the agent runs in the initial cgroup namespace"};
  }
  if (facts.own_pid == 1) {
    return {CgroupNamespaceKind::kUnknown,
            "the agent is pid 1 of its pid namespace (no hostPID), so pid 1's cgroup namespace "
            "says nothing about the host's"};
  }
  if (!facts.init_namespace) {
    return {CgroupNamespaceKind::kUnknown,
            absl::StrCat("the agent's cgroup namespace is not the initial one and pid 1's cannot "
                         "be read (",
                         facts.init_error, ")")};
  }
  if (*facts.init_namespace == facts.own_namespace) {
    return {CgroupNamespaceKind::kHost, "the agent shares pid 1's cgroup namespace"};
  }
  return {CgroupNamespaceKind::kOwn,
          absl::StrCat("the agent runs in a cgroup namespace of its own (", facts.own_namespace,
                       "; pid 1 is in ", *facts.init_namespace, ")")};
}

absl::StatusOr<std::string> HostCgroupRootFromInit(absl::string_view init_mountinfo) {
  std::vector<Cgroup2MountEntry> mounts = ParseCgroup2Mounts(init_mountinfo);
  if (mounts.empty()) return absl::NotFoundError("pid 1 has no cgroup2 mount");
  // Mount points in pid 1's mountinfo are paths of its mount namespace,
  // reached from here through its root directory.
  const std::string& point = mounts.front().mount_point;
  return absl::StrCat("/proc/1/root", point == "/" ? "" : point);
}

absl::StatusOr<std::string> FindProcessCgroupUnder(const std::string& root, int64_t pid) {
  std::string found;
  if (Search(root, pid, 0, &found)) return found;
  return absl::NotFoundError(absl::StrCat("no cgroup.procs under ", root, " lists process ", pid));
}

absl::StatusOr<CgroupPlace> FindCgroupPlace(const std::string& configured_root) {
  CgroupPlace place;
  place.cgroup_namespace = ClassifyCgroupNamespace(ReadFacts());
  const CgroupNamespaceVerdict& verdict = place.cgroup_namespace;
  place.root = configured_root;
  if (place.root.empty()) {
    auto root = DefaultRoot(verdict);
    if (!root.ok()) return root.status();
    place.root = *std::move(root);
  }
  if (auto st = CheckCgroup2Dir(place.root, "the cgroup root"); !st.ok()) return st;
  const int64_t pid = getpid();
  auto mountinfo = ReadFile("/proc/self/mountinfo");
  if (!mountinfo.ok()) return mountinfo.status();

  // Through the mount: right when the agent reads paths as the host does,
  // and proved by its pid in that directory's cgroup.procs.
  std::optional<CgroupView> mount_view;
  std::string mount_dir;
  auto own_path = ReadFile("/proc/self/cgroup");
  if (!own_path.ok()) return own_path.status();
  auto path = CgroupV2PathOf(*own_path);
  if (!path.ok()) return path.status();
  if (auto view = MountView(*mountinfo, place.root); view.ok()) {
    if (auto dir = view->DirOf(*path); dir.ok() && Lists(*dir, pid)) {
      mount_view = *view;
      mount_dir = *dir;
    }
  }
  if (mount_view && verdict.kind == CgroupNamespaceKind::kHost) {
    place.own_dir = mount_dir;
    place.view = *mount_view;
    place.how = "its /proc/self/cgroup under the cgroup2 mount, listing its pid";
    return place;
  }

  // Otherwise by its pid under the root. /proc/self/cgroup read before and
  // after: unchanged, the directory found is where the agent was throughout.
  std::vector<Cgroup2MountEntry> mounts = ParseCgroup2Mounts(*mountinfo);
  std::vector<std::string> points;
  for (const Cgroup2MountEntry& m : mounts) points.push_back(m.mount_point);
  std::string floor = Cgroup2MountHolding(points, place.root);
  if (floor.empty()) floor = place.root;  // e.g. /proc/1/root/...: no mount of ours
  absl::Status searched;
  for (int attempt = 0; attempt < kSearchAttempts; ++attempt) {
    auto found = FindProcessCgroupUnder(place.root, pid);
    auto after_text = ReadFile("/proc/self/cgroup");
    if (!after_text.ok()) return after_text.status();
    auto after = CgroupV2PathOf(*after_text);
    if (!after.ok()) return after.status();
    if (*after != *path) {
      path = after;  // moved meanwhile: again
      searched = absl::UnavailableError("the agent moved to another cgroup during the search");
      continue;
    }
    if (!found.ok()) {
      searched = found.status();
      break;
    }
    place.own_dir = *std::move(found);
    place.view = CgroupView{*path, place.own_dir, floor};
    place.how = absl::StrCat("its pid in ", place.own_dir, "/cgroup.procs (", verdict.why, ")");
    return place;
  }
  // Not under the root, but proved through a mount of its own namespace:
  // the agent's cgroup id is right, only other processes cannot be named
  // beyond that mount.
  if (mount_view) {
    place.own_dir = mount_dir;
    place.view = *mount_view;
    place.how = absl::StrCat(
        "its /proc/self/cgroup under a cgroup2 mount of its own namespace, "
        "listing its pid (",
        verdict.why, ")");
    return place;
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "cannot tell which cgroup is the agent's own, so it could enrol itself: ", verdict.why,
      "; /proc/self/cgroup says ", *path, ", which names no directory listing pid ", pid,
      ", and the search under ", place.root, " found none (", searched.message(), "); ", kSetRoot,
      " (the agent must run under it)"));
}

}  // namespace ktrust
