#include "ktrust/config/registry.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <system_error>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "ktrust/common/error_text.h"
#include "spiffe_template.h"

namespace ktrust {
namespace {

constexpr absl::string_view kPlaceholders[] = {
    "trust_domain",    "node",     "name",   "unit", "cgroup", "namespace",
    "service_account", "pod_name", "pod_uid"};
constexpr absl::string_view kKubernetesPlaceholders[] = {"namespace", "service_account", "pod_name",
                                                         "pod_uid"};

// cgroup trees are shallow; the bound only keeps a hostile tree from
// exhausting the stack.
constexpr int kMaxCgroupDepth = 64;

bool IsKnownPlaceholder(absl::string_view name) {
  return std::find(std::begin(kPlaceholders), std::end(kPlaceholders), name) !=
         std::end(kPlaceholders);
}

bool IsSpiffeSegmentChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '-' || c == '_';
}

// A Kubernetes value goes into the ID as one whole path segment: anything
// else would let a name add segments or change the ID's meaning.
absl::Status CheckKubernetesValue(absl::string_view placeholder, absl::string_view value) {
  if (value.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "{", placeholder, "} has no value: the pod is not known from the Kubernetes API"));
  }
  if (value == "." || value == ".." ||
      !std::all_of(value.begin(), value.end(), IsSpiffeSegmentChar)) {
    return absl::InvalidArgumentError(
        absl::StrCat("{", placeholder, "} is \"", absl::CHexEscape(value),
                     "\", which is not one SPIFFE path segment (letters, digits, '.', '-', '_'; "
                     "not \".\" or \"..\")"));
  }
  return absl::OkStatus();
}

}  // namespace

bool TemplateUsesKubernetes(absl::string_view tmpl) {
  for (absl::string_view name : kKubernetesPlaceholders) {
    if (absl::StrContains(tmpl, absl::StrCat("{", name, "}"))) return true;
  }
  return false;
}

bool CgroupGlobMatch(absl::string_view glob, absl::string_view path) {
  // matches[i * width + j]: glob[i..] matches path[j..]. Filled from the end;
  // globs and paths are short, and a table cannot backtrack exponentially.
  const size_t width = path.size() + 1;
  std::vector<char> matches((glob.size() + 2) * width, 0);
  auto at = [&](size_t i, size_t j) -> char& { return matches[i * width + j]; };
  at(glob.size(), path.size()) = 1;
  for (size_t i = glob.size(); i-- > 0;) {
    const bool double_star = glob[i] == '*' && i + 1 < glob.size() && glob[i + 1] == '*';
    for (size_t j = path.size() + 1; j-- > 0;) {
      const bool have = j < path.size();
      char result = 0;
      if (double_star) {
        result = at(i + 2, j) || (have && at(i, j + 1));
      } else if (glob[i] == '*') {
        result = at(i + 1, j) || (have && path[j] != '/' && at(i, j + 1));
      } else if (glob[i] == '?') {
        result = have && path[j] != '/' && at(i + 1, j + 1);
      } else {
        result = have && path[j] == glob[i] && at(i + 1, j + 1);
      }
      at(i, j) = result;
    }
  }
  return at(0, 0) != 0;
}

absl::StatusOr<std::string> SystemdUnitOf(absl::string_view cgroup_path) {
  std::vector<absl::string_view> components = absl::StrSplit(cgroup_path, '/', absl::SkipEmpty());
  for (auto it = components.rbegin(); it != components.rend(); ++it) {
    for (absl::string_view suffix : {".service", ".scope"}) {
      if (it->size() > suffix.size() && absl::EndsWith(*it, suffix)) {
        return std::string(it->substr(0, it->size() - suffix.size()));
      }
    }
  }
  return absl::NotFoundError(
      absl::StrCat("cgroup ", cgroup_path, " is not a systemd unit, but the template uses {unit}"));
}

namespace config_internal {

absl::Status CheckTemplate(absl::string_view tmpl) {
  for (size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl[i] == '}') {
      return absl::InvalidArgumentError(absl::StrCat("'}' at offset ", i, " closes nothing"));
    }
    if (tmpl[i] != '{') continue;
    size_t close = tmpl.find_first_of("{}", i + 1);
    if (close == absl::string_view::npos || tmpl[close] != '}') {
      return absl::InvalidArgumentError(
          absl::StrCat("the placeholder at offset ", i, " has no closing '}'"));
    }
    absl::string_view name = tmpl.substr(i + 1, close - i - 1);
    if (!IsKnownPlaceholder(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown placeholder {", name,
                       "} (known: {trust_domain}, {node}, {name}, {unit}, {cgroup}, and in "
                       "Kubernetes mode {namespace}, {service_account}, {pod_name}, {pod_uid})"));
    }
    i = close;
  }
  return absl::OkStatus();
}

