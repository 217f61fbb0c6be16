// The connection state machine on one event loop, over loopback TCP sockets,
// with real TLS peers: no engine, no listeners, no BPF, no privileges. The
// test hands each connection its accepted socket, as the engine's accept
// would, and plays the other ends itself.
#include "dataplane/connection.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <iostream>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "ktrust/identity/certificate_authority.h"
#include "unit/common/no_free_descriptors.h"
#include "unit/tls/tls_test_peers.h"

namespace ktrust {
namespace {

using testing::ConnectedTcpPair;
using testing::TcpPair;

constexpr absl::Duration kWait = absl::Seconds(10);
const char kClientId[] = "spiffe://example.org/client";
const char kServerId[] = "spiffe://example.org/server";

void SetNonblocking(int fd, bool on) {
  int flags = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK);
}

// Blocking reads in the test give up instead of hanging it.
void SetReceiveTimeout(int fd) {
  timeval tv{static_cast<time_t>(absl::ToInt64Seconds(kWait)), 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

bool Readable(int fd, absl::Duration within) {
  absl::Time deadline = absl::Now() + within;
  int r;
  do {  // EINTR: see RecvSome
    pollfd p{fd, POLLIN, 0};
    r = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now())));
  } while (r < 0 && errno == EINTR && absl::Now() < deadline);
  return r == 1;
}

// A TCP listener on 127.0.0.1: the application an inbound connection is
// delivered to, or the server an outbound one dials.
struct LoopbackListener {
  UniqueFd fd;
  SocketAddress address;

  LoopbackListener()
      : fd(testing::ListenOnLoopback()), address(*SocketAddress::LocalOf(fd.get())) {}
  // The next connection, or an invalid fd when none came within `within`.
  UniqueFd Accept(absl::Duration within = kWait) {
    if (!Readable(fd.get(), within)) return UniqueFd();
    UniqueFd conn(accept4(fd.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (conn.valid()) SetReceiveTimeout(conn.get());
    return conn;
  }
};

class FixedAuthorizer : public Authorizer {
 public:
  explicit FixedAuthorizer(bool allow) : allow_(allow) {}
  AuthorizationDecision Authorize(const AuthorizationRequest& request) const override {
    return {allow_, allow_ ? "test: allowed" : "test: " + request.peer.ToString() + " denied"};
  }

 private:
  bool allow_;
};

class ConnectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ca = CertificateAuthority::CreateRoot(*TrustDomain::Parse("example.org"),
                                               kDefaultRootValidity, absl::Now());
    ASSERT_TRUE(ca.ok()) << ca.status();
    ca_ = std::make_unique<CertificateAuthority>(*std::move(ca));
    auto trust = std::make_shared<TrustStore>();
    trust->Put(*ca_->Bundle());
    trust_ = trust;
    FillShared(shared_, &closed_);
    auto loop = EventLoop::Create(64);
    ASSERT_TRUE(loop.ok()) << loop.status();
    loop_ = *std::move(loop);
    ctx_ = std::make_unique<LoopContext>(LoopContext{*loop_, shared_, {}, {}});
    group_ = std::make_shared<ListenerGroup>();
    thread_ = std::thread([this] { loop_->Run(); });
  }

  void FillShared(Engine::Shared& shared, std::vector<ClosedConnection>* closed) {
    shared.client_tls = Context(TlsRole::kClient);
    shared.server_tls = Context(TlsRole::kServer);
    shared.authorizer = std::make_shared<FixedAuthorizer>(true);
    shared.table = std::make_shared<ConnectionTable>();
    shared.counters = std::make_shared<EngineCounters>();
    shared.use_ktls = false;  // the userspace record layer: kTLS needs TCP_ULP, not a test's
    shared.options.on_closed = [this, closed](const ClosedConnection& c) {
      absl::MutexLock lock(&mu_);
      closed->push_back(c);
    };
  }

  // As the engine stops: the loop first, then its connections. Destroyed
  // while the loop still ran, a connection's poll queued but not yet
  // submitted would complete (EBADF on its closed socket) into freed memory.
  static void StopLoop(EventLoop& loop, LoopContext& ctx, std::thread& thread) {
    loop.Stop();
    thread.join();
    std::vector<Connection*> live(ctx.connections.begin(), ctx.connections.end());
    for (Connection* c : live) c->Destroy();
  }

