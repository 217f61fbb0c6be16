// The handover protocol between a running agent and its successor: the
// messages, who may take over, and the exchange over a real unix socket in
// one process (both ends are this test, so the peer check passes).
#include "ktrust/agent/handover.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <thread>

#include "nlohmann/json.hpp"
#include "unit/tls/tls_test_peers.h"

namespace ktrust {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(HandoverMessageTest, RoundTrips) {
  HandoverMessage m;
  m.type = "released";
  m.control_socket = "/run/ktrust/control-42.sock";
  auto back = DecodeHandoverMessage(EncodeHandoverMessage(m));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->type, "released");
  EXPECT_EQ(back->control_socket, "/run/ktrust/control-42.sock");
  HandoverMessage h;
  h.type = "hello";
  h.pid = 1234;
  auto hello = DecodeHandoverMessage(EncodeHandoverMessage(h));
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

// A moved connection's record as a predecessor would send it.
MovedConnection SampleConnection() {
  MovedConnection c;
  c.id = 41;
  c.direction = Direction::kInbound;
  c.workload = "server";
  c.info = {"10.77.0.2:8080",
            "10.77.0.2:8080",
            "10.77.0.1:40312",
            "spiffe://example.org/node-b/server",
            "spiffe://example.org/node-a/client",
            "TLSv1.3",
            "TLS_AES_128_GCM_SHA256",
            "ktls-sw"};
  c.started = absl::FromUnixSeconds(1796000000) + absl::Milliseconds(250);
  c.bytes_to_wire = 1ULL << 33;
  c.bytes_from_wire = 17;
  c.to_wire_done = false;
  c.from_wire_done = true;
  c.fin_only = true;
  c.peer = {"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            absl::FromUnixSeconds(1796000001)};
  c.netns = "net:[4026532281]";
  return c;
}

TEST(HandoverMessageTest, AMoveCarriesEverythingTheConnectionTableShows) {
  HandoverMessage m;
  m.type = "move";
  m.id = 41;
  m.connection = SampleConnection();
  auto back = DecodeHandoverMessage(EncodeHandoverMessage(m));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_TRUE(back->connection.has_value());
  const MovedConnection& c = *back->connection;
  const MovedConnection want = SampleConnection();
  EXPECT_EQ(back->id, 41u);
  EXPECT_EQ(c.id, 41u);
  EXPECT_EQ(c.direction, want.direction);
  EXPECT_EQ(c.workload, want.workload);
  EXPECT_EQ(c.info.app_address, want.info.app_address);
  EXPECT_EQ(c.info.wire_local, want.info.wire_local);
  EXPECT_EQ(c.info.wire_peer, want.info.wire_peer);
  EXPECT_EQ(c.info.local_id, want.info.local_id);
  EXPECT_EQ(c.info.peer_id, want.info.peer_id);
  EXPECT_EQ(c.info.tls_version, want.info.tls_version);
  EXPECT_EQ(c.info.cipher, want.info.cipher);
  EXPECT_EQ(c.info.data_path, want.info.data_path);
  EXPECT_EQ(c.started, want.started) << "the original start time, to the nanosecond";
  EXPECT_EQ(c.bytes_to_wire, want.bytes_to_wire);
  EXPECT_EQ(c.bytes_from_wire, want.bytes_from_wire);
  EXPECT_EQ(c.to_wire_done, want.to_wire_done);
  EXPECT_EQ(c.from_wire_done, want.from_wire_done);
  EXPECT_EQ(c.fin_only, want.fin_only);
  EXPECT_EQ(c.peer.chain_pem, want.peer.chain_pem);
  EXPECT_EQ(c.peer.verified_at, want.peer.verified_at);
  EXPECT_EQ(c.netns, want.netns);
  EXPECT_EQ(HandoverFdCount("move"), 2u);
  EXPECT_EQ(HandoverFdCount("took"), 0u);
}

TEST(HandoverMessageTest, RefusesAMoveThatIsNotWhole) {
  HandoverMessage m;
  m.type = "move";
  m.id = 41;
  m.connection = SampleConnection();
  nlohmann::json good = nlohmann::json::parse(EncodeHandoverMessage(m));
  struct Case {
    std::function<void(nlohmann::json&)> spoil;
    const char* error;
  };
  for (const Case& c : {
           Case{[](auto& j) { j.erase("connection"); }, "needs its connection"},
           Case{[](auto& j) { j.erase("id"); }, "needs the connection's id"},
           Case{[](auto& j) { j["id"] = -1; }, "\"id\" must be a positive integer"},
           Case{[](auto& j) { j["connection"] = "x"; }, "must be an object"},
           Case{[](auto& j) { j["connection"].erase("data_path"); }, "data_path must be a string"},
           Case{[](auto& j) { j["connection"]["direction"] = "sideways"; }, "inbound or outbound"},
           Case{[](auto& j) { j["connection"]["bytes_to_wire"] = -5; }, "non-negative integer"},
           Case{[](auto& j) { j["connection"]["started_ns"] = "soon"; }, "non-negative integer"},
           Case{[](auto& j) { j["connection"]["started_ns"] = 0; }, "started_ns must be set"},
           Case{[](auto& j) { j["connection"]["fin_only"] = 1; }, "true or false"},
           Case{[](auto& j) { j["type"] = "took"; }, "carries no connection"},
       }) {
    nlohmann::json j = good;
    c.spoil(j);
    SCOPED_TRACE(j.dump());
    auto decoded = DecodeHandoverMessage(j.dump());
    ASSERT_FALSE(decoded.ok());
    EXPECT_THAT(decoded.status().message(), HasSubstr(c.error));
  }
  EXPECT_THAT(DecodeHandoverMessage(R"({"v":1,"type":"yours"})").status().message(),
              HasSubstr("needs the connection's id"));
}

// A zero-hop connection's row as a predecessor would pass it.
zerohop::ZeroHopConnection ZeroHopRow(uint64_t cookie, size_t chain_bytes = 40) {
  zerohop::ZeroHopConnection c;
  c.cookie = cookie;
  c.inode = 9000 + cookie;
  c.netns = 4026532281;
  c.owner = 321;
  c.direction = "outbound";
  c.workload = "client";
  c.local_id = "spiffe://example.org/node-a/client";
  c.peer_id = "spiffe://example.org/node-b/server";
  c.local = "10.77.0.1:40312";
  c.peer = "10.77.0.2:8080";
  c.cipher = "TLS_AES_256_GCM_SHA384";
  c.started = absl::FromUnixSeconds(1796000000) + absl::Milliseconds(cookie);
  c.peer_chain_pem = std::string(chain_bytes, 'C');
  c.verified_at = c.started;
  return c;
}

TEST(HandoverMessageTest, ZeroHopRowsRoundTrip) {
  HandoverMessage m;
  m.type = "zero_hop";
  m.id = 3;
  m.zero_hop = {ZeroHopRow(1), ZeroHopRow(2)};
  m.zero_hop[1].direction = "inbound";
  m.zero_hop[1].port = 8080;
  auto back = DecodeHandoverMessage(EncodeHandoverMessage(m));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->type, "zero_hop");
  EXPECT_EQ(back->id, 3u);
  ASSERT_EQ(back->zero_hop.size(), 2u);
  EXPECT_EQ(back->zero_hop[0].cookie, 1u);
  EXPECT_EQ(back->zero_hop[0].inode, 9001u);
  EXPECT_EQ(back->zero_hop[0].netns, 4026532281u);
  EXPECT_EQ(back->zero_hop[0].owner, 321);
  EXPECT_EQ(back->zero_hop[0].peer_id, "spiffe://example.org/node-b/server");
  EXPECT_EQ(back->zero_hop[0].started, ZeroHopRow(1).started);
  EXPECT_EQ(back->zero_hop[0].peer_chain_pem, ZeroHopRow(1).peer_chain_pem);
  EXPECT_EQ(back->zero_hop[1].direction, "inbound");
  EXPECT_EQ(back->zero_hop[1].port, 8080);
  EXPECT_EQ(HandoverFdCount("zero_hop"), 0u) << "the agent holds none of their sockets";
}

TEST(HandoverMessageTest, RefusesZeroHopRowsThatAreNotWhole) {
  const std::string row = nlohmann::json::parse([] {
                            HandoverMessage m;
                            m.type = "zero_hop";
                            m.id = 1;
                            m.zero_hop = {ZeroHopRow(5)};
                            return EncodeHandoverMessage(m);
                          }())["zero_hop"][0]
                              .dump();
  struct Case {
    std::string text;
    std::string error;
  };
  std::string bad_row = row;
  bad_row.replace(bad_row.find("\"outbound\""), 10, "\"upward\"");
  for (const Case& c : std::vector<Case>{
           {R"({"v":1,"type":"zero_hop","id":1})", "needs its connections"},
           {R"({"v":1,"type":"zero_hop","id":1,"zero_hop":[]})", "must be a list"},
           {R"({"v":1,"type":"zero_hop","id":1,"zero_hop":{}})", "must be a list"},
           {R"({"v":1,"type":"zero_hop","id":1,"zero_hop":[7]})", "zero_hop[0]"},
           {R"({"v":1,"type":"zero_hop","id":1,"zero_hop":[)" + row + "," + bad_row + "]}",
            "zero_hop[1]"},
           {R"({"v":1,"type":"zero_hop","zero_hop":[)" + row + "]}", "needs the connection's id"},
           {R"({"v":1,"type":"took","id":1,"zero_hop":[)" + row + "]}",
            "carries no zero-hop connections"}}) {
    SCOPED_TRACE(c.text);
    auto m = DecodeHandoverMessage(c.text);
    ASSERT_FALSE(m.ok());
    EXPECT_THAT(m.status().message(), HasSubstr(c.error));
  }
}

TEST(HandoverMessageTest, ZeroHopBatchesFitAMessageAndKeepEveryRowInOrder) {
  std::vector<zerohop::ZeroHopConnection> rows;
  for (uint64_t cookie = 1; cookie <= 40; ++cookie) rows.push_back(ZeroHopRow(cookie, 10 << 10));
  std::vector<std::vector<zerohop::ZeroHopConnection>> batches = ZeroHopBatches(rows);
  EXPECT_GT(batches.size(), 1u);
  uint64_t next = 1;
  for (const auto& batch : batches) {
    ASSERT_FALSE(batch.empty());
    HandoverMessage m;
    m.type = "zero_hop";
    m.id = 1;
    m.zero_hop = batch;
    EXPECT_LE(EncodeHandoverMessage(m).size(), kMaxHandoverMessageBytes);
    for (const auto& c : batch) EXPECT_EQ(c.cookie, next++);
  }
  EXPECT_EQ(next, 41u);
  EXPECT_TRUE(ZeroHopBatches({}).empty());
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

  // Connected to the handover socket, and saying nothing.
  UniqueFd ConnectSilently() {
    UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    path_.copy(addr.sun_path, sizeof(addr.sun_path) - 1);
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
      return UniqueFd();
    }
    return fd;
  }
  // The next message on `fd`, waiting up to a second.
  static absl::StatusOr<HandoverMessage> ReadMessage(int fd) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 1000) != 1) return absl::DeadlineExceededError("nothing came");
    char buffer[4096];
    ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) return absl::UnavailableError("closed");
    return DecodeHandoverMessage(absl::string_view(buffer, static_cast<size_t>(n)));
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

