#include "ktrust/agent/outbound_routing.h"

#include "absl/strings/str_cat.h"

namespace ktrust {

absl::StatusOr<std::optional<SpiffeIdPattern>> ExpectedServerOf(const Config& config,
                                                                const SocketAddress& destination,
                                                                const std::string& workload) {
  // The first expected-server rule covering the destination pins the server.
  std::string ip = destination.ToString();
  ip = ip.substr(0, ip.rfind(':'));
  if (!ip.empty() && ip.front() == '[') ip = ip.substr(1, ip.size() - 2);
  auto host = IpPrefix::Parse(ip);
  const ExpectedServerRule* rule =
      host.ok() ? ExpectedServerFor(config, *host, destination.port()) : nullptr;
  if (rule != nullptr) return rule->server;
  if (config.require_expected_server) {
    // Refused before anything is sent: no rule says who the server must be.
    return absl::PermissionDeniedError(absl::StrCat(
        "no expected_servers rule covers ", destination.ToString(), " (from workload ", workload,
        "), and mesh.require_expected_server refuses a server that could be any workload of ",
        config.trust_domain));
  }
  return std::nullopt;
}

OutboundRouting::OutboundRouting(OriginalDestinationLookup lookup,
                                 std::shared_ptr<const Config> config)
    : lookup_(std::move(lookup)),
      table_(std::make_shared<const RoutingTable>(RoutingTable{{}, {}, {}, std::move(config)})) {}

std::shared_ptr<const RoutingTable> OutboundRouting::current() const {
  absl::MutexLock lock(&mu_);
  return table_;
}

void OutboundRouting::Publish(std::shared_ptr<const RoutingTable> next) {
  absl::MutexLock lock(&mu_);
  table_ = std::move(next);
}

absl::StatusOr<OutboundRoute> OutboundRouting::Route(int app_fd) const {
  auto original = lookup_(app_fd);
  if (!original.ok()) {
    return absl::NotFoundError(absl::StrCat(
        "no original destination for this connection (not redirected by ktrust, or already "
        "closed): ",
        original.status().message()));
  }
  std::shared_ptr<const RoutingTable> routing = current();
  auto it = routing->by_cgroup.find(original->cgroup_id);
  if (it == routing->by_cgroup.end()) {
    return absl::NotFoundError(absl::StrCat("cgroup ", original->cgroup_id,
                                            " is enrolled in the kernel but not registered"));
  }
  if (!it->second.refusal.empty()) return absl::PermissionDeniedError(it->second.refusal);
  auto expected = ExpectedServerOf(*routing->config, original->destination, it->second.name);
  if (!expected.ok()) return expected.status();
  return OutboundRoute{original->destination, it->second.name, it->second.identity, *expected};
}

SvidProvider OutboundRouting::ServingIdentity(const std::string& workload) const {
  return [this, workload]() -> std::shared_ptr<const Svid> {
    std::shared_ptr<const RoutingTable> routing = current();
    auto it = routing->serving.find(workload);
    // No cgroup of this workload yet: nothing to present, refused.
    if (it == routing->serving.end()) return nullptr;
    return it->second();
  };
}

}  // namespace ktrust