  void TearDown() override {
    if (successor_loop_) StopLoop(*successor_loop_, *successor_ctx_, successor_thread_);
    if (loop_) StopLoop(*loop_, *ctx_, thread_);
  }

  // A second loop with its own table and counters: another agent's engine,
  // which adopts what this one detaches.
  void StartSuccessor() {
    FillShared(successor_shared_, &successor_closed_);
    auto loop = EventLoop::Create(64);
    ASSERT_TRUE(loop.ok()) << loop.status();
    successor_loop_ = *std::move(loop);
    successor_ctx_ =
        std::make_unique<LoopContext>(LoopContext{*successor_loop_, successor_shared_, {}, {}});
    successor_thread_ = std::thread([this] { successor_loop_->Run(); });
  }

  // Detaches the loop's only connection; what Detach reported.
  absl::StatusOr<DetachedConnection> DetachOnly(absl::Duration within) {
    absl::Notification done;
    absl::StatusOr<DetachedConnection> result = absl::UnknownError("Detach did not report");
    loop_->Post([&] {
      if (ctx_->connections.size() != 1) {
        result = absl::InternalError("expected one connection");
        done.Notify();
        return;
      }
      (*ctx_->connections.begin())
          ->Detach(loop_->now() + within, [&](absl::StatusOr<DetachedConnection> r) {
            result = std::move(r);
            done.Notify();
          });
    });
    // A stalled receiver: the test plays the engine's ticker past the deadline.
    if (!done.WaitForNotificationWithTimeout(within + absl::Milliseconds(100))) {
      loop_->Post([&] {
        for (Connection* c : ctx_->connections) c->Tick(absl::Now() + within);
      });
    }
    done.WaitForNotificationWithTimeout(kWait);
    return result;
  }

  void AdoptInSuccessor(DetachedConnection moved) {
    auto carried = std::make_shared<DetachedConnection>(std::move(moved));
    successor_loop_->Post([this, carried] {
      Connection::Adopt(*successor_ctx_, std::make_shared<ListenerGroup>(), std::move(*carried));
    });
  }

  std::unique_ptr<TlsContext> Context(TlsRole role) {
    TlsContextOptions options;
    options.role = role;
    auto ctx = TlsContext::Create(options, trust_);
    EXPECT_TRUE(ctx.ok()) << ctx.status();
    return *std::move(ctx);
  }

  SvidProvider Identity(const char* id) {
    auto svid = std::make_shared<const Svid>(
        *ca_->IssueSvid(*SpiffeId::Parse(id), absl::Hours(1), absl::Now()));
    return [svid] { return svid; };
  }

  // The test's own TLS end on `fd`, handshaken (blocking afterwards).
  std::unique_ptr<TlsSession> Handshake(TlsRole role, const char* id, int fd) {
    peer_contexts_.push_back(Context(role));
    auto session = peer_contexts_.back()->NewSession(Identity(id)());
    EXPECT_TRUE(session.ok()) << session.status();
    if (!session.ok()) return nullptr;
    std::unique_ptr<TlsSession> s = *std::move(session);
    EXPECT_TRUE(s->SetFd(fd).ok());
    SetNonblocking(fd, true);
    HandshakeProgress p = HandshakeProgress::kWantRead;
    absl::Time deadline = absl::Now() + kWait;
    while (absl::Now() < deadline) {
      p = s->Handshake();
      if (p == HandshakeProgress::kDone || p == HandshakeProgress::kFailed) break;
      pollfd w{fd, static_cast<short>(p == HandshakeProgress::kWantWrite ? POLLOUT : POLLIN), 0};
      poll(&w, 1, 100);
    }
    SetNonblocking(fd, false);
    SetReceiveTimeout(fd);
    EXPECT_EQ(p, HandshakeProgress::kDone) << s->failure().explanation;
    return p == HandshakeProgress::kDone ? std::move(s) : nullptr;
  }

  // Hands `accepted` (the engine's side of a TCP pair) to a new inbound
  // connection on the loop, as the engine's accept would.
  void StartInbound(UniqueFd accepted) {
    SetNonblocking(accepted.get(), true);
    auto fd = std::make_shared<UniqueFd>(std::move(accepted));
    loop_->Post([this, fd] {
      Connection::StartInbound(*ctx_, group_, group_->inbound.at(0), std::move(*fd),
                               HandshakeSlot());
    });
  }
  void StartOutbound(UniqueFd accepted) {
    SetNonblocking(accepted.get(), true);
    auto fd = std::make_shared<UniqueFd>(std::move(accepted));
    loop_->Post([this, fd] {
      Connection::StartOutbound(*ctx_, group_, group_->outbound.at(0), std::move(*fd),
                                HandshakeSlot());
    });
  }

