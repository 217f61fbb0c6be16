// Two engines on loopback, as two nodes would run them:
//
//   client app -> [outbound engine] ==mTLS==> [inbound engine] -> backend app
//
// On this kernel (no kTLS) the connections use the userspace record layer; in
// the vm tier the same tests run with kernel TLS.
#include "ktrust/dataplane/engine.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <malloc.h>
#include <net/if.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sched.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

#include "integration/test_network.h"
#include "ktrust/agent/allow_list_authorizer.h"
#include "ktrust/identity/certificate_authority.h"
#include "ktrust/identity/x509.h"
#include "ktrust/tls/ktls.h"
#include "unit/test_pki.h"

namespace ktrust {
namespace {

using testing::ConnectTo;
using testing::ReadExactly;
using testing::ReadToEof;
using testing::SendAll;
using testing::TestBackend;

constexpr char kClientId[] = "spiffe://example.org/ns/app/client";
constexpr char kServerId[] = "spiffe://example.org/ns/app/server";

struct PairOptions {
  std::shared_ptr<const Svid> client_svid;  // default: a valid kClientId SVID
  std::vector<std::string> allow = {"spiffe://example.org/ns/app/*"};
  std::optional<SpiffeIdPattern> expect_server;
  bool permissive = false;  // the inbound listener's mode
  // The client engine serves an inbound listener too (to the same backend),
  // as an agent's engine serves both directions: client_inbound().
  bool client_inbound = false;
  // The server's inbound listener hands zero-hop clients to this.
  std::function<bool(UniqueFd&, const ConnectionInfo&, const VerifiedPeer&)> deliver;
  EngineOptions options;
};

// What on_closed reported. Shared with the engines, which may call the hook
// until they stop, after a failed assertion returned early.
struct ClosedList : std::enable_shared_from_this<ClosedList> {
  std::mutex mu;
  std::vector<ClosedConnection> list;
  std::function<void(const ClosedConnection&)> Hook() {
    return [self = shared_from_this()](const ClosedConnection& c) {
      std::lock_guard<std::mutex> lock(self->mu);
      self->list.push_back(c);
    };
  }
};

// The SPIFFE ID in the leaf of a verified chain, or why there is none.
std::string LeafIdOf(const VerifiedPeer& peer) {
  auto chain = ParseCertificates(peer.chain_pem, "the verified chain");
  if (!chain.ok()) return std::string(chain.status().message());
  std::vector<std::string> uris = UriSans(chain->front().get());
  return uris.size() == 1 ? uris[0] : absl::StrCat(uris.size(), " URI SANs");
}

// Zero-hop, inbound: the sockets a deliver hook received, as the workload's
// accept would.
class Delivered {
 public:
  std::function<bool(UniqueFd&, const ConnectionInfo&, const VerifiedPeer&)> Hook(
      bool take = true) {
    return [this, take](UniqueFd& fd, const ConnectionInfo& info, const VerifiedPeer& peer) {
      std::lock_guard<std::mutex> lock(mu_);
      ++offered_;
      if (!take) return false;
      sockets_.push_back(std::move(fd));
      infos_.push_back(info);
      peers_.push_back(peer);
      cv_.notify_all();
      return true;
    };
  }
  // The next socket handed over (bounded wait); invalid if none came.
  UniqueFd Next(ConnectionInfo* info = nullptr, VerifiedPeer* peer = nullptr) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, std::chrono::seconds(60), [&] { return !sockets_.empty(); })) {
      return UniqueFd();
    }
    UniqueFd fd = std::move(sockets_.front());
    sockets_.erase(sockets_.begin());
    if (info) *info = infos_.front();
    infos_.erase(infos_.begin());
    if (peer) *peer = peers_.front();
    peers_.erase(peers_.begin());
    return fd;
  }
  int offered() {
    std::lock_guard<std::mutex> lock(mu_);
    return offered_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<UniqueFd> sockets_;
  std::vector<ConnectionInfo> infos_;
  std::vector<VerifiedPeer> peers_;
  int offered_ = 0;
};

// A standard TLS 1.3 client with an SVID, driven by the test.
struct RawTlsClient {
  SslCtxPtr ctx;
  SslPtr ssl;
  UniqueFd fd;
};

RawTlsClient ConnectRawTls(const SocketAddress& to, const Svid& svid, bool offer_zero_hop) {
  RawTlsClient c;
  c.ctx.reset(SSL_CTX_new(TLS_client_method()));
  SSL_CTX_set_min_proto_version(c.ctx.get(), TLS1_3_VERSION);
  SSL_CTX_use_certificate(c.ctx.get(), svid.leaf());
  SSL_CTX_use_PrivateKey(c.ctx.get(), svid.key());
  c.ssl.reset(SSL_new(c.ctx.get()));
  if (offer_zero_hop) {
    static const unsigned char kProtos[] = "\x0bktrust-zh/1";
    SSL_set_alpn_protos(c.ssl.get(), kProtos, sizeof(kProtos) - 1);
  }
  c.fd = ConnectTo(to);
  SSL_set_fd(c.ssl.get(), c.fd.get());
  // Again after a signal interrupted it (OpenSSL reports that as WANT_READ
  // on a blocking socket), as SslRead does.
  absl::Time deadline = absl::Now() + absl::Seconds(60);
  int r;
  while ((r = SSL_connect(c.ssl.get())) <= 0 &&
         (SSL_get_error(c.ssl.get(), r) == SSL_ERROR_WANT_READ ||
          SSL_get_error(c.ssl.get(), r) == SSL_ERROR_WANT_WRITE) &&
         absl::Now() < deadline) {
  }
  EXPECT_EQ(r, 1) << "SSL_get_error " << SSL_get_error(c.ssl.get(), r) << ", errno " << errno;
  return c;
}

// SSL_read on a blocking socket, again after a signal interrupted it
// (OpenSSL reports that as WANT_READ), for at most a minute.
int SslRead(SSL* ssl, void* buf, int len) {
  absl::Time deadline = absl::Now() + absl::Seconds(60);
  int n;
  while ((n = SSL_read(ssl, buf, len)) <= 0 && SSL_get_error(ssl, n) == SSL_ERROR_WANT_READ &&
         absl::Now() < deadline) {
  }
  return n;
}

std::string SelectedAlpn(SSL* ssl) {
  const unsigned char* p = nullptr;
  unsigned int len = 0;
  SSL_get0_alpn_selected(ssl, &p, &len);
  return p ? std::string(reinterpret_cast<const char*>(p), len) : "";
}

// A standard TLS 1.3 server with an SVID that acks no ALPN: a TLS end that
// is not zero-hop capable. Counts the application bytes it receives.
class PlainTlsServer {
 public:
  explicit PlainTlsServer(const Svid& svid) {
    ctx_.reset(SSL_CTX_new(TLS_server_method()));
    SSL_CTX_set_min_proto_version(ctx_.get(), TLS1_3_VERSION);
    SSL_CTX_set_num_tickets(ctx_.get(), 0);
    SSL_CTX_use_certificate(ctx_.get(), svid.leaf());
    SSL_CTX_use_PrivateKey(ctx_.get(), svid.key());
    listener_.Reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    SocketAddress any = *SocketAddress::Parse("127.0.0.1:0");
    EXPECT_EQ(bind(listener_.get(), any.get(), any.size()), 0);
    EXPECT_EQ(listen(listener_.get(), 8), 0);
    address_ = *SocketAddress::LocalOf(listener_.get());
    thread_ = std::thread([this] {
      UniqueFd fd(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!fd.valid()) return;
      SslPtr ssl(SSL_new(ctx_.get()));
      SSL_set_fd(ssl.get(), fd.get());
      if (SSL_accept(ssl.get()) != 1) return;
      handshakes_.fetch_add(1);
      char buf[4096];
      int n;
      while ((n = SSL_read(ssl.get(), buf, sizeof(buf))) > 0) bytes_.fetch_add(n);
    });
  }
  ~PlainTlsServer() {
    shutdown(listener_.get(), SHUT_RDWR);  // wakes an accept that got nothing
    thread_.join();
  }
  SocketAddress address() const { return address_; }
  int handshakes() const { return handshakes_.load(); }
  uint64_t bytes() const { return bytes_.load(); }

 private:
  SslCtxPtr ctx_;
  UniqueFd listener_;
  SocketAddress address_;
  std::atomic<int> handshakes_{0};
  std::atomic<uint64_t> bytes_{0};
  std::thread thread_;
};

// Zero-hop, outbound: the application's own socket (blocking, as most
// are) and what HandshakeInPlace made of it. The engine gets a duplicate
// that shares the open file, as pidfd_getfd gives the agent.
struct InPlace {
  UniqueFd app;
  InPlaceResult result;
};

InPlace ConnectInPlace(Engine& engine, const SocketAddress& to, std::shared_ptr<const Svid> svid,
                       std::optional<SpiffeIdPattern> expected = std::nullopt) {
  InPlace out;
  out.app.Reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  timeval tv{60, 0};
  setsockopt(out.app.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  InPlaceOutbound request;
  request.socket.Reset(fcntl(out.app.get(), F_DUPFD_CLOEXEC, 0));
  request.destination = to;
  request.workload = "zh-client";
  request.identity = [svid] { return svid; };
  request.expected_server = std::move(expected);
  auto promise = std::make_shared<std::promise<InPlaceResult>>();
  auto calls = std::make_shared<std::atomic<int>>(0);
  std::future<InPlaceResult> future = promise->get_future();
  request.done = [promise, calls](InPlaceResult r) {
    if (calls->fetch_add(1) == 0) promise->set_value(std::move(r));
  };
  engine.HandshakeInPlace(std::move(request));
  EXPECT_EQ(future.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  out.result = future.get();
  EXPECT_EQ(calls->load(), 1);
  return out;
}

// A failed zero-hop socket is dead: the application cannot send a byte on
// it, and its file is blocking again as the application made it.
void ExpectDeadSocket(int app) {
  errno = 0;
  EXPECT_EQ(send(app, "plaintext", 9, MSG_NOSIGNAL), -1);
  EXPECT_TRUE(errno == EPIPE || errno == ENOTCONN || errno == ECONNRESET) << strerror(errno);
  EXPECT_EQ(fcntl(app, F_GETFL) & O_NONBLOCK, 0);
}

// The log lines as an operator reads them: every message, in order.
class CapturedLog : public spdlog::sinks::base_sink<std::mutex> {
 public:
  // The JSON events named `event`, parsed.
  std::vector<nlohmann::json> Events(const std::string& event) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<nlohmann::json> out;
    for (const std::string& line : lines_) {
      nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_object() && j.value("event", "") == event) out.push_back(std::move(j));
    }
    return out;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    lines_.emplace_back(msg.payload.data(), msg.payload.size());
  }
  void flush_() override {}

 private:
  std::vector<std::string> lines_;
};

