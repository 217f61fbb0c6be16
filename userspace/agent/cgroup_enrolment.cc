#include "ktrust/agent/cgroup_enrolment.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "ktrust/agent/kernel_mode.h"
#include "ktrust/agent/pod_addresses.h"
#include "ktrust/agent/pod_enrolment.h"
#include "ktrust/common/files.h"
#include "ktrust/common/log.h"
#include "ktrust/common/poll_timeout.h"

namespace ktrust {

CgroupEnrolment::CgroupEnrolment(AgentPlace place, BpfLoader& bpf, WorkloadIdentities& identities,
                                 OutboundRouting& routing, PodNetworks& pods,
                                 std::function<std::shared_ptr<const Config>()> current_config,
                                 std::function<std::shared_ptr<const ClusterSnapshot>()> cluster)
    : place_(std::move(place)),
      bpf_(bpf),
      identities_(identities),
      routing_(routing),
      pods_(pods),
      current_config_(std::move(current_config)),
      cluster_(std::move(cluster)),
      cluster_events_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}

void CgroupEnrolment::ClusterChanged() {
  uint64_t one = 1;
  // A full counter still wakes the watcher: nothing is lost.
  (void)!write(cluster_events_.get(), &one, sizeof(one));
}

absl::StatusOr<std::optional<PodNetns>> CgroupEnrolment::PodNetnsOf(const RegisteredWorkload& r,
                                                                    bool* in_node_netns) const {
  if (in_node_netns != nullptr) *in_node_netns = false;
  auto procs = ReadFile(absl::StrCat(place_.cgroup_root, "/", r.cgroup_path, "/cgroup.procs"));
  // The cgroup is gone: no namespace to serve.
  if (absl::IsNotFound(procs.status())) return std::nullopt;
  // EMFILE and the like say nothing about its processes.
  if (!procs.ok()) return procs.status();
  // The first process whose namespace can be read: one that exited since
  // the list was read says nothing about the others. None: no process yet,
  // and the next pass looks again.
  for (absl::string_view pid : absl::StrSplit(*procs, '\n', absl::SkipEmpty())) {
    std::string netns = absl::StrCat("/proc/", pid, "/ns/net");
    struct stat st {};
    if (stat(netns.c_str(), &st) != 0) {
      if (errno == ENOENT || errno == ESRCH) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("stat ", netns));
    }
    if (st.st_ino == place_.own_netns) {
      if (in_node_netns != nullptr) *in_node_netns = true;
      return std::nullopt;
    }
    return PodNetns{st.st_ino, netns, {}};
  }
  return std::nullopt;
}

absl::Status CgroupEnrolment::StartWatching() {
  cgroup_events_ = UniqueFd(inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  if (!cgroup_events_.valid()) return absl::ErrnoToStatus(errno, "inotify_init1");
  WatchTree("");
  return absl::OkStatus();
}

void CgroupEnrolment::WatchTree(const std::string& relative) {
  // IN_MODIFY: cgroup.events changes when a cgroup gains its first process,
  // which may live in a pod's namespace that needs serving. IN_MOVE: a
  // renamed cgroup is gone under one name and new under the other.
  constexpr uint32_t kMask =
      IN_CREATE | IN_DELETE | IN_MOVE | IN_MODIFY | IN_ONLYDIR | IN_DONT_FOLLOW;
  std::string dir =
      relative.empty() ? place_.cgroup_root : absl::StrCat(place_.cgroup_root, "/", relative);
  int wd = inotify_add_watch(cgroup_events_.get(), dir.c_str(), kMask);
  if (wd < 0) return;       // unwatched: the full pass every kFullRescan sees it
  watched_[wd] = relative;  // a moved directory keeps its watch, under its new name
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_directory(ec) && !it->is_symlink(ec)) {
      std::string name = it->path().filename();
      WatchTree(relative.empty() ? name : absl::StrCat(relative, "/", name));
    }
  }
}

