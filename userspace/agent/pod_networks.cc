#include "ktrust/agent/pod_networks.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "ktrust/bpf/abi.h"
#include "ktrust/common/log.h"
#include "ktrust/common/unique_fd.h"

namespace ktrust {
namespace {

// Runs fn on a thread of its own that joins the namespace: setns changes
// only the calling thread, and this one ends with fn.
absl::Status RunInNetns(int netns_fd, const std::function<absl::Status()>& fn) {
  absl::Status result;
  std::thread([&] {
    if (setns(netns_fd, CLONE_NEWNET) != 0) {
      result = absl::ErrnoToStatus(errno, "setns into the pod's network namespace");
      return;
    }
    result = fn();
  }).join();
  return result;
}

// The pod's own addresses: what peers dial, so what sk_lookup must match.
absl::StatusOr<std::vector<std::string>> PodAddresses(int netns_fd) {
  std::vector<std::string> found;
  auto st = RunInNetns(netns_fd, [&]() -> absl::Status {
    ifaddrs* list = nullptr;
    if (getifaddrs(&list) != 0) return absl::ErrnoToStatus(errno, "getifaddrs");
    for (ifaddrs* a = list; a; a = a->ifa_next) {
      if (!a->ifa_addr || (a->ifa_flags & IFF_LOOPBACK)) continue;
      char text[INET6_ADDRSTRLEN] = {};
      if (a->ifa_addr->sa_family == AF_INET) {
        inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr, text,
                  sizeof(text));
      } else if (a->ifa_addr->sa_family == AF_INET6) {
        const in6_addr& ip = reinterpret_cast<sockaddr_in6*>(a->ifa_addr)->sin6_addr;
        if (IN6_IS_ADDR_LINKLOCAL(&ip)) continue;  // never dialled across nodes
        inet_ntop(AF_INET6, &ip, text, sizeof(text));
      } else {
        continue;
      }
      found.emplace_back(text);
    }
    freeifaddrs(list);
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  return found;
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

absl::StatusOr<SocketAddress> AddressWithPort(const std::string& ip, uint16_t port) {
  bool v6 = ip.find(':') != std::string::npos;
  return SocketAddress::Parse(v6 ? absl::StrCat("[", ip, "]:", port) : absl::StrCat(ip, ":", port));
}

}  // namespace

OutboundTarget PodOutboundTarget(const std::vector<std::string>& addresses) {
  OutboundTarget target;
  for (const std::string& ip : addresses) {
    auto address = AddressWithPort(ip, 0);
    if (!address.ok()) continue;
    if (address->family() == AF_INET) {
      const in_addr& a = reinterpret_cast<const sockaddr_in*>(address->get())->sin_addr;
      bool link_local = (ntohl(a.s_addr) >> 16) == 0xa9fe;  // 169.254/16
      if (!target.ip4 && !link_local) target.ip4 = *address;
    } else {
      const in6_addr& a = reinterpret_cast<const sockaddr_in6*>(address->get())->sin6_addr;
      if (!target.ip6 && !IN6_IS_ADDR_LINKLOCAL(&a)) target.ip6 = *address;
    }
  }
  return target;
}

namespace {

// Whether the namespace now has an address its mesh connections can be sent
// to (and so enforced ports have addresses too).
bool HasOutboundTarget(const std::string& netns_path) {
  UniqueFd netns(open(netns_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!netns.valid()) return false;
  auto addresses = PodAddresses(netns.get());
  if (!addresses.ok()) return false;
  OutboundTarget target = PodOutboundTarget(*addresses);
  return target.ip4 || target.ip6;
}

}  // namespace

std::optional<uint32_t> PodNetworks::AllocateSlot() {
  for (uint32_t slot = settings_.first_slot; slot < KTRUST_PARKED_SLOT; ++slot) {
    if (used_slots_.insert(slot).second) return slot;
  }
  return std::nullopt;
}

std::optional<PodNetworks::Served> PodNetworks::Serve(const PodNetns& pod) {
  UniqueFd netns(open(pod.path.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat ns_stat {};
  if (!netns.valid() || fstat(netns.get(), &ns_stat) != 0 || ns_stat.st_ino != pod.inode) {
    return std::nullopt;
  }
  Served served;
  served.workloads = pod.workloads;
  served.view.netns_inode = pod.inode;
  for (const PodWorkload& w : pod.workloads) served.view.workloads.push_back(w.name);
  auto problem = [&](std::string what) {
    served.view.problem = what;
    LogEvent(spdlog::level::err, {{"event", "pod_netns_unserved"},
                                  {"netns_inode", pod.inode},
                                  {"workloads", absl::StrJoin(served.view.workloads, ",")},
                                  {"reason", what}});
    return served;
  };

  auto addresses = PodAddresses(netns.get());
  if (!addresses.ok()) return problem(std::string(addresses.status().message()));
  served.view.addresses = *addresses;
  bool serves_ports = false;
  for (const PodWorkload& w : pod.workloads) serves_ports |= !w.ports.empty();
  served.target = PodOutboundTarget(*addresses);
  // A CNI plugin may configure the namespace after its first process
  // started: until then, nothing to enforce and nowhere to send its mesh
  // connections (refused meanwhile).
  served.awaiting_addresses =
      (serves_ports && addresses->empty()) || (!served.target.ip4 && !served.target.ip6);
  bool has_ip6 = false;
  for (const std::string& a : *addresses) has_ip6 |= a.find(':') != std::string::npos;

  // The program and the rules first: from here on the pod's enforced ports
  // refuse until their listeners are in place.
  std::string path = absl::StrCat("/proc/self/fd/", netns.get());
  {
    absl::MutexLock lock(&bpf_mu_);
    if (auto st = bpf_.AttachPodNetns(path); !st.ok()) {
      return problem(absl::StrCat("attaching sk_lookup (its enforced ports are NOT protected): ",
                                  st.message()));
    }
  }
  InterceptionMaps& maps = bpf_.maps();
  std::vector<const PodWorkload*> serving;
  for (const PodWorkload& w : pod.workloads) {
    if (w.ports.empty()) continue;
    // Out of slots (far beyond a node's pod limit): its rules refuse.
    uint32_t slot = AllocateSlot().value_or(KTRUST_PARKED_SLOT);
    if (slot != KTRUST_PARKED_SLOT) served.slots.push_back(slot);
    serving.push_back(&w);
    EnforcementMode mode = w.mode == WorkloadMode::kPermissive ? EnforcementMode::kPermissive
                                                               : EnforcementMode::kEnforce;
    for (const std::string& ip : *addresses) {
      for (uint16_t port : w.ports) {
        auto rule = AddressWithPort(ip, port);
        if (!rule.ok()) continue;
        if (auto st = maps.AddInboundPort(*rule, mode, slot, w.workload_index); !st.ok()) {
          return problem(absl::StrCat("enforcing ", rule->ToString(), ": ", st.message()));
        }
        served.rules.push_back(*rule);
      }
    }
    if (slot == KTRUST_PARKED_SLOT) {
      return problem(absl::StrCat("no free listener slot for workload ", w.name,
                                  ": its enforced ports refuse every connection"));
    }
  }

  if (settings_.upstream_source6 && has_ip6 && !serving.empty()) {
    in6_addr source =
        reinterpret_cast<const sockaddr_in6*>(settings_.upstream_source6->get())->sin6_addr;
    if (auto st = RunInNetns(netns.get(), [&] { return AddLoopbackAddress6(source); }); !st.ok()) {
      return problem(
          absl::StrCat("adding the IPv6 upstream source to the pod's loopback: ", st.message()));
    }
  }

  // The pod's mesh connections go to its own address on outbound_port (the
  // loopback addresses are the host's), which sk_lookup hands only to the
  // outbound listeners below: bound to ephemeral ports, so no process in the
  // pod can take their place.
  NetnsListeners listeners;
  listeners.netns_fd = netns.get();
  for (const char* host : {"127.0.0.1:0", "[::1]:0"}) {
    listeners.outbound.push_back({*SocketAddress::Parse(host), settings_.route});
  }
  for (const PodWorkload* w : serving) {
    for (const char* host : {"127.0.0.1:0", "[::1]:0"}) {
      listeners.inbound.push_back({*SocketAddress::Parse(host), w->name, w->identity, std::nullopt,
                                   w->mode == WorkloadMode::kPermissive});
    }
  }
  auto handle = engine_.AddNetnsListeners(std::move(listeners));
  if (!handle.ok()) {
    return problem(absl::StrCat("opening listeners in the pod: ", handle.status().message()));
  }
  served.listeners = handle->id;
  for (size_t i = 0; i < served.slots.size(); ++i) {
    for (size_t family = 0; family < 2; ++family) {
      if (auto st = maps.SetInboundListener(served.slots[i], handle->inbound_fds[2 * i + family]);
          !st.ok()) {
        return problem(absl::StrCat("steering to the pod's listeners: ", st.message()));
      }
    }
  }
  if (served.target.ip4 || served.target.ip6) {
    std::optional<uint32_t> slot = AllocateSlot();
    if (!slot) return problem("no free listener slot for the pod's outbound listener");
    served.slots.push_back(*slot);
    for (size_t family = 0; family < 2; ++family) {
      if (auto st = maps.SetInboundListener(*slot, handle->outbound_fds[family]); !st.ok()) {
        return problem(absl::StrCat("steering to the pod's outbound listener: ", st.message()));
      }
    }
    auto cookie = NetnsCookieOf(handle->outbound_fds[0]);
    if (!cookie.ok()) return problem(std::string(cookie.status().message()));
    served.netns_cookie = *cookie;
    if (auto st = maps.SetOutboundTarget(*cookie, served.target, settings_.outbound_port, *slot);
        !st.ok()) {
      return problem(absl::StrCat("redirecting the pod's mesh connections: ", st.message()));
    }
    for (const auto* address : {&served.target.ip4, &served.target.ip6}) {
      if (!*address) continue;
      SocketAddress rule = **address;
      rule.set_port(settings_.outbound_port);
      served.rules.push_back(rule);
    }
  }
  LogEvent(spdlog::level::info, {{"event", "pod_netns_served"},
                                 {"netns_inode", pod.inode},
                                 {"addresses", absl::StrJoin(*addresses, ",")},
                                 {"workloads", absl::StrJoin(served.view.workloads, ",")}});
  return served;
}

void PodNetworks::Release(uint64_t inode, const Served& served, const Served* successor) {
  if (served.listeners) engine_.RemoveNetnsListeners(*served.listeners);
  InterceptionMaps& maps = bpf_.maps();
  for (uint32_t slot : served.slots) {
    (void)maps.ClearInboundListener(slot);
    used_slots_.erase(slot);
  }
  // A successor overwrote the rules it shares with these, and keeps the program.
  std::set<std::string> kept;
  if (successor) {
    for (const SocketAddress& rule : successor->rules) kept.insert(rule.ToString());
  }
  for (const SocketAddress& rule : served.rules) {
    if (!kept.count(rule.ToString())) (void)maps.RemoveInboundPort(rule);
  }
  if (successor) return;
  // Its mesh connections are refused from here on.
  if (served.netns_cookie) {
    (void)maps.RemoveOutboundTarget(*served.netns_cookie, served.target, settings_.outbound_port);
  }
  absl::Status detached;
  {
    absl::MutexLock lock(&bpf_mu_);
    detached = bpf_.ReleasePodNetns(inode);
  }
  LogEvent(detached.ok() ? spdlog::level::info : spdlog::level::warn,
           {{"event", "pod_netns_released"},
            {"netns_inode", inode},
            {"workloads", absl::StrJoin(served.view.workloads, ",")},
            {"reason", detached.ok() ? "no enrolled process lives in it any more"
                                     : std::string(detached.message())}});
}

void PodNetworks::Reconcile(const std::vector<PodNetns>& wanted) {
  std::set<uint64_t> want;
  for (const PodNetns& p : wanted) want.insert(p.inode);
  std::vector<std::pair<uint64_t, Served>> gone;
  {
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
    bool awaiting_addresses = false;
    {
      absl::MutexLock lock(&mu_);
      auto it = served_.find(pod.inode);
      if (it != served_.end() && it->second.workloads == pod.workloads) {
        if (!it->second.awaiting_addresses) continue;
        awaiting_addresses = true;
      }
    }
    // Served again once the addresses have come, not on every pass.
    if (awaiting_addresses && !HasOutboundTarget(pod.path)) continue;
    auto next = Serve(pod);
    if (!next) continue;
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
}

std::vector<SocketAddress> PodNetworks::enforced() const {
  absl::MutexLock lock(&mu_);
  std::vector<SocketAddress> rules;
  for (const auto& [inode, served] : served_) {
    rules.insert(rules.end(), served.rules.begin(), served.rules.end());
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
