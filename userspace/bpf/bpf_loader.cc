#include "ktrust/bpf/bpf_loader.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "ktrust/bpf/cgroup2.h"
#include "ktrust/bpf/libbpf_log.h"
#include "ktrust/common/files.h"
#include "ktrust/common/log.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust_bpf.skel.h"

namespace ktrust {
namespace {

struct CgroupProgram {
  const char* name;  // in pin file names
  BpfProgram program;
  bpf_attach_type attach_type;
};

constexpr CgroupProgram kCgroupPrograms[] = {
    {"connect4", BpfProgram::kConnect4, BPF_CGROUP_INET4_CONNECT},
    {"connect6", BpfProgram::kConnect6, BPF_CGROUP_INET6_CONNECT},
    {"sendmsg4", BpfProgram::kSendmsg4, BPF_CGROUP_UDP4_SENDMSG},
    {"sendmsg6", BpfProgram::kSendmsg6, BPF_CGROUP_UDP6_SENDMSG},
    {"getpeername4", BpfProgram::kGetpeername4, BPF_CGROUP_INET4_GETPEERNAME},
    {"getpeername6", BpfProgram::kGetpeername6, BPF_CGROUP_INET6_GETPEERNAME},
};
constexpr CgroupProgram kSockopsProgram = {"sockops", BpfProgram::kSockops, BPF_CGROUP_SOCK_OPS};
constexpr CgroupProgram kAgentSockopsProgram = {"sockops_agent", BpfProgram::kSockopsAgent,
                                                BPF_CGROUP_SOCK_OPS};

// Pin names of the two sk_lookup variants' links.
constexpr absl::string_view kHostNetnsLink = "sk_lookup";
constexpr absl::string_view kPodNetnsLink = "sk_lookup_pod";

std::string MapsDir(absl::string_view pin_dir) { return absl::StrCat(pin_dir, "/maps"); }
std::string LinksDir(absl::string_view pin_dir) { return absl::StrCat(pin_dir, "/links"); }

absl::Status MakeDirectory(const std::string& path) {
  if (mkdir(path.c_str(), 0700) == 0 || errno == EEXIST) return absl::OkStatus();
  return absl::ErrnoToStatus(errno, absl::StrCat("mkdir ", path));
}

// Detaches a pinned link now. Dropping the pin alone would also detach it,
// but from a kernel work item some time later: an uninstall must be done
// when it returns.
absl::Status DetachPinnedLink(const std::string& path) {
  UniqueFd fd(bpf_obj_get(path.c_str()));
  if (!fd.valid())
    return absl::ErrnoToStatus(errno, absl::StrCat("opening the pinned link ", path));
  // A link whose cgroup or netns is gone is already detached.
  if (bpf_link_detach(fd.get()) != 0 && errno != ENOLINK && errno != ENOENT) {
    return absl::ErrnoToStatus(errno, absl::StrCat("detaching ", path));
  }
  return absl::OkStatus();
}

// Removes the pins in dir, detaching links first, and then dir; a missing dir
// is fine.
absl::Status RemovePinDirectory(const std::string& dir, bool links) {
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) return absl::OkStatus();
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (links) {
      if (auto st = DetachPinnedLink(entry.path().string()); !st.ok()) return st;
    }
    if (unlink(entry.path().c_str()) != 0 && errno != ENOENT) {
      return absl::ErrnoToStatus(errno, absl::StrCat("unpinning ", entry.path().string()));
    }
  }
  if (ec) return absl::InternalError(absl::StrCat("listing ", dir, ": ", ec.message()));
  if (rmdir(dir.c_str()) != 0 && errno != ENOENT) {
    return absl::ErrnoToStatus(errno, absl::StrCat("rmdir ", dir));
  }
  return absl::OkStatus();
}

}  // namespace

void BpfLoader::SkeletonDeleter::operator()(ktrust_bpf* skeleton) const {
  ktrust_bpf__destroy(skeleton);
}

absl::Status BpfLoaderOptions::Validate() const {
  if (pin_dir.empty() || pin_dir.front() != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("bpf pin_dir \"", pin_dir, "\" must be an absolute path"));
  }
  return absl::OkStatus();
}