void CgroupEnrolment::WatchCgroups(absl::Duration timeout, int wake_fd) {
  // The pods' address changes wake this thread too: a new address of a
  // served pod is enforced now, not at the next pass.
  pollfd pfd[4] = {{cgroup_events_.get(), POLLIN, 0},
                   {pods_.events_fd(), POLLIN, 0},
                   {cluster_events_.get(), POLLIN, 0},
                   {wake_fd, POLLIN, 0}};
  if (poll(pfd, 4, PollMilliseconds(timeout)) <= 0) return;
  if (pfd[1].revents & POLLIN) {
    absl::MutexLock serialize(&enroll_mu_);
    pods_.RefreshAddresses();
  }
  if (pfd[2].revents & POLLIN) {
    // A pod resolved, changed or deleted: enrolled (or released) now.
    uint64_t count = 0;
    (void)!read(cluster_events_.get(), &count, sizeof(count));
    (void)Enroll(*current_config_());
  }
  if (!(pfd[0].revents & POLLIN)) return;
  alignas(inotify_event) char buf[16384];
  // The cgroups to look at again: one created or removed, one whose
  // cgroup.events changed (a process came or went). The rest of the tree
  // did not change and is not read.
  std::set<std::string> changed;
  bool everything = false;
  ssize_t n;
  while ((n = read(cgroup_events_.get(), buf, sizeof(buf))) > 0) {
    for (char* p = buf; p < buf + n;) {
      auto* event = reinterpret_cast<inotify_event*>(p);
      p += sizeof(inotify_event) + event->len;
      if (event->mask & IN_Q_OVERFLOW) {
        everything = true;  // events were lost: nothing says what changed
        continue;
      }
      auto dir = watched_.find(event->wd);
      if (event->mask & IN_IGNORED) {
        if (dir != watched_.end()) watched_.erase(dir);
        continue;
      }
      if (dir == watched_.end()) continue;  // a watch removed meanwhile
      absl::string_view name = event->len > 0 ? absl::string_view(event->name) : "";
      std::string child =
          dir->second.empty() ? std::string(name) : absl::StrCat(dir->second, "/", name);
      if ((event->mask & IN_ISDIR) && !name.empty()) {
        changed.insert(child);
        // A new cgroup gets watches of its own.
        if (event->mask & (IN_CREATE | IN_MOVED_TO)) WatchTree(child);
      } else if ((event->mask & IN_MODIFY) && name == "cgroup.events") {
        changed.insert(dir->second);
      }
    }
  }
  if (everything) {
    WatchTree("");  // re-adding a watch is a no-op
    (void)Enroll(*current_config_());
    return;
  }
  if (changed.empty()) return;
  (void)EnrollChanged(*current_config_(), changed, "cgroup events");  // failures are said, retried
}

void CgroupEnrolment::ReportProblems(const Config& config,
                                     const std::vector<RegisteredWorkload>& found,
                                     const std::vector<std::string>& problems) {
  // Rescans repeat every second: say each problem once, when it appears.
  std::set<std::string> now(problems.begin(), problems.end());
  if (reported_problems_.count("own cgroup")) now.insert("own cgroup");
  for (const std::string& p : now) {
    if (!reported_problems_.count(p)) {
      LogEvent(spdlog::level::warn, {{"event", "cgroup_skipped"}, {"reason", p}});
    }
  }
  // A cgroup with no ID is enrolled and refused, not skipped: said once too.
  for (const RegisteredWorkload& r : found) {
    // Pods are said by ReportPods.
    if (r.id || r.pod || r.cgroup_id == place_.own_cgroup) continue;
    const WorkloadConfig& w = config.workloads[r.workload_index];
    std::string key = absl::StrCat("no id: ", r.cgroup_path, ": ", r.id_problem);
    if (!reported_problems_.count(key)) {
      LogEvent(spdlog::level::err,
               {{"event", "spiffe_id_render_failed"},
                {"workload", w.name},
                {"cgroup", r.cgroup_path},
                {"reason",
                 absl::StrCat(r.id_problem, w.mode == WorkloadMode::kOff
                                                ? " (mode off: not intercepted)"
                                                : "; enrolled, and its connections are refused")}});
    }
    now.insert(std::move(key));
  }
  reported_problems_ = std::move(now);
}

