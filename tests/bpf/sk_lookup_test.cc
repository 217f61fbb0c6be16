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

#include "bpf/bpf_test_env.h"
#include "ktrust/bpf/bpf_loader.h"
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

  // A TCP SYN from remote to local, as the kernel would look it up.
  LookupResult Lookup(absl::string_view local, absl::string_view remote,
                      uint32_t protocol = IPPROTO_TCP) {
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
    int err = bpf_prog_test_run_opts(loader_->program_fd(BpfProgram::kSkLookup), &opts);
    EXPECT_EQ(err, 0) << std::strerror(errno);
    return {.verdict = opts.retval, .selected_cookie = ctx.cookie};
  }

  uint64_t Counter(ktrust_reason reason) {
    auto counters = maps().Counters();
    EXPECT_TRUE(counters.ok()) << counters.status();
    return counters.ok() ? (*counters)[reason] : 0;
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
        Lookup("127.0.0.1:8080", "127.0.0.9:40000", IPPROTO_UDP)}) {
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

TEST_F(SkLookupTest, TheAgentsOwnUpstreamConnectionsReachTheApplication) {
  UniqueFd agent = ListenTcp(Address("127.0.0.1:0"));
  ASSERT_TRUE(maps().SetInboundListener(0, agent.get()).ok());
  ASSERT_TRUE(
      maps().AddInboundPort(Address("127.0.0.1:8080"), EnforcementMode::kEnforce, 0, 3).ok());

  LookupResult r = Lookup("127.0.0.1:8080", "127.0.0.6:40000");
  EXPECT_EQ(r.verdict, static_cast<uint32_t>(SK_PASS));
  EXPECT_EQ(r.selected_cookie, 0u);
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_UPSTREAM), 1u);
}

