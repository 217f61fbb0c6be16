#include "ktrust/bpf/interception_maps.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "ktrust/bpf/abi_address.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71  // Linux 5.14; older C library headers lack it
#endif

namespace ktrust {
namespace {

absl::Status MapError(int err, absl::string_view operation) {
  return absl::ErrnoToStatus(err, operation);
}

// libbpf's low-level calls return -errno (and set errno).
absl::Status Check(int ret, absl::string_view operation) {
  if (ret == 0) return absl::OkStatus();
  return MapError(ret < 0 ? -ret : errno, operation);
}

uint32_t AbiMode(EnforcementMode mode) {
  return mode == EnforcementMode::kPermissive ? KTRUST_MODE_PERMISSIVE : KTRUST_MODE_ENFORCE;
}

EnforcementMode ModeOf(uint32_t mode) {
  return mode == KTRUST_MODE_PERMISSIVE ? EnforcementMode::kPermissive : EnforcementMode::kEnforce;
}

ktrust_mesh_key MeshKey(const IpPrefix& prefix) {
  ktrust_mesh_key key{};
  key.prefixlen = prefix.mapped_length();
  std::memcpy(key.addr, prefix.address().data(), sizeof(key.addr));
  return key;
}

absl::StatusOr<ktrust_inbound_key> InboundKey(const SocketAddress& local) {
  auto address = ToAbiAddress(local);
  if (!address.ok()) return address.status();
  ktrust_inbound_key key{};
  // The wildcard entry is the all-zero address, for either family.
  bool unspecified = true;
  const uint8_t* raw = address->data();
  if (local.family() == AF_INET) raw += 12;
  size_t length = local.family() == AF_INET ? 4 : 16;
  for (size_t i = 0; i < length; ++i) unspecified = unspecified && raw[i] == 0;
  if (!unspecified) std::memcpy(key.addr, address->data(), sizeof(key.addr));
  key.port = local.port();
  return key;
}

// Every key of a map, as raw bytes.
absl::StatusOr<std::vector<std::string>> Keys(int map_fd, size_t key_size, absl::string_view name) {
  std::vector<std::string> keys;
  std::string next(key_size, '\0');
  const void* previous = nullptr;
  while (true) {
    int ret = bpf_map_get_next_key(map_fd, previous, next.data());
    if (ret != 0) {
      int err = ret < 0 ? -ret : errno;
      if (err == ENOENT) return keys;
      return MapError(err, absl::StrCat("iterating ", name));
    }
    keys.push_back(next);
    previous = keys.back().data();
  }
}

absl::StatusOr<size_t> CountEntries(int map_fd, size_t key_size, absl::string_view name) {
  auto keys = Keys(map_fd, key_size, name);
  if (!keys.ok()) return keys.status();
  return keys->size();
}

// Deletes every key not in `keep` (raw bytes); returns how many went.
absl::StatusOr<size_t> Prune(int map_fd, size_t key_size, const std::set<std::string>& keep,
                             absl::string_view name) {
  auto keys = Keys(map_fd, key_size, name);
  if (!keys.ok()) return keys.status();
  size_t removed = 0;
  for (const std::string& key : *keys) {
    if (keep.count(key)) continue;
    if (bpf_map_delete_elem(map_fd, key.data()) != 0 && errno != ENOENT) {
      return MapError(errno, absl::StrCat("pruning ", name));
    }
    ++removed;
  }
  return removed;
}

template <typename Key>
std::string Bytes(const Key& key) {
  return std::string(reinterpret_cast<const char*>(&key), sizeof(key));
}

absl::Status CheckListenerSlot(uint32_t slot) {
  if (slot < KTRUST_MAX_INBOUND_LISTENERS) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("inbound listener slot ", slot,
                                                 " is out of range (max ",
                                                 KTRUST_MAX_INBOUND_LISTENERS - 1, ")"));
}

}  // namespace

absl::StatusOr<uint64_t> NetnsCookieOf(int fd) {
  uint64_t cookie = 0;
  socklen_t length = sizeof(cookie);
  if (getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &length) != 0) {
    return absl::ErrnoToStatus(errno,
                               "reading a socket's network namespace "
                               "(SO_NETNS_COOKIE, Linux 5.14 or later)");
  }
  return cookie;
}

