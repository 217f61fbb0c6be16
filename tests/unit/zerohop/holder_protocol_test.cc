// The holder's message formats, parsed without a kernel: every malformed
// input is refused with a reason, never a crash.
#include "ktrust/zerohop/holder_protocol.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include <random>

#include "gtest/gtest.h"

namespace ktrust::zerohop {
namespace {

TEST(HolderProtocolTest, ExecRegistrationRoundTrips) {
  ExecRegistration r{1234, "web", true};
  auto back = ParseExecRegistration(EncodeExecRegistration(r));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->pid, 1234);
  EXPECT_EQ(back->workload_hint, "web");
  EXPECT_TRUE(back->wait_killable_recv);
}

TEST(HolderProtocolTest, ExecRegistrationRefusesWhatItDoesNotUnderstand) {
  for (const char* bad : {
           "",
           "{",
           "[]",
           "null",
           R"({"pid":5})",
           R"({"v":2,"pid":5})",
           R"({"v":1})",
           R"({"v":1,"pid":0})",
           R"({"v":1,"pid":-3})",
           R"({"v":1,"pid":4294967296})",
           R"({"v":1,"pid":"5"})",
           R"({"v":1,"pid":5.5})",
           R"({"v":1,"pid":5,"flags":"x"})",
           R"({"v":1,"pid":5,"flags":["bogus"]})",
           R"({"v":1,"pid":5,"workload_hint":7})",
           R"({"v":1,"pid":5,"workload_hint":"a b"})",
           R"({"v":1,"pid":5,"workload_hint":"a\nb"})",
       }) {
    EXPECT_FALSE(ParseExecRegistration(bad).ok()) << bad;
  }
  EXPECT_FALSE(
      ParseExecRegistration(R"({"v":1,"pid":5,"workload_hint":")" + std::string(300, 'a') + "\"}")
          .ok());
}

constexpr char kRuncState[] = R"({"ociVersion":"1.0.2-dev","fds":["seccompFd"],"pid":4242,
  "metadata":"web","state":{"ociVersion":"1.0.2-dev","id":"c1","status":"creating",
  "pid":4242,"bundle":"/b","annotations":{"a":"b"}}})";

TEST(HolderProtocolTest, OciStateAsRuncSendsIt) {
  auto r = ParseOciState(kRuncState, 1);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->pid, 4242);
  EXPECT_EQ(r->container_id, "c1");
  EXPECT_EQ(r->workload_hint, "web");
  EXPECT_EQ(r->seccomp_fd_index, 0u);
  auto second =
      ParseOciState(R"({"fds":["other","seccompFd"],"pid":7,"state":{"id":"x","pid":7}})", 2);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->seccomp_fd_index, 1u);
  EXPECT_EQ(second->workload_hint, "");
}

TEST(HolderProtocolTest, OciStateRefusesInconsistentMessages) {
  EXPECT_FALSE(ParseOciState(kRuncState, 0).ok()) << "fds named but none came";
  EXPECT_FALSE(ParseOciState(kRuncState, 2).ok()) << "an fd nobody named";
  for (const char* bad : {
           R"({"fds":["other"],"pid":7,"state":{"id":"x"}})",
           R"({"fds":["seccompFd"],"pid":7,"state":{"id":"x","pid":8}})",
           R"({"fds":["seccompFd"],"pid":7,"state":{"id":""}})",
           R"({"fds":["seccompFd"],"pid":7,"state":{"id":"a b"}})",
           R"({"fds":["seccompFd"],"pid":7})",
           R"({"fds":["seccompFd"],"pid":7,"state":{"id":"x"},"metadata":"no spaces"})",
           R"({"fds":"seccompFd","pid":7,"state":{"id":"x"}})",
       }) {
    EXPECT_FALSE(ParseOciState(bad, 1).ok()) << bad;
  }
}

TEST(HolderProtocolTest, CgroupV2PathIsTheUnifiedLine) {
  EXPECT_EQ(ParseCgroupV2("12:pids:/a\n0::/system.slice/web.service\n").value_or(""),
            "/system.slice/web.service");
  EXPECT_FALSE(ParseCgroupV2("12:pids:/a\n").ok());
  EXPECT_FALSE(ParseCgroupV2("0::relative\n").ok());
}

TEST(HolderProtocolTest, EntryRoundTripsAndNeedsItsTwoFds) {
  ListenerRegistration e;
  e.id = 9;
  e.pid = 77;
  e.cgroup = "/kubepods/pod1/c1";
  e.source = ListenerSource::kOci;
  e.workload_hint = "web";
  e.container_id = "c1";
  std::string text = EncodeEntry(e);
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  std::vector<UniqueFd> fds;
  fds.emplace_back(p[0]);
  fds.emplace_back(p[1]);
  auto m = DecodeHolderMessage(text, std::move(fds));
  ASSERT_TRUE(m.ok()) << m.status();
  auto& back = std::get<ListenerRegistration>(*m);
  EXPECT_EQ(back.id, 9u);
  EXPECT_EQ(back.source, ListenerSource::kOci);
  EXPECT_EQ(back.cgroup, e.cgroup);
  EXPECT_EQ(back.container_id, "c1");
  EXPECT_FALSE(DecodeHolderMessage(text, {}).ok()) << "an entry without its fds";
  auto removal = DecodeHolderMessage(EncodeRemoval(9), {});
  ASSERT_TRUE(removal.ok());
  EXPECT_EQ(std::get<ListenerRemoval>(*removal).id, 9u);
}

