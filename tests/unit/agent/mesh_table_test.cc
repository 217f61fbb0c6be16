#include "ktrust/agent/mesh_table.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ktrust {
namespace {

MeshEntry Entry(const char* cidr, std::vector<PortRange> ports = {}) {
  return {*IpPrefix::Parse(cidr), std::move(ports)};
}

std::vector<std::tuple<uint16_t, uint16_t, MeshAction>> Rules(const MeshTableEntry& e) {
  std::vector<std::tuple<uint16_t, uint16_t, MeshAction>> out;
  for (const PortRule& r : e.rules) out.emplace_back(r.first_port, r.last_port, r.action);
  return out;
}

// The kernel consults only the longest match: the /24 must carry the bypass
// of the /16 that contains it, then its own mesh rules and the /8's.
std::optional<MeshAction> ActionOf(const MeshTable& table, const char* address) {
  return MeshActionOf(table, *SocketAddress::Parse(address));
}

// The zero-hop supervisor's reading must be the kernel's: the longest prefix
// decides alone, its first matching rule wins, and an address with no rule
// is not the mesh's.
TEST(MeshTableTest, MeshActionOfReadsTheTableAsTheKernelDoes) {
  Config config;
  config.mesh = {Entry("10.0.0.0/8", {{443, 443}}), Entry("10.1.2.0/24", {{8000, 8999}}),
                 Entry("fd00::/8")};
  config.bypass = {Entry("10.1.0.0/16", {{53, 53}})};
  auto table = BuildMeshTable(config);
  ASSERT_TRUE(table.ok()) << table.status();

  EXPECT_EQ(ActionOf(*table, "10.9.9.9:443"), MeshAction::kRedirect);
  EXPECT_EQ(ActionOf(*table, "10.9.9.9:80"), std::nullopt) << "the /8 covers port 443 only";
  EXPECT_EQ(ActionOf(*table, "10.1.2.3:8080"), MeshAction::kRedirect);
  EXPECT_EQ(ActionOf(*table, "10.1.2.3:443"), MeshAction::kRedirect) << "the /8's rule, repeated";
  EXPECT_EQ(ActionOf(*table, "10.1.2.3:53"), MeshAction::kBypass) << "the /16's bypass comes first";
  EXPECT_EQ(ActionOf(*table, "10.1.9.9:53"), MeshAction::kBypass);
  EXPECT_EQ(ActionOf(*table, "192.168.1.1:443"), std::nullopt);
  EXPECT_EQ(ActionOf(*table, "[fd00::1]:5432"), MeshAction::kRedirect) << "no ports: every port";
  EXPECT_EQ(ActionOf(*table, "[::ffff:10.9.9.9]:443"), MeshAction::kRedirect)
      << "an IPv4-mapped address is its IPv4 address";
  EXPECT_EQ(ActionOf(*table, "[fe80::1]:443"), std::nullopt);
}

TEST(MeshTableTest, LongestPrefixCarriesContainingBypassThenMeshRules) {
  Config config;
  config.mesh = {Entry("10.0.0.0/8", {{443, 443}}), Entry("10.1.2.0/24", {{8000, 8999}})};
  config.bypass = {Entry("10.1.0.0/16", {{53, 53}})};
  auto table = BuildMeshTable(config);
  ASSERT_TRUE(table.ok()) << table.status();
  ASSERT_EQ(table->size(), 3u);

  using ::testing::ElementsAre;
  using T = std::tuple<uint16_t, uint16_t, MeshAction>;
  EXPECT_THAT(Rules(table->at("10.1.2.0/24")),
              ElementsAre(T{53, 53, MeshAction::kBypass}, T{8000, 8999, MeshAction::kRedirect},
                          T{443, 443, MeshAction::kRedirect}));
  // The bypass /16 is an entry of its own, with the /8's mesh rule after it.
  EXPECT_THAT(Rules(table->at("10.1.0.0/16")),
              ElementsAre(T{53, 53, MeshAction::kBypass}, T{443, 443, MeshAction::kRedirect}));
  // Nothing it does not contain.
  EXPECT_THAT(Rules(table->at("10.0.0.0/8")), ElementsAre(T{443, 443, MeshAction::kRedirect}));
}

TEST(MeshTableTest, NoPortsMeansEveryPort) {
  Config config;
  config.mesh = {Entry("192.168.0.0/16")};
  auto table = BuildMeshTable(config);
  ASSERT_TRUE(table.ok()) << table.status();
  ASSERT_EQ(table->at("192.168.0.0/16").rules.size(), 1u);
  EXPECT_EQ(table->at("192.168.0.0/16").rules[0].first_port, 1);
  EXPECT_EQ(table->at("192.168.0.0/16").rules[0].last_port, 65535);
}

TEST(MeshTableTest, RefusesAPrefixWithMoreRulesThanTheKernelHolds) {
  Config config;
  std::vector<PortRange> many;
  for (uint16_t p = 1; p <= KTRUST_MESH_RULES_PER_PREFIX; ++p) many.push_back({p, p});
  config.mesh = {Entry("10.0.0.0/8", many)};
  ASSERT_TRUE(BuildMeshTable(config).ok());  // exactly the limit fits
  // One more, inherited from a containing prefix, does not.
  config.bypass = {Entry("0.0.0.0/0", {{53, 53}})};
  auto table = BuildMeshTable(config);
  ASSERT_FALSE(table.ok());
  EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(table.status().message(),
              ::testing::HasSubstr("mesh prefix 10.0.0.0/8 ends up with"));
}

}  // namespace
}  // namespace ktrust