BpfLoader::BpfLoader(BpfLoaderOptions options, KernelFeatures features,
                     std::unique_ptr<ktrust_bpf, SkeletonDeleter> skeleton)
    : options_(std::move(options)),
      features_(std::move(features)),
      skeleton_(std::move(skeleton)),
      maps_(InterceptionMaps::Fds{
          .mesh = bpf_map__fd(skeleton_->maps.ktrust_mesh),
          .cgroups = bpf_map__fd(skeleton_->maps.ktrust_cgroups),
          .watched = bpf_map__fd(skeleton_->maps.ktrust_watched),
          .config = bpf_map__fd(skeleton_->maps.ktrust_config),
          .orig_by_cookie = bpf_map__fd(skeleton_->maps.ktrust_orig_ck),
          .orig_by_tuple = bpf_map__fd(skeleton_->maps.ktrust_orig_tp),
          .inbound = bpf_map__fd(skeleton_->maps.ktrust_inbound),
          .listeners = bpf_map__fd(skeleton_->maps.ktrust_listen),
          .counters = bpf_map__fd(skeleton_->maps.ktrust_counters),
          .outbound_targets = bpf_map__fd(skeleton_->maps.ktrust_outbound_targets),
      }) {}

BpfLoader::~BpfLoader() = default;

absl::StatusOr<std::unique_ptr<BpfLoader>> BpfLoader::Create(BpfLoaderOptions options) {
  if (auto st = options.Validate(); !st.ok()) return st;
  RouteLibbpfLogsToSpdlog();
  KernelFeatures features = KernelFeatures::Probe(options.pin_dir);
  if (auto st = features.Require(); !st.ok()) return st;

  for (const std::string& dir :
       {options.pin_dir, MapsDir(options.pin_dir), LinksDir(options.pin_dir)}) {
    if (auto st = MakeDirectory(dir); !st.ok()) return st;
  }

  std::unique_ptr<ktrust_bpf, SkeletonDeleter> skeleton(ktrust_bpf__open());
  if (!skeleton) return absl::ErrnoToStatus(errno, "opening the BPF skeleton");
  // Pinned maps from an earlier run are reused at load, so enrolments and
  // tracked connections survive an agent restart.
  bpf_map* map = nullptr;
  bpf_object__for_each_map(map, skeleton->obj) {
    std::string path = absl::StrCat(MapsDir(options.pin_dir), "/", bpf_map__name(map));
    if (int err = bpf_map__set_pin_path(map, path.c_str()); err != 0) {
      return absl::ErrnoToStatus(-err, absl::StrCat("setting the pin path ", path));
    }
  }
  if (int err = ktrust_bpf__load(skeleton.get()); err != 0) {
    return absl::ErrnoToStatus(
        -err,
        absl::StrCat("loading the BPF programs (the libbpf log above has the reason; maps "
                     "pinned in ",
                     options.pin_dir,
                     " by an incompatible version must be removed with ktrustd --uninstall)"));
  }
  LogEvent(spdlog::level::info, {{"event", "bpf_loaded"}, {"pin_dir", options.pin_dir}});
  return std::unique_ptr<BpfLoader>(
      new BpfLoader(std::move(options), std::move(features), std::move(skeleton)));
}

bpf_program* BpfLoader::program(BpfProgram program) const {
  auto& progs = skeleton_->progs;
  switch (program) {
    case BpfProgram::kConnect4:
      return progs.ktrust_connect4;
    case BpfProgram::kConnect6:
      return progs.ktrust_connect6;
    case BpfProgram::kSendmsg4:
      return progs.ktrust_sendmsg4;
    case BpfProgram::kSendmsg6:
      return progs.ktrust_sendmsg6;
    case BpfProgram::kGetpeername4:
      return progs.ktrust_getpeername4;
    case BpfProgram::kGetpeername6:
      return progs.ktrust_getpeername6;
    case BpfProgram::kSockops:
      return progs.ktrust_sockops;
    case BpfProgram::kSockopsAgent:
      return progs.ktrust_sockops_agent;
    case BpfProgram::kSkLookup:
      return progs.ktrust_sk_lookup;
    case BpfProgram::kSkLookupPod:
      return progs.ktrust_sk_lookup_pod;
  }
  return nullptr;
}

int BpfLoader::program_fd(BpfProgram program) const {
  return bpf_program__fd(this->program(program));
}

absl::StatusOr<int> BpfLoader::map_fd(absl::string_view name) const {
  std::string n(name);
  bpf_map* map = bpf_object__find_map_by_name(skeleton_->obj, n.c_str());
  if (!map) return absl::NotFoundError(absl::StrCat("no BPF map named ", name));
  return bpf_map__fd(map);
}

int BpfLoader::events_fd() const { return bpf_map__fd(skeleton_->maps.ktrust_events); }

