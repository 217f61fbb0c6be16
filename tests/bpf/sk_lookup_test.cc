// bpf/sk_lookup.bpf.c: first under BPF_PROG_TEST_RUN with crafted lookups
// (as the kernel's prog_tests/sk_lookup.c does), then attached to a network
// namespace with real connections.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <gtest/gtest.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bpf/bpf_test_env.h"
#include "ktrust/bpf/abi_address.h"
#include "ktrust/bpf/bpf_loader.h"
#include "ktrust/bpf/cgroup2.h"
#include "ktrust/bpf/event_reader.h"

namespace ktrust {
namespace {

using testing::AcceptWithin;
using testing::Address;
using testing::HasPendingConnection;
using testing::ListenTcp;
using testing::SocketCookie;

struct LookupResult {
  uint32_t verdict = 0xdead;  // SK_PASS 1, SK_DROP 0
  uint64_t selected_cookie = 0;
};

class SkLookupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    KTRUST_REQUIRE_ROOT();
    auto bpffs = testing::ScopedBpffs::Create();
    ASSERT_TRUE(bpffs.ok()) << bpffs.status();
    bpffs_ = std::move(*bpffs);
    auto loader = BpfLoader::Create({.pin_dir = bpffs_->pin_dir()});
    ASSERT_TRUE(loader.ok()) << loader.status();
    loader_ = std::move(*loader);
    ASSERT_TRUE(maps().Configure({.outbound_port = 15001}).ok());  // upstream 127.0.0.6
  }

  InterceptionMaps& maps() { return loader_->maps(); }

  // A TCP SYN from remote to local, as the kernel would look it up, run
  // through the host's program or a pod's.
  LookupResult Lookup(absl::string_view local, absl::string_view remote,
                      uint32_t protocol = IPPROTO_TCP, BpfProgram program = BpfProgram::kSkLookup) {
    SocketAddress l = Address(local), r = Address(remote);
    bpf_sk_lookup ctx{};
    ctx.family = static_cast<uint32_t>(l.family());
    ctx.protocol = protocol;
    if (l.family() == AF_INET) {
      ctx.local_ip4 = reinterpret_cast<const sockaddr_in*>(l.get())->sin_addr.s_addr;
      ctx.remote_ip4 = reinterpret_cast<const sockaddr_in*>(r.get())->sin_addr.s_addr;
    } else {
      std::memcpy(ctx.local_ip6, &reinterpret_cast<const sockaddr_in6*>(l.get())->sin6_addr, 16);
      std::memcpy(ctx.remote_ip6, &reinterpret_cast<const sockaddr_in6*>(r.get())->sin6_addr, 16);
    }
    ctx.local_port = l.port();          // host order
    ctx.remote_port = htons(r.port());  // network order
    LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = &ctx, .ctx_out = &ctx,
                .ctx_size_in = sizeof(ctx), .ctx_size_out = sizeof(ctx));
    int err = bpf_prog_test_run_opts(loader_->program_fd(program), &opts);
    EXPECT_EQ(err, 0) << std::strerror(errno);
    return {.verdict = opts.retval, .selected_cookie = ctx.cookie};
  }

  LookupResult LookupInPod(absl::string_view local, absl::string_view remote) {
    return Lookup(local, remote, IPPROTO_TCP, BpfProgram::kSkLookupPod);
  }

  uint64_t Counter(ktrust_reason reason) {
    auto counters = maps().Counters();
    EXPECT_TRUE(counters.ok()) << counters.status();
    return counters.ok() ? (*counters)[reason] : 0;
  }

  // Exactly one event was reported: a refused connection attempt, as an
  // operator reads it. The ring keeps events until someone reads them.
  void ExpectOneDenial(absl::string_view reason, absl::string_view destination,
                       absl::string_view source, uint32_t workload) {
    std::vector<InterceptionEvent> events;
    auto reader = InterceptionEventReader::Create(
        loader_->events_fd(), [&](const InterceptionEvent& e) { events.push_back(e); });
    ASSERT_TRUE(reader.ok()) << reader.status();
    ASSERT_TRUE((*reader)->Drain().ok());
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(EventTypeName(events[0].type), "denied");
    EXPECT_EQ(ReasonName(events[0].reason), reason);
    EXPECT_EQ(events[0].destination.ToString(), destination);
    EXPECT_EQ(events[0].source.ToString(), source);
    EXPECT_EQ(events[0].workload, workload);
  }

  std::unique_ptr<testing::ScopedBpffs> bpffs_;
  std::unique_ptr<BpfLoader> loader_;
};

