// The decision logic of bpf/lib/decision.h under BPF_PROG_TEST_RUN, through
// the tc wrapper in decision_test.bpf.c, against the loader's real maps.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <array>
#include <cstring>

#include "bpf/bpf_test_env.h"
#include "bpf/decision_test_case.h"
#include "decision_test.skel.h"
#include "ktrust/bpf/abi_address.h"
#include "ktrust/bpf/bpf_loader.h"

namespace ktrust {
namespace {

using testing::Address;

static_assert(sizeof(ktrust_decision_case) == 64);

constexpr uint64_t kEnforced = 1001;
constexpr uint64_t kPermissive = 1002;
constexpr uint64_t kZeroMode = 1003;  // an entry with mode 0
constexpr uint64_t kNotEnrolled = 1004;
constexpr uint64_t kClassifiedNotEnrolled = 1005;
constexpr uint32_t kIpprotoMptcp = 262;
constexpr uint32_t kAgentMark = 0x6b74;

struct DecisionTestDeleter {
  void operator()(decision_test* skeleton) const { decision_test__destroy(skeleton); }
};

class DecisionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    KTRUST_REQUIRE_ROOT();
    auto bpffs = testing::ScopedBpffs::Create();
    ASSERT_TRUE(bpffs.ok()) << bpffs.status();
    bpffs_ = std::move(*bpffs);
    auto loader = BpfLoader::Create({.pin_dir = bpffs_->pin_dir()});
    ASSERT_TRUE(loader.ok()) << loader.status();
    loader_ = std::move(*loader);

    // The wrapper declares the same maps; it runs against the loader's.
    skeleton_.reset(decision_test__open());
    ASSERT_NE(skeleton_, nullptr);
    bpf_map* map = nullptr;
    bpf_object__for_each_map(map, skeleton_->obj) {
      auto fd = loader_->map_fd(bpf_map__name(map));
      ASSERT_TRUE(fd.ok()) << fd.status();
      ASSERT_EQ(bpf_map__reuse_fd(map, *fd), 0) << bpf_map__name(map);
    }
    ASSERT_EQ(decision_test__load(skeleton_.get()), 0);

    InterceptionMaps& maps = loader_->maps();
    ASSERT_TRUE(maps.Configure({.outbound_port = 15001, .agent_mark = kAgentMark}).ok());
    ASSERT_TRUE(maps.AddMeshDestination(*IpPrefix::Parse("10.0.0.0/8"),
                                        {{80, 80, MeshAction::kRedirect},
                                         {53, 53, MeshAction::kBypass},
                                         {8000, 8999, MeshAction::kRedirect},
                                         {8443, 8443, MeshAction::kBypass}})
                    .ok());
    ASSERT_TRUE(
        maps.AddMeshDestination(*IpPrefix::Parse("10.1.2.0/24"), {{0, 65535, MeshAction::kBypass}})
            .ok());
    ASSERT_TRUE(maps.AddMeshDestination(*IpPrefix::Parse("fd00:77::/32"),
                                        {{1, 65535, MeshAction::kRedirect}})
                    .ok());
    ASSERT_TRUE(maps.EnrollCgroup(kEnforced, EnforcementMode::kEnforce, 7).ok());
    ASSERT_TRUE(maps.EnrollCgroup(kPermissive, EnforcementMode::kPermissive, 8).ok());
    ASSERT_TRUE(maps.MarkCgroupNotEnrolled(kClassifiedNotEnrolled).ok());
    auto cgroups_fd = loader_->map_fd("ktrust_cgroups");
    ASSERT_TRUE(cgroups_fd.ok());
    ktrust_cgroup_value zeroed{.mode = 0, .workload = 9};
    ASSERT_EQ(bpf_map_update_elem(*cgroups_fd, &kZeroMode, &zeroed, BPF_ANY), 0);
  }