std::optional<absl::Status> CgroupEnrolment::EnrollIfDue(const Config& config, absl::Time now) {
  std::set<std::string> settling;
  {
    absl::MutexLock lock(&enroll_mu_);
    bool full_due = now < retry_until_ || now - last_full_pass_ >= kFullRescan;
    if (!full_due) {
      for (auto it = settling_.begin(); it != settling_.end();) {
        if (now >= it->second) {
          it = settling_.erase(it);
        } else {
          settling.insert(it->first);
          ++it;
        }
      }
      if (settling.empty()) return std::nullopt;
    }
  }
  if (settling.empty()) return Enroll(config);
  return EnrollChanged(config, settling, "settling");
}

absl::Status CgroupEnrolment::Enroll(const Config& config) {
  absl::MutexLock serialize(&enroll_mu_);
  return EnrollLocked(config, std::nullopt, "full");
}

absl::Status CgroupEnrolment::EnrollChanged(const Config& config,
                                            const std::set<std::string>& changed, const char* why) {
  absl::MutexLock serialize(&enroll_mu_);
  return EnrollLocked(config, changed, why);
}

namespace {

// What a configuration scans the tree by: a scan made under another shape
// says nothing about this one's workloads.
std::string ScanShape(const Config& config) {
  std::string shape = absl::StrCat(config.trust_domain, "\n", config.agent.node_name);
  for (const WorkloadConfig& w : config.workloads) {
    absl::StrAppend(&shape, "\n", w.name, "\t", w.cgroup, "\t", w.spiffe_id);
  }
  return shape;
}

}  // namespace