TEST_F(SkLookupTest, AnEnforcedPortGoesToTheAgentListener) {
  UniqueFd agent = ListenTcp(Address("127.0.0.1:0"));
  ASSERT_TRUE(maps().SetInboundListener(0, agent.get()).ok());
  ASSERT_TRUE(
      maps().AddInboundPort(Address("127.0.0.1:8080"), EnforcementMode::kEnforce, 0, 3).ok());

  LookupResult r = Lookup("127.0.0.1:8080", "127.0.0.9:40000");
  EXPECT_EQ(r.verdict, static_cast<uint32_t>(SK_PASS));
  EXPECT_EQ(r.selected_cookie, SocketCookie(agent.get()));
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_STEERED), 1u);
}

TEST_F(SkLookupTest, OtherPortsAddressesAndProtocolsAreLeftToTheKernel) {
  UniqueFd agent = ListenTcp(Address("127.0.0.1:0"));
  ASSERT_TRUE(maps().SetInboundListener(0, agent.get()).ok());
  ASSERT_TRUE(
      maps().AddInboundPort(Address("127.0.0.1:8080"), EnforcementMode::kEnforce, 0, 3).ok());

  for (LookupResult r :
       {Lookup("127.0.0.1:8081", "127.0.0.9:40000"), Lookup("127.0.0.2:8080", "127.0.0.9:40000"),
        Lookup("127.0.0.1:8081", "127.0.0.9:40000", IPPROTO_UDP)}) {
    EXPECT_EQ(r.verdict, static_cast<uint32_t>(SK_PASS));
    EXPECT_EQ(r.selected_cookie, 0u);
  }
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_STEERED), 0u);
}

TEST_F(SkLookupTest, AWildcardEntryCoversEveryAddressOfItsPort) {
  UniqueFd agent = ListenTcp(Address("127.0.0.1:0"));
  ASSERT_TRUE(maps().SetInboundListener(0, agent.get()).ok());
  ASSERT_TRUE(maps().AddInboundPort(Address("0.0.0.0:7070"), EnforcementMode::kEnforce, 0, 3).ok());
  EXPECT_EQ(Lookup("127.0.0.5:7070", "127.0.0.9:40000").selected_cookie, SocketCookie(agent.get()));
  EXPECT_EQ(Lookup("10.1.2.3:7070", "10.9.9.9:40000").selected_cookie, SocketCookie(agent.get()));
}

// Issue 10, finding 1: a source address is no proof of being the agent.
// Anyone can bind 127.0.0.6 (or the IPv6 upstream source): from it, an
// enforced port is steered like from anywhere else.
TEST_F(SkLookupTest, AConnectionFromTheUpstreamSourceAddressIsSteeredLikeAnyOther) {
  UniqueFd agent = ListenTcp(Address("127.0.0.1:0"));
  ASSERT_TRUE(maps().SetInboundListener(0, agent.get()).ok());
  ASSERT_TRUE(
      maps().AddInboundPort(Address("127.0.0.1:8080"), EnforcementMode::kEnforce, 0, 3).ok());
  for (BpfProgram program : {BpfProgram::kSkLookup, BpfProgram::kSkLookupPod}) {
    LookupResult r = Lookup("127.0.0.1:8080", "127.0.0.6:40000", IPPROTO_TCP, program);
    EXPECT_EQ(r.verdict, static_cast<uint32_t>(SK_PASS));
    EXPECT_EQ(r.selected_cookie, SocketCookie(agent.get()));
  }
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_UPSTREAM), 0u);
}