// Runs `fn` on a thread inside the network namespace `netns_fd`: the
// sockets it makes live there.
void RunInNetns(int netns_fd, const std::function<void()>& fn) {
  std::thread([&] {
    ASSERT_EQ(setns(netns_fd, CLONE_NEWNET), 0) << strerror(errno);
    fn();
  }).join();
}

// A fresh network namespace with lo up, standing in for a pod's. It lives as
// long as its descriptor (and any socket in it).
UniqueFd NewNetns() {
  UniqueFd netns;
  std::thread([&] {
    ASSERT_EQ(unshare(CLONE_NEWNET), 0) << strerror(errno);
    UniqueFd sock(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    ifreq ifr{};
    strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    ASSERT_EQ(ioctl(sock.get(), SIOCGIFFLAGS, &ifr), 0) << strerror(errno);
    ifr.ifr_flags |= IFF_UP;
    ASSERT_EQ(ioctl(sock.get(), SIOCSIFFLAGS, &ifr), 0) << strerror(errno);
    netns.Reset(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  }).join();
  return netns;
}

// ConnectTo from inside a namespace; *err: errno on failure.
UniqueFd ConnectInNetns(int netns_fd, const SocketAddress& addr, int* err = nullptr) {
  UniqueFd fd;
  RunInNetns(netns_fd, [&] {
    fd = ConnectTo(addr);
    if (err) *err = fd.valid() ? 0 : errno;
  });
  return fd;
}

// Listeners added at runtime in a pod's namespace, on the running pair:
//
//   client app -> [client_: netns outbound] ==mTLS==> [server_: netns inbound] -> backend
//
// with every socket but the engines' own in the pod namespace.
struct PodListeners {
  UniqueFd netns;
  std::unique_ptr<TestBackend> backend;  // listens in the pod namespace only
  ListenerGroupHandle inbound, outbound;
  SocketAddress entry() const { return outbound.outbound_addresses.at(0); }
};

class EngineTest : public ::testing::Test {
 protected:
  EngineTest()
      : ca_(*CertificateAuthority::CreateRoot(*TrustDomain::Parse("example.org"),
                                              kDefaultRootValidity, absl::Now())) {
    auto store = std::make_shared<TrustStore>();
    store->Put(*ca_.Bundle());
    trust_ = store;
  }
  ~EngineTest() override {
    if (client_) client_->Stop();
    if (server_) server_->Stop();
    if (previous_logger_) spdlog::set_default_logger(previous_logger_);
  }

  // Sends the engines' log lines (info and up) to log_ for the rest of the
  // test. Call before StartPair.
  void CaptureLog() {
    log_ = std::make_shared<CapturedLog>();
    previous_logger_ = spdlog::default_logger();
    auto logger = std::make_shared<spdlog::logger>("captured", log_);
    logger->set_level(spdlog::level::info);
    spdlog::set_default_logger(logger);
  }

  std::shared_ptr<const Svid> Issue(const char* id) {
    return std::make_shared<const Svid>(
        *ca_.IssueSvid(*SpiffeId::Parse(id), absl::Hours(1), absl::Now()));
  }

  static std::string ExpectedDataPath() { return ProbeKtls().available ? "ktls-sw" : "userspace"; }

  // Starts the inbound engine in front of `backend`, then the outbound engine
  // dialling it. Clients connect to entry().
  void StartPair(const TestBackend& backend, PairOptions p = {}) {
    if (!p.client_svid) p.client_svid = Issue(kClientId);
    std::shared_ptr<const Svid> server_svid = Issue(kServerId);
    std::vector<SpiffeIdPattern> allowed;
    for (const auto& a : p.allow) allowed.push_back(*SpiffeIdPattern::Parse(a));
    p.options.loops = p.options.loops ? p.options.loops : 2;

    InboundListener inbound{*SocketAddress::Parse("127.0.0.1:0"), "backend",
                            [server_svid] { return server_svid; }, backend.address(), p.permissive};
    inbound.deliver = p.deliver;
    auto server = Engine::Create(p.options, trust_, std::make_shared<AllowListAuthorizer>(allowed),
                                 {}, {inbound});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_TRUE(server_->Start().ok());
    wire_ = server_->inbound_addresses().at(0);

    std::shared_ptr<const Svid> client_svid = p.client_svid;
    OutboundRoute route{wire_, "client", [client_svid] { return client_svid; }, p.expect_server};
    std::vector<InboundListener> client_inbound;
    if (p.client_inbound) {
      client_inbound.push_back(InboundListener{*SocketAddress::Parse("127.0.0.1:0"), "client-side",
                                               [client_svid] { return client_svid; },
                                               backend.address()});
    }
    auto client = Engine::Create(
        p.options, trust_,
        p.client_inbound ? std::make_shared<AllowListAuthorizer>(allowed) : nullptr,
        {OutboundListener{*SocketAddress::Parse("127.0.0.1:0"),
                          [route](int) -> absl::StatusOr<OutboundRoute> { return route; }}},
        std::move(client_inbound));
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
    ASSERT_TRUE(client_->Start().ok());
    entry_ = client_->outbound_addresses().at(0);
  }

  // The client engine's inbound listener (PairOptions::client_inbound).
  SocketAddress client_inbound() const { return client_->inbound_addresses().at(0); }

  SocketAddress entry() const { return entry_; }

  // After StartPair: the pair gets listeners in a new namespace, the server
  // an inbound one for an application there, the client an outbound one
  // routed to it.
  void AddPodListeners(PodListeners& pod, TestBackend::Handler handler) {
    pod.netns = NewNetns();
    ASSERT_TRUE(pod.netns.valid());
    RunInNetns(pod.netns.get(), [&] { pod.backend = std::make_unique<TestBackend>(handler); });
    std::shared_ptr<const Svid> server_svid = Issue(kServerId);
    NetnsListeners in{
        pod.netns.get(),
        {},
        {InboundListener{*SocketAddress::Parse("127.0.0.1:0"), "pod-backend",
                         [server_svid] { return server_svid; }, pod.backend->address()}}};
    auto added = server_->AddNetnsListeners(std::move(in));
    ASSERT_TRUE(added.ok()) << added.status();
    pod.inbound = *std::move(added);
    ASSERT_EQ(pod.inbound.inbound_fds.size(), 1u);

    std::shared_ptr<const Svid> client_svid = Issue(kClientId);
    OutboundRoute route{pod.inbound.inbound_addresses.at(0), "pod-client",
                        [client_svid] { return client_svid; }, std::nullopt};
    NetnsListeners out{
        pod.netns.get(),
        {OutboundListener{*SocketAddress::Parse("127.0.0.1:0"),
                          [route](int) -> absl::StatusOr<OutboundRoute> { return route; }}},
        {}};
    added = client_->AddNetnsListeners(std::move(out));
    ASSERT_TRUE(added.ok()) << added.status();
    pod.outbound = *std::move(added);
  }

  // Waits (bounded, generously for the emulated CPU of the vm tier) until
  // both engines have closed every connection.
  bool Drained() {
    absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (absl::Now() < deadline) {
      if (client_->connections().size() == 0 && server_->connections().size() == 0) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }

  // What a refused client app experiences: the connection ends (reset or
  // EOF) and not one byte arrives; the application sees no new connection.
  void ExpectRefusedWithNoBytes(const TestBackend& backend) {
    const int accepted_before = backend.accepted();
    const size_t received_before = backend.bytes_received();
    UniqueFd fd = ConnectTo(entry());
    ASSERT_TRUE(fd.valid());
    SendAll(fd.get(), "secret request", 14);
    std::string got;
    int err = 0;
    bool eof = ReadToEof(fd.get(), &got, &err);
    EXPECT_TRUE(eof || err == ECONNRESET) << strerror(err);
    EXPECT_EQ(got, "");
    EXPECT_TRUE(Drained());
    EXPECT_EQ(backend.accepted(), accepted_before);
    EXPECT_EQ(backend.bytes_received(), received_before);
  }

  // What an allowed client app sees: `text` echoed back through the pair.
  void ExpectEchoedThroughThePair(const std::string& text) {
    UniqueFd fd = ConnectTo(entry());
    ASSERT_TRUE(SendAll(fd.get(), text.data(), text.size()));
    std::string reply;
    ASSERT_TRUE(ReadExactly(fd.get(), text.size(), &reply));
    EXPECT_EQ(reply, text);
  }

  // Waits (bounded, as Drained) for a condition the engine reaches on its
  // own threads; false if it never did.
  static bool Eventually(const std::function<bool()>& condition) {
    absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (!condition()) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return true;
  }

  // A client that connects and never sends a byte, as a hostile one holding
  // a handshake slot does; from `source` if given.
  static UniqueFd IdleClient(const SocketAddress& to, const char* source = nullptr) {
    std::optional<SocketAddress> from;
    if (source) from = *SocketAddress::Parse(absl::StrCat(source, ":0"));
    UniqueFd fd = ConnectTo(to, from ? &*from : nullptr);
    EXPECT_TRUE(fd.valid()) << strerror(errno);
    return fd;
  }

  // A client the engine refuses as soon as it accepts it: its connect() may
  // already fail with the reset (an interrupted connect waits in poll(),
  // and the RST can arrive first). ExpectClosedWithNoBytes takes either.
  static UniqueFd RefusedClient(const SocketAddress& to, const char* source) {
    SocketAddress from = *SocketAddress::Parse(absl::StrCat(source, ":0"));
    UniqueFd fd = ConnectTo(to, &from);
    if (!fd.valid()) {
      EXPECT_EQ(errno, ECONNRESET) << strerror(errno);
    }
    return fd;
  }

  // What a client the engine refused sees: a reset or an EOF, no byte (an
  // invalid fd: RefusedClient's connect already saw the reset).
  static void ExpectClosedWithNoBytes(int fd) {
    if (fd < 0) return;
    std::string got;
    int err = 0;
    bool eof = ReadToEof(fd, &got, &err);
    EXPECT_TRUE(eof || err == ECONNRESET) << strerror(err);
    EXPECT_EQ(got, "");
  }

  CertificateAuthority ca_;
  std::shared_ptr<const TrustStore> trust_;
  std::unique_ptr<Engine> client_;
  std::unique_ptr<Engine> server_;
  SocketAddress entry_;
  SocketAddress wire_;
  std::shared_ptr<CapturedLog> log_;
  std::shared_ptr<spdlog::logger> previous_logger_;
};

TEST_F(EngineTest, EchoAndTheConnectionTableShowBothIdentities) {
  TestBackend backend([](int fd, TestBackend& self) {
    std::string got;
    if (!ReadExactly(fd, 5, &got)) return;
    self.AddReceived(got.size());
    SendAll(fd, got.data(), got.size());
    // Hold the connection open until the client is done looking.
    ReadToEof(fd, nullptr);
  });
  StartPair(backend);
  UniqueFd fd = ConnectTo(entry());
  ASSERT_TRUE(SendAll(fd.get(), "hello", 5));
  std::string reply;
  ASSERT_TRUE(ReadExactly(fd.get(), 5, &reply));
  EXPECT_EQ(reply, "hello");

  // The byte counts are updated as each splice completes, which io_uring
  // may report after the reply has already reached us.
  auto counted = [](const Engine& e) {
    auto s = e.connections().Snapshot();
    return s.size() == 1 && s[0].bytes_to_wire == 5 && s[0].bytes_from_wire == 5;
  };
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!(counted(*client_) && counted(*server_)) && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  auto out = client_->connections().Snapshot();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].direction, Direction::kOutbound);
  EXPECT_EQ(out[0].info.local_id, kClientId);
  EXPECT_EQ(out[0].info.peer_id, kServerId);
  EXPECT_EQ(out[0].info.tls_version, "TLSv1.3");
  EXPECT_EQ(out[0].info.cipher, "TLS_AES_128_GCM_SHA256");
  EXPECT_EQ(out[0].info.data_path, ExpectedDataPath());
  EXPECT_EQ(out[0].state, ConnectionState::kEstablished);
  EXPECT_EQ(out[0].bytes_to_wire, 5u);
  EXPECT_EQ(out[0].bytes_from_wire, 5u);
  EXPECT_EQ(out[0].info.wire_peer, wire_.ToString());

  auto in = server_->connections().Snapshot();
  ASSERT_EQ(in.size(), 1u);
  EXPECT_EQ(in[0].direction, Direction::kInbound);
  EXPECT_EQ(in[0].info.local_id, kServerId);
  EXPECT_EQ(in[0].info.peer_id, kClientId);
  EXPECT_EQ(in[0].info.app_address, backend.address().ToString());
  EXPECT_EQ(in[0].info.data_path, ExpectedDataPath());
  fd.Reset();
  EXPECT_TRUE(Drained());
  if (getenv("KTRUST_VM")) {
    EXPECT_EQ(ExpectedDataPath(), "ktls-sw") << "the vm tier must run on kernel TLS";
  }
}

// A stopping agent (issue 12): no new connection reaches a draining
// engine, the open one keeps working, and at the deadline it is reset with a
// drain_timeout line.
TEST_F(EngineTest, StopAcceptingKeepsOpenConnectionsUntilEndConnections) {
  TestBackend backend([](int fd, TestBackend& self) {
    char buffer[256];
    ssize_t n;
    while ((n = recv(fd, buffer, sizeof(buffer), 0)) > 0) {
      self.AddReceived(static_cast<size_t>(n));
      if (!SendAll(fd, buffer, static_cast<size_t>(n))) return;
    }
  });
  CaptureLog();
  StartPair(backend);
  UniqueFd open = ConnectTo(entry());
  ASSERT_TRUE(SendAll(open.get(), "one", 3));
  std::string reply;
  ASSERT_TRUE(ReadExactly(open.get(), 3, &reply));

  server_->StopAccepting();
  EXPECT_FALSE(server_->accepting());
  EXPECT_EQ(log_->Events("listeners_closed").size(), 1u);
  UniqueFd refused = ConnectTo(wire_);
  EXPECT_FALSE(refused.valid()) << "the draining engine's listener still accepts";

  ASSERT_TRUE(SendAll(open.get(), "two", 3));
  ASSERT_TRUE(ReadExactly(open.get(), 3, &reply));
  EXPECT_EQ(reply, "two") << "the open connection stopped working";

  server_->EndConnections(CloseReason::kDrainTimeout, "still open at the drain deadline");
  std::string rest;
  int err = 0;
  bool eof = ReadToEof(open.get(), &rest, &err);
  EXPECT_TRUE(eof || err == ECONNRESET) << strerror(err);
  EXPECT_TRUE(Drained());
  std::vector<nlohmann::json> failed = log_->Events("connection_failed");
  ASSERT_FALSE(failed.empty());
  bool drain_line = false;
  for (const auto& e : failed) drain_line |= e.value("result", "") == "drain_timeout";
  EXPECT_TRUE(drain_line) << failed.front().dump();
}

// Session resumption (agent.tls_resumption) between two engines: the second
// connection resumes and carries bytes both ways intact (through kernel TLS
// in the vm tier, where the client reads the server's ticket in OpenSSL
// before it installs RX); a tighter policy drops the tickets, and the next
// connection is refused before the application sees a byte.
TEST_F(EngineTest, ResumedConnectionsCarryBytesAndAreAuthorizedAgain) {
  TestBackend backend(&TestBackend::Echo);
  PairOptions p;
  p.options.tls.resumption = true;
  StartPair(backend, p);
  ExpectEchoedThroughThePair("full handshake");
  ASSERT_TRUE(Drained());
  EXPECT_EQ(client_->counters().resumed_handshakes.load(), 0u);
  const std::string payload = testing::RandomBytes(64 << 10, 3);
  ExpectEchoedThroughThePair(payload);
  ASSERT_TRUE(Drained());
  std::cout << "data path " << ExpectedDataPath() << ": resumed handshakes, client "
            << client_->counters().resumed_handshakes.load() << ", server "
            << server_->counters().resumed_handshakes.load() << "; errors, client "
            << client_->counters().errors.load() << ", server " << server_->counters().errors.load()
            << "\n";
  EXPECT_EQ(client_->counters().resumed_handshakes.load(), 1u);
  EXPECT_EQ(server_->counters().resumed_handshakes.load(), 1u);
  EXPECT_EQ(client_->counters().errors.load(), 0u);
  EXPECT_EQ(server_->counters().errors.load(), 0u);

  server_->SetAuthorizer(std::make_shared<AllowListAuthorizer>(
      std::vector<SpiffeIdPattern>{*SpiffeIdPattern::Parse("spiffe://example.org/ns/other/*")}));
  ExpectRefusedWithNoBytes(backend);
  EXPECT_EQ(backend.accepted(), 2);
  EXPECT_EQ(server_->counters().denied.load(), 1u);
  EXPECT_EQ(server_->counters().resumed_handshakes.load(), 1u);  // its ticket was dropped
}

TEST_F(EngineTest, LargeTransferBothWaysArrivesIntact) {
  // 200 MB each way; the vm tier (an emulated CPU) sets a smaller size.
  const char* mb = getenv("KTRUST_TEST_TRANSFER_MB");
  const size_t kSize = static_cast<size_t>(mb ? atoi(mb) : 200) << 20;
  const std::string upload = testing::RandomBytes(kSize, 1);
  const std::string download = testing::RandomBytes(kSize, 2);
  std::promise<std::string> backend_got;
  TestBackend backend([&](int fd, TestBackend& self) {
    std::thread sender([&] {
      SendAll(fd, download.data(), download.size());
      shutdown(fd, SHUT_WR);
    });
    std::string got;
    got.reserve(kSize);
    ReadToEof(fd, &got);
    self.AddReceived(got.size());
    sender.join();
    backend_got.set_value(testing::Sha256Hex(got));
  });
  StartPair(backend);
  UniqueFd fd = ConnectTo(entry());
  std::thread sender([&] {
    SendAll(fd.get(), upload.data(), upload.size());
    shutdown(fd.get(), SHUT_WR);
  });
  std::string got;
  got.reserve(kSize);
  EXPECT_TRUE(ReadToEof(fd.get(), &got));
  sender.join();
  EXPECT_EQ(got.size(), kSize);
  EXPECT_EQ(testing::Sha256Hex(got), testing::Sha256Hex(download));
  EXPECT_EQ(backend_got.get_future().get(), testing::Sha256Hex(upload));
  EXPECT_TRUE(Drained());
}

TEST_F(EngineTest, ManySmallWritesKeepTheirOrder) {
  TestBackend backend(&TestBackend::Echo);
  StartPair(backend);
  UniqueFd fd = ConnectTo(entry());
  std::string sent;
  std::thread writer([&] {
    for (int i = 0; i < 5000; ++i) {
      std::string piece = std::to_string(i) + ",";
      sent += piece;
      ASSERT_TRUE(SendAll(fd.get(), piece.data(), piece.size()));
    }
    shutdown(fd.get(), SHUT_WR);
  });
  std::string echoed;
  EXPECT_TRUE(ReadToEof(fd.get(), &echoed));
  writer.join();
  EXPECT_EQ(echoed, sent);
}

TEST_F(EngineTest, ClientHalfCloseReachesTheServerWhichCanStillAnswer) {
  TestBackend backend([](int fd, TestBackend& self) {
    std::string request;
    ReadToEof(fd, &request);  // returns only once the client's FIN came through
    self.AddReceived(request.size());
    std::string reply = "got " + std::to_string(request.size()) + " bytes";
    SendAll(fd, reply.data(), reply.size());
    shutdown(fd, SHUT_WR);
  });
  StartPair(backend);
  UniqueFd fd = ConnectTo(entry());
  ASSERT_TRUE(SendAll(fd.get(), "request body", 12));
  ASSERT_EQ(shutdown(fd.get(), SHUT_WR), 0);
  std::string reply;
  EXPECT_TRUE(ReadToEof(fd.get(), &reply));
  EXPECT_EQ(reply, "got 12 bytes");
  EXPECT_TRUE(Drained());
}

TEST_F(EngineTest, ServerHalfCloseReachesTheClientWhichCanStillSend) {
  // Server speaks first and closes its side; the client answers afterwards.
  std::promise<std::string> backend_got;
  TestBackend backend([&](int fd, TestBackend&) {
    SendAll(fd, "banner", 6);
    shutdown(fd, SHUT_WR);
    std::string rest;
    ReadToEof(fd, &rest);
    backend_got.set_value(rest);
  });
  StartPair(backend);
  UniqueFd fd = ConnectTo(entry());
  std::string banner;
  EXPECT_TRUE(ReadToEof(fd.get(), &banner));
  EXPECT_EQ(banner, "banner");
  ASSERT_TRUE(SendAll(fd.get(), "late reply", 10));
  shutdown(fd.get(), SHUT_WR);
  EXPECT_EQ(backend_got.get_future().get(), "late reply");
  EXPECT_TRUE(Drained());
}

TEST_F(EngineTest, ServerResetReachesTheClientAsReset) {
  TestBackend backend([](int fd, TestBackend&) {
    std::string got;
    ReadExactly(fd, 4, &got);
    linger lg{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  });
  StartPair(backend);
  UniqueFd fd = ConnectTo(entry());
  ASSERT_TRUE(SendAll(fd.get(), "ping", 4));
  int err = 0;
  EXPECT_FALSE(ReadToEof(fd.get(), nullptr, &err));
  EXPECT_EQ(err, ECONNRESET);
  EXPECT_TRUE(Drained());
}

TEST_F(EngineTest, ClientResetReachesTheServerAsReset) {
  std::promise<int> backend_err;
  TestBackend backend([&](int fd, TestBackend&) {
    std::string got;
    ReadExactly(fd, 4, &got);
    SendAll(fd, "pong", 4);
    int err = 0;
    bool eof = ReadToEof(fd, nullptr, &err);
    backend_err.set_value(eof ? 0 : err);
  });
  StartPair(backend);
  UniqueFd fd = ConnectTo(entry());
  ASSERT_TRUE(SendAll(fd.get(), "ping", 4));
  std::string pong;
  ASSERT_TRUE(ReadExactly(fd.get(), 4, &pong));
  testing::CloseWithReset(std::move(fd));
  EXPECT_EQ(backend_err.get_future().get(), ECONNRESET);
  EXPECT_TRUE(Drained());
}

TEST_F(EngineTest, ThousandSequentialConnections) {
  TestBackend backend(&TestBackend::Echo);
  StartPair(backend);
  for (int i = 0; i < 1000; ++i) {
    UniqueFd fd = ConnectTo(entry());
    ASSERT_TRUE(fd.valid()) << "connection " << i << ": " << strerror(errno);
    std::string msg = "conn " + std::to_string(i);
    ASSERT_TRUE(SendAll(fd.get(), msg.data(), msg.size()));
    shutdown(fd.get(), SHUT_WR);
    std::string echoed;
    ASSERT_TRUE(ReadToEof(fd.get(), &echoed)) << i;
    ASSERT_EQ(echoed, msg);
  }
  EXPECT_EQ(backend.accepted(), 1000);
  EXPECT_TRUE(Drained());
  EXPECT_EQ(client_->counters().established.load(), 1000u);
  EXPECT_EQ(client_->counters().errors.load(), 0u);
}

TEST_F(EngineTest, TwoHundredConcurrentConnections) {
  TestBackend backend(&TestBackend::Echo);
  StartPair(backend);
  std::vector<UniqueFd> fds;
  for (int i = 0; i < 200; ++i) {
    fds.push_back(ConnectTo(entry()));
    ASSERT_TRUE(fds.back().valid()) << "connection " << i << ": " << strerror(errno);
  }
  for (int i = 0; i < 200; ++i) {
    std::string msg = "client " + std::to_string(i);
    ASSERT_TRUE(SendAll(fds[i].get(), msg.data(), msg.size()));
  }
  for (int i = 0; i < 200; ++i) {
    std::string msg = "client " + std::to_string(i);
    std::string echoed;
    ASSERT_TRUE(ReadExactly(fds[i].get(), msg.size(), &echoed)) << i;
    EXPECT_EQ(echoed, msg);
  }
  EXPECT_EQ(server_->connections().size(), 200u);
  fds.clear();
  EXPECT_TRUE(Drained());
}

// Heap in use by the whole process (every arena, and the chunks malloc
// mapped on their own).
size_t HeapInUse() {
  struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
}

// Descriptors this process holds (both engines, the backend, the clients).
int OpenDescriptors() {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    (void)entry;
    ++n;
  }
  return n;
}

// Idle connections hold no buffers (OpenSSL's are released when empty, the
// copy pumps read into their loop's scratch buffer, the splice pumps borrow
// their loop's pipes), on kernel TLS not even OpenSSL's session; and taking
// buffers again when data moves again loses and mixes up nothing. A
// connection whose SSL was freed still lists its identities and closes
// cleanly.
TEST_F(EngineTest, IdleConnectionsGiveUpTheirBuffersAndStillCarryData) {
  TestBackend backend(&TestBackend::Echo);
  auto closed = std::make_shared<ClosedList>();
  PairOptions p;
  p.options.on_closed = closed->Hook();
  StartPair(backend, p);
  const bool ktls = ExpectedDataPath() == "ktls-sw";
  ExpectEchoedThroughThePair("warm-up");  // one-time allocations out of the count
  ASSERT_TRUE(Drained());
  constexpr int kConnections = 200;
  // Larger than a TLS record and than a pump's scratch buffer, and
  // different on every connection and in every round.
  auto payload = [](int connection, int round) {
    std::string text(100 * 1024, '\0');
    for (size_t i = 0; i < text.size(); ++i) {
      text[i] = static_cast<char>('a' + (i * 7 + connection * 13 + round * 29) % 26);
    }
    return text;
  };
  size_t before = HeapInUse();
  int descriptors_before = OpenDescriptors();
  std::vector<UniqueFd> fds;
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < kConnections; ++i) {
      if (round == 0) {
        fds.push_back(ConnectTo(entry()));
        ASSERT_TRUE(fds.back().valid()) << "connection " << i << ": " << strerror(errno);
      }
      std::string sent = payload(i, round);
      ASSERT_TRUE(SendAll(fds[i].get(), sent.data(), sent.size())) << i;
      std::string echoed;
      ASSERT_TRUE(ReadExactly(fds[i].get(), sent.size(), &echoed)) << i;
      ASSERT_TRUE(echoed == sent) << "connection " << i << ", round " << round
                                  << ": the echo differs from what was sent";
    }
    // Every byte went through both engines: once their pumps wait again,
    // a connection costs each engine its bookkeeping and, on the userspace
    // record layer, OpenSSL's session (about 22 KiB; with a 64 KiB buffer
    // per direction and OpenSSL's two record buffers it was over 160 KiB).
    // On kernel TLS the SSL is gone (about 9 KiB with it, 22 with its
    // peer certificate as OpenSSL parsed it).
    const size_t max_per_connection_per_engine = ktls ? 8 * 1024 : 32 * 1024;
    size_t per_connection = 0;
    bool small = Eventually([&] {
      size_t now = HeapInUse();
      per_connection = now > before ? (now - before) / kConnections / 2 : 0;
      return per_connection < max_per_connection_per_engine;
    });
    std::printf("round %d (%s): %zu bytes of heap per idle connection per engine\n", round,
                ktls ? "kernel TLS" : "userspace", per_connection);
    EXPECT_TRUE(small) << "round " << round << ": " << per_connection
                       << " bytes of heap per idle connection per engine, over "
                       << max_per_connection_per_engine;
    // Two sockets in each engine, the client's and the backend's: no pipe
    // stays with an idle connection (on kernel TLS there were two each).
    int per_connection_fds = 0;
    bool few = Eventually([&] {
      per_connection_fds = (OpenDescriptors() - descriptors_before) / kConnections;
      return per_connection_fds <= 6;
    });
    std::printf("round %d: %d descriptors per idle connection (client, backend, 2 per engine)\n",
                round, per_connection_fds);
    EXPECT_TRUE(few) << per_connection_fds << " descriptors per idle connection, over 6";
  }
  // What `ktrust conns` lists: the identities outlive the SSL.
  for (Engine* engine : {client_.get(), server_.get()}) {
    std::vector<ConnectionSnapshot> rows = engine->connections().Snapshot();
    ASSERT_EQ(rows.size(), static_cast<size_t>(kConnections));
    bool outbound = engine == client_.get();
    for (const ConnectionSnapshot& row : rows) {
      EXPECT_EQ(row.info.local_id, outbound ? kClientId : kServerId);
      EXPECT_EQ(row.info.peer_id, outbound ? kServerId : kClientId);
      EXPECT_EQ(row.info.cipher, "TLS_AES_128_GCM_SHA256");
      EXPECT_EQ(row.info.tls_version, "TLSv1.3");
      EXPECT_EQ(row.info.data_path, ExpectedDataPath());
    }
  }
  EXPECT_EQ(client_->counters().errors.load(), 0u);
  // Closed by the clients: each end says close_notify (kernel TLS, without
  // OpenSSL) and every connection ends as a clean one on both engines.
  for (UniqueFd& fd : fds) shutdown(fd.get(), SHUT_WR);
  for (int i = 0; i < kConnections; ++i) {
    std::string rest;
    ASSERT_TRUE(ReadToEof(fds[i].get(), &rest)) << i;
    EXPECT_EQ(rest, "") << i;
  }
  fds.clear();
  EXPECT_TRUE(Drained());
  std::lock_guard<std::mutex> lock(closed->mu);
  int clean = 0;
  for (const ClosedConnection& c : closed->list) {
    if (c.result.reason == CloseReason::kOk) {
      ++clean;
    } else {
      ADD_FAILURE() << DirectionName(c.direction) << " connection ended " << c.result.code() << ": "
                    << c.reason;
    }
  }
  EXPECT_EQ(clean, 2 * (kConnections + 1));  // and the warm-up's, on both engines
  EXPECT_EQ(client_->counters().errors.load(), 0u);
  EXPECT_EQ(server_->counters().errors.load(), 0u);
}

