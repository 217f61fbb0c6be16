#include "ktrust/agent/pod_networks.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "ktrust/agent/agent_listeners.h"
#include "ktrust/agent/kernel_mode.h"
#include "ktrust/bpf/abi.h"
#include "ktrust/common/log.h"
#include "ktrust/common/netns.h"
#include "ktrust/common/unique_fd.h"

namespace ktrust {
namespace {

// Runs fn with this thread in the pod's namespace, then back in the agent's.
absl::Status RunInNetns(int netns_fd, absl::FunctionRef<absl::Status()> fn) {
  return ktrust::RunInNetns(netns_fd, -1, "the pod's network namespace",
                            "the agent's network namespace", fn);
}

// Adds addr/128 to the loopback of the calling thread's namespace, as
// `ip addr add <addr>/128 dev lo nodad` does; present already is fine.
absl::Status AddLoopbackAddress6(const in6_addr& addr) {
  UniqueFd nl(socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
  if (!nl.valid()) return absl::ErrnoToStatus(errno, "netlink socket");
  struct {
    nlmsghdr header;
    ifaddrmsg message;
    rtattr attribute;
    in6_addr address;
  } request{};
  request.header.nlmsg_len = sizeof(request);
  request.header.nlmsg_type = RTM_NEWADDR;
  request.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
  request.message.ifa_family = AF_INET6;
  request.message.ifa_prefixlen = 128;
  request.message.ifa_flags = IFA_F_NODAD;  // usable at once
  request.message.ifa_index = if_nametoindex("lo");
  request.attribute.rta_type = IFA_LOCAL;
  request.attribute.rta_len = RTA_LENGTH(sizeof(in6_addr));
  request.address = addr;
  if (request.message.ifa_index == 0) return absl::ErrnoToStatus(errno, "no loopback device");
  if (send(nl.get(), &request, sizeof(request), 0) < 0) {
    return absl::ErrnoToStatus(errno, "netlink RTM_NEWADDR");
  }
  alignas(nlmsghdr) char reply[512];
  ssize_t n = recv(nl.get(), reply, sizeof(reply), 0);
  if (n < static_cast<ssize_t>(NLMSG_LENGTH(sizeof(nlmsgerr)))) {
    return absl::ErrnoToStatus(errno, "netlink reply");
  }
  const auto* header = reinterpret_cast<const nlmsghdr*>(reply);
  if (header->nlmsg_type != NLMSG_ERROR) return absl::InternalError("netlink: no acknowledgement");
  nlmsgerr ack{};
  std::memcpy(&ack, reply + NLMSG_HDRLEN, sizeof(ack));
  int error = -ack.error;
  if (error != 0 && error != EEXIST) return absl::ErrnoToStatus(error, "adding the address");
  return absl::OkStatus();
}

}  // namespace

std::optional<uint32_t> PodNetworks::AllocateSlot(const std::vector<SocketAddress>& locals) {
  const auto& inherited = settings_.inherited_slots;
  for (const SocketAddress& local : locals) {
    auto it = inherited.find(local.ToString());
    if (it != inherited.end() && used_slots_.insert(it->second).second) return it->second;
  }
  std::set<uint32_t> named;
  for (const auto& [_, slot] : inherited) named.insert(slot);
  for (uint32_t slot = settings_.first_slot; slot < KTRUST_PARKED_SLOT; ++slot) {
    if (!named.count(slot) && used_slots_.insert(slot).second) return slot;
  }
  return std::nullopt;
}

std::vector<SocketAddress> PodNetworks::Locals(const std::vector<std::string>& addresses,
                                               const std::vector<uint16_t>& ports) {
  std::vector<SocketAddress> locals;
  for (const std::string& a : addresses) {
    for (uint16_t port : ports) {
      if (auto local = PodSocketAddress(a, port); local.ok()) locals.push_back(*local);
    }
  }
  return locals;
}

std::optional<PodNetworks::Served> PodNetworks::Serve(const PodNetns& pod) {
  Served served;
  served.netns = UniqueFd(open(pod.path.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat ns_stat {};
  if (!served.netns.valid() || fstat(served.netns.get(), &ns_stat) != 0 ||
      ns_stat.st_ino != pod.inode) {
    return std::nullopt;
  }
  int netns = served.netns.get();
  served.workloads = pod.workloads;
  served.view.netns_inode = pod.inode;
  for (const PodWorkload& w : pod.workloads) served.view.workloads.push_back(w.name);
  auto report = [&](std::string what) {
    served.view.problem = what;
    LogEvent(spdlog::level::err, {{"event", "pod_netns_unserved"},
                                  {"netns_inode", pod.inode},
                                  {"workloads", absl::StrJoin(served.view.workloads, ",")},
                                  {"reason", what}});
  };
  auto problem = [&](std::string what) {
    report(std::move(what));
    return std::move(served);
  };

  // Subscribed before the addresses are read, so one added in between is
  // reported. Without the subscription the pod is rescanned every pass.
  auto subscribed = RunInNetns(netns, [&]() -> absl::Status {
    auto events = SubscribeAddressEvents();
    if (!events.ok()) return events.status();
    served.address_events = *std::move(events);
    return absl::OkStatus();
  });
  if (!subscribed.ok()) {
    LogEvent(spdlog::level::warn, {{"event", "pod_address_events_unavailable"},
                                   {"netns_inode", pod.inode},
                                   {"reason", subscribed.message()}});
  }
  auto addresses = NetnsAddresses(netns, settings_.upstream_source6);
  if (!addresses.ok()) return problem(std::string(addresses.status().message()));
  served.addresses = *addresses;
  served.view.addresses = *addresses;

  // The program and the rules first: from here on the pod's enforced ports
  // refuse until their listeners are in place.
  std::string path = absl::StrCat("/proc/self/fd/", netns);
  if (auto st = bpf_.AttachPodNetns(path); !st.ok()) {
    return problem(
        absl::StrCat("attaching sk_lookup (its enforced ports are NOT protected): ", st.message()));
  }
  std::vector<const PodWorkload*> serving;
  std::string no_slot;
  for (const PodWorkload& w : pod.workloads) {
    if (w.ports.empty()) continue;
    // Out of slots (far beyond a node's pod limit): its rules refuse.
    uint32_t slot = AllocateSlot(Locals(served.addresses, w.ports)).value_or(KTRUST_PARKED_SLOT);
    if (slot != KTRUST_PARKED_SLOT) {
      served.slots.push_back(slot);
    } else if (no_slot.empty()) {
      no_slot = w.name;
    }
    serving.push_back(&w);
    served.serving.push_back(
        {slot, slot == KTRUST_PARKED_SLOT ? EnforcementMode::kEnforce : KernelMode(w.mode),
         w.workload_index, w.ports});
  }
  if (auto st = SyncRules(pod.inode, &served); !st.ok()) {
    // The rules written steer to the listeners opened below; the others
    // are retried on every pass until they are in place.
    served.rescan = true;
    served.rules_problem = absl::StrCat("enforcing the pod's addresses: ", st.message());
    report(served.rules_problem);
  }
  if (!no_slot.empty()) {
    return problem(absl::StrCat("no free listener slot for workload ", no_slot,
                                ": its enforced ports refuse every connection"));
  }

  if (!serving.empty()) {
    if (auto st = EnsureUpstream6(served); !st.ok()) return problem(std::string(st.message()));
  }

  // The pod's mesh connections go to its own address on outbound_port (the
  // loopback addresses are the host's target), which sk_lookup hands to the
  // outbound listeners below alone: bound to ephemeral ports, so no process
  // in the pod can take their place, agent up or down.
  std::vector<ServingListener> serving_listeners;
  for (const PodWorkload* w : serving) {
    serving_listeners.push_back(
        {w->name, w->identity, w->mode == WorkloadMode::kPermissive,
         settings_.deliver_for ? settings_.deliver_for(w->name, pod.inode) : nullptr});
  }
  NetnsListeners listeners = AgentListeners(settings_.route, serving_listeners);
  listeners.netns_fd = netns;
  auto handle = engine_.AddNetnsListeners(std::move(listeners));
  if (!handle.ok()) {
    return problem(absl::StrCat("opening listeners in the pod: ", handle.status().message()));
  }
  served.listeners = handle->id;
  auto fds = AgentListenerFdsOf(*handle);
  if (!fds.ok()) return problem(std::string(fds.status().message()));
  served.listener_fds = *fds;
  InterceptionMaps& maps = bpf_.maps();
  // served.slots has one slot per serving workload (none was parked: see above).
  for (size_t i = 0; i < served.slots.size(); ++i) {
    if (auto st = SteerSlotTo(maps, served.slots[i], fds->inbound[i]); !st.ok()) {
      return problem(absl::StrCat("steering to the pod's listeners: ", st.message()));
    }
  }
  std::optional<uint32_t> outbound_slot =
      AllocateSlot(Locals(served.addresses, {settings_.outbound_port}));
  if (!outbound_slot) return problem("no free listener slot for the pod's outbound listener");
  served.slots.push_back(*outbound_slot);
  if (auto st = SteerSlotTo(maps, *outbound_slot, fds->outbound); !st.ok()) {
    return problem(absl::StrCat("steering to the pod's outbound listener: ", st.message()));
  }
  auto cookie = NetnsCookieOf(fds->outbound.v4);
  if (!cookie.ok()) return problem(std::string(cookie.status().message()));
  served.outbound_slot = outbound_slot;
  served.netns_cookie = *cookie;
  if (auto st = SyncOutboundTarget(served); !st.ok()) {
    served.rescan = true;
    return problem(std::string(st.message()));
  }
  LogEvent(spdlog::level::info, {{"event", "pod_netns_served"},
                                 {"netns_inode", pod.inode},
                                 {"addresses", absl::StrJoin(*addresses, ",")},
                                 {"workloads", absl::StrJoin(served.view.workloads, ",")}});
  return served;
}

absl::Status PodNetworks::EnsureUpstream6(Served& served) {
  if (served.has_upstream6 || !settings_.upstream_source6 || served.serving.empty()) {
    return absl::OkStatus();
  }
  bool has_ip6 = false;
  for (const std::string& a : served.addresses) has_ip6 |= a.find(':') != std::string::npos;
  if (!has_ip6) return absl::OkStatus();
  in6_addr source =
      reinterpret_cast<const sockaddr_in6*>(settings_.upstream_source6->get())->sin6_addr;
  if (auto st = RunInNetns(served.netns.get(), [&] { return AddLoopbackAddress6(source); });
      !st.ok()) {
    return absl::Status(st.code(), absl::StrCat("adding the IPv6 upstream source to the pod's "
                                                "loopback: ",
                                                st.message()));
  }
  served.has_upstream6 = true;
  return absl::OkStatus();
}

absl::Status PodNetworks::SyncRules(uint64_t inode, Served* candidate, bool rewrite) {
  auto claim_of = [](uint64_t netns, const Served& s) {
    return PodClaim{netns, s.addresses, s.serving};
  };
  std::vector<PodClaim> claims;
  std::map<std::string, PodRule> written;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [other, s] : served_) {
      if (other != inode) claims.push_back(claim_of(other, s));
    }
    written = written_;
  }
  if (candidate) claims.push_back(claim_of(inode, *candidate));
  PodRules next = ResolvePodRules(claims, KTRUST_PARKED_SLOT);

  // New and changed rules before gone ones: a rule moving between pods is
  // never absent meanwhile.
  InterceptionMaps& maps = bpf_.maps();
  absl::Status result;
  for (const auto& [key, rule] : next.rules) {
    auto it = written.find(key);
    if (!rewrite && it != written.end() && it->second == rule) continue;
    if (auto st = maps.AddInboundPort(rule.local, rule.mode, rule.slot, rule.workload); !st.ok()) {
      result.Update(absl::Status(st.code(), absl::StrCat("enforcing ", key, ": ", st.message())));
      continue;
    }
    written[key] = rule;
  }
  for (auto it = written.begin(); it != written.end();) {
    if (next.rules.count(it->first)) {
      ++it;
      continue;
    }
    absl::Status st = maps.RemoveInboundPort(it->second.local);
    if (!st.ok() && !absl::IsNotFound(st)) {
      // Left in place: it refuses, and the next sync tries again.
      result.Update(st);
      ++it;
      continue;
    }
    it = written.erase(it);
  }

  auto shared_of = [&](uint64_t netns) {
    auto found = next.shared.find(netns);
    if (found == next.shared.end()) return std::vector<std::string>{};
    return std::vector<std::string>(found->second.begin(), found->second.end());
  };
  auto set_shared = [&](uint64_t netns, ServedPod& view) {
    std::vector<std::string> shared = shared_of(netns);
    if (shared != view.shared && !shared.empty()) {
      LogEvent(spdlog::level::warn,
               {{"event", "pod_address_shared"},
                {"netns_inode", netns},
                {"addresses", absl::StrJoin(shared, ",")},
                {"reason",
                 "another served pod carries the same address: connections to it on "
                 "enforced ports are refused in both pods"}});
    }
    view.shared = std::move(shared);
  };
  absl::MutexLock lock(&mu_);
  if (candidate) set_shared(inode, candidate->view);
  written_ = std::move(written);
  for (auto& [netns, s] : served_) {
    if (netns != inode) set_shared(netns, s.view);
  }
  return result;
}

absl::Status PodNetworks::SyncOutboundTarget(Served& served) {
  if (!served.netns_cookie || !served.outbound_slot) return absl::OkStatus();
  OutboundTarget next = PodOutboundTarget(served.addresses);
  bool set = served.target.ip4 || served.target.ip6;
  if (set && SameOutboundTarget(next, served.target)) return absl::OkStatus();
  InterceptionMaps& maps = bpf_.maps();
  // The old target goes first: its rules may name addresses the pod lost.
  if (set) {
    if (auto st =
            maps.RemoveOutboundTarget(*served.netns_cookie, served.target, settings_.outbound_port);
        !st.ok()) {
      return st;
    }
    served.target = {};
  }
  if (!next.ip4 && !next.ip6) return absl::OkStatus();  // refused until it has an address
  if (auto st = maps.SetOutboundTarget(*served.netns_cookie, next, settings_.outbound_port,
                                       *served.outbound_slot);
      !st.ok()) {
    return absl::Status(st.code(),
                        absl::StrCat("redirecting the pod's mesh connections: ", st.message()));
  }
  served.target = next;
  return absl::OkStatus();
}

void PodNetworks::Rescan(uint64_t inode) {
  Served* served = nullptr;
  {
    absl::MutexLock lock(&mu_);
    auto it = served_.find(inode);
    if (it == served_.end()) return;
    served = &it->second;  // only this thread changes served_
  }
  auto addresses = NetnsAddresses(served->netns.get(), settings_.upstream_source6);
  if (!addresses.ok()) {
    // The rules stay as they are (refusing what they enforced); retried.
    served->rescan = true;
    LogEvent(spdlog::level::warn, {{"event", "pod_addresses_unread"},
                                   {"netns_inode", inode},
                                   {"reason", addresses.status().message()}});
    return;
  }
  if (*addresses == served->addresses && !served->rescan) return;
  std::vector<std::string> before = served->addresses;
  {
    absl::MutexLock lock(&mu_);
    served->addresses = *addresses;
    served->view.addresses = *addresses;
  }
  absl::Status st = SyncRules(inode, served);
  if (st.ok()) st = EnsureUpstream6(*served);
  if (st.ok()) st = SyncOutboundTarget(*served);
  {
    absl::MutexLock lock(&mu_);
    served->rescan = !st.ok();
    std::string problem = st.ok() ? "" : std::string(st.message());
    if (served->view.problem == served->rules_problem) served->view.problem = problem;
    served->rules_problem = problem;
  }
  if (*addresses != before) {
    LogEvent(st.ok() ? spdlog::level::info : spdlog::level::err,
             {{"event", "pod_addresses_changed"},
              {"netns_inode", inode},
              {"addresses", absl::StrJoin(*addresses, ",")},
              {"before", absl::StrJoin(before, ",")},
              {"reason", st.ok() ? "enforced" : std::string(st.message())}});
  }
}

void PodNetworks::RefreshAddresses() {
  if (events_.valid()) {
    // Only to clear the wakeup: every pod's socket is drained below.
    epoll_event ready[64];
    (void)epoll_wait(events_.get(), ready, 64, 0);
  }
  absl::Time now = absl::Now();
  bool full = now - last_full_rescan_ >= kFullRescan;
  if (full) last_full_rescan_ = now;
  std::vector<uint64_t> due;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [inode, served] : served_) {
      bool changed = full || served.rescan || !served.address_events.valid();
      if (served.address_events.valid()) {
        AddressEvents events = DrainAddressEvents(served.address_events.get());
        if (events == AddressEvents::kLost) {
          // Never read as "nothing changed": the whole namespace is reread.
          LogEvent(spdlog::level::warn,
                   {{"event", "pod_address_events_lost"},
                    {"netns_inode", inode},
                    {"reason", "netlink overrun or error: rescanning the pod's addresses"}});
        }
        changed |= events != AddressEvents::kNone;
      }
      if (changed) due.push_back(inode);
    }
  }
  for (uint64_t inode : due) Rescan(inode);
}

