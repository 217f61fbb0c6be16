#include "ktrust/bpf/cgroup2.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/statfs.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "ktrust/common/files.h"

namespace ktrust {
namespace {

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string DecodeOctalEscapes(absl::string_view field) {
  std::string out;
  out.reserve(field.size());
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size()) {
      absl::string_view digits = field.substr(i + 1, 3);
      bool octal = digits.size() == 3;
      for (char c : digits) octal = octal && c >= '0' && c <= '7';
      if (octal) {
        out.push_back(
            static_cast<char>((digits[0] - '0') * 64 + (digits[1] - '0') * 8 + (digits[2] - '0')));
        i += 3;
        continue;
      }
    }
    out.push_back(field[i]);
  }
  return out;
}

// A path's components with "." dropped and ".." applied where a name
// precedes it; leading ".." stay (above the namespace's root).
std::vector<std::string> Components(absl::string_view path) {
  std::vector<std::string> out;
  for (absl::string_view c : absl::StrSplit(path, '/', absl::SkipEmpty())) {
    if (c == ".") continue;
    if (c == ".." && !out.empty() && out.back() != "..") {
      out.pop_back();
    } else {
      out.emplace_back(c);
    }
  }
  return out;
}

}  // namespace

std::vector<Cgroup2MountEntry> ParseCgroup2Mounts(absl::string_view mountinfo) {
  std::vector<Cgroup2MountEntry> mounts;
  for (absl::string_view line : absl::StrSplit(mountinfo, '\n', absl::SkipEmpty())) {
    // "<id> <parent> <major:minor> <root> <mount point> <options> [optional...] - <fstype> ..."
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ', absl::SkipEmpty());
    size_t separator = 0;
    while (separator < fields.size() && fields[separator] != "-") ++separator;
    if (fields.size() < 5 || separator + 1 >= fields.size()) continue;
    if (fields[separator + 1] == "cgroup2") {
      mounts.push_back({DecodeOctalEscapes(fields[4]), DecodeOctalEscapes(fields[3])});
    }
  }
  return mounts;
}

std::vector<std::string> FindCgroup2Mounts(absl::string_view mountinfo) {
  std::vector<std::string> mounts;
  for (Cgroup2MountEntry& m : ParseCgroup2Mounts(mountinfo))
    mounts.push_back(std::move(m.mount_point));
  return mounts;
}

absl::StatusOr<std::string> CgroupV2PathOf(absl::string_view proc_cgroup) {
  for (absl::string_view line : absl::StrSplit(proc_cgroup, '\n', absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&line, "0::") && absl::StartsWith(line, "/")) return std::string(line);
  }
  return absl::NotFoundError("no cgroup v2 (\"0::/...\" line) in /proc/<pid>/cgroup");
}

bool CgroupProcsLists(absl::string_view cgroup_procs, int64_t pid) {
  for (absl::string_view line : absl::StrSplit(cgroup_procs, '\n', absl::SkipEmpty())) {
    int64_t listed = 0;
    if (absl::SimpleAtoi(line, &listed) && listed == pid) return true;
  }
  return false;
}

absl::StatusOr<std::string> CgroupView::DirOf(absl::string_view cgroup_path) const {
  std::vector<std::string> from = Components(anchor_path);
  std::vector<std::string> to = Components(cgroup_path);
  size_t common = 0;
  while (common < from.size() && common < to.size() && from[common] == to[common]) ++common;
  // Going up over a ".." would need the name it stands for.
  for (size_t i = common; i < from.size(); ++i) {
    if (from[i] == "..") {
      return absl::NotFoundError(absl::StrCat("cgroup ", cgroup_path, " cannot be named from ",
                                              anchor_path, " (above this cgroup namespace)"));
    }
  }
  absl::string_view below_floor = anchor_dir;
  if (!absl::ConsumePrefix(&below_floor, floor) ||
      (!below_floor.empty() && below_floor.front() != '/' && floor != "/")) {
    return absl::InternalError(absl::StrCat(anchor_dir, " is not below ", floor));
  }
  std::vector<std::string> dir = Components(below_floor);
  for (size_t i = common; i < from.size(); ++i) {
    if (dir.empty()) {
      return absl::NotFoundError(absl::StrCat("cgroup ", cgroup_path, " is above ", floor,
                                              ", outside what this agent can reach"));
    }
    dir.pop_back();
  }
  for (size_t i = common; i < to.size(); ++i) {
    if (to[i] == "..") {
      if (dir.empty()) {
        return absl::NotFoundError(absl::StrCat("cgroup ", cgroup_path, " is above ", floor,
                                                ", outside what this agent can reach"));
      }
      dir.pop_back();
    } else {
      dir.push_back(to[i]);
    }
  }
  std::string out = floor;
  if (out.size() > 1 && out.back() == '/') out.pop_back();
  for (const std::string& c : dir) absl::StrAppend(&out, out == "/" ? "" : "/", c);
  return out;
}

