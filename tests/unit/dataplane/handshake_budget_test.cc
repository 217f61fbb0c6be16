#include "dataplane/handshake_budget.h"

#include <gtest/gtest.h>

#include <variant>

namespace ktrust {
namespace {

SocketAddress Addr(const char* text) { return *SocketAddress::Parse(text); }

TEST(HandshakeSourceTest, Ipv4IsTheAddressAndIpv6IsItsSlash64) {
  EXPECT_EQ(HandshakeSourceOf(Addr("10.0.0.5:443")).display, "10.0.0.5");
  EXPECT_EQ(HandshakeSourceOf(Addr("10.0.0.5:1")).key, HandshakeSourceOf(Addr("10.0.0.5:2")).key);
  EXPECT_NE(HandshakeSourceOf(Addr("10.0.0.5:1")).key, HandshakeSourceOf(Addr("10.0.0.6:1")).key);
  // One host picks addresses from its /64 at will: they count as one.
  HandshakeSource a = HandshakeSourceOf(Addr("[2001:db8:1:2::1]:1"));
  EXPECT_EQ(a.display, "2001:db8:1:2::/64");
  EXPECT_EQ(a.key, HandshakeSourceOf(Addr("[2001:db8:1:2:ffff::9]:1")).key);
  EXPECT_NE(a.key, HandshakeSourceOf(Addr("[2001:db8:1:3::1]:1")).key);
  // A dual-stack listener sees IPv4 clients as mapped addresses.
  EXPECT_EQ(HandshakeSourceOf(Addr("[::ffff:10.0.0.5]:1")).key,
            HandshakeSourceOf(Addr("10.0.0.5:1")).key);
  EXPECT_EQ(HandshakeSourceOf(Addr("[::ffff:10.0.0.5]:1")).display, "10.0.0.5");
}

class HandshakeBudgetTest : public ::testing::Test {
 protected:
  HandshakeBudgetTest() {
    options_.max_inbound_handshakes = 3;
    options_.max_outbound_handshakes = 2;
    options_.max_handshakes_per_source = 2;
  }
  EngineOptions options_;
  EngineCounters counters_;
};

TEST_F(HandshakeBudgetTest, DirectionsHaveSeparateBudgetsAndSourcesACap) {
  HandshakeBudget budget(options_, counters_);
  auto in = [&](const char* peer) { return budget.Acquire(Direction::kInbound, Addr(peer)); };
  auto a1 = in("10.0.0.1:1");
  auto a2 = in("10.0.0.1:2");
  auto a3 = in("10.0.0.1:3");
  ASSERT_TRUE(std::holds_alternative<HandshakeSlot>(a1));
  ASSERT_TRUE(std::holds_alternative<HandshakeSlot>(a2));
  ASSERT_TRUE(std::holds_alternative<HandshakeRefusal>(a3));
  EXPECT_EQ(std::get<HandshakeRefusal>(a3).result, "source_handshake_limit");
  EXPECT_EQ(std::get<HandshakeRefusal>(a3).reason,
            "too many pending handshakes from 10.0.0.1 (limit 2)");
  auto b1 = in("10.0.0.2:1");
  ASSERT_TRUE(std::holds_alternative<HandshakeSlot>(b1));
  auto c1 = in("10.0.0.3:1");  // the inbound budget (3) is full
  ASSERT_TRUE(std::holds_alternative<HandshakeRefusal>(c1));
  EXPECT_EQ(std::get<HandshakeRefusal>(c1).reason, "too many pending inbound handshakes (limit 3)");
  // Outbound is untouched by a full inbound budget.
  SocketAddress none;
  auto o1 = budget.Acquire(Direction::kOutbound, none);
  auto o2 = budget.Acquire(Direction::kOutbound, none);
  auto o3 = budget.Acquire(Direction::kOutbound, none);
  EXPECT_TRUE(std::holds_alternative<HandshakeSlot>(o1));
  EXPECT_TRUE(std::holds_alternative<HandshakeSlot>(o2));
  ASSERT_TRUE(std::holds_alternative<HandshakeRefusal>(o3));
  EXPECT_EQ(std::get<HandshakeRefusal>(o3).result, "outbound_handshake_limit");
  EXPECT_EQ(counters_.handshaking_inbound.load(), 3u);
  EXPECT_EQ(counters_.handshaking_outbound.load(), 2u);
  EXPECT_EQ(counters_.handshaking.load(), 5u);
  EXPECT_EQ(counters_.refused_source_handshakes.load(), 1u);
  EXPECT_EQ(counters_.refused_inbound_handshakes.load(), 1u);
  EXPECT_EQ(counters_.refused_outbound_handshakes.load(), 1u);

  // A released slot is free again, for its source too.
  std::get<HandshakeSlot>(a1).Release();
  EXPECT_TRUE(std::holds_alternative<HandshakeSlot>(in("10.0.0.1:4")));
}

TEST_F(HandshakeBudgetTest, SlotsAreFreedOnceWhetherReleasedMovedOrDestroyed) {
  HandshakeBudget budget(options_, counters_);
  {
    auto a = budget.Acquire(Direction::kInbound, Addr("10.0.0.1:1"));
    HandshakeSlot moved = std::get<HandshakeSlot>(std::move(a));
    HandshakeSlot again = std::move(moved);
    again.Release();
    again.Release();
    EXPECT_EQ(counters_.handshaking.load(), 0u);
    auto b = budget.Acquire(Direction::kInbound, Addr("10.0.0.1:2"));
    EXPECT_EQ(counters_.handshaking_inbound.load(), 1u);
  }
  EXPECT_EQ(counters_.handshaking.load(), 0u);
  EXPECT_EQ(counters_.handshaking_inbound.load(), 0u);
}

}  // namespace
}  // namespace ktrust