void PodNetworks::Release(uint64_t inode, const Served& served, const Served* successor) {
  if (served.listeners) engine_.RemoveNetnsListeners(*served.listeners);
  InterceptionMaps& maps = bpf_.maps();
  for (uint32_t slot : served.slots) {
    (void)maps.ClearInboundListener(slot);
    used_slots_.erase(slot);
  }
  // A successor wrote its rules and target over these already, and keeps
  // the program.
  if (successor) return;
  // Its mesh connections are refused from here on.
  if (served.netns_cookie) {
    if (auto st =
            maps.RemoveOutboundTarget(*served.netns_cookie, served.target, settings_.outbound_port);
        !st.ok()) {
      // Its rules then point at an emptied slot: still refused.
      LogEvent(spdlog::level::warn,
               {{"event", "pod_target_left"}, {"netns_inode", inode}, {"reason", st.message()}});
    }
  }
  if (auto st = SyncRules(inode, nullptr); !st.ok()) {
    LogEvent(spdlog::level::warn,
             {{"event", "pod_rules_left"}, {"netns_inode", inode}, {"reason", st.message()}});
  }
  absl::Status detached = bpf_.ReleasePodNetns(inode);
  LogEvent(detached.ok() ? spdlog::level::info : spdlog::level::warn,
           {{"event", "pod_netns_released"},
            {"netns_inode", inode},
            {"workloads", absl::StrJoin(served.view.workloads, ",")},
            {"reason", detached.ok() ? "no enrolled process lives in it any more"
                                     : std::string(detached.message())}});
}