absl::Status CgroupEnrolment::EnrollLocked(const Config& config,
                                           const std::optional<std::set<std::string>>& asked,
                                           const char* why) {
  absl::Time started = absl::Now();
  std::string shape = ScanShape(config);
  // Only from a complete pass with this configuration: otherwise the whole tree.
  std::optional<std::set<std::string>> changed = asked;
  if (changed && (!last_scan_ || last_scan_shape_ != shape || !last_pass_complete_.load())) {
    changed.reset();
  }
  if (!changed) last_full_pass_ = started;
  absl::Status result = [&]() -> absl::Status {
    auto scan = changed ? RescanCgroupSubtrees(config, place_.cgroup_root, *last_scan_, *changed)
                        : ScanCgroupTree(config, place_.cgroup_root);
    if (!scan.ok()) {
      last_pass_complete_.store(false);
      last_scan_.reset();
      NoteTrouble(spdlog::level::err, std::string(scan.status().message()));
      return scan.status();
    }
    ReportProblems(config, scan->found, scan->problems);
    std::shared_ptr<const RoutingTable> before = routing_.current();
    // Kubernetes mode, as the agent started (turning it on or off takes a
    // restart): the pods' cgroups join the configured workloads'.
    std::map<uint64_t, absl::StatusOr<std::optional<PodNetns>>> pod_netns;
    CgroupScan planned = *scan;
    if (cluster_) {
      std::vector<RegisteredWorkload> pods = ResolvePods(config, planned, *before, pod_netns);
      ReportPods(pods, planned.complete);
      planned.found.insert(planned.found.end(), pods.begin(), pods.end());
    }
    std::map<uint64_t, std::optional<PodNetns>> netns_seen;
    EnrolmentPlan plan = PlanEnrolment(
        config, current_config_(), planned, *before, place_.own_cgroup,
        [this](const SpiffeId& id, const std::string& workload) -> absl::StatusOr<SvidProvider> {
          auto identity = identities_.ProviderFor(id, workload);
          if (!identity.ok()) {
            LogEvent(spdlog::level::err, {{"event", "svid_issue_failed"},
                                          {"workload", workload},
                                          {"id", id.ToString()},
                                          {"reason", identity.status().message()}});
          }
          return identity;
        },
        [&](const RegisteredWorkload& r) -> absl::StatusOr<std::optional<PodNetns>> {
          // A pod's: the namespace whose addresses were checked.
          if (auto it = pod_netns.find(r.cgroup_id); it != pod_netns.end()) return it->second;
          // Outside the changed subtrees the processes' namespace is what
          // the last pass read (a late one is what settling and the full
          // pass are for).
          bool unchanged =
              changed && std::none_of(changed->begin(), changed->end(), [&](const std::string& d) {
                return CgroupPathWithin(r.cgroup_path, d);
              });
          if (auto seen = netns_seen_.find(r.cgroup_id); unchanged && seen != netns_seen_.end()) {
            netns_seen.insert(*seen);
            return seen->second;
          }
          absl::StatusOr<std::optional<PodNetns>> read = PodNetnsOf(r);
          if (read.ok()) netns_seen.emplace(r.cgroup_id, *read);
          return read;
        });
    if (plan.own_cgroup_path && reported_problems_.insert("own cgroup").second) {
      LogEvent(spdlog::level::err,
               {{"event", "cgroup_skipped"},
                {"cgroup", *plan.own_cgroup_path},
                {"reason", "this is ktrustd's own cgroup; the agent is never enrolled"}});
    }
    absl::Status applied = ApplyPlan(plan, *before, /*full=*/!changed);
    if (!applied.ok()) {
      NoteTrouble(spdlog::level::err, std::string(applied.message()));
    } else if (!plan.complete) {
      // The first few: under EMFILE every directory may fail.
      std::vector<std::string> first(
          plan.incomplete.begin(),
          plan.incomplete.begin() + std::min<size_t>(plan.incomplete.size(), 3));
      std::string more =
          plan.incomplete.size() > first.size()
              ? absl::StrCat(" (and ", plan.incomplete.size() - first.size(), " more)")
              : "";
      NoteTrouble(spdlog::level::warn, absl::StrCat(absl::StrJoin(first, "; "), more));
    } else {
      trouble_.Cleared();
    }
    bool complete = applied.ok() && plan.complete;
    last_pass_complete_.store(complete);
    netns_seen_ = std::move(netns_seen);
    if (complete) {
      // A changed cgroup that holds a workload's may still see its
      // processes enter a namespace of their own: looked at again for
      // kSettling. One that holds none is not (its namespace does not
      // matter), except in Kubernetes mode, where any cgroup may be a pod's.
      for (const std::string& dir : asked.value_or(std::set<std::string>{})) {
        bool holds_workload = cluster_ || std::any_of(scan->found.begin(), scan->found.end(),
                                                      [&](const RegisteredWorkload& r) {
                                                        return CgroupPathWithin(r.cgroup_path, dir);
                                                      });
        if (holds_workload && absl::string_view(why) != "settling") {
          settling_[dir] = started + kSettling;
        }
      }
      last_scan_ = *std::move(scan);
      last_scan_shape_ = shape;
    } else {
      last_scan_.reset();
    }
    LogEvent(spdlog::level::debug,
             {{"event", "enrolment_pass"},
              {"why", why},
              {"scope", changed ? absl::StrJoin(*changed, ",") : "(the whole tree)"},
              {"directories_listed", last_scan_ ? last_scan_->listed : 0},
              {"complete", complete},
              {"ms", absl::ToDoubleMilliseconds(absl::Now() - started)}});
    return applied;
  }();
  // Retried each second, as a full pass.
  if (!result.ok() || !last_pass_complete_.load()) retry_until_ = started + kSettling;
  return result;
}