  // Listeners are read by the connections: set them before starting one.
  void InboundTo(const SocketAddress& application) {
    InboundListener l;
    l.workload = "web";
    l.identity = Identity(kServerId);
    l.application = application;
    group_->inbound.push_back(std::move(l));
  }
  void OutboundTo(const SocketAddress& destination) {
    OutboundListener l;
    SvidProvider identity = Identity(kClientId);
    l.route = [destination, identity](int) -> absl::StatusOr<OutboundRoute> {
      return OutboundRoute{destination, "app", identity, std::nullopt};
    };
    group_->outbound.push_back(std::move(l));
  }

  // An inbound connection to a new application: the client's TLS end and,
  // when `reaches_app`, the application's end.
  struct InboundEnds {
    LoopbackListener app;
    TcpPair wire;
    std::unique_ptr<TlsSession> client;  // on wire.client
    UniqueFd app_conn;
  };
  std::unique_ptr<InboundEnds> ConnectInbound(bool reaches_app = true) {
    auto ends = std::make_unique<InboundEnds>();
    InboundTo(ends->app.address);
    ends->wire = ConnectedTcpPair();
    StartInbound(std::move(ends->wire.server));
    ends->client = Handshake(TlsRole::kClient, kClientId, ends->wire.client.get());
    if (ends->client && reaches_app) ends->app_conn = ends->app.Accept();
    EXPECT_TRUE(ends->client && ends->app_conn.valid() == reaches_app);
    return ends;
  }

  // An outbound connection to a new server: the application's end and the
  // server's TLS end.
  struct OutboundEnds {
    LoopbackListener server;
    TcpPair app;  // the test plays app.client
    UniqueFd wire;
    std::unique_ptr<TlsSession> peer;  // on wire
  };
  std::unique_ptr<OutboundEnds> ConnectOutbound() {
    auto ends = std::make_unique<OutboundEnds>();
    OutboundTo(ends->server.address);
    ends->app = ConnectedTcpPair();
    SetReceiveTimeout(ends->app.client.get());
    StartOutbound(std::move(ends->app.server));
    ends->wire = ends->server.Accept();
    if (ends->wire.valid()) ends->peer = Handshake(TlsRole::kServer, kServerId, ends->wire.get());
    EXPECT_NE(ends->peer, nullptr) << "the connection did not reach its destination";
    return ends;
  }

  // The connection's ClosedConnection, once it has ended.
  std::optional<ClosedConnection> WaitClosed() {
    absl::MutexLock lock(&mu_);
    auto any = +[](std::vector<ClosedConnection>* closed) { return !closed->empty(); };
    if (!mu_.AwaitWithTimeout(absl::Condition(any, &closed_), kWait)) return std::nullopt;
    return closed_.front();
  }

  std::unique_ptr<CertificateAuthority> ca_;
  std::shared_ptr<const TrustStore> trust_;
  std::vector<std::unique_ptr<TlsContext>> peer_contexts_;
  Engine::Shared shared_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<LoopContext> ctx_;
  std::shared_ptr<ListenerGroup> group_;
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<ClosedConnection> closed_ ABSL_GUARDED_BY(mu_);

  Engine::Shared successor_shared_;
  std::unique_ptr<EventLoop> successor_loop_;
  std::unique_ptr<LoopContext> successor_ctx_;
  std::thread successor_thread_;
  std::vector<ClosedConnection> successor_closed_ ABSL_GUARDED_BY(mu_);
};

// The test's blocking I/O retries EINTR: a socket with SO_RCVTIMEO reports a
// signal as EINTR instead of restarting the call, and io_uring's task work
// for a closed ring interrupts the thread that made it.
ssize_t RecvSome(int fd, char* buf, size_t n) {
  ssize_t r;
  do {
    r = recv(fd, buf, n, 0);
  } while (r < 0 && errno == EINTR);
  return r;
}

// One SSL_read or SSL_write, retried while OpenSSL asks to (EINTR).
int SslIo(TlsSession& s, bool write, char* buf, int n) {
  absl::Time deadline = absl::Now() + kWait;  // SO_RCVTIMEO ends a read as WANT_READ too
  while (absl::Now() < deadline) {
    int r = write ? SSL_write(s.ssl(), buf, n) : SSL_read(s.ssl(), buf, n);
    if (r > 0) return r;
    int err = SSL_get_error(s.ssl(), r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) continue;
    return err == SSL_ERROR_ZERO_RETURN ? 0 : -1;  // 0: close_notify, a clean end
  }
  return -1;
}