void PodNetworks::Reconcile(const std::vector<PodNetns>& wanted, bool complete) {
  std::set<uint64_t> want;
  for (const PodNetns& p : wanted) want.insert(p.inode);
  std::vector<std::pair<uint64_t, Served>> gone;
  // An incomplete pass does not know what is gone.
  if (complete) {
    absl::MutexLock lock(&mu_);
    for (auto it = served_.begin(); it != served_.end();) {
      if (want.count(it->first)) {
        ++it;
        continue;
      }
      gone.emplace_back(it->first, std::move(it->second));
      it = served_.erase(it);
    }
  }
  for (const auto& [inode, served] : gone) Release(inode, served, nullptr);

  for (const PodNetns& pod : wanted) {
    {
      absl::MutexLock lock(&mu_);
      auto it = served_.find(pod.inode);
      // Re-serving would drop the workloads an incomplete pass did not see.
      if (it != served_.end() && (!complete || it->second.workloads == pod.workloads)) continue;
    }
    auto next = Serve(pod);
    if (!next) continue;
    if (next->address_events.valid() && events_.valid()) {
      epoll_event interest{};
      interest.events = EPOLLIN;
      interest.data.u64 = pod.inode;
      (void)epoll_ctl(events_.get(), EPOLL_CTL_ADD, next->address_events.get(), &interest);
    }
    std::optional<Served> before;
    Served* now = nullptr;
    {
      absl::MutexLock lock(&mu_);
      auto it = served_.find(pod.inode);
      if (it != served_.end()) before = std::move(it->second);
      now = &(served_[pod.inode] = *std::move(next));
    }
    // Only this thread changes served_, so `now` stays valid.
    if (before) Release(pod.inode, *before, now);
  }
  // Addresses that came or went meanwhile, and the fallback rescans.
  RefreshAddresses();
}