  ktrust_decision Decide(uint64_t cgroup_id, absl::string_view destination,
                         uint32_t protocol = IPPROTO_TCP, uint32_t mark = 0) {
    SocketAddress dst = Address(destination);
    std::array<uint8_t, KTRUST_TEST_ETH_HLEN + sizeof(ktrust_decision_case)> packet{};
    ktrust_decision_case test{};
    test.cgroup_id = cgroup_id;
    std::memcpy(test.flow.dst_addr, ToAbiAddress(dst)->data(), 16);
    test.flow.dst_port = dst.port();
    test.flow.protocol = protocol;
    test.flow.mark = mark;
    test.decision.verdict = 0xdead;  // proves the program wrote it
    std::memcpy(packet.data() + KTRUST_TEST_ETH_HLEN, &test, sizeof(test));

    std::array<uint8_t, packet.size()> out{};
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = packet.data(), .data_out = out.data(),
                .data_size_in = static_cast<uint32_t>(packet.size()),
                .data_size_out = static_cast<uint32_t>(out.size()));
    int prog = bpf_program__fd(skeleton_->progs.ktrust_decision_test);
    EXPECT_EQ(bpf_prog_test_run_opts(prog, &opts), 0) << std::strerror(errno);
    EXPECT_EQ(opts.retval, 0u) << "the wrapper could not read or write the case";
    ktrust_decision_case result{};
    std::memcpy(&result, out.data() + KTRUST_TEST_ETH_HLEN, sizeof(result));
    return result.decision;
  }

  std::unique_ptr<testing::ScopedBpffs> bpffs_;
  std::unique_ptr<BpfLoader> loader_;
  std::unique_ptr<decision_test, DecisionTestDeleter> skeleton_;
};

void ExpectDecision(const ktrust_decision& d, uint32_t verdict, uint32_t reason, uint32_t event) {
  EXPECT_EQ(d.verdict, verdict);
  EXPECT_EQ(d.reason, reason);
  EXPECT_EQ(d.event, event);
}

TEST_F(DecisionTest, NotEnrolledIsLeftAloneAndNotCounted) {
  ExpectDecision(Decide(kNotEnrolled, "10.0.0.1:80"), KTRUST_VERDICT_PASS, KTRUST_REASON_MAX, 0);
}

// An entry that only says "classified" is no enrolment, not even enforce.
TEST_F(DecisionTest, ClassifiedNotEnrolledIsLeftAloneAndNotCounted) {
  ExpectDecision(Decide(kClassifiedNotEnrolled, "10.0.0.1:80"), KTRUST_VERDICT_PASS,
                 KTRUST_REASON_MAX, 0);
  ExpectDecision(Decide(kClassifiedNotEnrolled, "10.0.0.1:80", IPPROTO_UDP), KTRUST_VERDICT_PASS,
                 KTRUST_REASON_MAX, 0);
}

TEST_F(DecisionTest, EnrolledTcpToAMeshPortIsRedirected) {
  ktrust_decision d = Decide(kEnforced, "10.200.0.1:80");
  ExpectDecision(d, KTRUST_VERDICT_REDIRECT, KTRUST_REASON_CONNECT_REDIRECTED,
                 KTRUST_EVENT_REDIRECTED);
  EXPECT_EQ(d.workload, 7u);
  EXPECT_EQ(d.mode, static_cast<uint32_t>(KTRUST_MODE_ENFORCE));
  ExpectDecision(Decide(kEnforced, "10.0.0.1:8000"), KTRUST_VERDICT_REDIRECT,
                 KTRUST_REASON_CONNECT_REDIRECTED, KTRUST_EVENT_REDIRECTED);
  ExpectDecision(Decide(kEnforced, "10.0.0.1:8999"), KTRUST_VERDICT_REDIRECT,
                 KTRUST_REASON_CONNECT_REDIRECTED, KTRUST_EVENT_REDIRECTED);
}

TEST_F(DecisionTest, PortsOutsideTheRulesAndAddressesOutsideThePrefixesAreNotMesh) {
  ExpectDecision(Decide(kEnforced, "10.0.0.1:81"), KTRUST_VERDICT_PASS,
                 KTRUST_REASON_CONNECT_NOT_MESH, 0);
  ExpectDecision(Decide(kEnforced, "10.0.0.1:9000"), KTRUST_VERDICT_PASS,
                 KTRUST_REASON_CONNECT_NOT_MESH, 0);
  ExpectDecision(Decide(kEnforced, "192.0.2.1:80"), KTRUST_VERDICT_PASS,
                 KTRUST_REASON_CONNECT_NOT_MESH, 0);
  // An IPv6 address that shares bits with the IPv4 prefix's mapped form.
  ExpectDecision(Decide(kEnforced, "[::a00:1]:80"), KTRUST_VERDICT_PASS,
                 KTRUST_REASON_CONNECT_NOT_MESH, 0);
}