bool TemplateUsesUnit(absl::string_view tmpl) { return absl::StrContains(tmpl, "{unit}"); }

absl::StatusOr<SpiffeId> RenderSpiffeId(absl::string_view tmpl, const TemplateValues& values,
                                        const std::string* unit) {
  if (auto st = CheckTemplate(tmpl); !st.ok()) return st;
  std::string unit_value;
  if (TemplateUsesUnit(tmpl)) {
    if (unit != nullptr) {
      unit_value = *unit;
    } else {
      auto found = SystemdUnitOf(values.cgroup);
      if (!found.ok()) return absl::InvalidArgumentError(found.status().message());
      unit_value = *std::move(found);
    }
  }
  std::string text;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl[i] != '{') {
      text.push_back(tmpl[i]);
      continue;
    }
    size_t close = tmpl.find('}', i);
    absl::string_view name = tmpl.substr(i + 1, close - i - 1);
    if (name == "trust_domain") absl::StrAppend(&text, values.trust_domain);
    if (name == "node") absl::StrAppend(&text, values.node);
    if (name == "name") absl::StrAppend(&text, values.name);
    if (name == "unit") absl::StrAppend(&text, unit_value);
    if (name == "cgroup") absl::StrAppend(&text, values.cgroup);
    for (const auto& [placeholder, value] :
         {std::pair<absl::string_view, absl::string_view>{"namespace", values.pod_namespace},
          {"service_account", values.service_account},
          {"pod_name", values.pod_name},
          {"pod_uid", values.pod_uid}}) {
      if (name != placeholder) continue;
      if (auto st = CheckKubernetesValue(placeholder, value); !st.ok()) return st;
      absl::StrAppend(&text, value);
    }
    i = close;
  }
  auto id = SpiffeId::ParseWorkload(text);
  if (!id.ok()) return id.status();
  if (id->trust_domain().name() != values.trust_domain) {
    return absl::InvalidArgumentError(absl::StrCat("the template gives ", id->ToString(),
                                                   ", outside trust domain ", values.trust_domain));
  }
  return id;
}

}  // namespace config_internal

absl::StatusOr<SpiffeId> RenderSpiffeId(absl::string_view tmpl, const TemplateValues& values) {
  return config_internal::RenderSpiffeId(tmpl, values, nullptr);
}

absl::StatusOr<std::vector<std::string>> ListCgroupDirectory(const std::string& dir) {
  std::error_code ec;
  // Not skip_permission_denied: an unreadable subtree is reported, not hidden.
  std::filesystem::directory_iterator it(dir, ec);
  std::vector<std::string> children;
  for (; !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    // symlink_status: a link is never followed into another tree.
    std::error_code entry_ec;
    auto status = it->symlink_status(entry_ec);
    // A child removed since readdir is not there; the directory still is.
    if (entry_ec == std::errc::no_such_file_or_directory) continue;
    if (entry_ec) {
      ec = entry_ec;
      break;
    }
    if (std::filesystem::is_directory(status)) children.push_back(it->path().filename());
  }
  if (ec) return absl::ErrnoToStatus(ec.value(), absl::StrCat("cannot list ", dir));
  // Directory order is arbitrary; the result should not be.
  std::sort(children.begin(), children.end());
  return children;
}

namespace {

class CgroupWalker {
 public:
  CgroupWalker(const Config& config, const CgroupLister& list, CgroupScan& scan)
      : config_(config), list_(list), scan_(scan) {}

  // Its id into every_cgroup.
  void Record(const std::filesystem::path& dir, const std::string& relative) {
    struct stat st {};
    if (::lstat(dir.c_str(), &st) == 0) {
      scan_.every_cgroup.insert(static_cast<uint64_t>(st.st_ino));
      scan_.cgroups[relative] = static_cast<uint64_t>(st.st_ino);
    } else if (errno != ENOENT) {  // a cgroup gone meanwhile needs no id
      Unread(
          absl::StrCat("cgroup ", relative.empty() ? "(root)" : relative, ": ", ErrnoText(errno)));
    }
  }