TEST_F(SkLookupTest, WithTheAgentGoneAnEnforcedPortRefusesAndSaysSo) {
  UniqueFd agent = ListenTcp(Address("127.0.0.1:0"));
  ASSERT_TRUE(maps().SetInboundListener(0, agent.get()).ok());
  ASSERT_TRUE(
      maps().AddInboundPort(Address("127.0.0.1:8080"), EnforcementMode::kEnforce, 0, 3).ok());
  agent.Reset();  // closing the listener takes it out of the sockmap

  std::vector<InterceptionEvent> events;
  auto reader = InterceptionEventReader::Create(
      loader_->events_fd(), [&](const InterceptionEvent& e) { events.push_back(e); });
  ASSERT_TRUE(reader.ok()) << reader.status();

  LookupResult r = Lookup("127.0.0.1:8080", "127.0.0.9:40000");
  EXPECT_EQ(r.verdict, static_cast<uint32_t>(SK_DROP));
  EXPECT_EQ(Counter(KTRUST_REASON_SK_LOOKUP_NO_LISTENER), 1u);

  ASSERT_TRUE((*reader)->Drain().ok());
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(EventTypeName(events[0].type), "denied");
  EXPECT_EQ(ReasonName(events[0].reason), "sk_lookup_no_listener");
  EXPECT_EQ(events[0].destination.ToString(), "127.0.0.1:8080");
  EXPECT_EQ(events[0].source.ToString(), "127.0.0.9:40000");
  EXPECT_EQ(events[0].workload, 3u);
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

// The same program attached to a namespace, with real connections.
class SkLookupNetnsTest : public SkLookupTest {
 protected:
  void SetUp() override {
    SkLookupTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    auto netns = testing::TestNetns::Create();
    ASSERT_TRUE(netns.ok()) << netns.status();
    netns_ = std::move(*netns);
    ASSERT_TRUE(loader_->AttachNetns(netns_->path()).ok());
  }

  // A connect() inside the namespace, optionally from a given source.
  int Connect(const SocketAddress& to, const SocketAddress* from, UniqueFd& out) {
    int err = 0;
    netns_->Run([&] {
      out.Reset(socket(to.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
      if (from && bind(out.get(), from->get(), from->size()) != 0) {
        err = errno;
        return;
      }
      err = connect(out.get(), to.get(), to.size()) == 0 ? 0 : errno;
    });
    return err;
  }

  std::unique_ptr<testing::TestNetns> netns_;
};

TEST_F(SkLookupNetnsTest, ConnectionsToAnEnforcedPortReachTheAgentWithTheirDestination) {
  UniqueFd agent, app;
  netns_->Run([&] {
    agent = ListenTcp(Address("127.0.0.1:0"));
    app = ListenTcp(Address("127.0.0.1:0"));
  });
  SocketAddress app_address = *SocketAddress::LocalOf(app.get());
  ASSERT_TRUE(maps().SetInboundListener(0, agent.get()).ok());
  ASSERT_TRUE(maps().AddInboundPort(app_address, EnforcementMode::kEnforce, 0, 3).ok());

  UniqueFd client;
  ASSERT_EQ(Connect(app_address, nullptr, client), 0);
  UniqueFd accepted = AcceptWithin(agent.get(), absl::Seconds(5));
  ASSERT_TRUE(accepted.valid()) << "the agent listener got nothing";
  EXPECT_FALSE(HasPendingConnection(app.get())) << "the application saw the connection";
  // What the agent needs to know where the peer was going.
  EXPECT_EQ(SocketAddress::LocalOf(accepted.get())->ToString(), app_address.ToString());
}

TEST_F(SkLookupNetnsTest, TheAgentsUpstreamFromItsReservedSourceReachesTheApplication) {
  UniqueFd agent, app;
  netns_->Run([&] {
    agent = ListenTcp(Address("127.0.0.1:0"));
    app = ListenTcp(Address("127.0.0.1:0"));
  });
  SocketAddress app_address = *SocketAddress::LocalOf(app.get());
  ASSERT_TRUE(maps().SetInboundListener(0, agent.get()).ok());
  ASSERT_TRUE(maps().AddInboundPort(app_address, EnforcementMode::kEnforce, 0, 3).ok());

  SocketAddress upstream_source = Address("127.0.0.6:0");
  UniqueFd client;
  ASSERT_EQ(Connect(app_address, &upstream_source, client), 0);
  UniqueFd accepted = AcceptWithin(app.get(), absl::Seconds(5));
  ASSERT_TRUE(accepted.valid()) << "the application got nothing";
  EXPECT_FALSE(HasPendingConnection(agent.get()));
}

TEST_F(SkLookupNetnsTest, AnEnforcedPortRefusesConnectionsOnceTheAgentIsGone) {
  UniqueFd agent, app;
  netns_->Run([&] {
    agent = ListenTcp(Address("127.0.0.1:0"));
    app = ListenTcp(Address("127.0.0.1:0"));
  });
  SocketAddress app_address = *SocketAddress::LocalOf(app.get());
  ASSERT_TRUE(maps().SetInboundListener(0, agent.get()).ok());
  ASSERT_TRUE(maps().AddInboundPort(app_address, EnforcementMode::kEnforce, 0, 3).ok());
  agent.Reset();  // the agent died

  UniqueFd client;
  EXPECT_EQ(Connect(app_address, nullptr, client), ECONNREFUSED);
  EXPECT_FALSE(HasPendingConnection(app.get())) << "plaintext reached the application";
}

TEST_F(SkLookupNetnsTest, Ipv6ConnectionsAreSteeredToo) {
  UniqueFd agent, app;
  netns_->Run([&] {
    agent = ListenTcp(Address("[::1]:0"));
    app = ListenTcp(Address("[::1]:0"));
  });
  ASSERT_TRUE(agent.valid() && app.valid());
  SocketAddress app_address = *SocketAddress::LocalOf(app.get());
  ASSERT_TRUE(maps().SetInboundListener(1, agent.get()).ok());
  ASSERT_TRUE(maps().AddInboundPort(app_address, EnforcementMode::kEnforce, 1, 3).ok());

  UniqueFd client;
  ASSERT_EQ(Connect(app_address, nullptr, client), 0);
  UniqueFd accepted = AcceptWithin(agent.get(), absl::Seconds(5));
  ASSERT_TRUE(accepted.valid()) << "the agent listener got nothing";
  EXPECT_FALSE(HasPendingConnection(app.get()));
  EXPECT_EQ(SocketAddress::LocalOf(accepted.get())->ToString(), app_address.ToString());
}

}  // namespace
}  // namespace ktrust