bool SslWriteAll(TlsSession& s, std::string data) {
  return SslIo(s, true, data.data(), static_cast<int>(data.size())) ==
         static_cast<int>(data.size());
}

std::string SslRead(TlsSession& s, size_t n) {
  std::string out(n, '\0');
  size_t got = 0;
  while (got < n) {
    int r = SslIo(s, false, out.data() + got, static_cast<int>(n - got));
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  out.resize(got);
  return out;
}

std::string Read(int fd, size_t n) {
  std::string out(n, '\0');
  size_t got = 0;
  while (got < n) {
    ssize_t r = RecvSome(fd, out.data() + got, n - got);
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  out.resize(got);
  return out;
}

// The other end ended cleanly (FIN, or close_notify then FIN).
bool EndOfStream(int fd) {
  char byte = 0;
  return RecvSome(fd, &byte, 1) == 0;
}
bool EndOfStream(TlsSession& s) {
  char byte = 0;
  return SslIo(s, false, &byte, 1) == 0;
}

// The other end was reset, not ended: no data, no clean end of stream.
void ExpectReset(int fd) {
  char byte = 0;
  EXPECT_EQ(RecvSome(fd, &byte, 1), -1) << "a clean end, or data, instead of a reset";
  EXPECT_EQ(errno, ECONNRESET);
}

TEST_F(ConnectionTest, InboundCarriesBytesBothWaysAndHalfClosesEachDirection) {
  auto in = ConnectInbound();
  ASSERT_TRUE(in->client && in->app_conn.valid());
  TlsSession& client = *in->client;
  int app = in->app_conn.get();

  ASSERT_TRUE(SslWriteAll(client, "ping"));
  EXPECT_EQ(Read(app, 4), "ping");
  ASSERT_EQ(send(app, "pong", 4, 0), 4);
  EXPECT_EQ(SslRead(client, 4), "pong");

  // The client ends its side (close_notify, FIN): the application sees its
  // end of input, and can still answer.
  SSL_shutdown(client.ssl());
  shutdown(in->wire.client.get(), SHUT_WR);
  EXPECT_TRUE(EndOfStream(app)) << "the half-close did not reach the app";
  ASSERT_EQ(send(app, "late", 4, 0), 4);
  EXPECT_EQ(SslRead(client, 4), "late");
  // Then the application ends its side: the client gets a clean end.
  shutdown(app, SHUT_WR);
  EXPECT_TRUE(EndOfStream(client));

  auto closed = WaitClosed();
  ASSERT_TRUE(closed.has_value());
  EXPECT_EQ(closed->result.code(), "ok");
  EXPECT_EQ(closed->direction, Direction::kInbound);
  EXPECT_EQ(closed->workload, "web");
  EXPECT_EQ(closed->info.peer_id, kClientId);
  EXPECT_EQ(closed->info.local_id, kServerId);
  EXPECT_EQ(closed->info.app_address, in->app.address.ToString());
  EXPECT_EQ(closed->info.data_path, "userspace");
  EXPECT_EQ(closed->bytes_from_wire, 4u);
  EXPECT_EQ(closed->bytes_to_wire, 8u);
}

TEST_F(ConnectionTest, AClientResetAfterTheHandshakeResetsTheApplication) {
  auto in = ConnectInbound();
  ASSERT_TRUE(in->client && in->app_conn.valid());
  ASSERT_TRUE(SslWriteAll(*in->client, "ping"));
  EXPECT_EQ(Read(in->app_conn.get(), 4), "ping");

  CloseWithReset(std::move(in->wire.client));  // the client aborts

  auto closed = WaitClosed();
  ASSERT_TRUE(closed.has_value());
  EXPECT_EQ(closed->result.code(), "stream_error");
  EXPECT_FALSE(closed->result.refusal());
  // The application must not take the broken stream for a complete one.
  ExpectReset(in->app_conn.get());
}

TEST_F(ConnectionTest, GarbageInsteadOfAClientHelloIsRefusedAndNeverReachesTheApplication) {
  LoopbackListener app;
  InboundTo(app.address);
  TcpPair wire = ConnectedTcpPair();
  StartInbound(std::move(wire.server));
  const char request[] = "GET / HTTP/1.1\r\nHost: web\r\n\r\n";
  ASSERT_EQ(send(wire.client.get(), request, sizeof(request) - 1, 0),
            static_cast<ssize_t>(sizeof(request) - 1));

  auto closed = WaitClosed();
  ASSERT_TRUE(closed.has_value());
  EXPECT_EQ(closed->result.reason, CloseReason::kPlaintextRefused);
  EXPECT_EQ(closed->result.code(), "plaintext_refused");
  EXPECT_TRUE(closed->result.refusal());
  EXPECT_FALSE(closed->reason.empty());
  EXPECT_EQ(closed->bytes_from_wire, 0u);
  EXPECT_FALSE(app.Accept(absl::Milliseconds(200)).valid())
      << "the application was connected for a client that never spoke TLS";
}

TEST_F(ConnectionTest, ADeniedClientIsRefusedAndNeverReachesTheApplication) {
  shared_.authorizer = std::make_shared<FixedAuthorizer>(false);
  auto in = ConnectInbound(/*reaches_app=*/false);
  ASSERT_NE(in->client, nullptr);
  SslWriteAll(*in->client, "ping");

  auto closed = WaitClosed();
  ASSERT_TRUE(closed.has_value());
  EXPECT_EQ(closed->result.code(), "denied");
  EXPECT_TRUE(closed->result.refusal());
  EXPECT_EQ(closed->reason, std::string("test: ") + kClientId + " denied");
  EXPECT_EQ(closed->info.peer_id, kClientId);
  EXPECT_FALSE(in->app.Accept(absl::Milliseconds(200)).valid())
      << "the application was connected for a denied client";
}

TEST_F(ConnectionTest, OutboundCarriesBytesBothWaysAndHalfCloses) {
  auto out = ConnectOutbound();
  ASSERT_NE(out->peer, nullptr);
  TlsSession& peer = *out->peer;
  int app = out->app.client.get();

  ASSERT_EQ(send(app, "ping", 4, 0), 4);
  EXPECT_EQ(SslRead(peer, 4), "ping");
  ASSERT_TRUE(SslWriteAll(peer, "pong"));
  EXPECT_EQ(Read(app, 4), "pong");
  shutdown(app, SHUT_WR);
  EXPECT_TRUE(EndOfStream(peer)) << "the app's half-close did not reach the peer";
  SSL_shutdown(peer.ssl());
  shutdown(out->wire.get(), SHUT_WR);
  EXPECT_TRUE(EndOfStream(app));

  auto closed = WaitClosed();
  ASSERT_TRUE(closed.has_value());
  EXPECT_EQ(closed->result.code(), "ok");
  EXPECT_EQ(closed->direction, Direction::kOutbound);
  EXPECT_EQ(closed->info.local_id, kClientId);
  EXPECT_EQ(closed->info.peer_id, kServerId);
  EXPECT_EQ(closed->info.wire_peer, out->server.address.ToString());
  EXPECT_EQ(closed->bytes_to_wire, 4u);
  EXPECT_EQ(closed->bytes_from_wire, 4u);
}

TEST_F(ConnectionTest, AServerResetBeforeAnyDataIsReportedAsRejectedByPeer) {
  auto out = ConnectOutbound();
  ASSERT_NE(out->peer, nullptr);
  // A server that refuses by policy resets right after the handshake.
  CloseWithReset(std::move(out->wire));

  auto closed = WaitClosed();
  ASSERT_TRUE(closed.has_value());
  EXPECT_EQ(closed->result.code(), "rejected_by_peer");
  EXPECT_TRUE(closed->result.refusal());
  EXPECT_NE(closed->reason.find(kServerId), std::string::npos) << closed->reason;
  ExpectReset(out->app.client.get());
}

TEST_F(ConnectionTest, NoRouteIsRefusedAndResetsTheApplication) {
  OutboundListener l;
  l.route = [](int) -> absl::StatusOr<OutboundRoute> {
    return absl::NotFoundError("no original destination");
  };
  group_->outbound.push_back(std::move(l));
  TcpPair app = ConnectedTcpPair();
  SetReceiveTimeout(app.client.get());
  StartOutbound(std::move(app.server));

  auto closed = WaitClosed();
  ASSERT_TRUE(closed.has_value());
  EXPECT_EQ(closed->result.code(), "no_destination");
  EXPECT_EQ(closed->reason, "no original destination");
  ExpectReset(app.client.get());
}

// Issue 13: splice pumps borrow their loop's pipes. Out of descriptors and
// with no idle pipe, a live connection is not closed and loses nothing: its
// bytes wait in the socket until a tick finds a pipe.
TEST_F(ConnectionTest, AConnectionThatFindsNoPipeWaitsForTheTickAndLosesNothing) {
  auto log = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(64);
  log->set_pattern("%v");
  auto previous = spdlog::default_logger();
  auto logger = std::make_shared<spdlog::logger>("captured", log);
  logger->set_level(spdlog::level::debug);
  spdlog::set_default_logger(logger);
  absl::Cleanup restore_logger = [&] { spdlog::set_default_logger(previous); };
  auto logged = [&](const std::string& event) {
    for (const std::string& line : log->last_formatted()) {
      if (line.find("\"event\":\"" + event + "\"") != std::string::npos) return line;
    }
    return std::string();
  };

  // A permissive listener's plaintext client: splice pumps both ways.
  LoopbackListener app;
  InboundTo(app.address);
  group_->inbound.back().permissive = true;
  TcpPair wire = ConnectedTcpPair();
  SetReceiveTimeout(wire.client.get());
  StartInbound(std::move(wire.server));
  ASSERT_EQ(send(wire.client.get(), "hello", 5, 0), 5);
  UniqueFd app_conn = app.Accept();
  ASSERT_TRUE(app_conn.valid());
  SetReceiveTimeout(app_conn.get());
  EXPECT_EQ(Read(app_conn.get(), 5), "hello");

  // The loop's idle pipes are taken away, and the process has no
  // descriptor left for a new one.
  auto held = std::make_shared<std::vector<PipePool::Pipe>>();
  absl::Notification emptied;
  loop_->Post([&, held] {
    while (ctx_->pipes.idle() > 0) held->push_back(*ctx_->pipes.Take());
    emptied.Notify();
  });
  ASSERT_TRUE(emptied.WaitForNotificationWithTimeout(kWait));
  testing::NoFreeDescriptors no_descriptors;
  ASSERT_TRUE(no_descriptors.active());
  ASSERT_EQ(send(wire.client.get(), "world", 5, 0), 5);
  absl::Time deadline = absl::Now() + kWait;
  while (logged("pump_starved").empty() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  no_descriptors.Restore();
  std::string starved = logged("pump_starved");
  std::printf("%s", starved.c_str());  // the line ends in its newline
  EXPECT_NE(starved.find("pipe2"), std::string::npos) << "the pump never went without a pipe";

  // Descriptors again: the next tick moves the bytes, and both ways work.
  loop_->Post([&, held] {
    for (PipePool::Pipe& pipe : *held) ctx_->pipes.Give(std::move(pipe), true);
    held->clear();
    std::vector<Connection*> live(ctx_->connections.begin(), ctx_->connections.end());
    for (Connection* c : live) c->Tick(absl::Now());
  });
  EXPECT_EQ(Read(app_conn.get(), 5), "world");
  ASSERT_EQ(send(app_conn.get(), "again", 5, 0), 5);
  EXPECT_EQ(Read(wire.client.get(), 5), "again");
  {
    absl::MutexLock lock(&mu_);
    EXPECT_TRUE(closed_.empty()) << "the connection was closed: " << closed_.front().reason;
  }
}

// A permissive listener's plaintext client: both sockets plain, so the
// connection can move between engines even without kernel TLS.
struct PlainEnds {
  LoopbackListener app;
  TcpPair wire;
  UniqueFd app_conn;
};

std::string Pattern(size_t n, char seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i * 7 + i / 4093);
  return s;
}

bool SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

class ConnectionHandoverTest : public ConnectionTest {
 protected:
  std::unique_ptr<PlainEnds> ConnectPlaintext() {
    auto ends = std::make_unique<PlainEnds>();
    InboundListener l;
    l.workload = "web";
    l.identity = Identity(kServerId);
    l.application = ends->app.address;
    l.permissive = true;
    group_->inbound.push_back(std::move(l));
    ends->wire = ConnectedTcpPair();
    SetReceiveTimeout(ends->wire.client.get());
    StartInbound(std::move(ends->wire.server));
    EXPECT_TRUE(SendAll(ends->wire.client.get(), "hello\n"));
    ends->app_conn = ends->app.Accept();
    EXPECT_TRUE(ends->app_conn.valid());
    EXPECT_EQ(Read(ends->app_conn.get(), 6), "hello\n");
    return ends;
  }
};

TEST_F(ConnectionHandoverTest, APlaintextConnectionMovesMidStreamWithEveryByteOnce) {
  StartSuccessor();
  auto ends = ConnectPlaintext();
  ASSERT_TRUE(ends->app_conn.valid());
  absl::Time started = shared_.table->Snapshot().at(0).started;
  // The client streams while the connection moves; the application must
  // get every byte exactly once, in order.
  const std::string upload = Pattern(size_t{32} << 20, 'a');
  std::thread client([&] { EXPECT_TRUE(SendAll(ends->wire.client.get(), upload)); });
  std::string received;
  std::thread application([&] { received = Read(ends->app_conn.get(), upload.size()); });
  absl::StatusOr<DetachedConnection> detached = DetachOnly(absl::Seconds(5));
  ASSERT_TRUE(detached.ok()) << detached.status();
  EXPECT_EQ(shared_.table->size(), 0u) << "the detached connection left the old table";
  EXPECT_EQ(shared_.counters->detached.load(), 1u);
  EXPECT_EQ(detached->meta.info.data_path, "plaintext");
  EXPECT_EQ(detached->meta.direction, Direction::kInbound);
  EXPECT_EQ(detached->meta.workload, "web");
  EXPECT_EQ(detached->meta.started, started);
  EXPECT_TRUE(CheckMovedSockets(detached->meta, detached->app.get(), detached->wire.get()).ok());
  uint64_t moved_so_far = detached->meta.bytes_from_wire;
  AdoptInSuccessor(*std::move(detached));
  client.join();
  application.join();
  EXPECT_EQ(received.size(), upload.size());
  EXPECT_TRUE(received == upload) << "bytes lost, doubled or reordered across the move";

  // The other way, through the successor alone.
  const std::string download = Pattern(size_t{1} << 20, 'z');
  std::thread app_writer([&] { EXPECT_TRUE(SendAll(ends->app_conn.get(), download)); });
  EXPECT_TRUE(Read(ends->wire.client.get(), download.size()) == download);
  app_writer.join();

  auto rows = successor_shared_.table->Snapshot();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].started, started) << "the original start time";
  EXPECT_EQ(rows[0].workload, "web");
  EXPECT_EQ(rows[0].info.data_path, "plaintext");
  EXPECT_EQ(rows[0].state, ConnectionState::kEstablished);
  EXPECT_EQ(rows[0].bytes_from_wire, 6 + upload.size())
      << "counters carried over (" << moved_so_far << " before the move)";
  EXPECT_EQ(successor_shared_.counters->adopted.load(), 1u);

  // Ends cleanly in the successor, both ways.
  shutdown(ends->wire.client.get(), SHUT_WR);
  EXPECT_TRUE(EndOfStream(ends->app_conn.get()));
  shutdown(ends->app_conn.get(), SHUT_WR);
  EXPECT_TRUE(EndOfStream(ends->wire.client.get()));
  absl::MutexLock lock(&mu_);
  auto any = +[](std::vector<ClosedConnection>* closed) { return !closed->empty(); };
  ASSERT_TRUE(mu_.AwaitWithTimeout(absl::Condition(any, &successor_closed_), kWait));
  EXPECT_EQ(successor_closed_[0].result.code(), "plaintext_client");
  EXPECT_EQ(successor_closed_[0].bytes_to_wire, download.size());
  EXPECT_TRUE(closed_.empty()) << "the old engine reported a connection it gave away";
}