// What the agent tells the holder about the notifications it makes wait.
TEST(HolderProtocolTest, AgentMessagesRoundTrip) {
  auto held = DecodeAgentMessage(
      EncodeAgentMessage(HeldNotification{7, 0xfedcba9876543210u, ECONNABORTED}));
  ASSERT_TRUE(held.ok()) << held.status();
  const auto* h = std::get_if<HeldNotification>(&*held);
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->entry, 7u);
  EXPECT_EQ(h->id, 0xfedcba9876543210u) << "ids are full 64-bit values";
  EXPECT_EQ(h->fallback_errno, ECONNABORTED);
  auto released = DecodeAgentMessage(EncodeAgentMessage(ReleasedNotification{7, 12}));
  ASSERT_TRUE(released.ok()) << released.status();
  const auto* r = std::get_if<ReleasedNotification>(&*released);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->entry, 7u);
  EXPECT_EQ(r->id, 12u);
}

// The holder answers a dead agent's notifications only with a failure the
// workload retries, whatever the message asks for.
TEST(HolderProtocolTest, AgentMessagesRefuseOtherAnswersAndGarbage) {
  for (const char* bad : {
           "",
           "[]",
           R"({"held":{"entry":1,"id":2,"errno":0}})",
           R"({"held":{"entry":1,"id":2,"errno":1}})",
           R"({"held":{"entry":1,"id":2,"errno":-111}})",
           R"({"held":{"entry":1,"id":2}})",
           R"({"held":{"entry":-1,"id":2,"errno":111}})",
           R"({"held":{"entry":1,"id":"2","errno":111}})",
           R"({"held":[1,2,111]})",
           R"({"released":{"entry":1}})",
           R"({"held":{"entry":1,"id":2,"errno":111},"released":{"entry":1,"id":2}})",
           R"({"removed":4})",
       }) {
    auto m = DecodeAgentMessage(bad);
    EXPECT_FALSE(m.ok()) << bad;
    if (!m.ok()) {
      EXPECT_FALSE(m.status().message().empty());
    }
  }
  EXPECT_FALSE(DecodeAgentMessage(std::string(kMaxAgentMessageBytes + 1, ' ')).ok());
}

// Random bytes and random mutations of valid messages: refused or parsed,
// never a crash (the parsers take JSON from any local user).
TEST(HolderProtocolTest, RandomInputNeverCrashes) {
  std::mt19937 rng(42);
  std::string seeds[] = {kRuncState, EncodeExecRegistration({5, "web", true}),
                         EncodeAgentMessage(HeldNotification{3, 99, ECONNREFUSED})};
  for (int i = 0; i < 20000; ++i) {
    std::string s = seeds[i % 3];
    for (int k = 0; k < 1 + static_cast<int>(rng() % 4); ++k) {
      s[rng() % s.size()] = static_cast<char>(rng() % 256);
    }
    (void)ParseExecRegistration(s);
    (void)ParseOciState(s, rng() % 3);
    (void)DecodeHolderMessage(s, {});
    (void)DecodeAgentMessage(s);
    (void)ParseCgroupV2(s);
  }
}

// SCM_RIGHTS over a socketpair: the most fds allowed arrive; a message
// longer than the buffer is refused (MSG_TRUNC), not cut. (More fds than
// allowed: zerohop_holder_test, against the holder.)
TEST(HolderProtocolTest, FdsArriveAndATruncatedMessageIsRefused) {
  int sp[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp), 0);
  UniqueFd a(sp[0]), b(sp[1]);
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  UniqueFd r(p[0]), w(p[1]);
  std::vector<int> many(kMaxFdsPerMessage, r.get());
  ASSERT_TRUE(SendWithFds(a.get(), "x", many).ok());
  auto ok = ReceiveWithFds(b.get(), 16);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->fds.size(), static_cast<size_t>(kMaxFdsPerMessage));
  EXPECT_FALSE(ReceiveWithFds(b.get(), 16, MSG_DONTWAIT).ok()) << "nothing else queued";
  ASSERT_TRUE(SendWithFds(a.get(), std::string(32, 'y'), {}).ok());
  auto truncated = ReceiveWithFds(b.get(), 16);
  EXPECT_FALSE(truncated.ok());
}

}  // namespace
}  // namespace ktrust::zerohop