// What the agent's sockops records of its own connections passes, on the
// host and in a pod alike; the same source with another port does not.
TEST_F(SkLookupTest, TheAgentsRecordedConnectionsReachTheApplication) {
  UniqueFd agent = ListenTcp(Address("127.0.0.1:0"));
  ASSERT_TRUE(maps().SetInboundListener(0, agent.get()).ok());
  ASSERT_TRUE(
      maps().AddInboundPort(Address("127.0.0.1:8080"), EnforcementMode::kEnforce, 0, 3).ok());
  auto connects = loader_->map_fd("ktrust_agent_connects");
  ASSERT_TRUE(connects.ok());
  ktrust_tuple key{};
  std::memcpy(key.src_addr, ToAbiAddress(Address("127.0.0.6:0"))->data(), 16);
  std::memcpy(key.dst_addr, ToAbiAddress(Address("127.0.0.1:0"))->data(), 16);
  key.src_port = 40000;
  key.dst_port = 8080;
  uint32_t one = 1;
  ASSERT_EQ(bpf_map_update_elem(*connects, &key, &one, BPF_ANY), 0);

  for (BpfProgram program : {BpfProgram::kSkLookup, BpfProgram::kSkLookupPod}) {
    LookupResult r = Lookup("127.0.0.1:8080", "127.0.0.6:40000", IPPROTO_TCP, program);
    EXPECT_EQ(r.verdict, static_cast<uint32_t>(SK_PASS));
    EXPECT_EQ(r.selected_cookie, 0u);
  }
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_UPSTREAM), 2u);
  EXPECT_EQ(Lookup("127.0.0.1:8080", "127.0.0.6:40001").selected_cookie, SocketCookie(agent.get()));
}

// Issue 10, finding 10: datagrams carry no identity, so enforce mode drops
// UDP to an enforced port; permissive lets it through.
TEST_F(SkLookupTest, UdpToAnEnforcedPortIsDroppedInEnforceModeAndSaysSo) {
  ASSERT_TRUE(
      maps().AddInboundPort(Address("127.0.0.1:8080"), EnforcementMode::kEnforce, 0, 3).ok());
  ASSERT_TRUE(
      maps().AddInboundPort(Address("127.0.0.1:8081"), EnforcementMode::kPermissive, 0, 3).ok());
  EXPECT_EQ(Lookup("127.0.0.1:8080", "127.0.0.9:40000", IPPROTO_UDP).verdict,
            static_cast<uint32_t>(SK_DROP));
  EXPECT_EQ(Lookup("127.0.0.1:8081", "127.0.0.9:40000", IPPROTO_UDP).verdict,
            static_cast<uint32_t>(SK_PASS));
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_UDP_REFUSED), 1u);
  ExpectOneDenial("sk_lookup_udp_refused", "127.0.0.1:8080", "127.0.0.9:40000", 3);
}