absl::Status InterceptionSettings::Validate() const {
  if (outbound_port == 0) {
    return absl::InvalidArgumentError("interception settings: outbound_port is required");
  }
  return absl::OkStatus();
}

absl::Status InterceptionMaps::Configure(const InterceptionSettings& settings) {
  if (auto st = settings.Validate(); !st.ok()) return st;
  ktrust_config config{};
  config.outbound_port = settings.outbound_port;
  config.agent_mark = settings.agent_mark;
  uint32_t zero = 0;
  return Check(bpf_map_update_elem(fds_.config, &zero, &config, BPF_ANY),
               "writing the interception settings (ktrust_config)");
}

namespace {

// The target's (address, outbound_port) rules, IPv4 first.
absl::StatusOr<std::vector<SocketAddress>> TargetRules(const OutboundTarget& target,
                                                       uint16_t outbound_port) {
  std::vector<SocketAddress> rules;
  for (const auto& [address, family] : {std::pair{&target.ip4, AF_INET}, {&target.ip6, AF_INET6}}) {
    if (!*address) continue;
    if ((*address)->family() != family) {
      return absl::InvalidArgumentError(absl::StrCat("outbound target ", (*address)->ToString(),
                                                     " is not an IPv", family == AF_INET ? 4 : 6,
                                                     " address"));
    }
    SocketAddress rule = **address;
    rule.set_port(outbound_port);
    rules.push_back(rule);
  }
  return rules;
}

}  // namespace

absl::Status InterceptionMaps::SetOutboundTarget(uint64_t netns_cookie,
                                                 const OutboundTarget& target,
                                                 uint16_t outbound_port, uint32_t slot) {
  if (auto st = CheckListenerSlot(slot); !st.ok()) return st;
  auto rules = TargetRules(target, outbound_port);
  if (!rules.ok()) return rules.status();
  // The rules first: from the moment connect4/6 rewrite to the target, only
  // the agent's listener can take what arrives there.
  for (const SocketAddress& rule : *rules) {
    auto key = InboundKey(rule);
    if (!key.ok()) return key.status();
    ktrust_inbound_value value{.listener = slot,
                               .mode = KTRUST_MODE_ENFORCE,
                               .workload = 0,
                               .flags = KTRUST_INBOUND_OUTBOUND_LISTENER};
    if (auto st = Check(bpf_map_update_elem(fds_.inbound, &*key, &value, BPF_ANY),
                        absl::StrCat("steering outbound target ", rule.ToString()));
        !st.ok()) {
      return st;
    }
  }
  ktrust_outbound_target value{};
  if (target.ip4) {
    auto a = ToAbiAddress(*target.ip4);
    if (!a.ok()) return a.status();
    std::memcpy(&value.ip4, a->data() + 12, 4);
    value.flags |= KTRUST_TARGET_HAS_IP4;
  }
  if (target.ip6) {
    auto a = ToAbiAddress(*target.ip6);
    if (!a.ok()) return a.status();
    std::memcpy(value.ip6, a->data(), 16);
    value.flags |= KTRUST_TARGET_HAS_IP6;
  }
  return Check(bpf_map_update_elem(fds_.outbound_targets, &netns_cookie, &value, BPF_ANY),
               absl::StrCat("setting the outbound target of network namespace cookie ",
                            netns_cookie, " (ktrust_outbound_targets)"));
}