TEST_F(DecisionTest, TheFirstMatchingRuleWins) {
  // 8443 lies in the 8000-8999 redirect range listed before the bypass rule.
  ExpectDecision(Decide(kEnforced, "10.0.0.1:8443"), KTRUST_VERDICT_REDIRECT,
                 KTRUST_REASON_CONNECT_REDIRECTED, KTRUST_EVENT_REDIRECTED);
}

TEST_F(DecisionTest, BypassRulesAreReported) {
  ExpectDecision(Decide(kEnforced, "10.0.0.1:53"), KTRUST_VERDICT_PASS,
                 KTRUST_REASON_CONNECT_BYPASS_RULE, KTRUST_EVENT_BYPASSED);
  ExpectDecision(Decide(kEnforced, "10.0.0.1:53", IPPROTO_UDP), KTRUST_VERDICT_PASS,
                 KTRUST_REASON_UDP_BYPASS_RULE, KTRUST_EVENT_BYPASSED);
}

TEST_F(DecisionTest, TheLongestPrefixDecidesAlone) {
  // 10.1.2.0/24 bypasses every port, although 10.0.0.0/8 redirects port 80.
  ExpectDecision(Decide(kEnforced, "10.1.2.3:80"), KTRUST_VERDICT_PASS,
                 KTRUST_REASON_CONNECT_BYPASS_RULE, KTRUST_EVENT_BYPASSED);
  ExpectDecision(Decide(kEnforced, "10.1.3.3:80"), KTRUST_VERDICT_REDIRECT,
                 KTRUST_REASON_CONNECT_REDIRECTED, KTRUST_EVENT_REDIRECTED);
}

TEST_F(DecisionTest, Ipv6DestinationsMatchIpv6Prefixes) {
  ExpectDecision(Decide(kEnforced, "[fd00:77::5]:443"), KTRUST_VERDICT_REDIRECT,
                 KTRUST_REASON_CONNECT_REDIRECTED, KTRUST_EVENT_REDIRECTED);
  ExpectDecision(Decide(kEnforced, "[fd00:78::5]:443"), KTRUST_VERDICT_PASS,
                 KTRUST_REASON_CONNECT_NOT_MESH, 0);
  // An AF_INET6 socket dialling a mapped IPv4 address matches the IPv4 prefix.
  ExpectDecision(Decide(kEnforced, "[::ffff:10.0.0.1]:80"), KTRUST_VERDICT_REDIRECT,
                 KTRUST_REASON_CONNECT_REDIRECTED, KTRUST_EVENT_REDIRECTED);
}

TEST_F(DecisionTest, NonTcpToTheMeshIsDeniedInEnforceMode) {
  ExpectDecision(Decide(kEnforced, "10.0.0.1:80", IPPROTO_UDP), KTRUST_VERDICT_DENY,
                 KTRUST_REASON_UDP_DENIED, KTRUST_EVENT_DENIED);
  ExpectDecision(Decide(kEnforced, "10.0.0.1:80", kIpprotoMptcp), KTRUST_VERDICT_DENY,
                 KTRUST_REASON_UDP_DENIED, KTRUST_EVENT_DENIED);
  // Outside the mesh, UDP is none of ktrust's business.
  ExpectDecision(Decide(kEnforced, "192.0.2.1:80", IPPROTO_UDP), KTRUST_VERDICT_PASS,
                 KTRUST_REASON_CONNECT_NOT_MESH, 0);
}

TEST_F(DecisionTest, PermissiveModeLetsNonTcpThroughAndSaysSo) {
  ktrust_decision d = Decide(kPermissive, "10.0.0.1:80", IPPROTO_UDP);
  ExpectDecision(d, KTRUST_VERDICT_PASS, KTRUST_REASON_UDP_PERMISSIVE, KTRUST_EVENT_BYPASSED);
  EXPECT_EQ(d.workload, 8u);
  EXPECT_EQ(d.mode, static_cast<uint32_t>(KTRUST_MODE_PERMISSIVE));
  // TCP is still redirected in permissive mode.
  ExpectDecision(Decide(kPermissive, "10.0.0.1:80"), KTRUST_VERDICT_REDIRECT,
                 KTRUST_REASON_CONNECT_REDIRECTED, KTRUST_EVENT_REDIRECTED);
}

