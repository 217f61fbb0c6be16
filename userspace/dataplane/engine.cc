#include "ktrust/dataplane/engine.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <cerrno>
#include <thread>

#include "absl/strings/str_cat.h"
#include "connection.h"
#include "engine_shared.h"
#include "ktrust/common/error_text.h"
#include "ktrust/common/log.h"
#include "ktrust/tls/ktls.h"

namespace ktrust {
namespace {

absl::StatusOr<UniqueFd> Listen(const SocketAddress& addr) {
  UniqueFd fd(socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "socket");
  int one = 1;
  // One listening socket per loop on the same address; the kernel spreads
  // new connections across them.
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
    return absl::ErrnoToStatus(errno, "SO_REUSEPORT");
  }
  if (bind(fd.get(), addr.get(), addr.size()) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("bind ", addr.ToString()));
  }
  if (listen(fd.get(), 4096) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("listen ", addr.ToString()));
  }
  return fd;
}

}  // namespace

// One event loop thread: its listeners, its connections, its ticker.
class Engine::Loop {
 public:
  Loop(Shared& shared, std::unique_ptr<EventLoop> loop)
      : loop_(std::move(loop)), ctx_{*loop_, shared, {}} {}

  absl::Status AddListener(const SocketAddress& addr, const OutboundListener* out,
                           const InboundListener* in) {
    auto fd = Listen(addr);
    if (!fd.ok()) return fd.status();
    auto l = std::make_unique<Listener>();
    l->owner = this;
    l->fd = *std::move(fd);
    l->outbound = out;
    l->inbound = in;
    listeners_.push_back(std::move(l));
    return absl::OkStatus();
  }
  int last_listener_fd() const { return listeners_.back()->fd.get(); }
  int listener_fd(size_t i) const { return listeners_[i]->fd.get(); }

  void Start() {
    thread_ = std::thread([this] {
      for (auto& l : listeners_) Arm(*l);
      ticker_.owner = this;
      ArmTicker();
      loop_->Run();
      // Shutdown: close every connection without waiting for io_uring.
      std::vector<Connection*> live(ctx_.connections.begin(), ctx_.connections.end());
      for (Connection* c : live) c->Destroy();
    });
  }

  void Stop() {
    loop_->Stop();
    if (thread_.joinable()) thread_.join();
  }

 private:
  struct Listener : EventLoop::Op {
    Loop* owner = nullptr;
    UniqueFd fd;
    const OutboundListener* outbound = nullptr;
    const InboundListener* inbound = nullptr;
    bool accept_pending = false;
    void OnComplete(int result) override { owner->OnAccept(*this, result); }
  };
  struct Ticker : EventLoop::Op {
    Loop* owner = nullptr;
    void OnComplete(int) override { owner->OnTick(); }
  };

  void Arm(Listener& l) {
    l.accept_pending = true;
    loop_->Accept(&l, l.fd.get());
  }