TEST_F(EngineTest, ClientFromAnotherCaNeverReachesTheApplication) {
  TestBackend backend(&TestBackend::Echo);
  auto rogue = *CertificateAuthority::CreateRoot(*TrustDomain::Parse("example.org"),
                                                 kDefaultRootValidity, absl::Now());
  PairOptions p;
  p.client_svid = std::make_shared<const Svid>(
      *rogue.IssueSvid(*SpiffeId::Parse(kClientId), absl::Hours(1), absl::Now()));
  StartPair(backend, p);
  ExpectRefusedWithNoBytes(backend);
  EXPECT_EQ(server_->counters().handshake_failures.load(), 1u);
}

TEST_F(EngineTest, ExpiredClientNeverReachesTheApplication) {
  TestBackend backend(&TestBackend::Echo);
  PairOptions p;
  absl::Time then = absl::Now() - absl::Hours(3);
  p.client_svid = std::make_shared<const Svid>(
      *ca_.IssueSvid(*SpiffeId::Parse(kClientId), absl::Hours(1), then));
  StartPair(backend, p);
  ExpectRefusedWithNoBytes(backend);
}

TEST_F(EngineTest, DeniedByPolicyNeverReachesTheApplication) {
  TestBackend backend(&TestBackend::Echo);
  PairOptions p;
  p.allow = {"spiffe://example.org/ns/other/*"};
  StartPair(backend, p);
  ExpectRefusedWithNoBytes(backend);
  EXPECT_EQ(server_->counters().denied.load(), 1u);
  EXPECT_EQ(client_->counters().errors.load(), 1u);
}