absl::StatusOr<CgroupView> MountView(absl::string_view mountinfo, absl::string_view within) {
  std::vector<Cgroup2MountEntry> mounts = ParseCgroup2Mounts(mountinfo);
  // A root with ".." is above this process's cgroup namespace: its
  // directories' paths are not the ones /proc/<pid>/cgroup shows here.
  auto usable = [](const Cgroup2MountEntry& m) {
    std::vector<std::string> root = Components(m.root);
    return std::find(root.begin(), root.end(), "..") == root.end();
  };
  std::vector<std::string> points;
  for (const Cgroup2MountEntry& m : mounts) points.push_back(m.mount_point);
  std::string holding = Cgroup2MountHolding(points, within);
  const Cgroup2MountEntry* chosen = nullptr;
  for (const Cgroup2MountEntry& m : mounts) {
    if (m.mount_point == holding && usable(m)) chosen = &m;
  }
  for (size_t i = 0; chosen == nullptr && i < mounts.size(); ++i) {
    if (usable(mounts[i])) chosen = &mounts[i];
  }
  if (chosen == nullptr) {
    return absl::NotFoundError(
        mounts.empty() ? "no cgroup2 filesystem in mountinfo"
                       : "every cgroup2 mount's root is above this process's cgroup namespace");
  }
  return CgroupView{chosen->root, chosen->mount_point, chosen->mount_point};
}

absl::StatusOr<std::string> FindCgroup2Mount(absl::string_view mountinfo) {
  std::vector<std::string> mounts = FindCgroup2Mounts(mountinfo);
  if (mounts.empty()) return absl::NotFoundError("no cgroup2 filesystem in mountinfo");
  return mounts.front();
}

absl::StatusOr<std::string> Cgroup2Mount() {
  auto text = ReadFile("/proc/self/mountinfo");
  if (!text.ok()) return text.status();
  return FindCgroup2Mount(*text);
}

std::string Cgroup2MountHolding(const std::vector<std::string>& mounts, absl::string_view within) {
  std::string best;
  for (const std::string& m : mounts) {
    bool holds = within == m ||
                 (absl::StartsWith(within, m) && (m.back() == '/' || within[m.size()] == '/'));
    if (holds && m.size() > best.size()) best = m;
  }
  return best;
}

absl::StatusOr<std::string> OwnCgroupPath(absl::string_view within) {
  auto text = ReadFile("/proc/self/cgroup");
  if (!text.ok()) return text.status();
  auto mountinfo = ReadFile("/proc/self/mountinfo");
  if (!mountinfo.ok()) return mountinfo.status();
  return FindOwnCgroupPath(*text, *mountinfo, within);
}

absl::StatusOr<std::string> FindOwnCgroupPath(absl::string_view proc_cgroup,
                                              absl::string_view mountinfo,
                                              absl::string_view within) {
  auto path = CgroupV2PathOf(proc_cgroup);
  if (!path.ok()) return path.status();
  auto view = MountView(mountinfo, within);
  if (!view.ok()) return view.status();
  return view->DirOf(*path);
}

absl::StatusOr<uint64_t> CgroupIdOf(absl::string_view cgroup_dir) {
  std::string path(cgroup_dir);
  struct statfs fs {};
  if (statfs(path.c_str(), &fs) != 0) return absl::ErrnoToStatus(errno, "statfs " + path);
  if (static_cast<unsigned long>(fs.f_type) != CGROUP2_SUPER_MAGIC) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a cgroup v2 directory"));
  }
  // On cgroup2 the kernfs file handle is the cgroup id.
  alignas(file_handle) unsigned char storage[sizeof(file_handle) + sizeof(uint64_t)] = {};
  auto* handle = reinterpret_cast<file_handle*>(storage);
  handle->handle_bytes = sizeof(uint64_t);
  int mount_id = 0;
  if (name_to_handle_at(AT_FDCWD, path.c_str(), handle, &mount_id, 0) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("name_to_handle_at ", path));
  }
  if (handle->handle_bytes != sizeof(uint64_t)) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a cgroup v2 directory"));
  }
  uint64_t id = 0;
  std::memcpy(&id, storage + sizeof(file_handle), sizeof(id));
  return id;
}

}  // namespace ktrust