std::vector<RegisteredWorkload> CgroupEnrolment::ResolvePods(
    const Config& config, const CgroupScan& scan, const RoutingTable& before,
    std::map<uint64_t, absl::StatusOr<std::optional<PodNetns>>>& netns) {
  std::shared_ptr<const ClusterSnapshot> cluster = cluster_();
  last_pass_knew_pods_.store(cluster->synced);
  std::vector<RegisteredWorkload> pods =
      ResolvePodCgroups(config, *cluster, scan.unclaimed, place_.own_cgroup, before);
  // Each namespace's addresses read once a pass, however many containers.
  std::map<uint64_t, absl::StatusOr<std::vector<std::string>>> addresses;
  for (RegisteredWorkload& r : pods) {
    if (!r.pod->refusal_code.empty()) continue;
    bool in_node_netns = false;
    absl::StatusOr<std::optional<PodNetns>> found = PodNetnsOf(r, &in_node_netns);
    netns.emplace(r.cgroup_id, found);
    // No process yet: nothing to check.
    if (found.ok() && !*found && !in_node_netns) continue;
    PodNetnsFacts facts;
    facts.node = in_node_netns;
    // Unreadable (the plan says so too): refused, keeping its ports.
    if (!found.ok()) facts.read = found.status();
    if (found.ok() && *found) {
      auto it = addresses.find((*found)->inode);
      if (it == addresses.end()) {
        UniqueFd fd(open((*found)->path.c_str(), O_RDONLY | O_CLOEXEC));
        struct stat st {};
        absl::StatusOr<std::vector<std::string>> read = absl::NotFoundError("the process is gone");
        if (!fd.valid() && errno != ENOENT && errno != ESRCH) {
          // EMFILE and the like: not "gone", and said as what it is.
          read = absl::ErrnoToStatus(errno, absl::StrCat("open ", (*found)->path));
        } else if (fd.valid() && fstat(fd.get(), &st) == 0 && st.st_ino == (*found)->inode) {
          read = NetnsAddresses(fd.get(), std::nullopt);
        }
        it = addresses.emplace((*found)->inode, std::move(read)).first;
      }
      if (it->second.ok()) {
        facts.addresses = *it->second;
      } else {
        facts.read = it->second.status();
      }
    }
    CheckPodNetns(r, facts);
  }
  return pods;
}

void CgroupEnrolment::ReportPods(const std::vector<RegisteredWorkload>& pods, bool complete) {
  // One line per pod (not per container cgroup), when its state changes; a
  // pod one of whose cgroups is refused (its processes elsewhere) is refused.
  std::map<std::string, const RegisteredWorkload*> by_pod;
  for (const RegisteredWorkload& r : pods) {
    const RegisteredWorkload*& shown = by_pod[r.pod->uid.empty() ? r.cgroup_path : r.pod->uid];
    if (shown == nullptr || (shown->pod->refusal_code.empty() && !r.pod->refusal_code.empty())) {
      shown = &r;
    }
  }
  std::map<std::string, std::string> now;
  for (const auto& [key, r] : by_pod) {
    const PodEnrolment& pod = *r->pod;
    std::string state = pod.refusal_code.empty()
                            ? absl::StrCat("enrolled ", r->id->ToString(), " ", pod.workload)
                            : absl::StrCat(pod.refusal_code, " ", pod.workload);
    now[key] = state;
    auto was = reported_pods_.find(key);
    if (was != reported_pods_.end() && was->second == state) continue;
    if (pod.refusal_code.empty()) {
      LogEvent(spdlog::level::info, {{"event", "pod_enrolled"},
                                     {"pod", pod.workload},
                                     {"pod_uid", pod.uid},
                                     {"namespace", pod.namespace_name},
                                     {"service_account", pod.service_account},
                                     {"id", r->id->ToString()},
                                     {"ports", absl::StrJoin(pod.ports, ",")}});
    } else {
      LogEvent(spdlog::level::warn,
               {{"event", "pod_refused"},
                {"pod", pod.workload},
                {"pod_uid", pod.uid},
                {"cgroup", r->cgroup_path},
                {"result", pod.refusal_code},
                {"reason", absl::StrCat(pod.refusal, "; its mesh connections are refused")}});
    }
  }
  // A pass that did not see everything cannot tell a pod is gone.
  if (complete) {
    for (const auto& [key, state] : reported_pods_) {
      if (!now.count(key)) {
        LogEvent(spdlog::level::info,
                 {{"event", "pod_released"}, {"pod_uid", key}, {"last_state", state}});
      }
    }
    reported_pods_ = std::move(now);
  } else {
    for (auto& [key, state] : now) reported_pods_[key] = std::move(state);
  }
}

void CgroupEnrolment::NoteTrouble(spdlog::level::level_enum level, const std::string& what) {
  trouble_.Met(level,
               {{"reason", absl::StrCat(what,
                                        "; nothing is removed from the kernel until a "
                                        "pass reads the whole tree (retried every second)")}});
  incomplete_passes_.store(trouble_.passes_met());
}