TEST_F(EngineTest, TighterPolicyClosesLiveConnectionsItNowDenies) {
  TestBackend backend([](int fd, TestBackend& self) {
    std::string got;
    while (ReadExactly(fd, 1, &got)) {
      self.AddReceived(1);
      SendAll(fd, got.data(), 1);
    }
  });
  StartPair(backend);
  UniqueFd fd = ConnectTo(entry());
  std::string reply;
  ASSERT_TRUE(SendAll(fd.get(), "a", 1));
  ASSERT_TRUE(ReadExactly(fd.get(), 1, &reply));

  // A policy that allows only another namespace: the live connection is
  // closed on the next tick, and the denial is counted.
  server_->SetAuthorizer(std::make_shared<AllowListAuthorizer>(
      std::vector<SpiffeIdPattern>{*SpiffeIdPattern::Parse("spiffe://example.org/ns/other/*")}));
  std::string after;
  int err = 0;
  bool eof = ReadToEof(fd.get(), &after, &err);
  EXPECT_TRUE(eof || err == ECONNRESET) << strerror(err);
  EXPECT_EQ(after, "");
  EXPECT_EQ(server_->counters().denied.load(), 1u);
  EXPECT_TRUE(Drained());

  // A new connection is refused before the application sees it.
  UniqueFd again = ConnectTo(entry());
  SendAll(again.get(), "b", 1);
  eof = ReadToEof(again.get(), &after, &err);
  EXPECT_TRUE(eof || err == ECONNRESET) << strerror(err);
  EXPECT_EQ(after, "");
  EXPECT_TRUE(Drained());
  EXPECT_EQ(backend.accepted(), 1);
  EXPECT_EQ(backend.bytes_received(), 1u);
  EXPECT_EQ(server_->counters().denied.load(), 2u);
}