absl::Status PodNetworks::Resteer() {
  absl::Status result;
  // Rules first, as Serve writes them: a rule the successor wrote may name
  // a slot this agent fills with another pod's listeners.
  if (auto st = SyncRules(/*inode=*/0, nullptr, /*rewrite=*/true); !st.ok()) {
    result.Update(absl::Status(st.code(), absl::StrCat("the pods' rules: ", st.message())));
  }
  size_t pods = 0;
  std::vector<uint64_t> failed;
  {
    absl::MutexLock lock(&mu_);
    InterceptionMaps& maps = bpf_.maps();
    for (auto& [inode, served] : served_) {
      if (!served.listeners) continue;  // never served: its next pass does
      absl::Status pod;
      const AgentListenerFds& fds = served.listener_fds;
      for (size_t i = 0; i < served.slots.size(); ++i) {
        if (served.outbound_slot && served.slots[i] == *served.outbound_slot) {
          pod.Update(SteerSlotTo(maps, served.slots[i], fds.outbound));
        } else if (i < fds.inbound.size()) {
          pod.Update(SteerSlotTo(maps, served.slots[i], fds.inbound[i]));
        }
      }
      // The successor's target names its own outbound slot: this one's
      // again, whatever this agent last wrote.
      if (served.netns_cookie && served.outbound_slot && (served.target.ip4 || served.target.ip6)) {
        pod.Update(maps.SetOutboundTarget(*served.netns_cookie, served.target,
                                          settings_.outbound_port, *served.outbound_slot));
      }
      ++pods;
      if (pod.ok()) continue;
      // Its enforced ports refuse (the slots are empty): fail closed.
      failed.push_back(inode);
      LogEvent(spdlog::level::err, {{"event", "pod_steering_not_restored"},
                                    {"netns_inode", inode},
                                    {"reason", pod.message()}});
      result.Update(
          absl::Status(pod.code(), absl::StrCat("pod netns ", inode, ": ", pod.message())));
    }
  }
  LogEvent(result.ok() ? spdlog::level::info : spdlog::level::err,
           {{"event", "pod_steering_restored"},
            {"pods", pods},
            {"failed", failed.size()},
            {"note", "the served pods' listener slots and rules point at this agent again"}});
  return result;
}

std::vector<SocketAddress> PodNetworks::enforced() const {
  absl::MutexLock lock(&mu_);
  std::vector<SocketAddress> rules;
  for (const auto& [key, rule] : written_) rules.push_back(rule.local);
  // The outbound targets' rules, which only the agent's listeners may take.
  for (const auto& [inode, served] : served_) {
    for (const auto* address : {&served.target.ip4, &served.target.ip6}) {
      if (!*address) continue;
      SocketAddress rule = **address;
      rule.set_port(settings_.outbound_port);
      rules.push_back(rule);
    }
  }
  return rules;
}

std::set<uint64_t> PodNetworks::netns_cookies() const {
  absl::MutexLock lock(&mu_);
  std::set<uint64_t> cookies;
  for (const auto& [inode, served] : served_) {
    if (served.netns_cookie) cookies.insert(*served.netns_cookie);
  }
  return cookies;
}

std::vector<ServedPod> PodNetworks::served() const {
  absl::MutexLock lock(&mu_);
  std::vector<ServedPod> views;
  for (const auto& [inode, served] : served_) views.push_back(served.view);
  return views;
}

}  // namespace ktrust
