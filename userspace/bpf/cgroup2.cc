#include "ktrust/bpf/cgroup2.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/statfs.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/match.h"
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

}  // namespace

std::vector<std::string> FindCgroup2Mounts(absl::string_view mountinfo) {
  std::vector<std::string> mounts;
  for (absl::string_view line : absl::StrSplit(mountinfo, '\n', absl::SkipEmpty())) {
    // "<id> <parent> <major:minor> <root> <mount point> <options> [optional...] - <fstype> ..."
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ', absl::SkipEmpty());
    size_t separator = 0;
    while (separator < fields.size() && fields[separator] != "-") ++separator;
    if (fields.size() < 5 || separator + 1 >= fields.size()) continue;
    if (fields[separator + 1] == "cgroup2") mounts.push_back(DecodeOctalEscapes(fields[4]));
  }
  return mounts;
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
  std::string mount = Cgroup2MountHolding(FindCgroup2Mounts(mountinfo), within);
  if (mount.empty()) {
    auto first = FindCgroup2Mount(mountinfo);
    if (!first.ok()) return first.status();
    mount = *first;
  }
  if (mount.size() > 1 && mount.back() == '/') mount.pop_back();
  for (absl::string_view line : absl::StrSplit(proc_cgroup, '\n', absl::SkipEmpty())) {
    if (!absl::ConsumePrefix(&line, "0::")) continue;
    return absl::StrCat(mount, line == "/" ? "" : line);
  }
  return absl::NotFoundError("/proc/self/cgroup names no cgroup v2 (\"0::\" line)");
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