absl::Status BpfLoader::AttachOrAdopt(BpfProgram which, const std::string& pin_path,
                                      const LinkTarget& target, int target_fd) {
  absl::MutexLock lock(&mu_);
  for (const Attachment& a : attachments_) {
    if (a.pin_path == pin_path) return absl::OkStatus();  // this run did it already
  }
  bpf_program* prog = program(which);

  if (PathExists(pin_path)) {
    BpfLinkPtr link(bpf_link__open(pin_path.c_str()));
    bpf_link_info info{};
    uint32_t info_len = sizeof(info);
    bool matches = false;
    if (link && bpf_obj_get_info_by_fd(bpf_link__fd(link.get()), &info, &info_len) == 0 &&
        info.type == target.link_type) {
      matches =
          target.link_type == BPF_LINK_TYPE_CGROUP
              ? info.cgroup.cgroup_id == target.id && info.cgroup.attach_type == target.attach_type
              : info.netns.netns_ino == target.id && info.netns.attach_type == target.attach_type;
    }
    if (matches) {
      // Swapping the program keeps exactly one attachment, and this run's
      // code runs against the maps it shares with the previous one.
      if (int err = bpf_link__update_program(link.get(), prog); err != 0) {
        return absl::ErrnoToStatus(-err, absl::StrCat("updating the pinned link ", pin_path));
      }
      links_.push_back(std::move(link));
      attachments_.push_back({.pin_path = pin_path, .adopted = true});
      LogEvent(spdlog::level::info, {{"event", "bpf_adopted"}, {"link", pin_path}});
      return absl::OkStatus();
    }
    // Its cgroup or netns is gone (the kernel detached it), or it is not a
    // link: replace it.
    if (unlink(pin_path.c_str()) != 0 && errno != ENOENT) {
      return absl::ErrnoToStatus(errno, absl::StrCat("removing the stale pin ", pin_path));
    }
  }

  bpf_link* raw = target.link_type == BPF_LINK_TYPE_NETNS
                      ? bpf_program__attach_netns(prog, target_fd)
                      : bpf_program__attach_cgroup(prog, target_fd);
  if (!raw) {
    return absl::ErrnoToStatus(errno, absl::StrCat("attaching ", bpf_program__name(prog),
                                                   " (to be pinned at ", pin_path, ")"));
  }
  BpfLinkPtr link(raw);
  if (int err = bpf_link__pin(link.get(), pin_path.c_str()); err != 0) {
    return absl::ErrnoToStatus(-err, absl::StrCat("pinning ", pin_path));
  }
  links_.push_back(std::move(link));
  attachments_.push_back({.pin_path = pin_path, .adopted = false});
  LogEvent(spdlog::level::info, {{"event", "bpf_attached"}, {"link", pin_path}});
  return absl::OkStatus();
}

