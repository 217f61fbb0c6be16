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

TEST_F(HandshakeBudgetTest, AFullInboundBudgetGivesAnEvictableSlotToTheNewClient) {
  HandshakeBudget budget(options_, counters_);
  auto in = [&](const char* peer, HandshakeSlot* evictable = nullptr) {
    return budget.Acquire(Direction::kInbound, Addr(peer), evictable);
  };
  HandshakeSlot a = std::get<HandshakeSlot>(in("10.0.0.1:1"));
  HandshakeSlot b = std::get<HandshakeSlot>(in("10.0.0.1:2"));
  HandshakeSlot c = std::get<HandshakeSlot>(in("10.0.0.2:1"));
  // Full, and nothing offered: refused.
  auto refused = in("10.0.0.3:1");
  ASSERT_TRUE(std::holds_alternative<HandshakeRefusal>(refused));
  EXPECT_EQ(std::get<HandshakeRefusal>(refused).result, "inbound_handshake_limit");
  // A source at its cap takes nobody's place, even if offered one.
  auto capped = in("10.0.0.1:3", &c);
  ASSERT_TRUE(std::holds_alternative<HandshakeRefusal>(capped));
  EXPECT_EQ(std::get<HandshakeRefusal>(capped).result, "source_handshake_limit");
  EXPECT_TRUE(c.held());
  // Another source takes a's place: a holds nothing, the totals stay put.
  auto taken = in("10.0.0.3:2", &a);
  ASSERT_TRUE(std::holds_alternative<HandshakeSlot>(taken));
  EXPECT_FALSE(a.held());
  EXPECT_EQ(counters_.evicted_handshakes.load(), 1u);
  EXPECT_EQ(counters_.handshaking_inbound.load(), 3u);
  EXPECT_EQ(counters_.handshaking.load(), 3u);
  a.Release();  // already free: no double count
  EXPECT_EQ(counters_.handshaking_inbound.load(), 3u);
  // a's source is under its cap again, so it may take b's place.
  auto again = in("10.0.0.1:4", &b);
  ASSERT_TRUE(std::holds_alternative<HandshakeSlot>(again));
  EXPECT_FALSE(b.held());
  // A slot that holds nothing, or an outbound one, is nothing to take.
  SocketAddress none;
  HandshakeSlot out = std::get<HandshakeSlot>(budget.Acquire(Direction::kOutbound, none));
  EXPECT_TRUE(std::holds_alternative<HandshakeRefusal>(in("10.0.0.4:1", &a)));
  EXPECT_TRUE(std::holds_alternative<HandshakeRefusal>(in("10.0.0.4:2", &out)));
  EXPECT_TRUE(out.held());
  EXPECT_EQ(counters_.evicted_handshakes.load(), 2u);
}

struct Pending {
  int id;
};

TEST(PendingHandshakesTest, SilentOnesGoFirstThenTheLongestPending) {
  PendingHandshakes<Pending> pending;
  Pending p1{1}, p2{2}, p3{3};
  EXPECT_EQ(pending.Evictable().item, nullptr);
  uint64_t t1 = pending.Add(&p1);
  uint64_t t2 = pending.Add(&p2);
  uint64_t t3 = pending.Add(&p3);
  EXPECT_NE(t1, 0u);
  EXPECT_EQ(pending.Evictable().item, &p1);
  EXPECT_TRUE(pending.Evictable().silent);
  // The oldest has started its handshake: the oldest silent one goes instead.
  pending.Spoke(t1);
  EXPECT_EQ(pending.Evictable().item, &p2);
  pending.Spoke(t3);
  pending.Spoke(t3);  // twice is once
  EXPECT_EQ(pending.Evictable().item, &p2);
  // None silent: the longest pending, by accept order, not by first byte.
  pending.Spoke(t2);
  EXPECT_EQ(pending.Evictable().item, &p1);
  EXPECT_FALSE(pending.Evictable().silent);
  pending.Remove(t1);
  EXPECT_EQ(pending.Evictable().item, &p2);
  pending.Remove(t2);
  pending.Remove(t2);  // gone already: no effect
  EXPECT_EQ(pending.size(), 1u);
  EXPECT_EQ(pending.Evictable().item, &p3);
  pending.Remove(t3);
  EXPECT_EQ(pending.Evictable().item, nullptr);
  EXPECT_EQ(pending.size(), 0u);
}

}  // namespace
}  // namespace ktrust