absl::Status InterceptionMaps::RemoveOutboundTarget(uint64_t netns_cookie,
                                                    const OutboundTarget& target,
                                                    uint16_t outbound_port) {
  // The target first: no new connection is rewritten to the rules that go.
  if (bpf_map_delete_elem(fds_.outbound_targets, &netns_cookie) != 0 && errno != ENOENT) {
    return MapError(errno, absl::StrCat("removing the outbound target of network namespace "
                                        "cookie ",
                                        netns_cookie));
  }
  auto rules = TargetRules(target, outbound_port);
  if (!rules.ok()) return rules.status();
  for (const SocketAddress& rule : *rules) {
    auto key = InboundKey(rule);
    if (!key.ok()) return key.status();
    if (bpf_map_delete_elem(fds_.inbound, &*key) != 0 && errno != ENOENT) {
      return MapError(errno, absl::StrCat("removing outbound target rule ", rule.ToString()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> InterceptionMaps::KeepOnlyOutboundTargets(const std::set<uint64_t>& keep) {
  std::set<std::string> wanted;
  for (uint64_t cookie : keep) wanted.insert(Bytes(cookie));
  return Prune(fds_.outbound_targets, sizeof(uint64_t), wanted, "ktrust_outbound_targets");
}

absl::Status InterceptionMaps::AddMeshDestination(const IpPrefix& prefix,
                                                  const std::vector<PortRule>& rules) {
  auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("mesh destination ", prefix.ToString(), ": ", why));
  };
  if (rules.empty()) return invalid("no port rules");
  if (rules.size() > KTRUST_MESH_RULES_PER_PREFIX) {
    return invalid(absl::StrCat("more than ", KTRUST_MESH_RULES_PER_PREFIX, " port rules"));
  }
  ktrust_mesh_value value{};
  for (size_t i = 0; i < rules.size(); ++i) {
    if (rules[i].first_port > rules[i].last_port) {
      return invalid(
          absl::StrCat("port range ", rules[i].first_port, "-", rules[i].last_port, " is empty"));
    }
    value.rules[i].first_port = rules[i].first_port;
    value.rules[i].last_port = rules[i].last_port;
    value.rules[i].action = rules[i].action == MeshAction::kBypass ? KTRUST_MESH_ACTION_BYPASS
                                                                   : KTRUST_MESH_ACTION_REDIRECT;
  }
  ktrust_mesh_key key = MeshKey(prefix);
  return Check(bpf_map_update_elem(fds_.mesh, &key, &value, BPF_ANY),
               absl::StrCat("adding mesh destination ", prefix.ToString()));
}

absl::Status InterceptionMaps::RemoveMeshDestination(const IpPrefix& prefix) {
  ktrust_mesh_key key = MeshKey(prefix);
  return Check(bpf_map_delete_elem(fds_.mesh, &key),
               absl::StrCat("removing mesh destination ", prefix.ToString()));
}

absl::Status InterceptionMaps::EnrollCgroup(uint64_t cgroup_id, EnforcementMode mode,
                                            uint32_t workload) {
  ktrust_cgroup_value value{.mode = AbiMode(mode), .workload = workload};
  return Check(bpf_map_update_elem(fds_.cgroups, &cgroup_id, &value, BPF_ANY),
               absl::StrCat("enrolling cgroup ", cgroup_id));
}

absl::Status InterceptionMaps::MarkCgroupNotEnrolled(uint64_t cgroup_id) {
  ktrust_cgroup_value value{.mode = KTRUST_MODE_NOT_ENROLLED, .workload = 0};
  return Check(bpf_map_update_elem(fds_.cgroups, &cgroup_id, &value, BPF_ANY),
               absl::StrCat("classifying cgroup ", cgroup_id, " as not enrolled"));
}

absl::Status InterceptionMaps::WatchOnlyCgroups(const std::set<uint64_t>& roots) {
  std::set<std::string> keys;
  for (uint64_t id : roots) {
    uint32_t unused = 0;
    if (auto st = Check(bpf_map_update_elem(fds_.watched, &id, &unused, BPF_ANY),
                        absl::StrCat("watching cgroup ", id, " (ktrust_watched)"));
        !st.ok()) {
      return st;
    }
    keys.insert(Bytes(id));
  }
  return Prune(fds_.watched, sizeof(uint64_t), keys, "ktrust_watched").status();
}

absl::StatusOr<size_t> InterceptionMaps::KeepOnlyMeshDestinations(
    const std::vector<IpPrefix>& keep) {
  std::set<std::string> keys;
  for (const IpPrefix& p : keep) keys.insert(Bytes(MeshKey(p)));
  return Prune(fds_.mesh, sizeof(ktrust_mesh_key), keys, "ktrust_mesh");
}

absl::StatusOr<size_t> InterceptionMaps::KeepOnlyEnrolledCgroups(const std::set<uint64_t>& keep) {
  std::set<std::string> keys;
  for (uint64_t id : keep) keys.insert(Bytes(id));
  return Prune(fds_.cgroups, sizeof(uint64_t), keys, "ktrust_cgroups");
}

absl::StatusOr<size_t> InterceptionMaps::KeepOnlyInboundPorts(
    const std::vector<SocketAddress>& keep) {
  std::set<std::string> keys;
  for (const SocketAddress& a : keep) {
    auto key = InboundKey(a);
    if (!key.ok()) return key.status();
    keys.insert(Bytes(*key));
  }
  return Prune(fds_.inbound, sizeof(ktrust_inbound_key), keys, "ktrust_inbound");
}

absl::Status InterceptionMaps::ForEachExactInboundRule(
    const std::function<absl::Status(const ktrust_inbound_key&, ktrust_inbound_value&)>& visit)
    const {
  auto keys = Keys(fds_.inbound, sizeof(ktrust_inbound_key), "ktrust_inbound");
  if (!keys.ok()) return keys.status();
  for (const std::string& bytes : *keys) {
    ktrust_inbound_key key{};
    std::memcpy(&key, bytes.data(), sizeof(key));
    static constexpr uint8_t kWildcard[16] = {};
    if (std::memcmp(key.addr, kWildcard, sizeof(kWildcard)) == 0) continue;
    ktrust_inbound_value value{};
    if (bpf_map_lookup_elem(fds_.inbound, &key, &value) != 0) continue;  // gone meanwhile
    if (auto st = visit(key, value); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::map<std::string, uint32_t>> InterceptionMaps::ExactInboundSlots() const {
  std::map<std::string, uint32_t> slots;
  auto st =
      ForEachExactInboundRule([&](const ktrust_inbound_key& key, ktrust_inbound_value& value) {
        slots[FromAbiAddress(key.addr, key.port).ToString()] = value.listener;
        return absl::OkStatus();
      });
  if (!st.ok()) return st;
  return slots;
}

absl::StatusOr<size_t> InterceptionMaps::ParkExactInboundRules(
    uint32_t slot, const std::function<bool(const SocketAddress& local, uint32_t slot)>& park) {
  if (auto st = CheckListenerSlot(slot); !st.ok()) return st;
  size_t parked = 0;
  auto st = ForEachExactInboundRule(
      [&](const ktrust_inbound_key& key, ktrust_inbound_value& value) -> absl::Status {
        if (value.listener == slot || !park(FromAbiAddress(key.addr, key.port), value.listener)) {
          return absl::OkStatus();
        }
        value.listener = slot;
        if (bpf_map_update_elem(fds_.inbound, &key, &value, BPF_EXIST) != 0 && errno != ENOENT) {
          return MapError(errno, "parking an exact inbound rule");
        }
        ++parked;
        return absl::OkStatus();
      });
  if (!st.ok()) return st;
  return parked;
}

absl::Status InterceptionMaps::UnenrollCgroup(uint64_t cgroup_id) {
  return Check(bpf_map_delete_elem(fds_.cgroups, &cgroup_id),
               absl::StrCat("unenrolling cgroup ", cgroup_id));
}

absl::StatusOr<OriginalDestination> InterceptionMaps::LookupOriginalDestination(
    uint64_t netns_cookie, const SocketAddress& app, const SocketAddress& listener) const {
  auto src = ToAbiAddress(app);
  auto dst = ToAbiAddress(listener);
  if (!src.ok()) return src.status();
  if (!dst.ok()) return dst.status();
  ktrust_tuple key{};
  key.netns_cookie = netns_cookie;
  std::memcpy(key.src_addr, src->data(), 16);
  std::memcpy(key.dst_addr, dst->data(), 16);
  key.src_port = app.port();
  key.dst_port = listener.port();
  ktrust_orig_dst record{};
  int ret = bpf_map_lookup_elem(fds_.orig_by_tuple, &key, &record);
  if (ret != 0) {
    int err = ret < 0 ? -ret : errno;
    if (err == ENOENT) {
      return absl::NotFoundError(absl::StrCat("no original destination for ", app.ToString(),
                                              " -> ", listener.ToString(),
                                              ": not a redirected connection"));
    }
    return MapError(err, "looking up an original destination (ktrust_orig_tp)");
  }
  OriginalDestination out;
  out.destination = FromAbiAddress(record.addr, record.port);
  out.cgroup_id = record.cgroup_id;
  out.workload = record.workload;
  out.pid = record.pid;
  out.mode = ModeOf(record.mode);
  out.netns_cookie = record.netns_cookie;
  return out;
}

absl::StatusOr<OriginalDestination> InterceptionMaps::OriginalDestinationOf(int accepted_fd) const {
  // The application's connection stays inside its namespace, so the agent's
  // end of it is in the same one.
  auto netns_cookie = NetnsCookieOf(accepted_fd);
  if (!netns_cookie.ok()) return netns_cookie.status();
  auto peer = SocketAddress::PeerOf(accepted_fd);
  if (!peer.ok()) return peer.status();
  auto local = SocketAddress::LocalOf(accepted_fd);
  if (!local.ok()) return local.status();
  return LookupOriginalDestination(*netns_cookie, *peer, *local);
}

absl::Status InterceptionMaps::AddInboundPort(const SocketAddress& local, EnforcementMode mode,
                                              uint32_t listener_slot, uint32_t workload) {
  if (auto st = CheckListenerSlot(listener_slot); !st.ok()) return st;
  auto key = InboundKey(local);
  if (!key.ok()) return key.status();
  ktrust_inbound_value value{
      .listener = listener_slot, .mode = AbiMode(mode), .workload = workload, .flags = 0};
  return Check(bpf_map_update_elem(fds_.inbound, &*key, &value, BPF_ANY),
               absl::StrCat("enforcing inbound ", local.ToString()));
}

absl::Status InterceptionMaps::RemoveInboundPort(const SocketAddress& local) {
  auto key = InboundKey(local);
  if (!key.ok()) return key.status();
  return Check(bpf_map_delete_elem(fds_.inbound, &*key),
               absl::StrCat("removing inbound ", local.ToString()));
}

absl::Status InterceptionMaps::SetInboundListener(uint32_t slot, int listen_fd) {
  if (auto st = CheckListenerSlot(slot); !st.ok()) return st;
  auto local = SocketAddress::LocalOf(listen_fd);
  if (!local.ok()) return local.status();
  if (local->family() == AF_INET6) slot += KTRUST_INBOUND_V6_SLOT_OFFSET;
  uint64_t fd = static_cast<uint64_t>(listen_fd);
  return Check(bpf_map_update_elem(fds_.listeners, &slot, &fd, BPF_ANY),
               absl::StrCat("placing the inbound listener in slot ", slot, " (ktrust_listen)"));
}

absl::Status InterceptionMaps::ClearInboundListener(uint32_t slot) {
  if (auto st = CheckListenerSlot(slot); !st.ok()) return st;
  for (uint32_t key : {slot, slot + KTRUST_INBOUND_V6_SLOT_OFFSET}) {
    int ret = bpf_map_delete_elem(fds_.listeners, &key);
    if (ret == 0) continue;
    int err = ret < 0 ? -ret : errno;
    // A sockmap says EINVAL for a slot that holds no socket (its socket
    // closed, or there was none): empty is what was asked for.
    if (err == EINVAL || err == ENOENT) continue;
    return MapError(err, absl::StrCat("clearing inbound listener slot ", key, " (ktrust_listen)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ReasonCounters> InterceptionMaps::Counters() const {
  int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) return MapError(-cpus, "counting possible CPUs");
  ReasonCounters out{};
  std::vector<uint64_t> per_cpu(static_cast<size_t>(cpus));
  for (uint32_t reason = 0; reason < KTRUST_REASON_MAX; ++reason) {
    if (auto st = Check(bpf_map_lookup_elem(fds_.counters, &reason, per_cpu.data()),
                        "reading counters (ktrust_counters)");
        !st.ok()) {
      return st;
    }
    for (uint64_t v : per_cpu) out[reason] += v;
  }
  return out;
}

absl::StatusOr<TrackedConnectionCounts> InterceptionMaps::TrackedConnections() const {
  auto by_cookie = CountEntries(fds_.orig_by_cookie, sizeof(uint64_t), "ktrust_orig_ck");
  if (!by_cookie.ok()) return by_cookie.status();
  auto by_tuple = CountEntries(fds_.orig_by_tuple, sizeof(ktrust_tuple), "ktrust_orig_tp");
  if (!by_tuple.ok()) return by_tuple.status();
  return TrackedConnectionCounts{.by_cookie = *by_cookie, .by_tuple = *by_tuple};
}

}  // namespace ktrust