absl::Status CgroupEnrolment::ApplyPlan(const EnrolmentPlan& plan, const RoutingTable& before,
                                        bool full) {
  // Route first, then enrol: the kernel never redirects a connection the
  // agent cannot route.
  routing_.Publish(std::make_shared<const RoutingTable>(plan.routing));
  InterceptionMaps& maps = bpf_.maps();
  std::map<uint64_t, std::pair<WorkloadMode, uint32_t>> written;
  for (const CgroupToEnrol& e : plan.enrol) {
    std::pair<WorkloadMode, uint32_t> entry{e.mode, e.workload_index};
    // A pass over changed cgroups writes only what changed; a full pass
    // writes everything again (and attaches what is missing).
    if (auto was = enrolled_written_.find(e.cgroup_id); !full && was != enrolled_written_.end() &&
                                                        was->second == entry &&
                                                        !sockops_failing_.count(e.cgroup_id)) {
      written.insert(*was);
      continue;
    }
    // sockops before the enrolment: a connection redirected without it could
    // not be found by the agent (refused, but needlessly).
    // Retried every pass: said when it starts failing (at the fd limit it
    // would otherwise be said every second).
    if (auto sockops = bpf_.AttachSockops(absl::StrCat(place_.cgroup_root, "/", e.cgroup_path));
        !sockops.ok()) {
      if (sockops_failing_.insert(e.cgroup_id).second) {
        LogEvent(spdlog::level::err,
                 {{"event", "sockops_attach_failed"},
                  {"cgroup", e.cgroup_path},
                  {"reason", absl::StrCat(sockops.message(), "; retried every second")}});
      }
    } else {
      sockops_failing_.erase(e.cgroup_id);
    }
    if (auto st = maps.EnrollCgroup(e.cgroup_id, KernelMode(e.mode), e.workload_index); !st.ok()) {
      enrolled_written_ = std::move(written);
      return st;
    }
    written[e.cgroup_id] = entry;
    if (!before.by_cgroup.count(e.cgroup_id)) {
      LogEvent(spdlog::level::info, {{"event", "workload_enrolled"},
                                     {"workload", e.workload},
                                     {"cgroup", e.cgroup_path},
                                     {"id", e.id.empty() ? "(none: refused)" : e.id},
                                     {"mode", WorkloadModeName(e.mode)}});
    }
  }
  for (const UnenrolledCgroup& gone : plan.unenrolled) {
    LogEvent(spdlog::level::info, {{"event", "workload_unenrolled"},
                                   {"workload", gone.workload},
                                   {"cgroup_id", gone.cgroup_id}});
  }
  // Every other cgroup (the agent's own, `mode: off` workloads', the rest)
  // is classified as left alone: under the watched root, a cgroup with no
  // entry is one created since, refused for the mesh until the next pass. One
  // that cannot be written stays refused; the others still go in. Entries
  // an earlier pass wrote are not written again every second.
  absl::Status classified;
  std::set<uint64_t> not_enrolled;
  for (uint64_t cgroup_id : plan.not_enrolled) {
    if (!not_enrolled_written_.count(cgroup_id)) {
      if (auto st = maps.MarkCgroupNotEnrolled(cgroup_id); !st.ok()) {
        if (classified.ok()) classified = st;
        continue;  // tried again next pass
      }
    }
    not_enrolled.insert(cgroup_id);
  }
  not_enrolled_written_ = std::move(not_enrolled);
  enrolled_written_ = std::move(written);
  // Gone cgroups, and what an earlier run enrolled that this one does not.
  // Only a complete pass knows what is gone; a pass over changed cgroups
  // prunes only when something it kept before is gone.
  if (plan.complete && (full || std::any_of(kept_.begin(), kept_.end(),
                                            [&](uint64_t id) { return !plan.keep.count(id); }))) {
    if (auto st = maps.KeepOnlyEnrolledCgroups(plan.keep).status(); !st.ok()) return st;
  }
  if (plan.complete) kept_ = plan.keep;
  pods_.Reconcile(plan.pods, /*complete=*/plan.complete);
  return classified;
}

}  // namespace ktrust