// Issue 10, finding 2: a namespace's outbound target goes to the agent's
// outbound listener and nowhere else; without it, refused whatever the mode.
TEST_F(SkLookupTest, AnOutboundTargetReachesOnlyTheAgentsOutboundListener) {
  UniqueFd outbound = ListenTcp(Address("127.0.0.1:0"));
  ASSERT_TRUE(maps().SetInboundListener(5, outbound.get()).ok());
  OutboundTarget loopback{Address("127.0.0.1:0"), Address("[::1]:0")};
  ASSERT_TRUE(maps().SetOutboundTarget(42, loopback, 15001, 5).ok());

  EXPECT_EQ(Lookup("127.0.0.1:15001", "127.0.0.1:40000").selected_cookie,
            SocketCookie(outbound.get()));
  // UDP to it is left alone: the rule is about redirected TCP.
  EXPECT_EQ(Lookup("127.0.0.1:15001", "127.0.0.1:40000", IPPROTO_UDP).verdict,
            static_cast<uint32_t>(SK_PASS));
  // A pod's loopback is its own: the host's target is not consulted there.
  LookupResult in_pod = LookupInPod("127.0.0.1:15001", "127.0.0.1:40000");
  EXPECT_EQ(in_pod.verdict, static_cast<uint32_t>(SK_PASS));
  EXPECT_EQ(in_pod.selected_cookie, 0u);

  outbound.Reset();  // the agent is down
  EXPECT_EQ(Lookup("127.0.0.1:15001", "127.0.0.1:40000").verdict, static_cast<uint32_t>(SK_DROP));
  EXPECT_EQ(Lookup("[::1]:15001", "[::1]:40000").verdict, static_cast<uint32_t>(SK_DROP));

  ASSERT_TRUE(maps().RemoveOutboundTarget(42, loopback, 15001).ok());
  EXPECT_EQ(Lookup("127.0.0.1:15001", "127.0.0.1:40000").verdict, static_cast<uint32_t>(SK_PASS));
}

TEST_F(SkLookupTest, WithTheAgentGoneAnEnforcedPortRefusesAndSaysSo) {
  UniqueFd agent = ListenTcp(Address("127.0.0.1:0"));
  ASSERT_TRUE(maps().SetInboundListener(0, agent.get()).ok());
  ASSERT_TRUE(
      maps().AddInboundPort(Address("127.0.0.1:8080"), EnforcementMode::kEnforce, 0, 3).ok());
  agent.Reset();  // closing the listener takes it out of the sockmap

  LookupResult r = Lookup("127.0.0.1:8080", "127.0.0.9:40000");
  EXPECT_EQ(r.verdict, static_cast<uint32_t>(SK_DROP));
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_NO_LISTENER), 1u);
  ExpectOneDenial("sk_lookup_no_listener", "127.0.0.1:8080", "127.0.0.9:40000", 3);
}

TEST_F(SkLookupTest, APermissivePortWithoutItsAgentIsDelivered) {
  ASSERT_TRUE(
      maps().AddInboundPort(Address("127.0.0.1:8081"), EnforcementMode::kPermissive, 5, 3).ok());
  LookupResult r = Lookup("127.0.0.1:8081", "127.0.0.9:40000");
  EXPECT_EQ(r.verdict, static_cast<uint32_t>(SK_PASS));
  EXPECT_EQ(r.selected_cookie, 0u);
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_PERMISSIVE), 1u);
}

TEST_F(SkLookupTest, EachFamilyGoesToItsOwnListenerOfTheSlot) {
  UniqueFd agent4 = ListenTcp(Address("127.0.0.1:0"));
  UniqueFd agent6 = ListenTcp(Address("[::1]:0"));
  ASSERT_TRUE(maps().SetInboundListener(0, agent4.get()).ok());
  ASSERT_TRUE(maps().SetInboundListener(0, agent6.get()).ok());
  ASSERT_TRUE(maps().AddInboundPort(Address("0.0.0.0:8080"), EnforcementMode::kEnforce, 0, 3).ok());

  LookupResult v4 = Lookup("10.0.0.1:8080", "10.0.0.2:40000");
  EXPECT_EQ(v4.selected_cookie, SocketCookie(agent4.get()));
  LookupResult v6 = Lookup("[fd00::1]:8080", "[fd00::2]:40000");
  EXPECT_EQ(v6.verdict, static_cast<uint32_t>(SK_PASS));
  EXPECT_EQ(v6.selected_cookie, SocketCookie(agent6.get()));
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_STEERED), 2u);
}