TEST_F(EngineTest, ImpostorServerIsRefusedByTheClientEngine) {
  TestBackend backend(&TestBackend::Echo);
  PairOptions p;
  p.expect_server = *SpiffeIdPattern::Parse("spiffe://example.org/ns/db/*");
  StartPair(backend, p);
  ExpectRefusedWithNoBytes(backend);
  EXPECT_EQ(client_->counters().handshake_failures.load(), 1u);
}

TEST_F(EngineTest, TlsClientWithoutCertificateNeverReachesTheApplication) {
  TestBackend backend(&TestBackend::Echo);
  StartPair(backend);
  // A standard TLS 1.3 client that presents no certificate.
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  SslPtr ssl(SSL_new(ctx.get()));
  UniqueFd fd = ConnectTo(wire_);
  SSL_set_fd(ssl.get(), fd.get());
  SSL_connect(ssl.get());  // TLS 1.3: completes before the server judges us
  SSL_write(ssl.get(), "GET / HTTP/1.0\r\n\r\n", 18);
  char buf[64];
  EXPECT_LE(SSL_read(ssl.get(), buf, sizeof(buf)), 0);
  ERR_clear_error();
  EXPECT_TRUE(Drained());
  EXPECT_EQ(backend.accepted(), 0);
  EXPECT_EQ(server_->counters().handshake_failures.load(), 1u);
}

TEST_F(EngineTest, GarbageOnTheTlsPortIsDroppedAndTheEngineCarriesOn) {
  TestBackend backend(&TestBackend::Echo);
  StartPair(backend);
  {
    UniqueFd fd = ConnectTo(wire_);
    SendAll(fd.get(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27);
    std::string got;
    int err = 0;
    ReadToEof(fd.get(), &got, &err);
    // At most a TLS alert comes back, never an HTTP answer.
    EXPECT_EQ(got.find("HTTP"), std::string::npos);
  }
  {
    UniqueFd fd = ConnectTo(wire_);
    std::string noise = testing::RandomBytes(100000, 7);
    SendAll(fd.get(), noise.data(), noise.size());
    ReadToEof(fd.get(), nullptr);
  }
  EXPECT_EQ(backend.accepted(), 0);
  EXPECT_EQ(server_->counters().plaintext_accepted.load(), 0u);
  // Still serving.
  UniqueFd fd = ConnectTo(entry());
  ASSERT_TRUE(SendAll(fd.get(), "ok?", 3));
  std::string reply;
  ASSERT_TRUE(ReadExactly(fd.get(), 3, &reply));
  EXPECT_EQ(reply, "ok?");
}

TEST_F(EngineTest, SilentClientIsDroppedAtTheHandshakeTimeout) {
  TestBackend backend(&TestBackend::Echo);
  PairOptions p;
  p.options.handshake_timeout = absl::Seconds(1);
  StartPair(backend, p);
  UniqueFd fd = ConnectTo(wire_);
  absl::Time start = absl::Now();
  int err = 0;
  std::string got;
  bool eof = ReadToEof(fd.get(), &got, &err);
  EXPECT_TRUE(eof || err == ECONNRESET) << strerror(err);
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_EQ(server_->counters().handshake_failures.load(), 1u);
  // An enforce listener never takes silence for a plaintext protocol.
  EXPECT_EQ(backend.accepted(), 0);
}

TEST_F(EngineTest, ConnectionsOverTheLimitAreRefusedAtOnce) {
  TestBackend backend(&TestBackend::Echo);
  PairOptions p;
  p.options.max_connections = 2;
  p.options.loops = 1;
  StartPair(backend, p);
  UniqueFd a = ConnectTo(entry());
  UniqueFd b = ConnectTo(entry());
  ASSERT_TRUE(SendAll(a.get(), "a", 1) && SendAll(b.get(), "b", 1));
  std::string reply;
  ASSERT_TRUE(ReadExactly(a.get(), 1, &reply));
  ASSERT_TRUE(ReadExactly(b.get(), 1, &reply));
  // The engine resets the third connection at accept; a slow client may
  // see the reset already at connect().
  UniqueFd c = ConnectTo(entry());
  int err = errno;
  if (c.valid()) {
    EXPECT_FALSE(ReadToEof(c.get(), nullptr, &err));
  }
  EXPECT_TRUE(err == ECONNRESET || err == ECONNREFUSED) << strerror(err);
  EXPECT_EQ(client_->counters().refused_limit.load(), 1u);
}

// Finding 7 of issue 10: idle inbound clients filled the one handshake
// budget the engine had, and the local workloads' outbound connections were
// refused. Inbound and outbound now have budgets of their own.
TEST_F(EngineTest, IdleInboundClientsFillingTheirBudgetDoNotStopOutboundConnections) {
  TestBackend backend(&TestBackend::Echo);
  PairOptions p;
  p.client_inbound = true;
  p.options.loops = 1;
  p.options.max_inbound_handshakes = 4;
  p.options.max_outbound_handshakes = 4;
  StartPair(backend, p);
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 4; ++i) idle.push_back(IdleClient(client_inbound()));
  ASSERT_TRUE(Eventually([&] { return client_->counters().handshaking.load() == 4; }));
  // The inbound budget is full; a local workload's outbound connection
  // still goes through.
  ExpectEchoedThroughThePair("out");
  EXPECT_EQ(client_->counters().refused_outbound_handshakes.load(), 0u);
  EXPECT_EQ(client_->counters().refused_limit.load(), 0u);
  // It took no inbound client's slot: those are for inbound clients.
  EXPECT_EQ(client_->counters().handshaking_inbound.load(), 4u);
  EXPECT_EQ(client_->counters().evicted_handshakes.load(), 0u);
}

// One source may hold only so many pending handshakes; another source is
// still served.
TEST_F(EngineTest, PendingHandshakesPerSourceAreCappedAndOtherSourcesStillServed) {
  TestBackend backend(&TestBackend::Echo);
  CaptureLog();
  PairOptions p;
  p.options.loops = 2;  // the cap is the engine's, not each loop's
  p.options.max_handshakes_per_source = 3;
  StartPair(backend, p);
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 3; ++i) idle.push_back(IdleClient(wire_, "127.0.0.2"));
  ASSERT_TRUE(Eventually([&] { return server_->counters().handshaking.load() == 3; }));
  UniqueFd over = RefusedClient(wire_, "127.0.0.2");
  ASSERT_TRUE(
      Eventually([&] { return server_->counters().refused_source_handshakes.load() == 1; }));
  ExpectClosedWithNoBytes(over.get());
  std::vector<nlohmann::json> refused = log_->Events("connection_refused");
  ASSERT_EQ(refused.size(), 1u);
  EXPECT_EQ(refused[0].value("result", ""), "source_handshake_limit");
  EXPECT_EQ(refused[0].value("source", ""), "127.0.0.2");
  EXPECT_EQ(refused[0].value("reason", ""), "too many pending handshakes from 127.0.0.2 (limit 3)");

  // The client engine dials from 127.0.0.1: served, and the held three of
  // 127.0.0.2 are untouched.
  UniqueFd fd = ConnectTo(entry());
  ASSERT_TRUE(SendAll(fd.get(), "hi", 2));
  std::string reply;
  ASSERT_TRUE(ReadExactly(fd.get(), 2, &reply));
  EXPECT_EQ(reply, "hi");
  EXPECT_EQ(server_->counters().handshaking_inbound.load(), 3u);
  EXPECT_EQ(backend.accepted(), 1);
}

// Finding 7 of issue 10: idle clients from enough sources (each under its
// cap) filled the inbound budget, and every new inbound client, allowed ones
// included, was refused until the idle ones timed out. Now the client that
// has waited longest without sending a byte is evicted for the new one; a
// source at its cap is still refused outright and evicts nobody.
TEST_F(EngineTest, FullInboundBudgetEvictsTheLongestSilentClientForANewOne) {
  TestBackend backend(&TestBackend::Echo);
  CaptureLog();
  auto closed = std::make_shared<ClosedList>();
  PairOptions p;
  p.options.loops = 1;  // one loop's accept order: idle[0] is the oldest
  p.options.max_inbound_handshakes = 8;
  p.options.max_handshakes_per_source = 1;
  // Long enough that no idle client times out while the test runs.
  p.options.handshake_timeout = absl::Seconds(60);
  p.options.first_byte_timeout = absl::Seconds(60);
  p.options.on_closed = closed->Hook();
  StartPair(backend, p);
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 8; ++i) {
    idle.push_back(IdleClient(wire_, absl::StrCat("127.0.0.", 2 + i).c_str()));
    ASSERT_TRUE(Eventually([&] { return server_->counters().accepted.load() == i + 1u; }));
  }
  ASSERT_EQ(server_->counters().handshaking_inbound.load(), 8u);

  // A source at its cap is refused and takes nobody's place.
  UniqueFd capped = RefusedClient(wire_, "127.0.0.2");
  ExpectClosedWithNoBytes(capped.get());
  EXPECT_EQ(server_->counters().refused_source_handshakes.load(), 1u);
  EXPECT_EQ(server_->counters().evicted_handshakes.load(), 0u);

  // The allowed client (from 127.0.0.1) is served...
  ExpectEchoedThroughThePair("in");
  if (HasFatalFailure()) return;
  EXPECT_EQ(backend.accepted(), 1);
  // ...in the place of the oldest idle client, which got not one byte.
  ExpectClosedWithNoBytes(idle[0].get());
  EXPECT_EQ(server_->counters().evicted_handshakes.load(), 1u);
  EXPECT_EQ(server_->counters().refused_inbound_handshakes.load(), 0u);
  for (size_t i = 1; i < idle.size(); ++i) {
    pollfd pfd{idle[i].get(), POLLIN, 0};
    EXPECT_EQ(poll(&pfd, 1, 0), 0) << "idle client " << i << " was closed too";
  }
  EXPECT_EQ(server_->counters().handshaking_inbound.load(), 7u);
  // The evicted one (the capped one was refused at accept, before it was a
  // connection). The allowed client's connection may have ended too by now
  // (the echo closed it), on both engines, as "ok".
  ASSERT_TRUE(Eventually([&] {
    std::lock_guard<std::mutex> lock(closed->mu);
    return std::any_of(closed->list.begin(), closed->list.end(), [](const ClosedConnection& c) {
      return c.result.reason == CloseReason::kEvictedHandshake;
    });
  }));
  {
    std::lock_guard<std::mutex> lock(closed->mu);
    for (const auto& c : closed->list) {
      if (c.result.reason == CloseReason::kEvictedHandshake) continue;
      EXPECT_EQ(c.result.code(), "ok") << DirectionName(c.direction) << ": " << c.reason;
    }
  }
  std::lock_guard<std::mutex> lock(closed->mu);
  auto evicted = std::find_if(
      closed->list.begin(), closed->list.end(),
      [](const ClosedConnection& c) { return c.result.reason == CloseReason::kEvictedHandshake; });
  ASSERT_NE(evicted, closed->list.end());
  EXPECT_EQ(evicted->bytes_to_wire + evicted->bytes_from_wire, 0u);
  EXPECT_THAT(evicted->reason,
              ::testing::HasSubstr("the inbound handshake budget (limit 8) was full"));
  EXPECT_THAT(evicted->reason, ::testing::HasSubstr("sent nothing"));
  EXPECT_EQ(evicted->info.wire_peer.rfind("127.0.0.2:", 0), 0u) << evicted->info.wire_peer;
  // One log line, with the reason.
  std::vector<nlohmann::json> failed = log_->Events("connection_failed");
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].value("result", ""), "evicted_handshake");
  EXPECT_EQ(failed[0].value("reason", ""), evicted->reason);
}