// A connection that says nothing, as from a root process without the
// agent's capabilities: its accept costs the agent's loop no wait, a real
// successor is admitted meanwhile, and it is refused at its deadline.
TEST_F(HandoverExchangeTest, ASilentConnectionHoldsUpNothing) {
  auto server = HandoverServer::Listen(path_, hooks_);
  ASSERT_TRUE(server.ok()) << server.status();
  UniqueFd silent = ConnectSilently();
  ASSERT_TRUE(silent.valid());
  absl::Time before = absl::Now();
  (*server)->Service(before);
  absl::Duration took = absl::Now() - before;
  EXPECT_LT(took, absl::Seconds(1)) << "the agent's loop waited for the hello";
  EXPECT_EQ((*server)->fds().size(), 2u) << "the listener and the silent connection";

  std::atomic<bool> admitted{false}, done{false};
  std::thread successor([&] {
    auto client = HandoverClient::Connect(path_, absl::Seconds(5));
    ASSERT_TRUE(client.ok()) << client.status();
    admitted = *client != nullptr;
    while (!done) absl::SleepFor(absl::Milliseconds(10));
  });
  ServeUntil(**server, [&] { return !events_.empty(); });
  EXPECT_THAT(events_, ElementsAre("pause")) << "a successor is admitted beside it";

  (*server)->Service(before + HandoverServer::kHelloDeadline + absl::Milliseconds(1));
  auto answer = ReadMessage(silent.get());
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->type, "refused");
  EXPECT_THAT(answer->reason, HasSubstr("no hello within 5s"));
  done = true;
  successor.join();
  EXPECT_TRUE(admitted);
}