TEST_F(SkLookupTest, AnIpv6ConnectionWithOnlyAnIpv4ListenerIsRefusedNotBypassed) {
  UniqueFd agent4 = ListenTcp(Address("127.0.0.1:0"));
  ASSERT_TRUE(maps().SetInboundListener(0, agent4.get()).ok());
  ASSERT_TRUE(
      maps().AddInboundPort(Address("[fd00::1]:8080"), EnforcementMode::kEnforce, 0, 3).ok());
  LookupResult r = Lookup("[fd00::1]:8080", "[fd00::2]:40000");
  EXPECT_EQ(r.verdict, static_cast<uint32_t>(SK_DROP));
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_NO_LISTENER), 1u);
}

TEST_F(SkLookupTest, ClearingASlotEmptiesBothFamiliesAndAnEmptySlotIsFine) {
  UniqueFd agent4 = ListenTcp(Address("127.0.0.1:0"));
  UniqueFd agent6 = ListenTcp(Address("[::1]:0"));
  ASSERT_TRUE(maps().SetInboundListener(2, agent4.get()).ok());
  ASSERT_TRUE(maps().SetInboundListener(2, agent6.get()).ok());
  ASSERT_TRUE(maps().AddInboundPort(Address("0.0.0.0:8080"), EnforcementMode::kEnforce, 2, 3).ok());
  ASSERT_EQ(Lookup("10.0.0.1:8080", "10.0.0.2:40000").selected_cookie, SocketCookie(agent4.get()));

  absl::Status cleared = maps().ClearInboundListener(2);
  ASSERT_TRUE(cleared.ok()) << cleared;
  EXPECT_EQ(Lookup("10.0.0.1:8080", "10.0.0.2:40000").verdict, static_cast<uint32_t>(SK_DROP));
  EXPECT_EQ(Lookup("[fd00::1]:8080", "[fd00::2]:40000").verdict, static_cast<uint32_t>(SK_DROP));
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_NO_LISTENER), 2u);

  cleared = maps().ClearInboundListener(2);
  EXPECT_TRUE(cleared.ok()) << cleared;
  EXPECT_EQ(maps().ClearInboundListener(KTRUST_MAX_INBOUND_LISTENERS).code(),
            absl::StatusCode::kInvalidArgument);
}

// ktrust_sk_lookup_pod: a pod's namespace, exact (address, port) rules only.

TEST_F(SkLookupTest, InAPodAnExactRuleGoesToItsListener) {
  UniqueFd agent = ListenTcp(Address("127.0.0.1:0"));
  ASSERT_TRUE(maps().SetInboundListener(5, agent.get()).ok());
  ASSERT_TRUE(
      maps().AddInboundPort(Address("10.244.1.7:8080"), EnforcementMode::kEnforce, 5, 3).ok());

  LookupResult r = LookupInPod("10.244.1.7:8080", "10.244.2.9:40000");
  EXPECT_EQ(r.verdict, static_cast<uint32_t>(SK_PASS));
  EXPECT_EQ(r.selected_cookie, SocketCookie(agent.get()));
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_STEERED), 1u);
  // Another address of the same port is not the pod's rule.
  EXPECT_EQ(LookupInPod("10.244.1.8:8080", "10.244.2.9:40000").selected_cookie, 0u);
}