absl::Status BpfLoader::AttachToCgroup(absl::string_view cgroup_dir, CgroupHooks hooks) {
  absl::Span<const CgroupProgram> programs = kCgroupPrograms;
  if (hooks == CgroupHooks::kSockops) programs = {&kSockopsProgram, 1};
  if (hooks == CgroupHooks::kAgentSockops) programs = {&kAgentSockopsProgram, 1};
  std::string path(cgroup_dir);
  auto id = CgroupIdOf(path);
  if (!id.ok()) return id.status();
  // Every enrolment pass asks again: what this run attached needs no
  // descriptor (none may be left at the fd limit).
  if (std::all_of(programs.begin(), programs.end(),
                  [&](const CgroupProgram& p) { return Holds(CgroupPinPath(*id, p.name)); })) {
    return absl::OkStatus();
  }
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, absl::StrCat("opening cgroup ", path));
  for (const CgroupProgram& p : programs) {
    LinkTarget target{.link_type = BPF_LINK_TYPE_CGROUP, .attach_type = p.attach_type, .id = *id};
    if (auto st = AttachOrAdopt(p.program, CgroupPinPath(*id, p.name), target, fd.get());
        !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

absl::Status BpfLoader::AttachCgroup(absl::string_view cgroup_dir) {
  return AttachToCgroup(cgroup_dir, CgroupHooks::kSockAddr);
}

absl::Status BpfLoader::AttachSockops(absl::string_view cgroup_dir) {
  return AttachToCgroup(cgroup_dir, CgroupHooks::kSockops);
}

absl::Status BpfLoader::AttachAgentSockops(absl::string_view cgroup_dir) {
  return AttachToCgroup(cgroup_dir, CgroupHooks::kAgentSockops);
}

absl::StatusOr<size_t> BpfLoader::PruneDetachedLinks() {
  std::vector<std::string> defunct;
  std::error_code ec;
  // increment(ec), not ++: a failing readdir must not throw out of Maintain.
  for (std::filesystem::directory_iterator it(LinksDir(options_.pin_dir), ec), end;
       !ec && it != end; it.increment(ec)) {
    const std::filesystem::directory_entry& entry = *it;
    UniqueFd fd(bpf_obj_get(entry.path().c_str()));
    bpf_link_info info{};
    uint32_t info_len = sizeof(info);
    // One that cannot be read (EMFILE at the fd limit) is no answer: it stays.
    if (!fd.valid() || bpf_obj_get_info_by_fd(fd.get(), &info, &info_len) != 0) continue;
    // The kernel detaches a link when its cgroup is freed (after the last
    // socket made in it) or its namespace is, and then reports target 0.
    bool gone = (info.type == BPF_LINK_TYPE_CGROUP && info.cgroup.cgroup_id == 0) ||
                (info.type == BPF_LINK_TYPE_NETNS && info.netns.netns_ino == 0);
    if (gone) defunct.push_back(entry.path().string());
  }
  if (ec) return absl::InternalError(absl::StrCat("listing the pinned links: ", ec.message()));
  for (const std::string& pin : defunct) {
    if (auto st = ReleaseLink(pin); !st.ok()) return st;
  }
  return defunct.size();
}

std::string BpfLoader::CgroupPinPath(uint64_t cgroup_id, absl::string_view name) const {
  return absl::StrCat(LinksDir(options_.pin_dir), "/cgroup-", cgroup_id, "-", name);
}

absl::Status BpfLoader::AttachNetns(absl::string_view netns_path) {
  return AttachToNetns(BpfProgram::kSkLookup, kHostNetnsLink, netns_path);
}

absl::Status BpfLoader::AttachPodNetns(absl::string_view netns_path) {
  return AttachToNetns(BpfProgram::kSkLookupPod, kPodNetnsLink, netns_path);
}

absl::Status BpfLoader::ReleasePodNetns(uint64_t netns_inode) {
  return ReleaseLink(NetnsPinPath(netns_inode, kPodNetnsLink));
}

absl::Status BpfLoader::ReleaseLink(const std::string& pin) {
  absl::MutexLock lock(&mu_);
  bool pinned = PathExists(pin);
  if (pinned) {
    if (auto st = DetachPinnedLink(pin); !st.ok()) return st;
    if (unlink(pin.c_str()) != 0 && errno != ENOENT) {
      return absl::ErrnoToStatus(errno, absl::StrCat("unpinning ", pin));
    }
  }
  auto held = std::find_if(attachments_.begin(), attachments_.end(),
                           [&](const Attachment& a) { return a.pin_path == pin; });
  if (held != attachments_.end()) {
    links_.erase(links_.begin() + (held - attachments_.begin()));
    attachments_.erase(held);
  }
  if (pinned) LogEvent(spdlog::level::info, {{"event", "bpf_detached"}, {"link", pin}});
  return absl::OkStatus();
}

std::string BpfLoader::NetnsPinPath(uint64_t netns_inode, absl::string_view name) const {
  return absl::StrCat(LinksDir(options_.pin_dir), "/netns-", netns_inode, "-", name);
}

absl::Status BpfLoader::AttachToNetns(BpfProgram program, absl::string_view name,
                                      absl::string_view netns_path) {
  std::string path(netns_path);
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    return absl::ErrnoToStatus(errno, absl::StrCat("opening network namespace ", path));
  }
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("fstat ", path));
  std::string pin = NetnsPinPath(st.st_ino, name);
  LinkTarget target{
      .link_type = BPF_LINK_TYPE_NETNS, .attach_type = BPF_SK_LOOKUP, .id = st.st_ino};
  return AttachOrAdopt(program, pin, target, fd.get());
}

bool BpfLoader::Holds(const std::string& pin_path) const {
  absl::MutexLock lock(&mu_);
  return std::any_of(attachments_.begin(), attachments_.end(),
                     [&](const Attachment& a) { return a.pin_path == pin_path; });
}

std::vector<BpfLoader::Attachment> BpfLoader::attachments() const {
  absl::MutexLock lock(&mu_);
  return attachments_;
}

absl::Status BpfLoader::Uninstall() {
  absl::MutexLock lock(&mu_);
  links_.clear();
  attachments_.clear();
  return UninstallPinned(options_.pin_dir);
}

absl::Status BpfLoader::UninstallPinned(absl::string_view pin_dir) {
  std::string dir(pin_dir);
  // Links first, so no program runs against maps that are going away.
  if (auto st = RemovePinDirectory(LinksDir(dir), /*links=*/true); !st.ok()) return st;
  if (auto st = RemovePinDirectory(MapsDir(dir), /*links=*/false); !st.ok()) return st;
  if (rmdir(dir.c_str()) != 0 && errno != ENOENT) {
    return absl::ErrnoToStatus(errno, absl::StrCat("rmdir ", dir));
  }
  LogEvent(spdlog::level::info, {{"event", "bpf_uninstalled"}, {"pin_dir", dir}});
  return absl::OkStatus();
}

}  // namespace ktrust
