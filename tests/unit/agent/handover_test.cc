// The handover protocol between a running agent and its successor: the
// messages, who may take over, and the exchange over a real unix socket in
// one process (both ends are this test, so the peer check passes).
#include "ktrust/agent/handover.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <thread>

namespace ktrust {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(HandoverMessageTest, RoundTrips) {
  HandoverMessage m{"released", 0, "", "/run/ktrust/control-42.sock"};
  auto back = DecodeHandoverMessage(EncodeHandoverMessage(m));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->type, "released");
  EXPECT_EQ(back->control_socket, "/run/ktrust/control-42.sock");
  auto hello = DecodeHandoverMessage(EncodeHandoverMessage({"hello", 1234, "", ""}));
  ASSERT_TRUE(hello.ok()) << hello.status();
  EXPECT_EQ(hello->pid, 1234);
}

TEST(HandoverMessageTest, RefusesWhatIsNotTheProtocol) {
  struct Case {
    const char* text;
    const char* error;
  };
  for (const Case& c : {
           Case{"not json", "a JSON object"},
           Case{"[1]", "a JSON object"},
           Case{R"({"type":"hello","pid":1})", "version"},
           Case{R"({"v":2,"type":"hello","pid":1})", "version"},
           Case{R"({"v":1})", "\"type\""},
           Case{R"({"v":1,"type":"take_everything"})", "unknown handover message"},
           Case{R"({"v":1,"type":"hello"})", "needs its sender's pid"},
           Case{R"({"v":1,"type":"hello","pid":-3})", "positive integer"},
           Case{R"({"v":1,"type":"hello","pid":"7"})", "positive integer"},
           Case{R"({"v":1,"type":"refused","reason":5})", "\"reason\" must be a string"},
       }) {
    SCOPED_TRACE(c.text);
    auto m = DecodeHandoverMessage(c.text);
    ASSERT_FALSE(m.ok());
    EXPECT_THAT(m.status().message(), HasSubstr(c.error));
  }
}

TEST(HandoverPeerTest, ReadsEffectiveCapabilities) {
  auto caps = ParseEffectiveCapabilities(
      "Name:\tktrustd\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n");
  ASSERT_TRUE(caps.ok()) << caps.status();
  EXPECT_EQ(*caps, 0x1ffffffffffULL);
  EXPECT_FALSE(ParseEffectiveCapabilities("Name:\tx\n").ok());
  EXPECT_FALSE(ParseEffectiveCapabilities("CapEff:\tzz\n").ok());
}

TEST(HandoverPeerTest, OnlyTheSameUserWithEveryCapabilityMayTakeOver) {
  EXPECT_TRUE(CheckSuccessor(0, 0x3000, 0, 0x3000).ok());
  EXPECT_TRUE(CheckSuccessor(0, 0x3000, 0, 0x7000).ok()) << "more capabilities are fine";
  absl::Status other_user = CheckSuccessor(0, 0x3000, 65534, 0x3000);
  EXPECT_THAT(other_user.message(), HasSubstr("uid 65534"));
  absl::Status fewer = CheckSuccessor(0, 0x3000, 0, 0x1000);
  EXPECT_THAT(fewer.message(), HasSubstr("lacks capabilities"));
}

TEST(HandoverPathTest, BesideTheControlSocket) {
  EXPECT_EQ(HandoverSocketPath("/run/ktrust/control.sock"), "/run/ktrust/handover.sock");
}

class HandoverExchangeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/handover_test.XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/handover.sock";
    hooks_.pause = [this](pid_t pid) {
      EXPECT_EQ(pid, getpid());
      events_.push_back("pause");
    };
    hooks_.release = [this]() -> absl::StatusOr<std::string> {
      events_.push_back("release");
      return std::string("/run/old.sock");
    };
    hooks_.handed_over = [this](pid_t) { events_.push_back("handed_over"); };
    hooks_.resume = [this](const std::string& why, bool released) {
      events_.push_back(released ? "resume released" : "resume");
      resume_reason_ = why;
    };
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Serves until `done` or five seconds.
  void ServeUntil(HandoverServer& server, const std::function<bool()>& done) {
    absl::Time end = absl::Now() + absl::Seconds(5);
    while (!done() && absl::Now() < end) {
      std::vector<pollfd> fds;
      for (int fd : server.fds()) fds.push_back({fd, POLLIN, 0});
      ::poll(fds.data(), fds.size(), 50);
      server.Service(absl::Now());
    }
  }

  std::string dir_;
  std::string path_;
  HandoverServer::Hooks hooks_;
  std::vector<std::string> events_;
  std::string resume_reason_;
};

