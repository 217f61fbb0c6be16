#include "ktrust/agent/outbound_routing.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "unit/test_pki.h"

namespace ktrust {
namespace {

using ::testing::HasSubstr;

std::shared_ptr<Config> ConfigWithRule() {
  auto config = std::make_shared<Config>();
  config->trust_domain = "example.org";
  config->expected_servers.push_back({*IpPrefix::Parse("10.0.0.0/8"),
                                      {{443, 443}},
                                      *SpiffeIdPattern::Parse("spiffe://example.org/db/*")});
  return config;
}

SocketAddress Addr(const char* text) { return *SocketAddress::Parse(text); }

TEST(ExpectedServerTest, TheCoveringRulePinsTheServer) {
  auto config = ConfigWithRule();
  auto pinned = ExpectedServerOf(*config, Addr("10.1.2.3:443"), "web");
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  ASSERT_TRUE(pinned->has_value());
  EXPECT_EQ((*pinned)->ToString(), "spiffe://example.org/db/*");
  // Another port, or an address outside the rule: any server of the domain.
  auto other_port = ExpectedServerOf(*config, Addr("10.1.2.3:80"), "web");
  ASSERT_TRUE(other_port.ok());
  EXPECT_FALSE(other_port->has_value());
  auto outside = ExpectedServerOf(*config, Addr("[fd00::1]:443"), "web");
  ASSERT_TRUE(outside.ok());
  EXPECT_FALSE(outside->has_value());
}

TEST(ExpectedServerTest, RequireExpectedServerRefusesAnUncoveredDestination) {
  auto config = ConfigWithRule();
  config->require_expected_server = true;
  auto refused = ExpectedServerOf(*config, Addr("[fd00::1]:443"), "web");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(refused.status().message(), HasSubstr("[fd00::1]:443 (from workload web)"));
  EXPECT_TRUE(ExpectedServerOf(*config, Addr("10.1.2.3:443"), "web").ok());
}

class OutboundRoutingTest : public ::testing::Test {
 protected:
  OutboundRoutingTest()
      : config_(ConfigWithRule()),
        routing_(
            [this](int fd) -> absl::StatusOr<OriginalDestination> {
              if (fd != kRedirectedFd) return absl::NotFoundError("no such socket");
              OriginalDestination d;
              d.destination = Addr("10.9.8.7:443");
              d.cgroup_id = cgroup_;
              return d;
            },
            config_) {}

  static constexpr int kRedirectedFd = 42;
  uint64_t cgroup_ = 7;
  std::shared_ptr<Config> config_;
  OutboundRouting routing_;
};

TEST_F(OutboundRoutingTest, RoutesARedirectedConnectionAsItsWorkload) {
  auto root = testing::MintRoot("example.org");
  auto svid = std::make_shared<const Svid>(
      testing::MintSvid({.uri_sans = {"spiffe://example.org/web"}}, root));
  RoutingTable table;
  table.config = config_;
  table.by_cgroup[7] = {"web", [svid] { return svid; }, ""};
  routing_.Publish(std::make_shared<const RoutingTable>(table));

  auto route = routing_.Route(kRedirectedFd);
  ASSERT_TRUE(route.ok()) << route.status();
  EXPECT_EQ(route->destination.ToString(), "10.9.8.7:443");
  EXPECT_EQ(route->workload, "web");
  EXPECT_EQ(route->identity(), svid);
  ASSERT_TRUE(route->expected_server.has_value());
  EXPECT_EQ(route->expected_server->ToString(), "spiffe://example.org/db/*");
}

TEST_F(OutboundRoutingTest, RefusesWhatItCannotRoute) {
  // Nothing enrolled yet: the kernel's cgroup is not in the table.
  auto unknown = routing_.Route(kRedirectedFd);
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(unknown.status().message(), HasSubstr("cgroup 7 is enrolled in the kernel"));
  // A socket the kernel did not redirect.
  auto plain = routing_.Route(3);
  ASSERT_FALSE(plain.ok());
  EXPECT_THAT(plain.status().message(), HasSubstr("no original destination"));
}

// A pod the agent cannot resolve is enrolled with a refusal: its connections
// are refused with the reason, whatever identity the table holds.
TEST_F(OutboundRoutingTest, RefusesAnEnrolledCgroupWithItsRefusal) {
  RoutingTable table;
  table.config = config_;
  table.by_cgroup[7] = {"pod:0b7c1f5e-3a2d-4c8e-9f10-2b3c4d5e6f70", [] { return nullptr; },
                        "kubernetes_not_synced: the agent has not read this node's pods"};
  routing_.Publish(std::make_shared<const RoutingTable>(table));
  auto route = routing_.Route(kRedirectedFd);
  ASSERT_FALSE(route.ok());
  EXPECT_EQ(route.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(route.status().message(), HasSubstr("kubernetes_not_synced: the agent has not read"));
}

TEST_F(OutboundRoutingTest, ServingIdentityFollowsThePublishedTable) {
  SvidProvider identity = routing_.ServingIdentity("web");
  EXPECT_EQ(identity(), nullptr);  // no cgroup of web yet: refused
  auto root = testing::MintRoot("example.org");
  auto svid = std::make_shared<const Svid>(
      testing::MintSvid({.uri_sans = {"spiffe://example.org/web"}}, root));
  RoutingTable table;
  table.config = config_;
  table.serving["web"] = [svid] { return svid; };
  routing_.Publish(std::make_shared<const RoutingTable>(table));
  EXPECT_EQ(identity(), svid);  // the same provider, no new listener
}

}  // namespace
}  // namespace ktrust
