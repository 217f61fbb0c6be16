#include "ktrust/agent/agent_listeners.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ktrust {
namespace {

TEST(AgentListenersTest, OneOutboundPairThenOnePairPerServingWorkload) {
  NetnsListeners l =
      AgentListeners([](int) { return absl::StatusOr<OutboundRoute>(absl::NotFoundError("x")); },
                     {{"web", nullptr, false, nullptr}, {"legacy", nullptr, true, nullptr}});
  ASSERT_EQ(l.outbound.size(), 2u);
  EXPECT_EQ(l.outbound[0].listen.ToString(), "127.0.0.1:0");
  EXPECT_EQ(l.outbound[1].listen.ToString(), "[::1]:0");
  ASSERT_EQ(l.inbound.size(), 4u);
  EXPECT_EQ(l.inbound[0].workload, "web");
  EXPECT_EQ(l.inbound[0].listen.ToString(), "127.0.0.1:0");
  EXPECT_EQ(l.inbound[1].workload, "web");
  EXPECT_EQ(l.inbound[1].listen.ToString(), "[::1]:0");
  EXPECT_FALSE(l.inbound[1].permissive);
  EXPECT_EQ(l.inbound[2].workload, "legacy");
  EXPECT_TRUE(l.inbound[3].permissive);
  EXPECT_FALSE(l.inbound[3].application.has_value());  // delivered where the client dialled
  EXPECT_EQ(l.netns_fd, -1);
}

TEST(AgentListenersTest, ReadsTheSocketsBackPerListener) {
  ListenerGroupHandle opened;
  opened.id = 3;
  opened.outbound_fds = {10, 11};
  opened.inbound_fds = {20, 21, 30, 31};
  auto fds = AgentListenerFdsOf(opened);
  ASSERT_TRUE(fds.ok()) << fds.status();
  EXPECT_EQ(fds->outbound.v4, 10);
  EXPECT_EQ(fds->outbound.v6, 11);
  ASSERT_EQ(fds->inbound.size(), 2u);
  EXPECT_EQ(fds->inbound[1].v4, 30);
  EXPECT_EQ(fds->inbound[1].v6, 31);
}

TEST(AgentListenersTest, RefusesAGroupOfAnotherShape) {
  ListenerGroupHandle opened;
  opened.outbound_fds = {10};
  EXPECT_FALSE(AgentListenerFdsOf(opened).ok());
  opened.outbound_fds = {10, 11};
  opened.inbound_fds = {20};
  EXPECT_FALSE(AgentListenerFdsOf(opened).ok());
}

}  // namespace
}  // namespace ktrust
