#include "ktrust/agent/pod_addresses.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>

#include <deque>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ktrust {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

// A getifaddrs() list built by hand.
class FakeInterfaces {
 public:
  FakeInterfaces& Add(const char* device, const char* ip, unsigned flags = IFF_UP) {
    Entry& e = entries_.emplace_back();
    e.name = device;
    if (inet_pton(AF_INET, ip, &e.address.v4.sin_addr) == 1) {
      e.address.v4.sin_family = AF_INET;
    } else {
      EXPECT_EQ(inet_pton(AF_INET6, ip, &e.address.v6.sin6_addr), 1) << ip;
      e.address.v6.sin6_family = AF_INET6;
      e.address.v6.sin6_scope_id = 2;  // as getifaddrs reports a link-local one
    }
    e.item.ifa_name = e.name.data();
    e.item.ifa_flags = flags;
    e.item.ifa_addr = &e.address.any;
    return *this;
  }
  // An interface without an address (AF_PACKET entries have one of their own).
  FakeInterfaces& AddBare(const char* device) {
    Entry& e = entries_.emplace_back();
    e.name = device;
    e.item.ifa_name = e.name.data();
    return *this;
  }
  const ifaddrs* list() {
    for (size_t i = 0; i < entries_.size(); ++i) {
      entries_[i].item.ifa_next = i + 1 < entries_.size() ? &entries_[i + 1].item : nullptr;
    }
    return entries_.empty() ? nullptr : &entries_.front().item;
  }

 private:
  struct Entry {
    std::string name;
    union {
      sockaddr any;
      sockaddr_in v4;
      sockaddr_in6 v6;
    } address{};
    ifaddrs item{};
  };
  std::deque<Entry> entries_;  // stable addresses
};

const std::optional<SocketAddress> kOwnSource6 = *SocketAddress::Parse("[fd00:6b74::6]:0");

TEST(PodAddressesTest, EnforcesLinkLocalAddressesOfBothFamilies) {
  FakeInterfaces pod;
  pod.Add("eth0", "10.77.2.2").Add("eth0", "fd77:2::2").Add("eth0", "fe80::a8c1:abff:fe00:1");
  pod.Add("eth1", "169.254.7.9");
  EXPECT_THAT(EnforcedPodAddresses(pod.list(), kOwnSource6),
              ElementsAre("10.77.2.2", "169.254.7.9", "fd77:2::2", "fe80::a8c1:abff:fe00:1"));
}

TEST(PodAddressesTest, LeavesLoopbackAddressesAndTheAgentsOwnSource) {
  FakeInterfaces pod;
  pod.Add("lo", "127.0.0.1", IFF_UP | IFF_LOOPBACK).Add("lo", "::1", IFF_UP | IFF_LOOPBACK);
  pod.Add("lo", "fd00:6b74::6", IFF_UP | IFF_LOOPBACK);  // put there by the agent
  pod.Add("eth0", "127.0.0.5");
  pod.AddBare("eth0");
  EXPECT_THAT(EnforcedPodAddresses(pod.list(), kOwnSource6), IsEmpty());
}

TEST(PodAddressesTest, EnforcesARoutableAddressOnLoopback) {
  // Reachable from outside when routed to the pod, whatever device holds it.
  FakeInterfaces pod;
  pod.Add("lo", "10.96.0.10", IFF_UP | IFF_LOOPBACK);
  EXPECT_THAT(EnforcedPodAddresses(pod.list(), std::nullopt), ElementsAre("10.96.0.10"));
}

TEST(PodAddressesTest, NamesALinkLocalAddressOnceWithoutItsScope) {
  // sk_lookup sees fe80::1, not fe80::1%eth0: two devices with the same
  // link-local address are one rule.
  FakeInterfaces pod;
  pod.Add("eth0", "fe80::1").Add("eth1", "fe80::1");
  EXPECT_THAT(EnforcedPodAddresses(pod.list(), std::nullopt), ElementsAre("fe80::1"));
}