TEST_F(SkLookupTest, InAPodTheHostsWildcardRulesAreIgnored) {
  UniqueFd agent4 = ListenTcp(Address("127.0.0.1:0"));
  UniqueFd agent6 = ListenTcp(Address("[::1]:0"));
  ASSERT_TRUE(maps().SetInboundListener(0, agent4.get()).ok());
  ASSERT_TRUE(maps().SetInboundListener(0, agent6.get()).ok());
  ASSERT_TRUE(maps().AddInboundPort(Address("0.0.0.0:8080"), EnforcementMode::kEnforce, 0, 3).ok());
  // An enforced wildcard whose slot is empty: the host would refuse.
  ASSERT_TRUE(maps().AddInboundPort(Address("0.0.0.0:9090"), EnforcementMode::kEnforce, 9, 3).ok());
  // The control: the host's program steers and refuses these.
  ASSERT_EQ(Lookup("10.244.1.7:8080", "10.244.2.9:40000").selected_cookie,
            SocketCookie(agent4.get()));
  ASSERT_EQ(Lookup("10.244.1.7:9090", "10.244.2.9:40000").verdict, static_cast<uint32_t>(SK_DROP));
  ASSERT_EQ(Lookup("[::]:8080", "[fd00::2]:40000").selected_cookie, SocketCookie(agent6.get()));
  auto before = maps().Counters();
  ASSERT_TRUE(before.ok()) << before.status();

  // A pod of another workload listening on the same ports is left alone,
  // even for a lookup whose address is the wildcard's all-zero key.
  for (LookupResult r : {LookupInPod("10.244.1.7:8080", "10.244.2.9:40000"),
                         LookupInPod("10.244.1.7:9090", "10.244.2.9:40000"),
                         LookupInPod("[::]:8080", "[fd00::2]:40000")}) {
    EXPECT_EQ(r.verdict, static_cast<uint32_t>(SK_PASS));
    EXPECT_EQ(r.selected_cookie, 0u);
  }
  auto after = maps().Counters();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(*after, *before) << "the pod's lookups were counted as steered or refused";
}

TEST_F(SkLookupTest, InAPodAnEnforcedRuleWithoutAListenerRefusesAndSaysWhy) {
  ASSERT_TRUE(
      maps().AddInboundPort(Address("10.244.1.7:8080"), EnforcementMode::kEnforce, 6, 3).ok());
  LookupResult r = LookupInPod("10.244.1.7:8080", "10.244.2.9:40000");
  EXPECT_EQ(r.verdict, static_cast<uint32_t>(SK_DROP));
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_UNSERVED_NETNS), 1u);
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_NO_LISTENER), 0u);
  ExpectOneDenial("sk_lookup_unserved_netns", "10.244.1.7:8080", "10.244.2.9:40000", 3);
}

TEST_F(SkLookupTest, InAPodAPermissiveRuleWithoutAListenerIsDelivered) {
  ASSERT_TRUE(
      maps().AddInboundPort(Address("10.244.1.7:8080"), EnforcementMode::kPermissive, 6, 3).ok());
  LookupResult r = LookupInPod("10.244.1.7:8080", "10.244.2.9:40000");
  EXPECT_EQ(r.verdict, static_cast<uint32_t>(SK_PASS));
  EXPECT_EQ(r.selected_cookie, 0u);
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_PERMISSIVE), 1u);
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_UNSERVED_NETNS), 0u);
}

TEST_F(SkLookupTest, ThePodsTakeTheHighestSlotsOfBothFamilies) {
  constexpr uint32_t kLastSlot = KTRUST_MAX_INBOUND_LISTENERS - 1;
  UniqueFd agent4 = ListenTcp(Address("127.0.0.1:0"));
  UniqueFd agent6 = ListenTcp(Address("[::1]:0"));
  ASSERT_TRUE(maps().SetInboundListener(kLastSlot, agent4.get()).ok());
  ASSERT_TRUE(maps().SetInboundListener(kLastSlot, agent6.get()).ok());
  ASSERT_TRUE(
      maps()
          .AddInboundPort(Address("10.244.1.7:8080"), EnforcementMode::kEnforce, kLastSlot, 3)
          .ok());
  ASSERT_TRUE(
      maps()
          .AddInboundPort(Address("[fd00:244::7]:8080"), EnforcementMode::kEnforce, kLastSlot, 3)
          .ok());
  EXPECT_EQ(LookupInPod("10.244.1.7:8080", "10.244.2.9:40000").selected_cookie,
            SocketCookie(agent4.get()));
  EXPECT_EQ(LookupInPod("[fd00:244::7]:8080", "[fd00:244::9]:40000").selected_cookie,
            SocketCookie(agent6.get()));
  EXPECT_EQ(maps().SetInboundListener(kLastSlot + 1, agent4.get()).code(),
            absl::StatusCode::kInvalidArgument);
}