// A client that connects and closes without a byte (a TCP port probe) was
// refused by nobody: it ends as client_closed, without a handshake failure
// or a connection_failed warning (it was logged as connection_failed,
// result connection_closed: a failed handshake).
TEST_F(EngineTest, ClientThatClosesBeforeItsHandshakeIsNotAFailure) {
  TestBackend backend(&TestBackend::Echo);
  CaptureLog();
  auto closed = std::make_shared<ClosedList>();
  PairOptions p;
  p.options.on_closed = closed->Hook();
  StartPair(backend, p);
  UniqueFd probe = ConnectTo(wire_);
  ASSERT_TRUE(probe.valid()) << strerror(errno);
  probe.Reset();
  ASSERT_TRUE(Eventually([&] {
    std::lock_guard<std::mutex> lock(closed->mu);
    return !closed->list.empty();
  }));
  {
    std::lock_guard<std::mutex> lock(closed->mu);
    ASSERT_EQ(closed->list.size(), 1u);
    EXPECT_EQ(closed->list[0].result.code(), "client_closed") << closed->list[0].reason;
    EXPECT_FALSE(closed->list[0].result.refusal());
  }
  EXPECT_EQ(server_->counters().handshake_failures.load(), 0u);
  EXPECT_TRUE(log_->Events("connection_failed").empty());
  // And the pair still serves.
  ExpectEchoedThroughThePair("after the probe");
  EXPECT_EQ(backend.accepted(), 1);
}

// The same with clients that each sent the first byte of a ClientHello and
// stalled (a slow drip keeps first_byte_timeout away): the longest-pending
// one is evicted, and the allowed client is served.
TEST_F(EngineTest, FullInboundBudgetOfStalledHandshakesStillServesANewClient) {
  TestBackend backend(&TestBackend::Echo);
  PairOptions p;
  p.options.loops = 1;  // a loop evicts from its own pending handshakes
  p.options.max_inbound_handshakes = 8;
  p.options.handshake_timeout = absl::Seconds(60);
  StartPair(backend, p);
  std::vector<UniqueFd> stalled;
  for (int i = 0; i < 8; ++i) {
    stalled.push_back(IdleClient(wire_, absl::StrCat("127.0.0.", 2 + i).c_str()));
    ASSERT_TRUE(SendAll(stalled.back().get(), "\x16", 1));
  }
  ASSERT_TRUE(Eventually([&] { return server_->counters().handshaking_inbound.load() == 8; }));
  ExpectEchoedThroughThePair("in");
  if (HasFatalFailure()) return;
  EXPECT_EQ(server_->counters().evicted_handshakes.load(), 1u);
  // Exactly one of them was closed, without a byte of the application.
  std::vector<pollfd> fds;
  for (const auto& s : stalled) fds.push_back({s.get(), POLLIN, 0});
  ASSERT_TRUE(Eventually([&] { return poll(fds.data(), fds.size(), 0) >= 1; }));
  EXPECT_EQ(poll(fds.data(), fds.size(), 0), 1);
  for (size_t i = 0; i < fds.size(); ++i) {
    if (fds[i].revents != 0) ExpectClosedWithNoBytes(stalled[i].get());
  }
  EXPECT_EQ(backend.accepted(), 1);
}

// A client that sends nothing is dropped at first_byte_timeout, one that
// started its ClientHello only at handshake_timeout.
TEST_F(EngineTest, SilentClientIsDroppedAtTheFirstByteTimeout) {
  TestBackend backend(&TestBackend::Echo);
  CaptureLog();
  std::mutex mu;
  std::vector<ClosedConnection> closed;
  PairOptions p;
  p.options.first_byte_timeout = absl::Seconds(1);
  p.options.handshake_timeout = absl::Seconds(3);
  p.options.on_closed = [&](const ClosedConnection& c) {
    std::lock_guard<std::mutex> lock(mu);
    closed.push_back(c);
  };
  StartPair(backend, p);
  UniqueFd silent = IdleClient(wire_);
  UniqueFd slow = IdleClient(wire_);
  // A TLS handshake record's first byte, and no more.
  ASSERT_TRUE(SendAll(slow.get(), "\x16", 1));
  ExpectClosedWithNoBytes(silent.get());
  ExpectClosedWithNoBytes(slow.get());
  ASSERT_TRUE(Eventually([&] {
    std::lock_guard<std::mutex> lock(mu);
    return closed.size() == 2;
  }));
  std::vector<std::string> results;
  for (const auto& c : closed) results.push_back(std::string(c.result.code()));
  EXPECT_THAT(results, ::testing::UnorderedElementsAre("first_byte_timeout", "handshake_timeout"));
  for (const auto& c : closed) {
    if (c.result.reason == CloseReason::kFirstByteTimeout) {
      EXPECT_EQ(c.reason, "the client sent nothing within 1s of connecting");
    }
  }
  EXPECT_EQ(server_->counters().handshake_failures.load(), 2u);
  EXPECT_EQ(server_->counters().handshaking.load(), 0u);
  EXPECT_EQ(backend.accepted(), 0);
}

// permissive: a client outside the mesh that speaks plaintext reaches the
// application, and the agent says so.
TEST_F(EngineTest, PermissiveListenerCarriesAPlaintextClientAndLogsIt) {
  TestBackend backend([](int fd, TestBackend& self) {
    std::string got;
    if (!ReadExactly(fd, 5, &got)) return;
    self.AddReceived(got.size());
    SendAll(fd, got.data(), got.size());
    ReadToEof(fd, nullptr);  // until the client's FIN came through
  });
  CaptureLog();
  PairOptions p;
  p.permissive = true;
  StartPair(backend, p);
  UniqueFd fd = ConnectTo(wire_);  // no TLS at all
  ASSERT_TRUE(fd.valid());
  auto client_address = SocketAddress::LocalOf(fd.get());
  ASSERT_TRUE(client_address.ok());
  ASSERT_TRUE(SendAll(fd.get(), "hello", 5));
  std::string reply;
  ASSERT_TRUE(ReadExactly(fd.get(), 5, &reply));
  EXPECT_EQ(reply, "hello");

  auto in = server_->connections().Snapshot();
  ASSERT_EQ(in.size(), 1u);
  EXPECT_EQ(in[0].info.data_path, "plaintext");
  EXPECT_EQ(in[0].state, ConnectionState::kEstablished);
  EXPECT_EQ(in[0].info.peer_id, "");
  EXPECT_EQ(in[0].info.cipher, "");
  EXPECT_EQ(in[0].info.wire_peer, client_address->ToString());
  EXPECT_EQ(in[0].info.app_address, backend.address().ToString());

  // The client's FIN reaches the application, whose close comes back.
  ASSERT_EQ(shutdown(fd.get(), SHUT_WR), 0);
  std::string rest;
  EXPECT_TRUE(ReadToEof(fd.get(), &rest));
  EXPECT_EQ(rest, "");
  EXPECT_TRUE(Drained());
  EXPECT_EQ(backend.bytes_received(), 5u);
  EXPECT_EQ(server_->counters().plaintext_accepted.load(), 1u);
  EXPECT_EQ(server_->counters().handshaking.load(), 0u);
  EXPECT_EQ(server_->counters().authorizations.load(), 0u);

  std::vector<nlohmann::json> closed = log_->Events("connection_closed");
  ASSERT_EQ(closed.size(), 1u);
  EXPECT_EQ(closed[0].value("result", ""), "plaintext_client");
  EXPECT_EQ(closed[0].value("data_path", ""), "plaintext");
  EXPECT_EQ(closed[0].value("wire_peer", ""), client_address->ToString());
  EXPECT_EQ(closed[0].value("bytes_from_wire", 0), 5);
  EXPECT_EQ(closed[0].value("bytes_to_wire", 0), 5);
  EXPECT_FALSE(closed[0].contains("peer_id"));
  EXPECT_TRUE(log_->Events("connection_failed").empty());
}

// A server that speaks first: its plaintext client sends nothing until it
// has read the banner. The listener stops waiting for a ClientHello.
TEST_F(EngineTest, PermissiveListenerGivesASilentPlaintextClientTheServersBanner) {
  std::promise<std::string> backend_got;
  TestBackend backend([&](int fd, TestBackend& self) {
    SendAll(fd, "220 ready\r\n", 11);
    std::string got;
    ReadToEof(fd, &got);
    self.AddReceived(got.size());
    backend_got.set_value(got);
  });
  CaptureLog();
  PairOptions p;
  p.permissive = true;
  StartPair(backend, p);
  UniqueFd fd = ConnectTo(wire_);
  ASSERT_TRUE(fd.valid());
  std::string banner;
  ASSERT_TRUE(ReadExactly(fd.get(), 11, &banner));
  EXPECT_EQ(banner, "220 ready\r\n");
  ASSERT_TRUE(SendAll(fd.get(), "QUIT\r\n", 6));
  ASSERT_EQ(shutdown(fd.get(), SHUT_WR), 0);
  EXPECT_EQ(backend_got.get_future().get(), "QUIT\r\n");
  EXPECT_TRUE(ReadToEof(fd.get(), nullptr));
  EXPECT_TRUE(Drained());
  EXPECT_EQ(server_->counters().plaintext_accepted.load(), 1u);
  std::vector<nlohmann::json> closed = log_->Events("connection_closed");
  ASSERT_EQ(closed.size(), 1u);
  EXPECT_EQ(closed[0].value("result", ""), "plaintext_client");
  EXPECT_THAT(closed[0].value("reason", ""), ::testing::HasSubstr("sent nothing within 200ms"));
}