PodClaim Pod(uint64_t netns, std::vector<std::string> addresses, uint32_t slot,
             std::vector<uint16_t> ports) {
  return PodClaim{netns, std::move(addresses), {{slot, EnforcementMode::kEnforce, 7, ports}}};
}

TEST(PodRulesTest, EveryAddressTimesEveryPortGoesToThePodsSlot) {
  PodRules rules = ResolvePodRules({Pod(1, {"10.77.2.2", "fe80::2"}, 3, {8080, 9090})}, 63);
  ASSERT_EQ(rules.rules.size(), 4u);
  for (const char* key : {"10.77.2.2:8080", "10.77.2.2:9090", "[fe80::2]:8080", "[fe80::2]:9090"}) {
    ASSERT_TRUE(rules.rules.count(key)) << key;
    EXPECT_EQ(rules.rules.at(key).slot, 3u) << key;
    EXPECT_EQ(rules.rules.at(key).workload, 7u) << key;
  }
  EXPECT_THAT(rules.shared, IsEmpty());
}

TEST(PodRulesTest, AnAddressTwoPodsCarryRefusesInBoth) {
  // Pod 2 serves another port only: its sk_lookup would still find pod 1's
  // rule for fe80::1:8080 and hand its connections to pod 1's listener.
  PodRules rules = ResolvePodRules(
      {Pod(1, {"10.77.2.2", "fe80::1"}, 3, {8080}),
       PodClaim{2, {"10.77.2.3", "fe80::1"}, {{4, EnforcementMode::kPermissive, 8, {9090}}}}},
      63);
  EXPECT_EQ(rules.rules.at("[fe80::1]:8080").slot, 63u);
  EXPECT_EQ(rules.rules.at("[fe80::1]:8080").mode, EnforcementMode::kEnforce);
  // A permissive workload's rule on a shared address refuses too.
  EXPECT_EQ(rules.rules.at("[fe80::1]:9090").slot, 63u);
  EXPECT_EQ(rules.rules.at("[fe80::1]:9090").mode, EnforcementMode::kEnforce);
  // Their own addresses are untouched.
  EXPECT_EQ(rules.rules.at("10.77.2.2:8080").slot, 3u);
  EXPECT_EQ(rules.rules.at("10.77.2.3:9090").slot, 4u);
  EXPECT_EQ(rules.rules.at("10.77.2.3:9090").mode, EnforcementMode::kPermissive);
  EXPECT_THAT(rules.shared.at(1), ElementsAre("fe80::1"));
  EXPECT_THAT(rules.shared.at(2), ElementsAre("fe80::1"));
}

TEST(PodRulesTest, AnAddressNoLongerSharedGoesBackToItsPod) {
  PodRules rules = ResolvePodRules({Pod(1, {"fe80::1"}, 3, {8080}), Pod(2, {}, 4, {8080})}, 63);
  EXPECT_EQ(rules.rules.at("[fe80::1]:8080").slot, 3u);
  EXPECT_THAT(rules.shared, IsEmpty());
}

TEST(PodRulesTest, AClientOnlyPodClaimsNoRuleButStillSharesItsAddress) {
  PodRules rules =
      ResolvePodRules({Pod(1, {"fe80::1"}, 3, {8080}), PodClaim{2, {"fe80::1"}, {}}}, 63);
  EXPECT_EQ(rules.rules.size(), 1u);
  EXPECT_EQ(rules.rules.at("[fe80::1]:8080").slot, 63u);
}

TEST(AddressEventsTest, AFailedReadIsReportedAsLostNotAsNothing) {
  // An overrun socket fails its read with ENOBUFS once; any failed read
  // must make the caller rescan rather than conclude that nothing changed.
  auto events = SubscribeAddressEvents();
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_EQ(DrainAddressEvents(events->get()), AddressEvents::kNone);
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  close(fds[1]);
  // A descriptor that is not a socket fails with ENOTSOCK: lost, too.
  EXPECT_EQ(DrainAddressEvents(fds[0]), AddressEvents::kLost);
  close(fds[0]);
}

}  // namespace
}  // namespace ktrust