TEST_F(ConnectionHandoverTest, AConnectionOnTheUserspaceRecordLayerStaysAndCarriesOn) {
  auto in = ConnectInbound();
  ASSERT_TRUE(in->client && in->app_conn.valid());
  absl::StatusOr<DetachedConnection> detached = DetachOnly(absl::Seconds(1));
  EXPECT_TRUE(absl::IsFailedPrecondition(detached.status())) << detached.status();
  EXPECT_THAT(std::string(detached.status().message()),
              ::testing::HasSubstr("userspace record layer"));
  EXPECT_EQ(shared_.table->size(), 1u);
  ASSERT_TRUE(SslWriteAll(*in->client, "still"));
  EXPECT_EQ(Read(in->app_conn.get(), 5), "still");
}

TEST_F(ConnectionHandoverTest, AStalledReceiverLosesNoByteWhetherItMovesOrStays) {
  auto ends = ConnectPlaintext();
  ASSERT_TRUE(ends->app_conn.valid());
  // The application reads nothing: the client fills the socket buffers and
  // the pump's pipe, so the pump holds bytes its sink will not take.
  SetNonblocking(ends->wire.client.get(), true);
  std::string sent;
  const std::string chunk = Pattern(64 * 1024, 'q');
  absl::Time deadline = absl::Now() + kWait;
  while (absl::Now() < deadline) {
    ssize_t n = send(ends->wire.client.get(), chunk.data(), chunk.size(), MSG_NOSIGNAL);
    if (n > 0) {
      sent.append(chunk, 0, static_cast<size_t>(n));
      continue;
    }
    // Blocked: once the pump has filled its pipe too, nothing moves.
    pollfd p{ends->wire.client.get(), POLLOUT, 0};
    if (poll(&p, 1, 200) == 0) break;
  }
  SetNonblocking(ends->wire.client.get(), false);
  // Until the pump itself is stuck: its count stops moving (it always has
  // the bytes it read in its pipe when its sink refuses them).
  uint64_t moved = 0;
  for (int still = 0; still < 5 && absl::Now() < deadline;) {
    absl::SleepFor(absl::Milliseconds(100));
    uint64_t now_moved = shared_.table->Snapshot().at(0).bytes_from_wire;
    still = now_moved == moved ? still + 1 : 0;
    moved = now_moved;
  }
  ASSERT_LT(moved, sent.size() + 6) << "the pump is not behind: nothing to hold";
  // What the pump holds may or may not fit the little room its sink has
  // left (TCP signals POLLOUT only once a third of the buffer is free, and
  // splice takes what fits before that): it moves if it flushed, it stays
  // if it could not by the deadline. Either way, no byte is lost.
  StartSuccessor();
  absl::StatusOr<DetachedConnection> detached = DetachOnly(absl::Milliseconds(300));
  if (detached.ok()) {
    std::cout << "the pump flushed what it held: the connection moved\n";
    EXPECT_EQ(shared_.table->size(), 0u);
    AdoptInSuccessor(*std::move(detached));
  } else {
    std::cout << "the pump could not flush by the deadline: the connection stayed\n";
    EXPECT_TRUE(absl::IsDeadlineExceeded(detached.status())) << detached.status();
    EXPECT_EQ(shared_.table->size(), 1u) << "it stays in the engine";
    EXPECT_EQ(shared_.counters->detached.load(), 0u);
  }
  // The application reads at last: everything, once, in order.
  std::string received = Read(ends->app_conn.get(), sent.size());
  EXPECT_EQ(received.size(), sent.size());
  EXPECT_TRUE(received == sent);
  ASSERT_TRUE(SendAll(ends->wire.client.get(), "after"));
  EXPECT_EQ(Read(ends->app_conn.get(), 5), "after");
}