// permissive does not weaken anything for a client that speaks TLS.
TEST_F(EngineTest, PermissiveListenerStillVerifiesAndAuthorizesTlsClients) {
  TestBackend backend(&TestBackend::Echo);
  PairOptions p;
  p.permissive = true;
  StartPair(backend, p);
  UniqueFd fd = ConnectTo(entry());
  ASSERT_TRUE(SendAll(fd.get(), "hello", 5));
  std::string reply;
  ASSERT_TRUE(ReadExactly(fd.get(), 5, &reply));
  EXPECT_EQ(reply, "hello");
  auto in = server_->connections().Snapshot();
  ASSERT_EQ(in.size(), 1u);
  EXPECT_EQ(in[0].info.peer_id, kClientId);
  EXPECT_EQ(in[0].info.data_path, ExpectedDataPath());
  EXPECT_EQ(server_->counters().authorizations.load(), 1u);
  EXPECT_EQ(server_->counters().plaintext_accepted.load(), 0u);
}

TEST_F(EngineTest, PermissiveListenerRefusesADeniedTlsClientWithoutFallingBackToPlaintext) {
  TestBackend backend(&TestBackend::Echo);
  PairOptions p;
  p.permissive = true;
  p.allow = {"spiffe://example.org/ns/other/*"};
  StartPair(backend, p);
  ExpectRefusedWithNoBytes(backend);
  EXPECT_EQ(server_->counters().denied.load(), 1u);
  EXPECT_EQ(server_->counters().plaintext_accepted.load(), 0u);
}

TEST_F(EngineTest, PermissiveListenerRefusesATlsClientFromAnotherCa) {
  TestBackend backend(&TestBackend::Echo);
  auto rogue = *CertificateAuthority::CreateRoot(*TrustDomain::Parse("example.org"),
                                                 kDefaultRootValidity, absl::Now());
  PairOptions p;
  p.permissive = true;
  p.client_svid = std::make_shared<const Svid>(
      *rogue.IssueSvid(*SpiffeId::Parse(kClientId), absl::Hours(1), absl::Now()));
  StartPair(backend, p);
  ExpectRefusedWithNoBytes(backend);
  EXPECT_EQ(server_->counters().handshake_failures.load(), 1u);
  EXPECT_EQ(server_->counters().plaintext_accepted.load(), 0u);
}

// A pod's listeners, added while the engines run: the client app, the
// engines' other sockets and the application are all in the pod namespace.
TEST_F(EngineTest, NetnsListenersCarryMutualTlsInsideThePodNamespace) {
  TestBackend host_backend(&TestBackend::Echo);
  StartPair(host_backend);
  PodListeners pod;
  ASSERT_NO_FATAL_FAILURE(AddPodListeners(pod, [](int fd, TestBackend& self) {
    std::string got;
    if (!ReadExactly(fd, 5, &got)) return;
    self.AddReceived(got.size());
    SendAll(fd, got.data(), got.size());
    ReadToEof(fd, nullptr);
  }));
  // The listeners are in the pod namespace, not the engines' own.
  EXPECT_FALSE(ConnectTo(pod.entry()).valid());

  UniqueFd fd = ConnectInNetns(pod.netns.get(), pod.entry());
  ASSERT_TRUE(fd.valid()) << strerror(errno);
  ASSERT_TRUE(SendAll(fd.get(), "hello", 5));
  std::string reply;
  ASSERT_TRUE(ReadExactly(fd.get(), 5, &reply));
  EXPECT_EQ(reply, "hello");
  // The application exists only in the pod namespace: reaching it proves the
  // server engine dialled it from there, and the client engine reached the
  // server's pod listener from there too.
  EXPECT_EQ(pod.backend->accepted(), 1);
  EXPECT_EQ(host_backend.accepted(), 0);

  auto out = client_->connections().Snapshot();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].workload, "pod-client");
  EXPECT_EQ(out[0].info.local_id, kClientId);
  EXPECT_EQ(out[0].info.peer_id, kServerId);
  EXPECT_EQ(out[0].info.wire_peer, pod.inbound.inbound_addresses.at(0).ToString());
  auto in = server_->connections().Snapshot();
  ASSERT_EQ(in.size(), 1u);
  EXPECT_EQ(in[0].workload, "pod-backend");
  EXPECT_EQ(in[0].info.local_id, kServerId);
  EXPECT_EQ(in[0].info.peer_id, kClientId);
  EXPECT_EQ(in[0].info.app_address, pod.backend->address().ToString());
  EXPECT_EQ(in[0].state, ConnectionState::kEstablished);
  fd.Reset();
  EXPECT_TRUE(Drained());

  // The engines' own listeners carry on as before.
  UniqueFd host = ConnectTo(entry());
  ASSERT_TRUE(SendAll(host.get(), "host", 4));
  ASSERT_TRUE(ReadExactly(host.get(), 4, &reply));
  EXPECT_EQ(reply, "host");
}

TEST_F(EngineTest, RemovedNetnsListenersRefuseNewConnectionsAndCloseTheirOwn) {
  TestBackend host_backend(&TestBackend::Echo);
  CaptureLog();
  StartPair(host_backend);
  PodListeners pod;
  ASSERT_NO_FATAL_FAILURE(AddPodListeners(pod, &TestBackend::Echo));
  struct stat netns_stat {};
  ASSERT_EQ(fstat(pod.netns.get(), &netns_stat), 0);
  const std::string netns_name = "net:[" + std::to_string(netns_stat.st_ino) + "]";

  // A live connection through the pod's listeners, and one through the
  // engines' own.
  UniqueFd live = ConnectInNetns(pod.netns.get(), pod.entry());
  ASSERT_TRUE(live.valid());
  std::string reply;
  ASSERT_TRUE(SendAll(live.get(), "pod", 3));
  ASSERT_TRUE(ReadExactly(live.get(), 3, &reply));
  UniqueFd host = ConnectTo(entry());
  ASSERT_TRUE(SendAll(host.get(), "host", 4));
  ASSERT_TRUE(ReadExactly(host.get(), 4, &reply));

  client_->RemoveNetnsListeners(pod.outbound.id);
  // The pod's live connection is reset, not left open...
  std::string after;
  int err = 0;
  bool eof = ReadToEof(live.get(), &after, &err);
  EXPECT_TRUE(eof || err == ECONNRESET) << strerror(err);
  EXPECT_EQ(after, "");
  // ...and nothing listens there any more.
  UniqueFd refused = ConnectInNetns(pod.netns.get(), pod.entry(), &err);
  EXPECT_FALSE(refused.valid());
  EXPECT_EQ(err, ECONNREFUSED) << strerror(err);

  // The engines' own connection and listener are untouched.
  ASSERT_TRUE(SendAll(host.get(), "still", 5));
  ASSERT_TRUE(ReadExactly(host.get(), 5, &reply));
  EXPECT_EQ(reply, "still");
  UniqueFd host_again = ConnectTo(entry());
  ASSERT_TRUE(SendAll(host_again.get(), "new", 3));
  ASSERT_TRUE(ReadExactly(host_again.get(), 3, &reply));
  EXPECT_EQ(reply, "new");

  // The server's pod listener is still there until it is removed too.
  UniqueFd direct = ConnectInNetns(pod.netns.get(), pod.inbound.inbound_addresses.at(0));
  EXPECT_TRUE(direct.valid());
  direct.Reset();
  server_->RemoveNetnsListeners(pod.inbound.id);
  refused = ConnectInNetns(pod.netns.get(), pod.inbound.inbound_addresses.at(0), &err);
  EXPECT_FALSE(refused.valid());
  EXPECT_EQ(err, ECONNREFUSED) << strerror(err);
  server_->RemoveNetnsListeners(pod.inbound.id);  // again: a no-op
  server_->RemoveNetnsListeners(12345);           // unknown: a no-op

  host.Reset();
  host_again.Reset();
  EXPECT_TRUE(Drained());
  EXPECT_EQ(pod.backend->accepted(), 1);
  std::vector<nlohmann::json> failed = log_->Events("connection_failed");
  auto removed = std::find_if(failed.begin(), failed.end(), [](const nlohmann::json& e) {
    return e.value("result", "") == "listener_removed";
  });
  ASSERT_NE(removed, failed.end());
  EXPECT_EQ(removed->value("workload", ""), "pod-client");
  EXPECT_EQ(removed->value("netns", ""), netns_name);
}