  void Walk(const std::filesystem::path& dir, const std::string& relative, int depth) {
    if (depth > kMaxCgroupDepth) {
      Problem(absl::StrCat("cgroup ", relative, ": deeper than ", kMaxCgroupDepth,
                           " levels; not scanned further"));
      return;
    }
    auto children = list_(dir.string());
    ++scan_.listed;
    if (absl::IsNotFound(children.status())) return;  // gone while it was scanned: nothing there
    if (!children.ok()) {
      Unread(absl::StrCat("cgroup ", relative, ": ", children.status().message()));
      return;
    }
    WalkChildren(dir, relative, depth, *children);
  }

  // One cgroup below the root and its subtree, as WalkChildren takes each child.
  void WalkOne(const std::filesystem::path& dir, const std::string& relative, int depth) {
    Record(dir, relative);
    Visit(dir, relative);
    Walk(dir, relative, depth);
  }

  void WalkChildren(const std::filesystem::path& dir, const std::string& relative, int depth,
                    const std::vector<std::string>& children) {
    for (const std::string& child : children) {
      std::string child_relative = relative.empty() ? child : absl::StrCat(relative, "/", child);
      Record(dir / child, child_relative);
      Visit(dir / child, child_relative);
      Walk(dir / child, child_relative, depth + 1);
    }
  }

 private:
  void Visit(const std::filesystem::path& dir, const std::string& relative) {
    for (size_t index = 0; index < config_.workloads.size(); ++index) {
      const WorkloadConfig& workload = config_.workloads[index];
      if (!CgroupGlobMatch(workload.cgroup, relative)) continue;
      // First match wins, even when its ID cannot be made: falling through to
      // a later workload would hand the cgroup an identity nobody meant.
      struct stat st {};
      if (::lstat(dir.c_str(), &st) != 0) {
        if (errno != ENOENT) Unread(absl::StrCat("cgroup ", relative, ": ", ErrnoText(errno)));
        return;
      }
      // The pod's values come from the cluster (not yet): a template that
      // uses them gives no ID here, and the cgroup is refused.
      TemplateValues values;
      values.trust_domain = config_.trust_domain;
      values.node = config_.agent.node_name;
      values.name = workload.name;
      values.cgroup = relative;
      auto id = RenderSpiffeId(workload.spiffe_id, values);
      RegisteredWorkload registered{index, relative, static_cast<uint64_t>(st.st_ino), {}, {}, {}};
      if (id.ok()) {
        registered.id = *std::move(id);
      } else {
        // Skipping it would leave a cgroup the operator meant to enforce
        // alone: it is registered without an ID, and refused.
        registered.id_problem = absl::StrCat("its SPIFFE ID template ", workload.spiffe_id,
                                             " gives no valid ID: ", id.status().message());
      }
      scan_.found.push_back(std::move(registered));
      return;
    }
    // Kubernetes mode asks the cluster whether it is a pod's.
    struct stat st {};
    if (::lstat(dir.c_str(), &st) != 0) {
      if (errno != ENOENT) Unread(absl::StrCat("cgroup ", relative, ": ", ErrnoText(errno)));
      return;
    }
    scan_.unclaimed.push_back({relative, static_cast<uint64_t>(st.st_ino)});
  }

  void Problem(std::string text) { scan_.problems.push_back(std::move(text)); }
  // Only ENOENT says a cgroup is not there; any other error says nothing
  // about what the directory holds (EMFILE at the fd limit, ENOMEM, EACCES).
  void Unread(std::string text) {
    scan_.complete = false;
    scan_.unread.push_back(std::move(text));
  }

  const Config& config_;
  const CgroupLister& list_;
  CgroupScan& scan_;
};

}  // namespace

absl::StatusOr<CgroupScan> ScanCgroupTree(const Config& config, const std::string& cgroup_root,
                                          const CgroupLister& list) {
  struct stat st {};
  if (::stat(cgroup_root.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("cgroup root ", cgroup_root, ": ", ErrnoText(errno)));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cgroup root ", cgroup_root, " is not a directory"));
  }
  auto top = list(cgroup_root);
  if (!top.ok()) {
    return absl::Status(top.status().code(),
                        absl::StrCat("cgroup root ", cgroup_root, ": ", top.status().message()));
  }
  CgroupScan scan;
  scan.listed = 1;
  CgroupWalker walker(config, list, scan);
  walker.Record(cgroup_root, "");
  walker.WalkChildren(cgroup_root, "", 0, *top);
  return scan;
}

bool CgroupPathWithin(absl::string_view path, absl::string_view dir) {
  if (dir.empty()) return true;
  return absl::StartsWith(path, dir) && (path.size() == dir.size() || path[dir.size()] == '/');
}