TEST(CheckMovedSocketsTest, RefusesWhatCannotMoveOrIsNotWhatItClaims) {
  TcpPair app = ConnectedTcpPair();
  TcpPair wire = ConnectedTcpPair();
  MovedConnection m;
  m.info.data_path = "plaintext";
  EXPECT_TRUE(CheckMovedSockets(m, app.server.get(), wire.server.get()).ok());
  m.info.data_path = "userspace";
  EXPECT_THAT(std::string(CheckMovedSockets(m, app.server.get(), wire.server.get()).message()),
              ::testing::HasSubstr("cannot move"));
  // A kernel TLS claim on a plain socket: its bytes would go out in the clear.
  m.info.data_path = "ktls-sw";
  EXPECT_THAT(std::string(CheckMovedSockets(m, app.server.get(), wire.server.get()).message()),
              ::testing::HasSubstr("no kernel TLS"));
  m.info.data_path = "plaintext";
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  UniqueFd pipe_read(pipe_fds[0]), pipe_write(pipe_fds[1]);
  EXPECT_THAT(std::string(CheckMovedSockets(m, pipe_read.get(), wire.server.get()).message()),
              ::testing::HasSubstr("not a socket"));
  UniqueFd udp(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  EXPECT_THAT(std::string(CheckMovedSockets(m, app.server.get(), udp.get()).message()),
              ::testing::HasSubstr("not TCP"));
  EXPECT_THAT(std::string(CheckMovedSockets(m, app.server.get(), -1).message()),
              ::testing::HasSubstr("no wire socket"));
}

}  // namespace
}  // namespace ktrust