TEST_F(EngineTest, NetnsListenersNeedANamespaceAndARunningEngine) {
  TestBackend backend(&TestBackend::Echo);
  StartPair(backend);
  auto added = server_->AddNetnsListeners(NetnsListeners{});
  EXPECT_EQ(added.status().code(), absl::StatusCode::kInvalidArgument);
  // Not a namespace: refused before any listener opens.
  UniqueFd not_netns(open("/dev/null", O_RDONLY | O_CLOEXEC));
  added = server_->AddNetnsListeners(NetnsListeners{
      not_netns.get(),
      {},
      {InboundListener{*SocketAddress::Parse("127.0.0.1:0"), "x",
                       [] { return std::shared_ptr<const Svid>(); }, std::nullopt}}});
  EXPECT_FALSE(added.ok());
  UniqueFd netns = NewNetns();
  server_->Stop();
  added = server_->AddNetnsListeners(NetnsListeners{netns.get(), {}, {}});
  EXPECT_EQ(added.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace ktrust

namespace ktrust {
namespace {

// On a kernel without kTLS (the host tier) a zero-hop handshake is refused
// before the socket is connected, with the reason in words, and the
// application's socket is dead. True if that is the kernel here.
bool ExpectNoKernelTlsRefusalIfHostKernel(const InPlace& zh, const Engine& client,
                                          const Engine& server) {
  if (ProbeKtls().available) return false;
  EXPECT_FALSE(getenv("KTRUST_VM")) << "the vm tier must run on kernel TLS";
  EXPECT_EQ(zh.result.error, ECONNREFUSED);
  EXPECT_EQ(zh.result.result.code(), "no_kernel_tls");
  EXPECT_THAT(zh.result.reason, ::testing::StartsWith("no kernel TLS: "));
  EXPECT_FALSE(zh.result.proxy_only());
  ExpectDeadSocket(zh.app.get());
  // Never connected: nothing reached the server at all.
  EXPECT_EQ(server.counters().accepted.load(), 0u);
  EXPECT_EQ(client.connections().size(), 0u);
  return true;
}

TEST_F(EngineTest, ZeroHopOutboundHandsTheApplicationsOwnSocketBackWithKernelTls) {
  TestBackend backend(&TestBackend::Echo);
  Delivered delivered;
  PairOptions p;
  p.deliver = delivered.Hook();
  CaptureLog();
  StartPair(backend, p);
  InPlace zh = ConnectInPlace(*client_, wire_, Issue(kClientId));
  if (ExpectNoKernelTlsRefusalIfHostKernel(zh, *client_, *server_)) {
    auto failed = log_->Events("connection_failed");
    ASSERT_EQ(failed.size(), 1u);
    EXPECT_EQ(failed[0]["result"], "no_kernel_tls");
    EXPECT_EQ(backend.accepted(), 0);
    return;
  }
  ASSERT_EQ(zh.result.error, 0) << zh.result.reason;
  EXPECT_EQ(zh.result.result.code(), "ok");
  EXPECT_EQ(zh.result.info.peer_id, kServerId);
  EXPECT_EQ(zh.result.info.local_id, kClientId);
  EXPECT_EQ(zh.result.info.data_path, "zero-hop");
  EXPECT_EQ(zh.result.info.wire_peer, wire_.ToString());
  EXPECT_FALSE(zh.result.info.cipher.empty());
  EXPECT_NE(zh.result.socket_cookie, 0u);
  // What the agent checks again after a reload: the server's own chain.
  EXPECT_EQ(LeafIdOf(zh.result.peer), kServerId);
  // The application's blocking socket is blocking again.
  EXPECT_EQ(fcntl(zh.app.get(), F_GETFL) & O_NONBLOCK, 0);

  ConnectionInfo info;
  VerifiedPeer client_chain;
  UniqueFd server_app = delivered.Next(&info, &client_chain);
  ASSERT_TRUE(server_app.valid());
  EXPECT_EQ(info.peer_id, kClientId);
  EXPECT_EQ(LeafIdOf(client_chain), kClientId);
  EXPECT_EQ(info.data_path, "zero-hop");
  timeval tv{60, 0};
  setsockopt(server_app.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));

  // Both applications use plain send/recv; the kernel does the TLS.
  ASSERT_TRUE(SendAll(zh.app.get(), "ping", 4));
  std::string got;
  ASSERT_TRUE(ReadExactly(server_app.get(), 4, &got));
  EXPECT_EQ(got, "ping");
  ASSERT_TRUE(SendAll(server_app.get(), "pong!", 5));
  ASSERT_TRUE(ReadExactly(zh.app.get(), 5, &got));
  EXPECT_EQ(got, "pong!");

  // Neither engine carries the connection: no record, no bytes, no proxy.
  EXPECT_TRUE(Drained());
  EXPECT_EQ(backend.accepted(), 0);
  EXPECT_EQ(client_->counters().zero_hop_outbound.load(), 1u);
  EXPECT_EQ(server_->counters().zero_hop_delivered.load(), 1u);
  EXPECT_EQ(client_->counters().established.load(), 0u);
  EXPECT_EQ(server_->counters().established.load(), 0u);
  auto handed = log_->Events("connection_handed_over");
  ASSERT_EQ(handed.size(), 2u);
  for (const auto& e : handed) {
    EXPECT_EQ(e["data_path"], "zero-hop");
    EXPECT_EQ(e["bytes_to_wire"], 0);
    EXPECT_EQ(e["bytes_from_wire"], 0);
  }

  // The end rule: a FIN is a clean end on both sides (recv 0, never EIO),
  // and the other direction still works after a half-close.
  ASSERT_EQ(shutdown(zh.app.get(), SHUT_WR), 0);
  std::string rest;
  int err = 0;
  EXPECT_TRUE(ReadToEof(server_app.get(), &rest, &err)) << strerror(err);
  EXPECT_EQ(rest, "");
  ASSERT_TRUE(SendAll(server_app.get(), "bye", 3));
  server_app.Reset();
  EXPECT_TRUE(ReadToEof(zh.app.get(), &rest, &err)) << strerror(err);
  EXPECT_EQ(rest, "bye");
}

TEST_F(EngineTest, ZeroHopOutboundDeniedByTheServersPolicyFailsWithConnectionRefused) {
  TestBackend backend(&TestBackend::Echo);
  Delivered delivered;
  PairOptions p;
  p.deliver = delivered.Hook();
  p.allow = {"spiffe://example.org/ns/other/*"};
  StartPair(backend, p);
  InPlace zh = ConnectInPlace(*client_, wire_, Issue(kClientId));
  if (ExpectNoKernelTlsRefusalIfHostKernel(zh, *client_, *server_)) return;
  // TLS 1.3 completes the client's handshake before the server judged the
  // client: the acceptance record is what tells it.
  EXPECT_EQ(zh.result.error, ECONNREFUSED);
  EXPECT_EQ(zh.result.result.code(), "rejected_by_peer") << zh.result.reason;
  EXPECT_FALSE(zh.result.proxy_only());
  ExpectDeadSocket(zh.app.get());
  EXPECT_TRUE(Drained());
  EXPECT_EQ(delivered.offered(), 0);
  EXPECT_EQ(backend.accepted(), 0);
  EXPECT_EQ(server_->counters().denied.load(), 1u);
  EXPECT_EQ(client_->counters().zero_hop_outbound.load(), 0u);
}

TEST_F(EngineTest, ZeroHopOutboundToAnUnexpectedServerFailsWithConnectionRefused) {
  TestBackend backend(&TestBackend::Echo);
  Delivered delivered;
  PairOptions p;
  p.deliver = delivered.Hook();
  StartPair(backend, p);
  InPlace zh = ConnectInPlace(*client_, wire_, Issue(kClientId),
                              *SpiffeIdPattern::Parse("spiffe://example.org/ns/db/*"));
  if (ExpectNoKernelTlsRefusalIfHostKernel(zh, *client_, *server_)) return;
  EXPECT_EQ(zh.result.error, ECONNREFUSED);
  EXPECT_EQ(zh.result.result.code(), "unexpected_peer") << zh.result.reason;
  ExpectDeadSocket(zh.app.get());
  EXPECT_TRUE(Drained());
  EXPECT_EQ(delivered.offered(), 0);
  EXPECT_EQ(backend.accepted(), 0);
  EXPECT_EQ(client_->counters().handshake_failures.load(), 1u);
}

TEST_F(EngineTest, ZeroHopOutboundToAServerWithoutTheAlpnAckIsProxyOnly) {
  TestBackend backend(&TestBackend::Echo);
  StartPair(backend);
  PlainTlsServer plain(*Issue(kServerId));
  InPlace zh = ConnectInPlace(*client_, plain.address(), Issue(kClientId));
  if (ExpectNoKernelTlsRefusalIfHostKernel(zh, *client_, *server_)) {
    EXPECT_EQ(plain.handshakes(), 0);
    return;
  }
  EXPECT_EQ(zh.result.error, ECONNREFUSED);
  EXPECT_EQ(zh.result.result.code(), "not_zero_hop_capable") << zh.result.reason;
  EXPECT_TRUE(zh.result.proxy_only());
  ExpectDeadSocket(zh.app.get());
  zh.app.Reset();
  EXPECT_TRUE(Drained());
  EXPECT_EQ(plain.bytes(), 0u);
}

TEST_F(EngineTest, ZeroHopClientOfAProxiedListenerIsAcceptedAndEndsWithAFinOnly) {
  // Zero-hop is a client's offer: a listener with no deliver hook acks it,
  // says it accepted the client, proxies, and follows the FIN-only rule, on
  // either record layer. A client that does not offer it keeps close_notify.
  TestBackend backend(&TestBackend::Echo);
  CaptureLog();
  StartPair(backend);
  std::shared_ptr<const Svid> svid = Issue(kClientId);
  {
    RawTlsClient c = ConnectRawTls(wire_, *svid, /*offer_zero_hop=*/true);
    EXPECT_EQ(SelectedAlpn(c.ssl.get()), "ktrust-zh/1");
    char accepted = 0;
    ASSERT_EQ(SslRead(c.ssl.get(), &accepted, 1), 1);
    EXPECT_EQ(accepted, 0x01);
    ASSERT_EQ(SSL_write(c.ssl.get(), "hello", 5), 5);
    char buf[16];
    ASSERT_EQ(SslRead(c.ssl.get(), buf, sizeof(buf)), 5);
    EXPECT_EQ(std::string(buf, 5), "hello");
    // Our end: a bare FIN. The backend sees a clean end and half-closes,
    // which reaches us as a bare FIN too: no close_notify.
    ASSERT_EQ(shutdown(c.fd.get(), SHUT_WR), 0);
    int rc = SslRead(c.ssl.get(), buf, sizeof(buf));
    EXPECT_LE(rc, 0);
    int ssl_err = SSL_get_error(c.ssl.get(), rc);
    unsigned long lib_err = ERR_peek_error();
    EXPECT_NE(ssl_err, SSL_ERROR_ZERO_RETURN) << "a close_notify arrived";
    EXPECT_TRUE(ssl_err == SSL_ERROR_SYSCALL ||
                ERR_GET_REASON(lib_err) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
        << ssl_err << " " << ERR_error_string(lib_err, nullptr);
    ERR_clear_error();
  }
  {
    RawTlsClient c = ConnectRawTls(wire_, *svid, /*offer_zero_hop=*/false);
    EXPECT_EQ(SelectedAlpn(c.ssl.get()), "");
    ASSERT_EQ(SSL_write(c.ssl.get(), "hi", 2), 2);
    char buf[16];
    errno = 0;
    int n = SslRead(c.ssl.get(), buf, sizeof(buf));  // no acceptance record first
    ASSERT_EQ(n, 2) << SSL_get_error(c.ssl.get(), n) << " "
                    << ERR_error_string(ERR_peek_error(), nullptr) << " " << strerror(errno);
    EXPECT_EQ(std::string(buf, 2), "hi");
    ASSERT_EQ(SSL_shutdown(c.ssl.get()), 0);  // close_notify, then FIN from the backend's end
    EXPECT_EQ(SslRead(c.ssl.get(), buf, sizeof(buf)), 0);
    EXPECT_NE(SSL_get_shutdown(c.ssl.get()) & SSL_RECEIVED_SHUTDOWN, 0);
    ERR_clear_error();
  }
  EXPECT_TRUE(Drained());
  auto closed = log_->Events("connection_closed");
  int inbound_ok = 0;
  for (const auto& e : closed) {
    if (e["direction"] == "inbound" && e["result"] == "ok") ++inbound_ok;
  }
  EXPECT_EQ(inbound_ok, 2) << "a FIN-only end is clean under ktrust-zh/1";
  EXPECT_TRUE(log_->Events("connection_failed").empty());
}

TEST_F(EngineTest, ZeroHopClientOfAListenerWhoseWorkloadDeclinesIsProxied) {
  TestBackend backend(&TestBackend::Echo);
  Delivered declined;
  PairOptions p;
  p.deliver = declined.Hook(/*take=*/false);
  StartPair(backend, p);
  RawTlsClient c = ConnectRawTls(wire_, *Issue(kClientId), /*offer_zero_hop=*/true);
  char accepted = 0;
  ASSERT_EQ(SslRead(c.ssl.get(), &accepted, 1), 1);
  ASSERT_EQ(SSL_write(c.ssl.get(), "abc", 3), 3);
  char buf[16];
  ASSERT_EQ(SslRead(c.ssl.get(), buf, sizeof(buf)), 3);
  EXPECT_EQ(std::string(buf, 3), "abc");
  // Offered only where kernel TLS could be installed on the socket.
  EXPECT_EQ(declined.offered(), ProbeKtls().available ? 1 : 0);
  EXPECT_EQ(backend.accepted(), 1);
  EXPECT_EQ(server_->counters().zero_hop_delivered.load(), 0u);
}

}  // namespace
}  // namespace ktrust