TEST_F(DecisionTest, AZeroedEnrolmentFailsClosed) {
  ktrust_decision d = Decide(kZeroMode, "10.0.0.1:80", IPPROTO_UDP);
  ExpectDecision(d, KTRUST_VERDICT_DENY, KTRUST_REASON_UDP_DENIED, KTRUST_EVENT_DENIED);
  EXPECT_EQ(d.mode, static_cast<uint32_t>(KTRUST_MODE_ENFORCE));
}

TEST_F(DecisionTest, TheAgentsOwnSocketsAreNeverRedirected) {
  ExpectDecision(Decide(kEnforced, "10.0.0.1:80", IPPROTO_TCP, kAgentMark), KTRUST_VERDICT_PASS,
                 KTRUST_REASON_CONNECT_AGENT_MARK, 0);
  ExpectDecision(Decide(kEnforced, "10.0.0.1:80", IPPROTO_TCP, kAgentMark + 1),
                 KTRUST_VERDICT_REDIRECT, KTRUST_REASON_CONNECT_REDIRECTED,
                 KTRUST_EVENT_REDIRECTED);
}

TEST_F(DecisionTest, WithoutAConfiguredAgentEnforceRefusesAndPermissivePasses) {
  auto config_fd = loader_->map_fd("ktrust_config");
  ASSERT_TRUE(config_fd.ok());
  uint32_t zero = 0;
  ktrust_config unset{};
  ASSERT_EQ(bpf_map_update_elem(*config_fd, &zero, &unset, BPF_ANY), 0);

  ExpectDecision(Decide(kEnforced, "10.0.0.1:80"), KTRUST_VERDICT_DENY,
                 KTRUST_REASON_CONNECT_NO_AGENT, KTRUST_EVENT_DENIED);
  ExpectDecision(Decide(kPermissive, "10.0.0.1:80"), KTRUST_VERDICT_PASS,
                 KTRUST_REASON_CONNECT_NO_AGENT, KTRUST_EVENT_BYPASSED);
}

TEST_F(DecisionTest, RemovedDestinationsAndEnrolmentsStopMatching) {
  InterceptionMaps& maps = loader_->maps();
  ASSERT_TRUE(maps.RemoveMeshDestination(*IpPrefix::Parse("10.1.2.0/24")).ok());
  ExpectDecision(Decide(kEnforced, "10.1.2.3:80"), KTRUST_VERDICT_REDIRECT,
                 KTRUST_REASON_CONNECT_REDIRECTED, KTRUST_EVENT_REDIRECTED);
  ASSERT_TRUE(maps.UnenrollCgroup(kEnforced).ok());
  ExpectDecision(Decide(kEnforced, "10.1.2.3:80"), KTRUST_VERDICT_PASS, KTRUST_REASON_MAX, 0);
}

TEST_F(DecisionTest, InvalidRulesAreRefusedBeforeTheKernelSeesThem) {
  InterceptionMaps& maps = loader_->maps();
  IpPrefix prefix = *IpPrefix::Parse("10.9.0.0/16");
  EXPECT_FALSE(maps.AddMeshDestination(prefix, {}).ok());
  EXPECT_FALSE(maps.AddMeshDestination(prefix, {{90, 80, MeshAction::kRedirect}}).ok());
  std::vector<PortRule> too_many(KTRUST_MESH_RULES_PER_PREFIX + 1, {1, 2, MeshAction::kBypass});
  EXPECT_FALSE(maps.AddMeshDestination(prefix, too_many).ok());
  EXPECT_FALSE(maps.Configure({.outbound_port = 0}).ok());
  // A target's addresses must be of their family.
  auto v6 = SocketAddress::Parse("[::1]:0");
  EXPECT_FALSE(maps.SetOutboundTarget(1, {.ip4 = *v6, .ip6 = std::nullopt}, 15001, 0).ok());
}

}  // namespace
}  // namespace ktrust