  void OnAccept(Listener& l, int result) {
    l.accept_pending = false;
    if (result >= 0) {
      UniqueFd conn(result);
      EngineCounters& counters = *ctx_.shared.counters;
      counters.accepted.fetch_add(1);
      if (counters.active.load() >= static_cast<uint64_t>(ctx_.shared.options.max_connections) ||
          counters.handshaking.load() >=
              static_cast<uint64_t>(ctx_.shared.options.max_handshakes)) {
        counters.refused_limit.fetch_add(1);
        linger lg{1, 0};
        setsockopt(conn.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        LogEvent(spdlog::level::warn,
                 {{"event", "connection_refused"},
                  {"result", "limit"},
                  {"reason", absl::StrCat("over the limit of ", ctx_.shared.options.max_connections,
                                          " connections or ", ctx_.shared.options.max_handshakes,
                                          " concurrent handshakes")}});
      } else if (l.outbound) {
        Connection::StartOutbound(ctx_, *l.outbound, std::move(conn));
      } else {
        Connection::StartInbound(ctx_, *l.inbound, std::move(conn));
      }
    } else if (result != -EAGAIN && result != -EINTR && result != -ECONNABORTED) {
      // Out of descriptors and the like: try again on the next tick rather
      // than spinning on the same error.
      LogEvent(spdlog::level::err, {{"event", "accept_failed"}, {"reason", ErrnoText(-result)}});
      return;
    }
    if (!loop_->stopping()) Arm(l);
  }

  void ArmTicker() {
    tick_.tv_sec = 1;
    tick_.tv_nsec = 0;
    loop_->Timeout(&ticker_, &tick_);
  }

  void OnTick() {
    absl::Time now = loop_->now();
    std::vector<Connection*> live(ctx_.connections.begin(), ctx_.connections.end());
    for (Connection* c : live) {
      if (ctx_.connections.count(c)) c->Tick(now);
    }
    // A new policy: re-check the live connections against it.
    uint64_t generation = ctx_.shared.authorizer_generation.load();
    if (generation != ctx_.authorizer_generation) {
      ctx_.authorizer_generation = generation;
      live.assign(ctx_.connections.begin(), ctx_.connections.end());
      for (Connection* c : live) {
        if (ctx_.connections.count(c)) c->Recheck();
      }
    }
    for (auto& l : listeners_) {
      if (!l->accept_pending && !loop_->stopping()) Arm(*l);
    }
    if (!loop_->stopping()) ArmTicker();
  }

  std::unique_ptr<EventLoop> loop_;
  LoopContext ctx_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  Ticker ticker_;
  __kernel_timespec tick_{};
  std::thread thread_;
};

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(EngineOptions options,
                                                       std::shared_ptr<const TrustStore> trust,
                                                       std::shared_ptr<const Authorizer> authorizer,
                                                       std::vector<OutboundListener> outbound,
                                                       std::vector<InboundListener> inbound) {
  for (const auto& l : outbound) {
    if (!l.route) return absl::InvalidArgumentError("an outbound listener needs a route");
  }
  if (!authorizer && !inbound.empty()) {
    return absl::InvalidArgumentError("inbound listeners need an authorizer");
  }
  if (options.permissive_sniff_timeout <= absl::ZeroDuration()) {
    // Zero would take a TLS client whose ClientHello is a moment late for a
    // plaintext one.
    return absl::InvalidArgumentError("permissive_sniff_timeout must be positive");
  }
  std::unique_ptr<Engine> engine(new Engine());
  engine->table_ = std::make_shared<ConnectionTable>();
  engine->counters_ = std::make_shared<EngineCounters>();
  auto shared = std::make_shared<Shared>();
  if (options.loops <= 0)
    options.loops = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  TlsContextOptions client = options.tls;
  client.role = TlsRole::kClient;
  auto client_tls = TlsContext::Create(client, trust);
  if (!client_tls.ok()) return client_tls.status();
  TlsContextOptions server = options.tls;
  server.role = TlsRole::kServer;
  auto server_tls = TlsContext::Create(server, trust);
  if (!server_tls.ok()) return server_tls.status();

  KtlsSupport ktls = ProbeKtls();
  shared->use_ktls = options.data_path == DataPathMode::kAuto && ktls.available;
  engine->data_path_ = shared->use_ktls ? "ktls" : "userspace";
  engine->data_path_reason_ = options.data_path == DataPathMode::kUserspace
                                  ? "the userspace record layer was requested"
                                  : ktls.reason;
  shared->options = std::move(options);
  shared->client_tls = *std::move(client_tls);
  shared->server_tls = *std::move(server_tls);
  shared->authorizer = std::move(authorizer);
  shared->outbound = std::move(outbound);
  shared->inbound = std::move(inbound);
  shared->table = engine->table_;
  shared->counters = engine->counters_;
  engine->shared_ = std::move(shared);
  return engine;
}

Engine::~Engine() { Stop(); }

absl::Status Engine::Start() {
  Shared& shared = *shared_;
  // splice(2) into a socket the peer reset raises SIGPIPE (it has no
  // MSG_NOSIGNAL); the default action would kill the whole process.
  signal(SIGPIPE, SIG_IGN);
  // A kTLS connection holds six descriptors (two sockets, two pipes): the
  // common soft limit of 1024 would cap an engine at about 170 connections.
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  for (int i = 0; i < shared.options.loops; ++i) {
    auto loop = EventLoop::Create();
    if (!loop.ok()) return loop.status();
    loops_.push_back(std::make_unique<Loop>(shared, *std::move(loop)));
  }
  // Bind loop 0 first so that port 0 resolves to one port for every loop.
  auto bind_all = [&](const SocketAddress& requested, const OutboundListener* out,
                      const InboundListener* in) -> absl::StatusOr<SocketAddress> {
    SocketAddress addr = requested;
    for (auto& loop : loops_) {
      if (auto st = loop->AddListener(addr, out, in); !st.ok()) return st;
      if (addr.port() == 0) {
        auto bound = SocketAddress::LocalOf(loop->last_listener_fd());
        if (!bound.ok()) return bound.status();
        addr = *bound;
      }
    }
    return addr;
  };
  for (const auto& l : shared.outbound) {
    auto addr = bind_all(l.listen, &l, nullptr);
    if (!addr.ok()) return addr.status();
    outbound_bound_.push_back(*addr);
  }
  for (const auto& l : shared.inbound) {
    auto addr = bind_all(l.listen, nullptr, &l);
    if (!addr.ok()) return addr.status();
    inbound_bound_.push_back(*addr);
    inbound_fds_.push_back(
        loops_.front()->listener_fd(inbound_fds_.size() + shared.outbound.size()));
  }
  for (auto& loop : loops_) loop->Start();
  return absl::OkStatus();
}

void Engine::Stop() {
  for (auto& loop : loops_) loop->Stop();
  loops_.clear();
}

void Engine::SetAuthorizer(std::shared_ptr<const Authorizer> authorizer) {
  std::atomic_store(&shared_->authorizer, std::move(authorizer));
  shared_->authorizer_generation.fetch_add(1);
}

void Engine::SetTrustStore(std::shared_ptr<const TrustStore> trust) {
  shared_->client_tls->SetTrustStore(trust);
  shared_->server_tls->SetTrustStore(std::move(trust));
}

}  // namespace ktrust
