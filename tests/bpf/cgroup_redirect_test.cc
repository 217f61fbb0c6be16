// Outbound interception with real processes in real cgroups: a child in an
// enrolled cgroup connects to a mesh destination on loopback and lands on a
// stand-in for the agent's outbound listener; a child in a sibling cgroup
// that is not enrolled reaches the destination itself; one created under a
// watched cgroup and not classified yet is refused for the mesh. The
// programs are attached to the test's own parent cgroup only.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bpf/bpf_test_env.h"
#include "ktrust/bpf/bpf_loader.h"
#include "ktrust/bpf/event_reader.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71  // Linux 5.14; older C library headers lack it
#endif

namespace ktrust {
namespace {

using testing::AcceptWithin;
using testing::Address;
using testing::CgroupChild;
using testing::HasPendingConnection;
using testing::ListenTcp;
using testing::TestCgroup;
using testing::TestNetns;

constexpr uint32_t kWorkload = 7;

// What a child reports about its connect(): plain data across the pipe.
struct ConnectReport {
  int error = -1;  // errno, 0 on success
  sockaddr_storage peer{};
  socklen_t peer_len = 0;
};

SocketAddress PeerOf(const ConnectReport& report) {
  return SocketAddress::FromSockaddr(reinterpret_cast<const sockaddr*>(&report.peer),
                                     report.peer_len);
}

// Where a child connects from: its network namespace (a path the parent
// holds open, such as TestNetns::path()) and its source address.
struct ConnectFrom {
  std::string netns_path;  // empty: the test's own
  std::optional<SocketAddress> address;
  uint32_t mark = 0;  // SO_MARK; 0: none
};

// Connects, reports, then holds the connection until the parent signals.
CgroupChild::Body ConnectAndHold(SocketAddress to, ConnectFrom from = {}) {
  return [to, from](int in, int out) {
    ConnectReport report;
    if (!from.netns_path.empty()) {
      int netns = open(from.netns_path.c_str(), O_RDONLY | O_CLOEXEC);
      if (netns < 0 || setns(netns, CLONE_NEWNET) != 0) return 3;
    }
    int fd = socket(to.family(), SOCK_STREAM, 0);
    if (from.address && bind(fd, from.address->get(), from.address->size()) != 0) return 4;
    if (from.mark != 0 && setsockopt(fd, SOL_SOCKET, SO_MARK, &from.mark, sizeof(from.mark)) != 0) {
      return 5;
    }
    report.error = connect(fd, to.get(), to.size()) == 0 ? 0 : errno;
    report.peer_len = sizeof(report.peer);
    if (report.error == 0)
      getpeername(fd, reinterpret_cast<sockaddr*>(&report.peer), &report.peer_len);
    if (write(out, &report, sizeof(report)) != sizeof(report)) return 1;
    char go = 0;
    if (read(in, &go, 1) != 1) return 2;
    close(fd);
    return 0;
  };
}

class CgroupRedirectTest : public ::testing::Test {
 protected:
  void SetUp() override {
    KTRUST_REQUIRE_ROOT();
    auto bpffs = testing::ScopedBpffs::Create();
    ASSERT_TRUE(bpffs.ok()) << bpffs.status();
    bpffs_ = std::move(*bpffs);
    auto parent = TestCgroup::Create("redirect");
    ASSERT_TRUE(parent.ok()) << parent.status();
    parent_ = std::move(*parent);
    auto enrolled = TestCgroup::Create("enrolled", parent_.get());
    auto plain = TestCgroup::Create("plain", parent_.get());
    ASSERT_TRUE(enrolled.ok()) << enrolled.status();
    ASSERT_TRUE(plain.ok()) << plain.status();
    enrolled_ = std::move(*enrolled);
    plain_ = std::move(*plain);

    auto loader = BpfLoader::Create({.pin_dir = bpffs_->pin_dir()});
    ASSERT_TRUE(loader.ok()) << loader.status();
    loader_ = std::move(*loader);
    ASSERT_TRUE(loader_->AttachCgroup(parent_->path()).ok());
    // As the agent does: sockops only where workloads are enrolled.
    ASSERT_TRUE(loader_->AttachSockops(enrolled_->path()).ok());

    // The agent's stand-in, and the destination it stands between.
    agent_ = ListenTcp(Address("127.0.0.1:0"));
    server_ = ListenTcp(Address("127.77.0.1:0"));
    ASSERT_TRUE(agent_.valid() && server_.valid());
    server_address_ = *SocketAddress::LocalOf(server_.get());
    ASSERT_TRUE(
        maps().Configure({.outbound_port = SocketAddress::LocalOf(agent_.get())->port()}).ok());
    // The test's namespace is served: its mesh connections go to loopback.
    TargetLoopback(agent_.get(), SocketAddress::LocalOf(agent_.get())->port());
    ASSERT_TRUE(maps()
                    .AddMeshDestination(
                        *IpPrefix::Parse("127.77.0.0/16"),
                        {{server_address_.port(), server_address_.port(), MeshAction::kRedirect},
                         {53, 53, MeshAction::kBypass}})
                    .ok());
    ASSERT_TRUE(maps().EnrollCgroup(enrolled_->id(), EnforcementMode::kEnforce, kWorkload).ok());

    auto reader = InterceptionEventReader::Create(
        loader_->events_fd(), [this](const InterceptionEvent& e) { events_.push_back(e); });
    ASSERT_TRUE(reader.ok()) << reader.status();
    reader_ = std::move(*reader);
  }