TEST_F(HandoverExchangeTest, NoAgentMeansStartAsUsual) {
  auto client = HandoverClient::Connect(path_, absl::Seconds(1));
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ(*client, nullptr);
}

TEST_F(HandoverExchangeTest, ASuccessorTakesOverInOrder) {
  auto server = HandoverServer::Listen(path_, hooks_);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_FALSE(HandoverServer::Listen(path_, hooks_).ok()) << "one agent per socket";
  std::atomic<bool> finished{false};
  std::string released_at;
  std::thread successor([&] {
    auto client = HandoverClient::Connect(path_, absl::Seconds(5));
    ASSERT_TRUE(client.ok()) << client.status();
    ASSERT_NE(*client, nullptr);
    EXPECT_EQ((*client)->predecessor(), getpid());
    auto where = (*client)->Started(absl::Seconds(5));
    ASSERT_TRUE(where.ok()) << where.status();
    released_at = *where;
    EXPECT_TRUE((*client)->Ready().ok());
    // Stays connected until the predecessor is gone.
    while (!(*client)->PredecessorGone()) absl::SleepFor(absl::Milliseconds(10));
    finished = true;
  });
  ServeUntil(**server, [&] { return (*server)->handed_over(); });
  EXPECT_THAT(events_, ElementsAre("pause", "release", "handed_over"));
  EXPECT_FALSE(std::filesystem::exists(path_)) << "the successor binds it next";
  server->reset();  // the predecessor exits
  successor.join();
  EXPECT_TRUE(finished);
  EXPECT_EQ(released_at, "/run/old.sock");
}

// The running agent refuses without reading the newcomer's hello, and
// hangs up: the newcomer must still read why (not "connection reset").
TEST_F(HandoverExchangeTest, ASecondSuccessorIsToldWhyItIsRefused) {
  auto server = HandoverServer::Listen(path_, hooks_);
  ASSERT_TRUE(server.ok()) << server.status();
  std::atomic<bool> second_done{false};
  std::thread first([&] {
    auto client = HandoverClient::Connect(path_, absl::Seconds(5));
    ASSERT_TRUE(client.ok()) << client.status();
    while (!second_done) absl::SleepFor(absl::Milliseconds(10));
  });
  ServeUntil(**server, [&] { return !events_.empty(); });
  ASSERT_THAT(events_, ElementsAre("pause"));
  absl::Status refused;
  std::thread second([&] {
    refused = HandoverClient::Connect(path_, absl::Seconds(5)).status();
    second_done = true;
  });
  ServeUntil(**server, [&] { return second_done.load(); });
  second.join();
  first.join();
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied) << refused;
  EXPECT_THAT(refused.message(), HasSubstr("is in progress"));
}

TEST_F(HandoverExchangeTest, ASuccessorThatDiesBeforeStartingLeavesThePredecessorServing) {
  auto server = HandoverServer::Listen(path_, hooks_);
  ASSERT_TRUE(server.ok()) << server.status();
  std::thread successor([&] {
    auto client = HandoverClient::Connect(path_, absl::Seconds(5));
    ASSERT_TRUE(client.ok()) << client.status();
    // Gone: as a successor whose agent failed to start.
  });
  ServeUntil(**server, [&] { return events_.size() >= 2; });
  successor.join();
  EXPECT_THAT(events_, ElementsAre("pause", "resume"));
  EXPECT_THAT(resume_reason_, HasSubstr("closed"));
  EXPECT_FALSE((*server)->handed_over());
}

TEST_F(HandoverExchangeTest, ASuccessorThatDiesAfterStartingGivesTheControlSocketBack) {
  auto server = HandoverServer::Listen(path_, hooks_);
  ASSERT_TRUE(server.ok()) << server.status();
  std::thread successor([&] {
    auto client = HandoverClient::Connect(path_, absl::Seconds(5));
    ASSERT_TRUE(client.ok()) << client.status();
    ASSERT_TRUE((*client)->Started(absl::Seconds(5)).ok());
  });
  ServeUntil(**server, [&] { return events_.size() >= 3; });
  successor.join();
  EXPECT_THAT(events_, ElementsAre("pause", "release", "resume released"));
  // And a next successor is welcome again.
  events_.clear();
  std::thread next([&] {
    auto client = HandoverClient::Connect(path_, absl::Seconds(5));
    ASSERT_TRUE(client.ok()) << client.status();
    EXPECT_NE(*client, nullptr);
  });
  ServeUntil(**server, [&] { return events_.size() >= 2; });
  next.join();
  EXPECT_THAT(events_, ElementsAre("pause", "resume"));
}

}  // namespace
}  // namespace ktrust