TEST_F(HandoverExchangeTest, TooManySilentConnectionsAreRefusedAtOnce) {
  auto server = HandoverServer::Listen(path_, hooks_);
  ASSERT_TRUE(server.ok()) << server.status();
  std::vector<UniqueFd> silent;
  for (size_t i = 0; i <= HandoverServer::kMaxWaitingForHello; ++i) {
    silent.push_back(ConnectSilently());
    ASSERT_TRUE(silent.back().valid());
    (*server)->Service(absl::Now());
  }
  EXPECT_EQ((*server)->fds().size(), 1 + HandoverServer::kMaxWaitingForHello);
  auto answer = ReadMessage(silent.back().get());
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->type, "refused");
  EXPECT_THAT(answer->reason, HasSubstr("waiting for their hello"));
}

// The moving part of a handover, over a real socket: a predecessor handed
// over to a successor (both ends are this test).
class HandoverMoveTest : public HandoverExchangeTest {
 protected:
  void SetUp() override {
    HandoverExchangeTest::SetUp();
    auto server = HandoverServer::Listen(path_, hooks_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    std::thread successor([&] {
      auto client = HandoverClient::Connect(path_, absl::Seconds(5));
      ASSERT_TRUE(client.ok()) << client.status();
      ASSERT_NE(*client, nullptr);
      ASSERT_TRUE((*client)->Started(absl::Seconds(5)).ok());
      ASSERT_TRUE((*client)->Ready().ok());
      client_ = *std::move(client);
    });
    ServeUntil(*server_, [&] { return server_->handed_over(); });
    successor.join();
    ASSERT_TRUE(server_->can_move());
    adoption_.check = [this](const DetachedConnection& c) {
      checked_.push_back(c.meta.id);
      return check_result_;
    };
    adoption_.adopt = [this](DetachedConnection c) {
      adopted_.push_back(std::move(c));
      adopted_count_.fetch_add(1);
    };
  }

  // A connection whose two sockets are loopback TCP connections; the test
  // keeps their other ends.
  DetachedConnection Plain(uint64_t id) {
    testing::TcpPair app = testing::ConnectedTcpPair();
    testing::TcpPair wire = testing::ConnectedTcpPair();
    app_peers_.push_back(std::move(app.client));
    wire_peers_.push_back(std::move(wire.client));
    DetachedConnection c;
    c.meta = SampleConnection();
    c.meta.id = id;
    c.meta.info.data_path = "plaintext";
    c.app = std::move(app.server);
    c.wire = std::move(wire.server);
    return c;
  }

  // The successor answers as its main loop would, while Move waits; once
  // Move has said the connection moved, until the successor adopted it.
  absl::Status MoveServed(const DetachedConnection& c) {
    const size_t adopted_before = adopted_count_.load();
    return WhileTheSuccessorServes([&] {
      absl::Status moved = server_->Move(c, absl::Seconds(5));
      absl::Time deadline = absl::Now() + absl::Seconds(5);
      while (moved.ok() && adopted_count_.load() == adopted_before && absl::Now() < deadline) {
        std::this_thread::yield();  // "yours" is on its way to the successor
      }
      return moved;
    });
  }

  // Runs `call` (the predecessor's side) while the successor answers as its
  // main loop would.
  absl::Status WhileTheSuccessorServes(const std::function<absl::Status()>& call) {
    std::atomic<bool> done{false};
    std::thread successor([&] {
      while (!done) {
        pollfd p{client_->fd(), POLLIN, 0};
        ::poll(&p, 1, 20);
        client_->ServiceMoves(adoption_);
      }
    });
    absl::Status result = call();
    done = true;
    successor.join();
    return result;
  }

  absl::Status PassServed(const std::vector<zerohop::ZeroHopConnection>& batch) {
    return WhileTheSuccessorServes([&] { return server_->PassZeroHop(batch, absl::Seconds(5)); });
  }

  static std::string Through(int from, int to, const std::string& bytes) {
    EXPECT_EQ(::send(from, bytes.data(), bytes.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(bytes.size()));
    std::string got(bytes.size(), '\0');
    size_t n = 0;
    while (n < got.size()) {
      pollfd p{to, POLLIN, 0};
      if (::poll(&p, 1, 5000) != 1) break;
      ssize_t r = ::recv(to, got.data() + n, got.size() - n, 0);
      if (r <= 0) break;
      n += static_cast<size_t>(r);
    }
    got.resize(n);
    return got;
  }

  static int OpenFds() {
    int n = 0;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
      (void)e;
      ++n;
    }
    return n;
  }

  std::unique_ptr<HandoverServer> server_;
  std::unique_ptr<HandoverClient> client_;
  HandoverClient::Adoption adoption_;
  absl::Status check_result_ = absl::OkStatus();
  std::vector<uint64_t> checked_;
  std::vector<DetachedConnection> adopted_;  // the successor thread's while it runs
  std::atomic<size_t> adopted_count_{0};
  std::vector<UniqueFd> app_peers_, wire_peers_;
};

TEST_F(HandoverMoveTest, TheSuccessorGetsBothSocketsAndTheRecord) {
  DetachedConnection c = Plain(7);
  ASSERT_TRUE(MoveServed(c).ok());
  ASSERT_EQ(adopted_.size(), 1u);
  DetachedConnection& got = adopted_[0];
  EXPECT_EQ(got.meta.id, 7u);
  EXPECT_EQ(got.meta.started, SampleConnection().started);
  EXPECT_EQ(got.meta.bytes_to_wire, SampleConnection().bytes_to_wire);
  EXPECT_EQ(got.meta.info.peer_id, SampleConnection().info.peer_id);
  // The same connections, whoever holds them: bytes go through both ways.
  c.app.Reset();  // the predecessor closes its copies once moved
  c.wire.Reset();
  EXPECT_EQ(Through(app_peers_[0].get(), got.app.get(), "from the application"),
            "from the application");
  EXPECT_EQ(Through(got.wire.get(), wire_peers_[0].get(), "to the peer"), "to the peer");
}

TEST_F(HandoverMoveTest, ADeclinedConnectionStaysWithThePredecessor) {
  check_result_ = absl::InvalidArgumentError("not today");
  DetachedConnection c = Plain(8);
  int before = OpenFds();
  absl::Status moved = MoveServed(c);
  EXPECT_THAT(moved.message(), HasSubstr("declined it: not today"));
  EXPECT_TRUE(adopted_.empty());
  EXPECT_EQ(OpenFds(), before) << "the successor closed the copies it was sent";
  EXPECT_TRUE(server_->can_move()) << "a decline is no reason to stop talking";
  // The predecessor's copies still carry the connection.
  EXPECT_EQ(Through(app_peers_[0].get(), c.app.get(), "still here"), "still here");
}

TEST_F(HandoverMoveTest, ASilentSuccessorKeepsNothing) {
  DetachedConnection c = Plain(9);
  // Nobody services the successor's end (it is stopped, say).
  absl::Status moved = server_->Move(c, absl::Milliseconds(200));
  EXPECT_TRUE(absl::IsDeadlineExceeded(moved)) << moved;
  EXPECT_FALSE(server_->can_move()) << "it must never take this one later";
  // Woken up, it finds the predecessor gone and drops what it was sent
  // without taking it.
  client_->ServiceMoves(adoption_);
  EXPECT_TRUE(adopted_.empty());
  EXPECT_TRUE(client_->PredecessorGone());
  EXPECT_EQ(Through(app_peers_[0].get(), c.app.get(), "kept"), "kept");
}

TEST_F(HandoverMoveTest, ASuccessorThatAnswersOutOfTurnIsDropped) {
  DetachedConnection c = Plain(10);
  std::thread garbler([&] {
    pollfd p{client_->fd(), POLLIN, 0};
    ::poll(&p, 1, 5000);
    const char garbage[] = "{\"v\":1,\"type\":\"took\",\"id\":999}";
    ::send(client_->fd(), garbage, sizeof(garbage) - 1, MSG_NOSIGNAL);
  });
  absl::Status moved = server_->Move(c, absl::Seconds(5));
  garbler.join();
  EXPECT_THAT(moved.message(), HasSubstr("\"took\" for 999 to move 10"));
  EXPECT_FALSE(server_->can_move());
}

// The predecessor's zero-hop connections go to the successor's registry;
// the predecessor forgets them only after took, so until then both know
// them and never neither.
TEST_F(HandoverMoveTest, ZeroHopConnectionsPassToTheSuccessor) {
  std::vector<std::vector<zerohop::ZeroHopConnection>> got;
  adoption_.zero_hop = [&](std::vector<zerohop::ZeroHopConnection> rows) {
    got.push_back(std::move(rows));
    return absl::OkStatus();
  };
  absl::Status first = PassServed({ZeroHopRow(1), ZeroHopRow(2)});
  ASSERT_TRUE(first.ok()) << first;
  absl::Status second = PassServed({ZeroHopRow(3)});  // made after the first pass
  ASSERT_TRUE(second.ok()) << second;
  ASSERT_EQ(got.size(), 2u);
  ASSERT_EQ(got[0].size(), 2u);
  EXPECT_EQ(got[0][0].cookie, 1u);
  EXPECT_EQ(got[0][1].cookie, 2u);
  EXPECT_EQ(got[0][1].owner, 321);
  ASSERT_EQ(got[1].size(), 1u);
  EXPECT_EQ(got[1][0].cookie, 3u);
  EXPECT_TRUE(server_->can_move());
  // Proxied connections still move after them.
  DetachedConnection c = Plain(12);
  ASSERT_TRUE(MoveServed(c).ok());
}

TEST_F(HandoverMoveTest, ZeroHopConnectionsTheSuccessorDeclinesStayWithThePredecessor) {
  adoption_.zero_hop = [](std::vector<zerohop::ZeroHopConnection>) {
    return absl::FailedPreconditionError("the zero-hop path has not started");
  };
  absl::Status passed = PassServed({ZeroHopRow(1)});
  EXPECT_THAT(passed.message(), HasSubstr("declined them: the zero-hop path has not started"));
  EXPECT_TRUE(server_->can_move()) << "a decline is no reason to stop talking";
  // A successor that takes none at all declines too.
  adoption_.zero_hop = nullptr;
  EXPECT_FALSE(PassServed({ZeroHopRow(2)}).ok());
}

TEST_F(HandoverMoveTest, ASilentSuccessorLeavesZeroHopConnectionsKnownToThePredecessor) {
  std::vector<uint64_t> taken;
  adoption_.zero_hop = [&](std::vector<zerohop::ZeroHopConnection> rows) {
    for (const auto& c : rows) taken.push_back(c.cookie);
    return absl::OkStatus();
  };
  // Nobody services the successor's end (it is stopped, say).
  absl::Status passed = server_->PassZeroHop({ZeroHopRow(1)}, absl::Milliseconds(200));
  EXPECT_TRUE(absl::IsDeadlineExceeded(passed)) << passed;
  EXPECT_FALSE(server_->can_move()) << "dropped: the predecessor keeps them";
  EXPECT_FALSE(server_->PassZeroHop({ZeroHopRow(2)}, absl::Seconds(1)).ok());
  // Woken up, it may still add what it was sent: known twice is harmless
  // (both reset it on a denial; the second finds it gone), never known to
  // neither.
  client_->ServiceMoves(adoption_);
  EXPECT_TRUE(client_->PredecessorGone());
  EXPECT_THAT(taken, ElementsAre(1));
}

TEST_F(HandoverMoveTest, ASuccessorThatAnswersAZeroHopBatchOutOfTurnIsDropped) {
  std::thread garbler([&] {
    pollfd p{client_->fd(), POLLIN, 0};
    ::poll(&p, 1, 5000);
    const char garbage[] = "{\"v\":1,\"type\":\"took\",\"id\":999}";
    ::send(client_->fd(), garbage, sizeof(garbage) - 1, MSG_NOSIGNAL);
  });
  absl::Status passed = server_->PassZeroHop({ZeroHopRow(1)}, absl::Seconds(5));
  garbler.join();
  EXPECT_THAT(passed.message(), HasSubstr("\"took\" for 999 to zero-hop batch 1"));
  EXPECT_FALSE(server_->can_move());
}

TEST_F(HandoverMoveTest, BadInputFromThePredecessorChangesNothing) {
  int fd = -1;
  // The predecessor's end of the connection, as the test reaches it: the
  // server sends through Move only, so the garbage goes out raw here.
  std::vector<int> fds = server_->fds();
  ASSERT_FALSE(fds.empty());
  fd = fds.back();
  DetachedConnection c = Plain(11);
  int before = OpenFds();
  auto send_with = [&](const std::string& text, std::vector<int> pass) {
    msghdr msg{};
    iovec iov{const_cast<char*>(text.data()), text.size()};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    std::vector<char> control(CMSG_SPACE(sizeof(int) * std::max<size_t>(pass.size(), 1)));
    if (!pass.empty()) {
      msg.msg_control = control.data();
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * pass.size());
      cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
      cmsg->cmsg_level = SOL_SOCKET;
      cmsg->cmsg_type = SCM_RIGHTS;
      cmsg->cmsg_len = CMSG_LEN(sizeof(int) * pass.size());
      std::memcpy(CMSG_DATA(cmsg), pass.data(), sizeof(int) * pass.size());
    }
    ASSERT_EQ(::sendmsg(fd, &msg, MSG_NOSIGNAL), static_cast<ssize_t>(text.size()));
  };
  HandoverMessage move;
  move.type = "move";
  move.id = 11;
  move.connection = SampleConnection();
  const std::string good = EncodeHandoverMessage(move);
  send_with("garbage", {});
  send_with(good.substr(0, good.size() / 2), {c.app.get(), c.wire.get()});  // truncated
  send_with(good, {c.app.get()});                                           // one socket
  send_with(good, {c.app.get(), c.wire.get(), c.app.get()});                // three
  send_with(R"({"v":1,"type":"hello","pid":1})", {c.wire.get()});           // fds on a hello
  send_with(std::string(kMaxHandoverMessageBytes + 10, ' '), {});           // too long
  send_with(R"({"v":1,"type":"yours","id":11})", {});                       // nothing taken
  client_->ServiceMoves(adoption_);
  EXPECT_TRUE(checked_.empty()) << "nothing got as far as a check";
  EXPECT_TRUE(adopted_.empty());
  EXPECT_FALSE(client_->PredecessorGone()) << "bad input is no reason to hang up";
  EXPECT_EQ(OpenFds(), before) << "every descriptor that came with bad input was closed";
  // Each refusal was answered, so that a waiting predecessor keeps its own.
  int declined = 0;
  for (int i = 0; i < 6; ++i) {
    char buffer[512];
    ssize_t n = ::recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n <= 0) break;
    if (absl::string_view(buffer, n).find("\"declined\"") != absl::string_view::npos) ++declined;
  }
  EXPECT_EQ(declined, 6);
  // And a good move after all that still goes through.
  ASSERT_TRUE(MoveServed(c).ok());
  EXPECT_EQ(adopted_.size(), 1u);
}

}  // namespace
}  // namespace ktrust