namespace {

// The order of a scan (depth first, children sorted): by path segment, a
// parent before its children.
bool ScanOrder(absl::string_view a, absl::string_view b) {
  std::vector<absl::string_view> sa = absl::StrSplit(a, '/'), sb = absl::StrSplit(b, '/');
  return std::lexicographical_compare(sa.begin(), sa.end(), sb.begin(), sb.end());
}

}  // namespace

absl::StatusOr<CgroupScan> RescanCgroupSubtrees(const Config& config,
                                                const std::string& cgroup_root,
                                                const CgroupScan& previous,
                                                const std::set<std::string>& changed,
                                                const CgroupLister& list) {
  // Each changed cgroup from a parent the last scan saw: one created inside
  // a directory created since is walked from there.
  std::set<std::string> dirs;
  for (std::string dir : changed) {
    while (!dir.empty()) {
      size_t slash = dir.rfind('/');
      std::string parent = slash == std::string::npos ? "" : dir.substr(0, slash);
      if (parent.empty() || previous.cgroups.count(parent)) break;
      dir = parent;
    }
    if (dir.empty()) return ScanCgroupTree(config, cgroup_root, list);
    dirs.insert(dir);
  }
  // Only the outermost: a subtree inside another is walked with it.
  for (auto it = dirs.begin(); it != dirs.end();) {
    auto outer = std::find_if(dirs.begin(), it,
                              [&](const std::string& d) { return CgroupPathWithin(*it, d); });
    it = outer != it ? dirs.erase(it) : std::next(it);
  }
  CgroupScan fresh;
  CgroupWalker walker(config, list, fresh);
  // The subtrees walked in full (not those that could not be read): what
  // `previous` said of them is replaced.
  std::vector<std::string> replaced;
  for (const std::string& dir : dirs) {
    size_t unread = fresh.unread.size();
    walker.WalkOne(std::filesystem::path(cgroup_root) / dir, dir,
                   static_cast<int>(std::count(dir.begin(), dir.end(), '/')) + 1);
    if (fresh.unread.size() == unread) replaced.push_back(dir);
  }
  auto replaced_path = [&](absl::string_view path) {
    return std::any_of(replaced.begin(), replaced.end(),
                       [&](const std::string& d) { return CgroupPathWithin(path, d); });
  };
  CgroupScan scan;
  scan.listed = fresh.listed;
  scan.complete = previous.complete && fresh.complete;
  scan.unread = previous.unread;
  scan.unread.insert(scan.unread.end(), fresh.unread.begin(), fresh.unread.end());
  std::set<std::string> problems(previous.problems.begin(), previous.problems.end());
  problems.insert(fresh.problems.begin(), fresh.problems.end());
  scan.problems.assign(problems.begin(), problems.end());
  for (const auto& [path, id] : previous.cgroups) {
    if (!replaced_path(path)) scan.cgroups[path] = id;
  }
  for (const auto& [path, id] : fresh.cgroups) scan.cgroups[path] = id;
  for (const auto& [path, id] : scan.cgroups) scan.every_cgroup.insert(id);
  // What was walked again wins over what an unreadable subtree kept.
  std::set<std::string> walked;
  for (const RegisteredWorkload& r : fresh.found) walked.insert(r.cgroup_path);
  for (const ScannedCgroup& c : fresh.unclaimed) walked.insert(c.path);
  for (const RegisteredWorkload& r : previous.found) {
    if (!replaced_path(r.cgroup_path) && !walked.count(r.cgroup_path)) scan.found.push_back(r);
  }
  scan.found.insert(scan.found.end(), fresh.found.begin(), fresh.found.end());
  for (const ScannedCgroup& c : previous.unclaimed) {
    if (!replaced_path(c.path) && !walked.count(c.path)) scan.unclaimed.push_back(c);
  }
  scan.unclaimed.insert(scan.unclaimed.end(), fresh.unclaimed.begin(), fresh.unclaimed.end());
  std::sort(scan.found.begin(), scan.found.end(),
            [](const RegisteredWorkload& a, const RegisteredWorkload& b) {
              return ScanOrder(a.cgroup_path, b.cgroup_path);
            });
  std::sort(
      scan.unclaimed.begin(), scan.unclaimed.end(),
      [](const ScannedCgroup& a, const ScannedCgroup& b) { return ScanOrder(a.path, b.path); });
  return scan;
}

}  // namespace ktrust