  InterceptionMaps& maps() { return loader_->maps(); }

  uint64_t Counter(ktrust_reason reason) {
    auto counters = maps().Counters();
    EXPECT_TRUE(counters.ok()) << counters.status();
    return counters.ok() ? (*counters)[reason] : 0;
  }

  std::unique_ptr<CgroupChild> Start(const TestCgroup& cgroup, const CgroupChild::Body& body) {
    auto child = CgroupChild::Start(cgroup, body);
    EXPECT_TRUE(child.ok()) << child.status();
    return child.ok() ? std::move(*child) : nullptr;
  }

  // Lets a held child close its connection and exit, and checks it went well.
  static void Finish(CgroupChild& child) {
    ASSERT_TRUE(child.Signal().ok());
    auto code = child.Wait();
    ASSERT_TRUE(code.ok()) << code.status();
    EXPECT_EQ(*code, 0);
  }

  // Tracked-connection records disappear when the kernel closes the socket,
  // which for the side that closes first is after the peer's FIN/ACK: no
  // event to wait on, so poll with a bound.
  bool TrackedConnectionsDrainTo(size_t expected) {
    absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (absl::Now() < deadline) {
      auto tracked = maps().TrackedConnections();
      if (tracked.ok() && tracked->by_cookie == expected && tracked->by_tuple == expected) {
        return true;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }

  // Serves the namespace `socket_in_netns` lives in as the agent does the
  // host's: its mesh connections go to 127.0.0.1 / ::1 on `port`, which
  // sk_lookup (where attached) hands to the listeners of `slot` only.
  void TargetLoopback(int socket_in_netns, uint16_t port, uint32_t slot = 0) {
    auto cookie = NetnsCookieOf(socket_in_netns);
    ASSERT_TRUE(cookie.ok()) << cookie.status();
    OutboundTarget loopback{Address("127.0.0.1:0"), Address("[::1]:0")};
    ASSERT_TRUE(maps().SetOutboundTarget(*cookie, loopback, port, slot).ok());
  }

  void ZeroSettings() {
    auto config_fd = loader_->map_fd("ktrust_config");
    ASSERT_TRUE(config_fd.ok());
    uint32_t zero = 0;
    ktrust_config unset{};
    ASSERT_EQ(bpf_map_update_elem(*config_fd, &zero, &unset, BPF_ANY), 0);
  }

  std::unique_ptr<testing::ScopedBpffs> bpffs_;
  std::unique_ptr<TestCgroup> parent_, enrolled_, plain_;
  std::unique_ptr<BpfLoader> loader_;
  UniqueFd agent_, server_;
  SocketAddress server_address_;
  std::unique_ptr<InterceptionEventReader> reader_;
  std::vector<InterceptionEvent> events_;
};

TEST_F(CgroupRedirectTest, AnEnrolledConnectLandsOnTheAgentListener) {
  auto child = Start(*enrolled_, ConnectAndHold(server_address_));
  ASSERT_NE(child, nullptr);
  ConnectReport report;
  ASSERT_TRUE(child->ReadFrom(&report, sizeof(report)).ok());
  ASSERT_EQ(report.error, 0) << std::strerror(report.error);

  UniqueFd accepted = AcceptWithin(agent_.get(), absl::Seconds(5));
  ASSERT_TRUE(accepted.valid()) << "the agent listener got nothing";
  EXPECT_FALSE(HasPendingConnection(server_.get())) << "the connection bypassed the agent";

  // The agent finds where it was going, and whose it is, from its socket.
  auto original = maps().OriginalDestinationOf(accepted.get());
  ASSERT_TRUE(original.ok()) << original.status();
  EXPECT_EQ(original->destination.ToString(), server_address_.ToString());
  EXPECT_EQ(original->cgroup_id, enrolled_->id());
  EXPECT_EQ(original->pid, static_cast<uint32_t>(child->pid()));
  EXPECT_EQ(original->workload, kWorkload);
  EXPECT_EQ(original->mode, EnforcementMode::kEnforce);
  // The application sees the peer it dialled.
  EXPECT_EQ(PeerOf(report).ToString(), server_address_.ToString());

  ASSERT_TRUE(reader_->Drain().ok());
  ASSERT_EQ(events_.size(), 1u);
  EXPECT_EQ(EventTypeName(events_[0].type), "redirected");
  EXPECT_EQ(ReasonName(events_[0].reason), "connect_redirected");
  EXPECT_EQ(events_[0].cgroup_id, enrolled_->id());
  EXPECT_EQ(events_[0].pid, static_cast<uint32_t>(child->pid()));
  EXPECT_EQ(events_[0].workload, kWorkload);
  EXPECT_EQ(events_[0].protocol, static_cast<uint32_t>(IPPROTO_TCP));
  EXPECT_EQ(events_[0].destination.ToString(), server_address_.ToString());
  EXPECT_EQ(Counter(KTRUST_REASON_CONNECT_REDIRECTED), 1u);
  EXPECT_EQ(Counter(KTRUST_REASON_SOCKOPS_REKEYED), 1u);
  EXPECT_GE(Counter(KTRUST_REASON_GETPEERNAME_REWRITTEN), 1u);
  Finish(*child);
}

uint64_t NetnsCookie(int fd) {
  uint64_t cookie = 0;
  socklen_t length = sizeof(cookie);
  EXPECT_EQ(getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &length), 0)
      << std::strerror(errno);
  return cookie;
}

// Two pods, each with the agent's outbound listener at the same loopback
// address and port, each with an application bound to the same source:
// their redirected connections have the same 4-tuple at the same time, and
// each must still find its own original destination.
TEST_F(CgroupRedirectTest, TheSameFourTupleInTwoPodsFindsEachPodsOwnDestination) {
  constexpr uint16_t kOutboundPort = 15001;
  ASSERT_TRUE(maps().Configure({.outbound_port = kOutboundPort}).ok());
  struct Pod {
    std::unique_ptr<TestNetns> netns;
    UniqueFd agent;
    SocketAddress destination;
    std::unique_ptr<CgroupChild> app;
    UniqueFd accepted;
  } pods[2];
  pods[0].destination = server_address_;
  pods[1].destination = Address(absl::StrCat("127.77.0.2:", server_address_.port()));
  for (Pod& pod : pods) {
    auto netns = TestNetns::Create();
    ASSERT_TRUE(netns.ok()) << netns.status();
    pod.netns = std::move(*netns);
    pod.netns->Run([&] { pod.agent = ListenTcp(Address("127.0.0.1:15001")); });
    ASSERT_TRUE(pod.agent.valid());
    TargetLoopback(pod.agent.get(), kOutboundPort);
    pod.app =
        Start(*enrolled_, ConnectAndHold(pod.destination, {.netns_path = pod.netns->path(),
                                                           .address = Address("127.0.0.1:40001")}));
    ASSERT_NE(pod.app, nullptr);
    ConnectReport report;
    ASSERT_TRUE(pod.app->ReadFrom(&report, sizeof(report)).ok());
    ASSERT_EQ(report.error, 0) << std::strerror(report.error);
    EXPECT_EQ(PeerOf(report).ToString(), pod.destination.ToString());
    pod.accepted = AcceptWithin(pod.agent.get(), absl::Seconds(5));
    ASSERT_TRUE(pod.accepted.valid()) << "the pod's agent listener got nothing";
  }
  // Both connections are live, with one 4-tuple: only the namespace differs.
  for (auto of : {SocketAddress::PeerOf, SocketAddress::LocalOf}) {
    EXPECT_EQ(of(pods[0].accepted.get())->ToString(), of(pods[1].accepted.get())->ToString());
  }
  ASSERT_NE(NetnsCookie(pods[0].accepted.get()), NetnsCookie(pods[1].accepted.get()));
  auto tracked = maps().TrackedConnections();
  ASSERT_TRUE(tracked.ok()) << tracked.status();
  EXPECT_EQ(tracked->by_tuple, 2u);

  for (Pod& pod : pods) {
    auto original = maps().OriginalDestinationOf(pod.accepted.get());
    ASSERT_TRUE(original.ok()) << original.status();
    EXPECT_EQ(original->destination.ToString(), pod.destination.ToString());
    EXPECT_EQ(original->pid, static_cast<uint32_t>(pod.app->pid()));
    EXPECT_EQ(original->netns_cookie, NetnsCookie(pod.accepted.get()));
  }
  for (Pod& pod : pods) Finish(*pod.app);
  for (Pod& pod : pods) pod.accepted.Reset();
  EXPECT_TRUE(TrackedConnectionsDrainTo(0)) << "records leaked after close";
}

// The caller refuses the connection on any error: one that has no
// namespace to read (not a socket, here) must not look up anything.
TEST_F(CgroupRedirectTest, AnFdWhoseNamespaceCannotBeReadIsAnError) {
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  UniqueFd read_end(fds[0]), write_end(fds[1]);
  auto original = maps().OriginalDestinationOf(read_end.get());
  ASSERT_FALSE(original.ok());
  EXPECT_THAT(std::string(original.status().message()), ::testing::HasSubstr("SO_NETNS_COOKIE"));
}

TEST_F(CgroupRedirectTest, AnIpv6SocketDiallingAMappedAddressIsRedirectedToo) {
  SocketAddress mapped = Address(absl::StrCat("[::ffff:127.77.0.1]:", server_address_.port()));
  auto child = Start(*enrolled_, ConnectAndHold(mapped));
  ASSERT_NE(child, nullptr);
  ConnectReport report;
  ASSERT_TRUE(child->ReadFrom(&report, sizeof(report)).ok());
  reader_->Drain().IgnoreError();
  ASSERT_EQ(report.error, 0) << std::strerror(report.error) << " DEBUG "
                             << (events_.empty() ? "none" : ReasonName(events_[0].reason));

  UniqueFd accepted = AcceptWithin(agent_.get(), absl::Seconds(5));
  ASSERT_TRUE(accepted.valid()) << "the agent listener got nothing";
  EXPECT_FALSE(HasPendingConnection(server_.get()));
  auto original = maps().OriginalDestinationOf(accepted.get());
  ASSERT_TRUE(original.ok()) << original.status();
  EXPECT_EQ(original->destination.ToString(), server_address_.ToString());  // as IPv4
  EXPECT_EQ(PeerOf(report).ToString(), mapped.ToString());  // in the socket's own family
  Finish(*child);
}

TEST_F(CgroupRedirectTest, ACgroupThatIsNotEnrolledIsUntouched) {
  auto child = Start(*plain_, ConnectAndHold(server_address_));
  ASSERT_NE(child, nullptr);
  ConnectReport report;
  ASSERT_TRUE(child->ReadFrom(&report, sizeof(report)).ok());
  ASSERT_EQ(report.error, 0) << std::strerror(report.error);

  UniqueFd accepted = AcceptWithin(server_.get(), absl::Seconds(5));
  ASSERT_TRUE(accepted.valid()) << "the destination got nothing";
  EXPECT_FALSE(HasPendingConnection(agent_.get()));
  EXPECT_EQ(PeerOf(report).ToString(), server_address_.ToString());
  auto tracked = maps().TrackedConnections();
  ASSERT_TRUE(tracked.ok());
  EXPECT_EQ(tracked->by_cookie, 0u);
  EXPECT_EQ(tracked->by_tuple, 0u);
  // Nothing to count or report about a workload ktrust does not manage.
  auto counters = maps().Counters();
  ASSERT_TRUE(counters.ok());
  for (uint64_t c : *counters) EXPECT_EQ(c, 0u);
  ASSERT_TRUE(reader_->Drain().ok());
  EXPECT_TRUE(events_.empty());
  Finish(*child);
}

TEST_F(CgroupRedirectTest, EnrolledConnectsOutsideTheMeshAreUntouched) {
  UniqueFd other = ListenTcp(Address("127.0.0.1:0"));
  SocketAddress other_address = *SocketAddress::LocalOf(other.get());
  auto child = Start(*enrolled_, ConnectAndHold(other_address));
  ASSERT_NE(child, nullptr);
  ConnectReport report;
  ASSERT_TRUE(child->ReadFrom(&report, sizeof(report)).ok());
  ASSERT_EQ(report.error, 0) << std::strerror(report.error);
  EXPECT_TRUE(AcceptWithin(other.get(), absl::Seconds(5)).valid());
  EXPECT_FALSE(HasPendingConnection(agent_.get()));
  EXPECT_EQ(Counter(KTRUST_REASON_CONNECT_NOT_MESH), 1u);
  Finish(*child);
}

TEST_F(CgroupRedirectTest, WithNoAgentListeningTheConnectIsRefusedAtOnce) {
  // A bound socket that never listens: the agent's port with the agent dead.
  UniqueFd dead(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  SocketAddress any = Address("127.0.0.1:0");
  ASSERT_EQ(bind(dead.get(), any.get(), any.size()), 0);
  ASSERT_TRUE(maps().Configure({.outbound_port = SocketAddress::LocalOf(dead.get())->port()}).ok());

  auto child = Start(*enrolled_, ConnectAndHold(server_address_));
  ASSERT_NE(child, nullptr);
  ConnectReport report;
  ASSERT_TRUE(child->ReadFrom(&report, sizeof(report)).ok());
  EXPECT_EQ(report.error, ECONNREFUSED) << std::strerror(report.error);
  EXPECT_FALSE(HasPendingConnection(server_.get())) << "plaintext reached the destination";
  Finish(*child);
  EXPECT_TRUE(TrackedConnectionsDrainTo(0));
}

// A namespace the agent serves no outbound listener in (a pod it has not
// served yet): its mesh connections are refused, never sent anywhere.
TEST_F(CgroupRedirectTest, AConnectFromANamespaceWithoutAnOutboundTargetIsRefused) {
  auto netns = TestNetns::Create();
  ASSERT_TRUE(netns.ok()) << netns.status();
  auto child = Start(*enrolled_, ConnectAndHold(server_address_, {.netns_path = (*netns)->path(),
                                                                  .address = std::nullopt}));
  ASSERT_NE(child, nullptr);
  ConnectReport report;
  ASSERT_TRUE(child->ReadFrom(&report, sizeof(report)).ok());
  EXPECT_EQ(report.error, EPERM) << std::strerror(report.error);
  Finish(*child);
  ASSERT_TRUE(reader_->Drain().ok());
  ASSERT_EQ(events_.size(), 1u);
  EXPECT_EQ(EventTypeName(events_[0].type), "denied");
  EXPECT_EQ(ReasonName(events_[0].reason), "connect_unserved_netns");
}

// Issue 10, finding 2: a local user who binds the outbound port (here while
// the agent is up, then while it is down) must never receive an enrolled
// workload's redirected connection. sk_lookup gives the namespace's outbound
// target to the agent's listener, bound elsewhere, and refuses without it.
TEST_F(CgroupRedirectTest, AnImpostorOnTheOutboundPortGetsNothingAgentUpOrDown) {
  constexpr uint16_t kOutboundPort = 15001;
  constexpr uint32_t kSlot = 3;
  ASSERT_TRUE(maps().Configure({.outbound_port = kOutboundPort}).ok());
  auto created = TestNetns::Create();
  ASSERT_TRUE(created.ok()) << created.status();
  std::unique_ptr<TestNetns> netns = std::move(*created);
  ASSERT_TRUE(loader_->AttachNetns(netns->path()).ok());
  UniqueFd impostor, agent;
  netns->Run([&] {
    impostor = ListenTcp(Address("127.0.0.1:15001"));
    agent = ListenTcp(Address("127.0.0.1:0"));
  });
  ASSERT_TRUE(impostor.valid() && agent.valid());
  ASSERT_TRUE(maps().SetInboundListener(kSlot, agent.get()).ok());
  TargetLoopback(agent.get(), kOutboundPort, kSlot);

  auto connect_once = [&] {
    auto child = Start(*enrolled_, ConnectAndHold(server_address_, {.netns_path = netns->path(),
                                                                    .address = std::nullopt}));
    ConnectReport report;
    EXPECT_TRUE(child && child->ReadFrom(&report, sizeof(report)).ok());
    if (child) Finish(*child);
    return report.error;
  };
  EXPECT_EQ(connect_once(), 0);
  EXPECT_TRUE(AcceptWithin(agent.get(), absl::Seconds(5)).valid()) << "the agent got nothing";
  EXPECT_FALSE(HasPendingConnection(impostor.get())) << "the impostor got the connection";

  agent.Reset();  // the agent is down
  EXPECT_EQ(connect_once(), ECONNREFUSED);
  EXPECT_FALSE(HasPendingConnection(impostor.get())) << "the impostor got the connection";
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_NO_LISTENER), 1u);
}

TEST_F(CgroupRedirectTest, AnUnconfiguredAgentMeansRefusedInEnforceAndDirectInPermissive) {
  ZeroSettings();
  auto child = Start(*enrolled_, ConnectAndHold(server_address_));
  ASSERT_NE(child, nullptr);
  ConnectReport report;
  ASSERT_TRUE(child->ReadFrom(&report, sizeof(report)).ok());
  EXPECT_EQ(report.error, EPERM) << std::strerror(report.error);
  Finish(*child);
  ASSERT_TRUE(reader_->Drain().ok());
  ASSERT_EQ(events_.size(), 1u);
  EXPECT_EQ(EventTypeName(events_[0].type), "denied");
  EXPECT_EQ(ReasonName(events_[0].reason), "connect_no_agent");

  ASSERT_TRUE(maps().EnrollCgroup(enrolled_->id(), EnforcementMode::kPermissive, kWorkload).ok());
  auto permissive = Start(*enrolled_, ConnectAndHold(server_address_));
  ASSERT_NE(permissive, nullptr);
  ASSERT_TRUE(permissive->ReadFrom(&report, sizeof(report)).ok());
  EXPECT_EQ(report.error, 0) << std::strerror(report.error);
  EXPECT_TRUE(AcceptWithin(server_.get(), absl::Seconds(5)).valid());
  Finish(*permissive);
}

// What a child reports about its datagrams.
struct UdpReport {
  int sendto_mesh = -1;     // errno of sendto() to a mesh port, 0 on success
  int connect_mesh = -1;    // errno of connect() on UDP to it
  int sendto_bypass = -1;   // to the mesh prefix's bypass port
  int sendto_outside = -1;  // outside the mesh
};

CgroupChild::Body SendDatagrams(SocketAddress mesh, SocketAddress bypass, SocketAddress outside) {
  return [=](int, int out) {
    UdpReport report;
    auto send_to = [](int fd, const SocketAddress& to) {
      return sendto(fd, "x", 1, 0, to.get(), to.size()) == 1 ? 0 : errno;
    };
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    report.sendto_mesh = send_to(fd, mesh);
    report.sendto_bypass = send_to(fd, bypass);
    report.sendto_outside = send_to(fd, outside);
    int connected = socket(AF_INET, SOCK_DGRAM, 0);
    report.connect_mesh = connect(connected, mesh.get(), mesh.size()) == 0 ? 0 : errno;
    return write(out, &report, sizeof(report)) == sizeof(report) ? 0 : 1;
  };
}

// Waits for a SendDatagrams child: those to the mesh refused, the others sent.
void ExpectOnlyMeshDatagramsRefused(CgroupChild* child) {
  ASSERT_NE(child, nullptr);
  UdpReport report;
  ASSERT_TRUE(child->ReadFrom(&report, sizeof(report)).ok());
  EXPECT_EQ(report.sendto_mesh, EPERM);
  EXPECT_EQ(report.connect_mesh, EPERM);
  EXPECT_EQ(report.sendto_bypass, 0) << std::strerror(report.sendto_bypass);
  EXPECT_EQ(report.sendto_outside, 0) << std::strerror(report.sendto_outside);
  EXPECT_EQ(*child->Wait(), 0);
}

TEST_F(CgroupRedirectTest, UdpToTheMeshIsDeniedInEnforceModeExceptBypassPorts) {
  SocketAddress bypass = Address("127.77.0.1:53");
  SocketAddress outside = Address("127.0.0.1:9");
  ExpectOnlyMeshDatagramsRefused(
      Start(*enrolled_, SendDatagrams(server_address_, bypass, outside)).get());

  EXPECT_EQ(Counter(KTRUST_REASON_UDP_DENIED), 2u);
  EXPECT_EQ(Counter(KTRUST_REASON_UDP_BYPASS_RULE), 1u);
  ASSERT_TRUE(reader_->Drain().ok());
  int denied = 0;
  for (const InterceptionEvent& e : events_) {
    if (EventTypeName(e.type) != "denied") continue;
    ++denied;
    EXPECT_EQ(ReasonName(e.reason), "udp_denied");
    EXPECT_EQ(e.protocol, static_cast<uint32_t>(IPPROTO_UDP));
    EXPECT_EQ(e.destination.ToString(), server_address_.ToString());
  }
  EXPECT_EQ(denied, 2);

  // Permissive mode lets it through, and counts it.
  ASSERT_TRUE(maps().EnrollCgroup(enrolled_->id(), EnforcementMode::kPermissive, kWorkload).ok());
  auto permissive = Start(*enrolled_, SendDatagrams(server_address_, bypass, outside));
  ASSERT_NE(permissive, nullptr);
  UdpReport report;
  ASSERT_TRUE(permissive->ReadFrom(&report, sizeof(report)).ok());
  EXPECT_EQ(report.sendto_mesh, 0);
  EXPECT_EQ(report.connect_mesh, 0);
  EXPECT_EQ(*permissive->Wait(), 0);
  EXPECT_EQ(Counter(KTRUST_REASON_UDP_PERMISSIVE), 2u);
}

// A cgroup created under the watched one and not classified by the agent
// yet: it may be a workload the agent is about to enrol, so what would be
// redirected or refused for one is refused, until the agent classifies it.
class UnclassifiedCgroupTest : public CgroupRedirectTest {
 protected:
  void SetUp() override {
    CgroupRedirectTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    ASSERT_TRUE(maps().WatchOnlyCgroups({parent_->id()}).ok());
    auto fresh = TestCgroup::Create("fresh", parent_.get());
    ASSERT_TRUE(fresh.ok()) << fresh.status();
    fresh_ = std::move(*fresh);
  }