// The same program attached to a namespace, with real connections.
class SkLookupNetnsTest : public SkLookupTest {
 protected:
  void SetUp() override {
    SkLookupTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    auto netns = testing::TestNetns::Create();
    ASSERT_TRUE(netns.ok()) << netns.status();
    netns_ = std::move(*netns);
    absl::Status attached = Attach(netns_->path());
    ASSERT_TRUE(attached.ok()) << attached;
  }

  virtual absl::Status Attach(const std::string& netns_path) {
    return loader_->AttachNetns(netns_path);
  }

  // A connect() inside the namespace, optionally from a given source.
  int Connect(const SocketAddress& to, const SocketAddress* from, UniqueFd& out,
              uint32_t mark = 0) {
    int err = 0;
    netns_->Run([&] {
      out.Reset(socket(to.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
      if (mark != 0 && setsockopt(out.get(), SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0) {
        err = errno;
        return;
      }
      if (from && bind(out.get(), from->get(), from->size()) != 0) {
        err = errno;
        return;
      }
      err = connect(out.get(), to.get(), to.size()) == 0 ? 0 : errno;
    });
    return err;
  }

  // An application listening in the namespace with its port enforced, and
  // the agent's listener for it there, in slot.
  struct EnforcedApp {
    UniqueFd agent, app;
    SocketAddress address;  // the application's
  };
  EnforcedApp StartEnforcedApp(uint32_t slot, absl::string_view loopback = "127.0.0.1:0") {
    EnforcedApp out;
    netns_->Run([&] {
      out.agent = ListenTcp(Address(loopback));
      out.app = ListenTcp(Address(loopback));
    });
    if (!out.agent.valid() || !out.app.valid()) return out;  // ListenTcp failed the test
    out.address = *SocketAddress::LocalOf(out.app.get());
    EXPECT_TRUE(maps().SetInboundListener(slot, out.agent.get()).ok());
    EXPECT_TRUE(maps().AddInboundPort(out.address, EnforcementMode::kEnforce, slot, 3).ok());
    return out;
  }

  void ExpectSteeredToTheAgent(const EnforcedApp& served) {
    UniqueFd client;
    ASSERT_EQ(Connect(served.address, nullptr, client), 0);
    UniqueFd accepted = AcceptWithin(served.agent.get(), absl::Seconds(5));
    ASSERT_TRUE(accepted.valid()) << "the agent listener got nothing";
    EXPECT_FALSE(HasPendingConnection(served.app.get())) << "the application saw the connection";
    // What the agent needs to know where the peer was going.
    EXPECT_EQ(SocketAddress::LocalOf(accepted.get())->ToString(), served.address.ToString());
  }

  void ExpectRefusedAtOnce(const EnforcedApp& served) {
    UniqueFd client;
    EXPECT_EQ(Connect(served.address, nullptr, client), ECONNREFUSED);
    EXPECT_FALSE(HasPendingConnection(served.app.get())) << "plaintext reached the application";
  }

  std::unique_ptr<testing::TestNetns> netns_;
};

TEST_F(SkLookupNetnsTest, ConnectionsToAnEnforcedPortReachTheAgentWithTheirDestination) {
  ExpectSteeredToTheAgent(StartEnforcedApp(0));
}

// The agent's sockets carry its SO_MARK (which takes CAP_NET_ADMIN): with
// the agent's sockops on its cgroup, exactly those reach the application.
TEST_F(SkLookupNetnsTest, TheAgentsMarkedConnectionReachesTheApplication) {
  constexpr uint32_t kMark = 0x6b74;
  ASSERT_TRUE(maps().Configure({.outbound_port = 15001, .agent_mark = kMark}).ok());
  auto own = OwnCgroupPath(*Cgroup2Mount());
  ASSERT_TRUE(own.ok()) << own.status();
  ASSERT_TRUE(loader_->AttachAgentSockops(*own).ok());
  EnforcedApp served = StartEnforcedApp(0);
  SocketAddress upstream_source = Address("127.0.0.6:0");
  UniqueFd client;
  ASSERT_EQ(Connect(served.address, &upstream_source, client, kMark), 0);
  UniqueFd accepted = AcceptWithin(served.app.get(), absl::Seconds(5));
  ASSERT_TRUE(accepted.valid()) << "the application got nothing";
  EXPECT_FALSE(HasPendingConnection(served.agent.get()));
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_UPSTREAM), 1u);
}

// Issue 10, finding 1: the attack as it was shown, an unmarked connection
// from the agent's upstream source address: the agent gets it, to handshake.
TEST_F(SkLookupNetnsTest, AnyoneElseFromTheUpstreamSourceIsSteeredToTheAgent) {
  ASSERT_TRUE(maps().Configure({.outbound_port = 15001, .agent_mark = 0x6b74}).ok());
  auto own = OwnCgroupPath(*Cgroup2Mount());
  ASSERT_TRUE(own.ok()) << own.status();
  ASSERT_TRUE(loader_->AttachAgentSockops(*own).ok());
  EnforcedApp served = StartEnforcedApp(0);
  SocketAddress upstream_source = Address("127.0.0.6:0");
  UniqueFd client;
  ASSERT_EQ(Connect(served.address, &upstream_source, client), 0);
  EXPECT_TRUE(AcceptWithin(served.agent.get(), absl::Seconds(5)).valid());
  EXPECT_FALSE(HasPendingConnection(served.app.get())) << "plaintext reached the application";
}

TEST_F(SkLookupNetnsTest, AnEnforcedPortRefusesConnectionsOnceTheAgentIsGone) {
  EnforcedApp served = StartEnforcedApp(0);
  served.agent.Reset();  // the agent died
  ExpectRefusedAtOnce(served);
}

TEST_F(SkLookupNetnsTest, Ipv6ConnectionsAreSteeredToo) {
  ExpectSteeredToTheAgent(StartEnforcedApp(1, "[::1]:0"));
}

// The pod program attached to a pod's namespace: the listener the agent
// opened there takes the pod's enforced ports; a port enforced only by a
// host wildcard reaches the pod's application.
class SkLookupPodNetnsTest : public SkLookupNetnsTest {
 protected:
  absl::Status Attach(const std::string& netns_path) override {
    return loader_->AttachPodNetns(netns_path);
  }
};

TEST_F(SkLookupPodNetnsTest, ThePodsExactRulesReachTheAgentAndWildcardsReachTheApplication) {
  EnforcedApp served = StartEnforcedApp(700);
  ExpectSteeredToTheAgent(served);

  UniqueFd other_app;
  netns_->Run([&] { other_app = ListenTcp(Address("127.0.0.1:0")); });
  SocketAddress other_address = *SocketAddress::LocalOf(other_app.get());
  SocketAddress wildcard = Address(absl::StrCat("0.0.0.0:", other_address.port()));
  ASSERT_TRUE(maps().AddInboundPort(wildcard, EnforcementMode::kEnforce, 700, 4).ok());
  UniqueFd other_client;
  ASSERT_EQ(Connect(other_address, nullptr, other_client), 0);
  EXPECT_TRUE(AcceptWithin(other_app.get(), absl::Seconds(5)).valid())
      << "a host wildcard rule took a pod's connection";
  EXPECT_FALSE(HasPendingConnection(served.agent.get()));
}

TEST_F(SkLookupPodNetnsTest, APodWhoseListenerIsGoneRefusesItsEnforcedPorts) {
  EnforcedApp served = StartEnforcedApp(700);
  ASSERT_TRUE(maps().ClearInboundListener(700).ok());  // the agent stopped serving the pod
  ExpectRefusedAtOnce(served);
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_UNSERVED_NETNS), 1u);
}

}  // namespace
}  // namespace ktrust
