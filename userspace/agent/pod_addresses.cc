#include "ktrust/agent/pod_addresses.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "ktrust/common/netns.h"

namespace ktrust {

bool IsEnforcedPodAddress(const sockaddr* address,
                          const std::optional<SocketAddress>& own_source6) {
  if (!address) return false;
  if (address->sa_family == AF_INET) {
    const in_addr& ip = reinterpret_cast<const sockaddr_in*>(address)->sin_addr;
    uint32_t host = ntohl(ip.s_addr);
    return host != INADDR_ANY && (host >> 24) != 127;
  }
  if (address->sa_family != AF_INET6) return false;
  const in6_addr& ip = reinterpret_cast<const sockaddr_in6*>(address)->sin6_addr;
  if (IN6_IS_ADDR_LOOPBACK(&ip) || IN6_IS_ADDR_UNSPECIFIED(&ip) || IN6_IS_ADDR_MULTICAST(&ip)) {
    return false;
  }
  if (IN6_IS_ADDR_V4MAPPED(&ip) && ip.s6_addr[12] == 127) return false;
  if (own_source6 && own_source6->family() == AF_INET6) {
    const in6_addr& own = reinterpret_cast<const sockaddr_in6*>(own_source6->get())->sin6_addr;
    if (std::memcmp(&own, &ip, sizeof(ip)) == 0) return false;
  }
  return true;
}

absl::StatusOr<std::vector<std::string>> NetnsAddresses(
    int netns_fd, const std::optional<SocketAddress>& own_source6) {
  std::vector<std::string> found;
  auto st = RunInNetns(netns_fd, -1, "the pod's network namespace", "the agent's network namespace",
                       [&]() -> absl::Status {
                         ifaddrs* list = nullptr;
                         if (getifaddrs(&list) != 0) {
                           return absl::ErrnoToStatus(errno, "getifaddrs");
                         }
                         found = EnforcedPodAddresses(list, own_source6);
                         freeifaddrs(list);
                         return absl::OkStatus();
                       });
  if (!st.ok()) return st;
  return found;
}

std::vector<std::string> EnforcedPodAddresses(const ifaddrs* list,
                                              const std::optional<SocketAddress>& own_source6) {
  std::vector<std::string> found;
  for (const ifaddrs* a = list; a; a = a->ifa_next) {
    if (!IsEnforcedPodAddress(a->ifa_addr, own_source6)) continue;
    char text[INET6_ADDRSTRLEN] = {};
    // Without the scope: sk_lookup matches fe80::1, not fe80::1%eth0.
    const void* raw =
        a->ifa_addr->sa_family == AF_INET
            ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in*>(a->ifa_addr)->sin_addr)
            : static_cast<const void*>(
                  &reinterpret_cast<const sockaddr_in6*>(a->ifa_addr)->sin6_addr);
    if (!inet_ntop(a->ifa_addr->sa_family, raw, text, sizeof(text))) continue;
    found.emplace_back(text);
  }
  std::sort(found.begin(), found.end());
  found.erase(std::unique(found.begin(), found.end()), found.end());
  return found;
}

OutboundTarget PodOutboundTarget(const std::vector<std::string>& addresses) {
  OutboundTarget target;
  for (const std::string& ip : addresses) {
    bool v6 = ip.find(':') != std::string::npos;
    auto address = SocketAddress::Parse(v6 ? absl::StrCat("[", ip, "]:0") : absl::StrCat(ip, ":0"));
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

bool SameOutboundTarget(const OutboundTarget& a, const OutboundTarget& b) {
  auto text = [](const std::optional<SocketAddress>& x) { return x ? x->ToString() : ""; };
  return text(a.ip4) == text(b.ip4) && text(a.ip6) == text(b.ip6);
}

absl::StatusOr<UniqueFd> SubscribeAddressEvents() {
  UniqueFd nl(socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_ROUTE));
  if (!nl.valid()) return absl::ErrnoToStatus(errno, "netlink socket");
  sockaddr_nl local{};
  local.nl_family = AF_NETLINK;
  local.nl_groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
  if (bind(nl.get(), reinterpret_cast<sockaddr*>(&local), sizeof(local)) != 0) {
    return absl::ErrnoToStatus(errno, "subscribing to the pod's address changes");
  }
  return nl;
}

AddressEvents DrainAddressEvents(int fd) {
  AddressEvents result = AddressEvents::kNone;
  alignas(nlmsghdr) char buffer[8192];
  // Bounded: a namespace changing addresses without pause must not hold
  // the caller; what is left is read on the next call.
  for (int reads = 0; reads < 64; ++reads) {
    ssize_t n = recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n > 0) {
      // Any message in these groups is an address change; which one does
      // not matter, the caller rescans the whole namespace.
      if (result == AddressEvents::kNone) result = AddressEvents::kChanged;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return result;
    // ENOBUFS: the kernel dropped events. Anything else: the socket is
    // unusable. Either way what changed is unknown.
    return AddressEvents::kLost;
  }
  return result == AddressEvents::kNone ? AddressEvents::kChanged : result;
}

absl::StatusOr<SocketAddress> PodSocketAddress(const std::string& address, uint16_t port) {
  bool v6 = address.find(':') != std::string::npos;
  return SocketAddress::Parse(v6 ? absl::StrCat("[", address, "]:", port)
                                 : absl::StrCat(address, ":", port));
}

PodRules ResolvePodRules(const std::vector<PodClaim>& pods, uint32_t parked_slot) {
  std::map<std::string, std::set<uint64_t>> carriers;
  for (const PodClaim& pod : pods) {
    for (const std::string& a : pod.addresses) carriers[a].insert(pod.netns);
  }
  PodRules out;
  for (const PodClaim& pod : pods) {
    for (const std::string& a : pod.addresses) {
      bool shared = carriers[a].size() > 1;
      if (shared) out.shared[pod.netns].insert(a);
      for (const PodPortClaim& w : pod.serving) {
        for (uint16_t port : w.ports) {
          auto local = PodSocketAddress(a, port);
          if (!local.ok()) continue;
          PodRule rule{*local, w.slot, w.mode, w.workload};
          if (shared) {
            rule.slot = parked_slot;
            rule.mode = EnforcementMode::kEnforce;
          }
          // A second claim of one (address, port) is a shared address's,
          // parked like the first, or a configuration enforcing a port
          // twice in one pod: the first claim stays.
          out.rules.emplace(local->ToString(), rule);
        }
      }
    }
  }
  return out;
}

}  // namespace ktrust