  // Connects from the fresh cgroup and reports connect()'s errno.
  int ConnectFromFresh(const SocketAddress& to, ConnectFrom from = {}) {
    auto child = Start(*fresh_, ConnectAndHold(to, from));
    EXPECT_NE(child, nullptr);
    if (child == nullptr) return -1;
    ConnectReport report;
    EXPECT_TRUE(child->ReadFrom(&report, sizeof(report)).ok());
    Finish(*child);
    return report.error;
  }

  std::unique_ptr<TestCgroup> fresh_;
};

TEST_F(UnclassifiedCgroupTest, ItsConnectToTheMeshIsRefusedUntilTheAgentClassifiesIt) {
  EXPECT_EQ(ConnectFromFresh(server_address_), EPERM);
  EXPECT_FALSE(HasPendingConnection(server_.get())) << "plaintext reached the destination";
  EXPECT_FALSE(HasPendingConnection(agent_.get()));
  EXPECT_EQ(Counter(KTRUST_REASON_CONNECT_UNCLASSIFIED), 1u);
  ASSERT_TRUE(reader_->Drain().ok());
  ASSERT_EQ(events_.size(), 1u);
  EXPECT_EQ(EventTypeName(events_[0].type), "denied");
  EXPECT_EQ(ReasonName(events_[0].reason), "connect_unclassified");
  EXPECT_EQ(events_[0].cgroup_id, fresh_->id());
  EXPECT_EQ(events_[0].destination.ToString(), server_address_.ToString());

  // Classified as not a workload: left alone from then on.
  ASSERT_TRUE(maps().MarkCgroupNotEnrolled(fresh_->id()).ok());
  EXPECT_EQ(ConnectFromFresh(server_address_), 0);
  EXPECT_TRUE(AcceptWithin(server_.get(), absl::Seconds(5)).valid());
  EXPECT_FALSE(HasPendingConnection(agent_.get()));
  EXPECT_EQ(Counter(KTRUST_REASON_CONNECT_UNCLASSIFIED), 1u);
}

TEST_F(UnclassifiedCgroupTest, ItsConnectOutsideTheMeshPassesUncounted) {
  UniqueFd other = ListenTcp(Address("127.0.0.1:0"));
  EXPECT_EQ(ConnectFromFresh(*SocketAddress::LocalOf(other.get())), 0);
  EXPECT_TRUE(AcceptWithin(other.get(), absl::Seconds(5)).valid());
  auto counters = maps().Counters();
  ASSERT_TRUE(counters.ok());
  for (uint64_t c : *counters) EXPECT_EQ(c, 0u);
}

TEST_F(UnclassifiedCgroupTest, TheAgentsOwnSocketsAreNeverRefused) {
  constexpr uint32_t kAgentMark = 0x6b74;
  ASSERT_TRUE(maps()
                  .Configure({.outbound_port = SocketAddress::LocalOf(agent_.get())->port(),
                              .agent_mark = kAgentMark})
                  .ok());
  ConnectFrom the_agent;
  the_agent.mark = kAgentMark;
  EXPECT_EQ(ConnectFromFresh(server_address_, the_agent), 0);
  EXPECT_TRUE(AcceptWithin(server_.get(), absl::Seconds(5)).valid());
  EXPECT_EQ(Counter(KTRUST_REASON_CONNECT_UNCLASSIFIED), 0u);
}

TEST_F(UnclassifiedCgroupTest, ItsUdpToTheMeshIsRefusedExceptBypassPorts) {
  ExpectOnlyMeshDatagramsRefused(
      Start(*fresh_,
            SendDatagrams(server_address_, Address("127.77.0.1:53"), Address("127.0.0.1:9")))
          .get());
  EXPECT_EQ(Counter(KTRUST_REASON_CONNECT_UNCLASSIFIED), 2u);
}

// Only below a watched cgroup: the watched one itself, or a cgroup with no
// watched ancestor, is not new to anyone.
TEST_F(UnclassifiedCgroupTest, NothingIsRefusedOnceNoAncestorIsWatched) {
  ASSERT_TRUE(maps().WatchOnlyCgroups({}).ok());
  EXPECT_EQ(ConnectFromFresh(server_address_), 0);
  EXPECT_TRUE(AcceptWithin(server_.get(), absl::Seconds(5)).valid());
  EXPECT_EQ(Counter(KTRUST_REASON_CONNECT_UNCLASSIFIED), 0u);
}

// Opens n redirected connections, reports, and closes them all when told.
CgroupChild::Body ConnectMany(SocketAddress to, int n) {
  return [to, n](int in, int out) {
    std::vector<int> fds;
    int failures = 0;
    for (int i = 0; i < n; ++i) {
      int fd = socket(AF_INET, SOCK_STREAM, 0);
      if (connect(fd, to.get(), to.size()) != 0) ++failures;
      fds.push_back(fd);
    }
    if (write(out, &failures, sizeof(failures)) != sizeof(failures)) return 1;
    char go = 0;
    if (read(in, &go, 1) != 1) return 2;
    for (int fd : fds) close(fd);
    return 0;
  };
}

TEST_F(CgroupRedirectTest, SockopsForgetsEveryConnectionWhenItCloses) {
  constexpr int kConnections = 64;
  auto child = Start(*enrolled_, ConnectMany(server_address_, kConnections));
  ASSERT_NE(child, nullptr);
  int failures = -1;
  ASSERT_TRUE(child->ReadFrom(&failures, sizeof(failures)).ok());
  ASSERT_EQ(failures, 0);

  std::vector<UniqueFd> accepted;
  for (int i = 0; i < kConnections; ++i) {
    accepted.push_back(AcceptWithin(agent_.get(), absl::Seconds(5)));
    ASSERT_TRUE(accepted.back().valid()) << "connection " << i;
    ASSERT_TRUE(maps().OriginalDestinationOf(accepted.back().get()).ok()) << "connection " << i;
  }
  auto tracked = maps().TrackedConnections();
  ASSERT_TRUE(tracked.ok()) << tracked.status();
  EXPECT_EQ(tracked->by_cookie, static_cast<size_t>(kConnections));
  EXPECT_EQ(tracked->by_tuple, static_cast<size_t>(kConnections));

  // Half close from the agent's side first, half from the application's.
  for (int i = 0; i < kConnections / 2; ++i) accepted[i].Reset();
  Finish(*child);
  accepted.clear();
  EXPECT_TRUE(TrackedConnectionsDrainTo(0)) << "records leaked after close";
  EXPECT_EQ(Counter(KTRUST_REASON_SOCKOPS_REKEYED), static_cast<uint64_t>(kConnections));
  EXPECT_EQ(Counter(KTRUST_REASON_SOCKOPS_CLOSED), static_cast<uint64_t>(kConnections));
}

TEST_F(CgroupRedirectTest, AnUnenrolledCgroupIsReleased) {
  ASSERT_TRUE(maps().UnenrollCgroup(enrolled_->id()).ok());
  auto child = Start(*enrolled_, ConnectAndHold(server_address_));
  ASSERT_NE(child, nullptr);
  ConnectReport report;
  ASSERT_TRUE(child->ReadFrom(&report, sizeof(report)).ok());
  ASSERT_EQ(report.error, 0);
  EXPECT_TRUE(AcceptWithin(server_.get(), absl::Seconds(5)).valid());
  EXPECT_FALSE(HasPendingConnection(agent_.get()));
  Finish(*child);
}

}  // namespace
}  // namespace ktrust
