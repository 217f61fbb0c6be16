#include "ktrust/dataplane/engine.h"

#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "connection.h"
#include "engine_shared.h"
#include "ktrust/common/error_text.h"
#include "ktrust/common/fd_reserve.h"
#include "ktrust/common/log.h"
#include "ktrust/common/log_limiter.h"
#include "ktrust/common/thread_name.h"
#include "ktrust/identity/x509.h"
#include "ktrust/tls/ktls.h"
#include "ktrust/tls/traffic_keys.h"

namespace ktrust {
namespace {

absl::StatusOr<UniqueFd> Listen(SocketNetns netns, const SocketAddress& addr) {
  absl::StatusOr<UniqueFd> made = SocketIn(netns, addr.family());
  if (!made.ok()) return made.status();
  UniqueFd fd = *std::move(made);
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

// As /proc/<pid>/ns/net reads: "net:[4026532281]".
std::string NetnsName(int netns_fd) {
  struct stat st {};
  if (fstat(netns_fd, &st) != 0) return "net:[?]";
  return absl::StrCat("net:[", st.st_ino, "]");
}

// Answers a zero-hop request that never became a connection: one log line,
// the socket left dead, `done` told.
void RefuseInPlace(InPlaceOutbound request, CloseResult result, const std::string& reason) {
  std::string code(result.code());
  LogRefusal(spdlog::level::warn,
             {{"event", "connection_refused"},
              {"direction", "outbound"},
              {"workload", request.workload},
              {"wire_peer", request.destination.ToString()},
              {"data_path", "zero-hop"},
              {"result", code},
              {"reason", reason}},
             code);
  KillSocket(request.socket.get());
  request.socket.Reset();
  InPlaceResult r;
  r.error = ECONNREFUSED;
  r.result = result;
  r.reason = reason;
  r.started = absl::Now();
  r.info.wire_peer = request.destination.ToString();
  if (request.done) request.done(std::move(r));
}

// A HandshakeInPlace request on its way to a loop: whoever drops it untaken
// (a loop that stopped first) answers it, so `done` runs exactly once.
class PendingInPlace {
 public:
  explicit PendingInPlace(InPlaceOutbound request) : request_(std::move(request)) {}
  ~PendingInPlace() {
    if (request_) {
      RefuseInPlace(*std::move(request_), CloseReason::kConnectFailed,
                    "the engine stopped before the zero-hop handshake started");
    }
  }
  InPlaceOutbound Take() {
    InPlaceOutbound r = *std::move(request_);
    request_.reset();
    return r;
  }

 private:
  std::optional<InPlaceOutbound> request_;
};

// The upper-layer protocol on a TCP socket: "tls" with kernel TLS, empty
// without one.
absl::StatusOr<std::string> UlpOf(int fd, const char* which) {
  char name[16] = {};
  socklen_t len = sizeof(name);
  if (getsockopt(fd, IPPROTO_TCP, TCP_ULP, name, &len) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("TCP_ULP of the ", which, " socket"));
  }
  return std::string(name, strnlen(name, std::min<size_t>(len, sizeof(name))));
}

absl::Status CheckTcp(int fd, const char* which) {
  int type = 0, protocol = 0;
  socklen_t len = sizeof(type);
  if (fd < 0) return absl::InvalidArgumentError(absl::StrCat("no ", which, " socket"));
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("the ", which, " descriptor is not a socket (", ErrnoText(errno), ")"));
  }
  len = sizeof(protocol);
  if (type != SOCK_STREAM || getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len) != 0 ||
      protocol != IPPROTO_TCP) {
    return absl::InvalidArgumentError(absl::StrCat("the ", which, " socket is not TCP"));
  }
  return absl::OkStatus();
}

std::vector<std::string> AddressStrings(const std::vector<SocketAddress>& addresses) {
  std::vector<std::string> out;
  for (const auto& a : addresses) out.push_back(a.ToString());
  return out;
}

}  // namespace

absl::Status CheckMovedSockets(const MovedConnection& meta, int app, int wire) {
  const std::string& path = meta.info.data_path;
  const bool plaintext = path == "plaintext";
  if (!plaintext && path != "ktls-sw" && path != "ktls-hw") {
    return absl::InvalidArgumentError(
        absl::StrCat("a connection on data path \"", path,
                     "\" cannot move: only kernel TLS or plaintext connections can"));
  }
  if (auto st = CheckTcp(app, "application"); !st.ok()) return st;
  if (auto st = CheckTcp(wire, "wire"); !st.ok()) return st;
  auto app_ulp = UlpOf(app, "application");
  if (!app_ulp.ok()) return app_ulp.status();
  if (!app_ulp->empty()) {
    return absl::InvalidArgumentError("the application socket is not plain TCP");
  }
  auto wire_ulp = UlpOf(wire, "wire");
  if (!wire_ulp.ok()) return wire_ulp.status();
  if (plaintext) {
    if (!wire_ulp->empty()) {
      return absl::InvalidArgumentError("a plaintext connection's wire socket has kernel TLS");
    }
    return absl::OkStatus();
  }
  // Kernel TLS both ways, or the bytes would go out (or come in) unprotected.
  if (*wire_ulp != "tls") {
    return absl::InvalidArgumentError(
        absl::StrCat("the wire socket of a ", path, " connection has no kernel TLS"));
  }
  for (KtlsDirection d : {KtlsDirection::kTx, KtlsDirection::kRx}) {
    if (auto seq = RecordSequence(wire, d); !seq.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the wire socket's kernel TLS is not installed both ways: ", seq.status().message()));
    }
  }
  // The cipher sets the record limit the connection is held to.
  if (!CipherSuiteFromName(meta.info.cipher).ok()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown cipher \"", meta.info.cipher, "\""));
  }
  auto chain = ParseCertificates(meta.peer.chain_pem, "the peer's certificate chain");
  if (!chain.ok() || chain->empty()) {
    return absl::InvalidArgumentError("a kernel TLS connection needs its peer's certificate chain");
  }
  if (!SpiffeId::Parse(meta.info.peer_id).ok() || !SpiffeId::Parse(meta.info.local_id).ok()) {
    return absl::InvalidArgumentError(absl::StrCat("unusable SPIFFE IDs (peer \"",
                                                   meta.info.peer_id, "\", local \"",
                                                   meta.info.local_id, "\")"));
  }
  return absl::OkStatus();
}

// One event loop thread: its listeners, its connections, its ticker.
class Engine::Loop {
 public:
  // One listening socket of a ListenerGroup's listener on this loop.
  struct Listener : EventLoop::Op {
    Loop* owner = nullptr;
    UniqueFd fd;
    std::shared_ptr<const ListenerGroup> group;  // keeps outbound / inbound valid
    const OutboundListener* outbound = nullptr;
    const InboundListener* inbound = nullptr;
    bool accept_pending = false;
    // Its group was removed: it accepts no more and goes once its pending
    // accept has completed (the op must outlive it).
    bool removed = false;
    void OnComplete(int result) override { owner->OnAccept(*this, result); }
  };
  using Listeners = std::vector<std::unique_ptr<Listener>>;

  // A group's listening sockets: one per listener on every loop (an
  // SO_REUSEPORT group).
  struct OpenedGroup {
    std::vector<Listeners> per_loop;
    std::vector<SocketAddress> outbound_addresses;
    std::vector<SocketAddress> inbound_addresses;
    std::vector<int> outbound_fds;  // loop 0's, per outbound listener
    std::vector<int> inbound_fds;   // loop 0's, per inbound listener
  };

  Loop(Shared& shared, std::unique_ptr<EventLoop> loop)
      : loop_(std::move(loop)), ctx_{*loop_, shared, {}, {}} {}

  // Makes the sockets on the calling thread, in the group's namespace.
  // Loop 0 binds first, so that port 0 resolves to one port for every loop.
  static absl::StatusOr<OpenedGroup> Open(const std::vector<std::unique_ptr<Loop>>& loops,
                                          const std::shared_ptr<const ListenerGroup>& group) {
    OpenedGroup opened;
    opened.per_loop.resize(loops.size());
    auto bind_all = [&](const SocketAddress& requested, const OutboundListener* out,
                        const InboundListener* in) -> absl::StatusOr<SocketAddress> {
      SocketAddress addr = requested;
      for (size_t i = 0; i < loops.size(); ++i) {
        auto fd = Listen(group->netns, addr);
        if (!fd.ok()) return fd.status();
        auto l = std::make_unique<Listener>();
        l->owner = loops[i].get();
        l->fd = *std::move(fd);
        l->group = group;
        l->outbound = out;
        l->inbound = in;
        if (addr.port() == 0) {
          auto bound = SocketAddress::LocalOf(l->fd.get());
          if (!bound.ok()) return bound.status();
          addr = *bound;
        }
        opened.per_loop[i].push_back(std::move(l));
      }
      return addr;
    };
    for (const auto& l : group->outbound) {
      auto addr = bind_all(l.listen, &l, nullptr);
      if (!addr.ok()) return addr.status();
      opened.outbound_addresses.push_back(*addr);
      opened.outbound_fds.push_back(opened.per_loop.front().back()->fd.get());
    }
    for (const auto& l : group->inbound) {
      auto addr = bind_all(l.listen, nullptr, &l);
      if (!addr.ok()) return addr.status();
      opened.inbound_addresses.push_back(*addr);
      opened.inbound_fds.push_back(opened.per_loop.front().back()->fd.get());
    }
    return opened;
  }

  // Before Start(), or on the loop's thread: takes the loop's share of a
  // group's sockets, and accepts on them once running.
  void Adopt(Listeners listeners) {
    for (auto& l : listeners) {
      if (running_ && !loop_->stopping()) Arm(*l);
      listeners_.push_back(std::move(l));
    }
  }

  // On the loop's thread: stops accepting on group `id`'s listeners and
  // resets the connections they accepted.
  void CloseGroup(uint64_t id) {
    for (auto& l : listeners_) {
      if (l->group->id == id) Shut(*l);
    }
    std::erase_if(listeners_, [](const auto& l) { return l->removed && !l->accept_pending; });
    TerminateIf([id](const Connection& c) { return c.listener_group() == id; },
                CloseReason::kListenerRemoved, "the listener that accepted it was removed");
  }

  // On the loop's thread, draining: takes the connections already queued
  // on every listener (the kernel would reset them at the shutdown), then
  // shuts them all. The queued ones are served like any other.
  void StopAccepting() {
    for (auto& l : listeners_) {
      if (l->removed) continue;
      while (true) {
        int fd = accept4(l->fd.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;  // EAGAIN: empty; anything else: nothing more to take
        Admit(*l, UniqueFd(fd));
      }
      Shut(*l);
    }
    std::erase_if(listeners_, [](const auto& l) { return l->removed && !l->accept_pending; });
  }

  // On the loop's thread: ends every connection matching `which`, logged.
  void TerminateIf(const std::function<bool(const Connection&)>& which, CloseResult result,
                   const std::string& explanation) {
    std::vector<Connection*> live(ctx_.connections.begin(), ctx_.connections.end());
    for (Connection* c : live) {
      if (ctx_.connections.count(c) && which(*c)) c->Terminate(result, explanation);
    }
  }

  // Zero-hop, outbound, on the loop's thread: admitted as an outbound
  // connection (connection limit, outbound handshake budget), or refused.
  void AdmitInPlace(InPlaceOutbound request) {
    EngineCounters& counters = *ctx_.shared.counters;
    const EngineOptions& options = ctx_.shared.options;
    if (loop_->stopping()) {
      RefuseInPlace(std::move(request), CloseReason::kConnectFailed,
                    "the engine stopped before the zero-hop handshake started");
      return;
    }
    if (counters.active.load() >= static_cast<uint64_t>(options.max_connections)) {
      counters.refused_connections.fetch_add(1);
      counters.refused_limit.fetch_add(1);
      RefuseInPlace(std::move(request), CloseReason::kOverLimit,
                    absl::StrCat("over the limit of ", options.max_connections, " connections"));
      return;
    }
    auto admitted = ctx_.shared.handshakes->Acquire(Direction::kOutbound, SocketAddress());
    if (auto* refusal = std::get_if<HandshakeRefusal>(&admitted)) {
      counters.refused_limit.fetch_add(1);
      RefuseInPlace(std::move(request), CloseReason::kOverLimit, refusal->reason);
      return;
    }
    Connection::StartInPlace(ctx_, ctx_.shared.own_listeners, std::move(request),
                             std::get<HandshakeSlot>(std::move(admitted)));
  }

  // On the loop's thread: detaches Movable connections while `budget`
  // lasts; `done` hears of each (Connection::Detach).
  void DetachMovable(std::atomic<size_t>& budget, absl::Time deadline,
                     const std::function<void()>& started, const Connection::DetachDone& done) {
    std::vector<Connection*> live(ctx_.connections.begin(), ctx_.connections.end());
    for (Connection* c : live) {
      if (!ctx_.connections.count(c) || !c->Movable()) continue;
      size_t left = budget.load();
      while (left > 0 && !budget.compare_exchange_weak(left, left - 1)) {
      }
      if (left == 0) return;
      started();
      c->Detach(deadline, done);
    }
  }

  // On the loop's thread: carries a connection moved in.
  void AdoptConnection(std::shared_ptr<const ListenerGroup> group, DetachedConnection moved) {
    Connection::Adopt(ctx_, std::move(group), std::move(moved));
    peak_since_trim_ = std::max(peak_since_trim_, ctx_.connections.size());
  }

  // Runs `task` on the loop's thread; false if the loop has ended.
  bool Post(std::function<void()> task) { return loop_->Post(std::move(task)); }

  void Start() {
    thread_ = std::thread([this] {
      NameThisThread("ktrust-loop");
      running_ = true;
      for (auto& l : listeners_) Arm(*l);
      ticker_.owner = this;
      ArmTicker();
      loop_->Run([this] {
        if (!ticking_ && NeedsTicks()) ArmTicker();
      });
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
  struct Ticker : EventLoop::Op {
    Loop* owner = nullptr;
    void OnComplete(int) override { owner->OnTick(); }
  };

  void Shut(Listener& l) {
    if (l.removed) return;
    l.removed = true;
    // The socket leaves the SO_REUSEPORT group (and sk_lookup's sockmap) at
    // once: new connections are refused, queued ones reset, and the pending
    // accept completes with EINVAL, after which the Listener can go.
    shutdown(l.fd.get(), SHUT_RDWR);
  }

  void Arm(Listener& l) {
    l.accept_pending = true;
    loop_->Accept(&l, l.fd.get());
  }

  void OnAccept(Listener& l, int result) {
    l.accept_pending = false;
    if (l.removed) {
      // Accepted just before its group was removed: refuse it like the rest.
      if (result >= 0) CloseWithReset(UniqueFd(result));
      std::erase_if(listeners_, [&l](const auto& p) { return p.get() == &l; });
      return;
    }
    if (result >= 0) {
      Admit(l, UniqueFd(result));
    } else if (result == -EMFILE || result == -ENFILE) {
      // The connection stays queued: take it off with the reserve and
      // refuse it, so its client hears at once and the listener is not
      // ready again for nothing. Without a reserve, the next tick retries.
      if (!RefuseForWantOfDescriptors(l, -result)) return;
    } else if (result == -ENOMEM || result == -ENOBUFS) {
      // No memory for a socket: the connection stays queued, and accepting
      // again at once would fail the same way. Said, counted, and retried
      // on the next tick; live connections carry on.
      ctx_.shared.counters->refused_memory.fetch_add(1);
      LogRefusal(
          spdlog::level::err,
          {{"event", "accept_failed"},
           {"direction", DirectionName(l.outbound ? Direction::kOutbound : Direction::kInbound)},
           {"result", "memory"},
           {"reason", absl::StrCat(OutOfMemoryReason(-result),
                                   "; the pending clients wait (retried every second)")}},
          "memory");
      return;
    } else if (result != -EAGAIN && result != -EINTR && result != -ECONNABORTED) {
      // Try again on the next tick rather than spinning on the same error.
      LogRefusal(spdlog::level::err,
                 {{"event", "accept_failed"},
                  {"reason", absl::StrCat(ErrnoText(-result), "; retried in a second")}},
                 "accept_failed");
      return;
    }
    if (!loop_->stopping()) Arm(l);
  }

  // At EMFILE/ENFILE: one queued connection reset, said and counted like
  // the other refusals at accept (and listed by `ktrust denials`). False
  // when none could be taken (no reserve): the caller waits for the tick.
  bool RefuseForWantOfDescriptors(Listener& l, int error) {
    auto conn = fd_reserve_.AcceptWithReserve(l.fd.get());
    // Gone meanwhile (EAGAIN, ECONNABORTED): wait for the next.
    if (!conn.ok() && !absl::IsResourceExhausted(conn.status())) return true;
    std::string reason = OutOfDescriptorsReason(error);
    Direction direction = l.outbound ? Direction::kOutbound : Direction::kInbound;
    if (!conn.ok()) {
      // Another thread took what the reserve freed: the clients wait in
      // the queue until the next tick.
      LogRefusal(spdlog::level::err,
                 {{"event", "accept_failed"},
                  {"direction", DirectionName(direction)},
                  {"result", "fd_limit"},
                  {"reason", absl::StrCat(reason,
                                          "; the pending clients wait (retried every "
                                          "second)")}},
                 "fd_limit");
      return false;
    }
    EngineCounters& counters = *ctx_.shared.counters;
    counters.refused_limit.fetch_add(1);
    counters.refused_fd_limit.fetch_add(1);
    ClosedConnection closed;
    closed.direction = direction;
    closed.result = CloseReason::kFdLimit;
    closed.reason = reason;
    rlimit fds{};
    nlohmann::ordered_json event = {{"event", "connection_refused"},
                                    {"direction", DirectionName(direction)},
                                    {"result", "fd_limit"}};
    if (getrlimit(RLIMIT_NOFILE, &fds) == 0) event["limit"] = fds.rlim_cur;
    event["reason"] = reason;
    if (auto peer = SocketAddress::PeerOf(conn->get()); peer.ok()) {
      std::string& address =
          direction == Direction::kInbound ? closed.info.wire_peer : closed.info.app_address;
      address = peer->ToString();
      event[direction == Direction::kInbound ? "wire_peer" : "app"] = address;
    }
    LogRefusal(spdlog::level::warn, event, "fd_limit");
    CloseWithReset(*std::move(conn));
    if (ctx_.shared.options.on_closed) ctx_.shared.options.on_closed(closed);
    return true;
  }

  // A new connection gets a handshake slot of its direction (inbound: and
  // of its source) or is reset at once, with one log line: refusing at
  // accept costs the established connections nothing.
  void Admit(Listener& l, UniqueFd conn) {
    EngineCounters& counters = *ctx_.shared.counters;
    const EngineOptions& options = ctx_.shared.options;
    counters.accepted.fetch_add(1);
    Direction direction = l.outbound ? Direction::kOutbound : Direction::kInbound;
    SocketAddress peer;
    if (direction == Direction::kInbound) {
      // The per-source cap needs the client's address; a client already
      // gone has none, and nothing to serve.
      auto address = SocketAddress::PeerOf(conn.get());
      if (!address.ok()) {
        CloseWithReset(std::move(conn));
        return;
      }
      peer = *address;
    }
    std::variant<HandshakeSlot, HandshakeRefusal> admitted = HandshakeRefusal{
        "connection_limit",
        absl::StrCat("over the limit of ", options.max_connections, " connections"), "",
        options.max_connections};
    // Inbound: if the budget is full, this loop's longest-pending client
    // (silent ones first) gives its slot to the new one; a loop with none
    // refuses. Taking from the own loop keeps it on its thread.
    PendingHandshakes<Connection>::Candidate victim;
    if (direction == Direction::kInbound) victim = ctx_.pending_inbound.Evictable();
    if (counters.active.load() < static_cast<uint64_t>(options.max_connections)) {
      admitted = ctx_.shared.handshakes->Acquire(
          direction, peer, victim.item ? victim.item->evictable_slot() : nullptr);
    } else {
      counters.refused_connections.fetch_add(1);
    }
    if (auto* refusal = std::get_if<HandshakeRefusal>(&admitted)) {
      counters.refused_limit.fetch_add(1);
      nlohmann::ordered_json event = {{"event", "connection_refused"},
                                      {"direction", DirectionName(direction)},
                                      {"result", refusal->result},
                                      {"limit", refusal->limit},
                                      {"reason", refusal->reason}};
      if (direction == Direction::kInbound) {
        event["source"] =
            refusal->source.empty() ? HandshakeSourceOf(peer).display : refusal->source;
        event["wire_peer"] = peer.ToString();
      }
      // To a budget per result: a flood of refusals must not flood the log
      // (the counters above keep the totals). After the line: whoever sees
      // the reset can read why.
      LogRefusal(spdlog::level::warn, event, refusal->result);
      CloseWithReset(std::move(conn));
      return;
    }
    HandshakeSlot slot = std::get<HandshakeSlot>(std::move(admitted));
    if (victim.item && !victim.item->evictable_slot()->held()) {
      victim.item->Evict(victim.silent, options.max_inbound_handshakes,
                         HandshakeSourceOf(peer).display);
    }
    if (l.outbound) {
      Connection::StartOutbound(ctx_, l.group, *l.outbound, std::move(conn), std::move(slot));
    } else {
      Connection::StartInbound(ctx_, l.group, *l.inbound, std::move(conn), std::move(slot));
    }
    peak_since_trim_ = std::max(peak_since_trim_, ctx_.connections.size());
  }

  // The tick serves connections (deadlines, rechecks) and listeners whose
  // accept failed; a loop with neither sleeps until an event: an idle agent
  // costs no wake-ups.
  bool NeedsTicks() const {
    if (!ctx_.connections.empty()) return true;
    for (const auto& l : listeners_) {
      if (!l->accept_pending && !l->removed) return true;
    }
    return false;
  }

  void ArmTicker() {
    ticking_ = true;
    tick_.tv_sec = 1;
    tick_.tv_nsec = 0;
    loop_->Timeout(&ticker_, &tick_);
  }

  // After a wave of connections has closed, hands the memory they used back
  // to the kernel. glibc keeps freed memory for reuse: it returns only the
  // top of a heap, and the connections' memory is scattered through it
  // between what is still in use, so without this the agent's RSS stays at
  // its peak for good. malloc_trim(0) releases every free page of every
  // arena (madvise), at the cost of a walk over the free lists under each
  // arena's lock: done once the loop's connections fell by kTrimDrop or
  // more, to half of their peak since the last trim or less, at most once a
  // second across the engine's loops (a trickle of short connections never
  // triggers it: what they free is reused).
  void TrimAfterDrop(absl::Time now) {
    size_t live = ctx_.connections.size();
    peak_since_trim_ = std::max(peak_since_trim_, live);
    if (peak_since_trim_ - live < kTrimDrop || live > peak_since_trim_ / 2) return;
    int64_t at = absl::ToUnixNanos(now);
    int64_t last = ctx_.shared.last_trim_ns.load();
    if (at - last < absl::ToInt64Nanoseconds(absl::Seconds(1)) ||
        !ctx_.shared.last_trim_ns.compare_exchange_strong(last, at)) {
      return;  // another loop trimmed just now; the next tick sees the drop again
    }
    malloc_trim(0);
    peak_since_trim_ = live;
  }

  void OnTick() {
    absl::Time now = loop_->now();
    TrimAfterDrop(now);
    std::vector<Connection*> live(ctx_.connections.begin(), ctx_.connections.end());
    for (Connection* c : live) {
      if (ctx_.connections.count(c)) c->Tick(now);
    }
    // A new policy or trust store: re-check the live connections against it.
    uint64_t generation = ctx_.shared.authorizer_generation.load();
    if (generation != ctx_.authorizer_generation) {
      ctx_.authorizer_generation = generation;
      live.assign(ctx_.connections.begin(), ctx_.connections.end());
      for (Connection* c : live) {
        if (ctx_.connections.count(c)) c->Recheck();
      }
    }
    for (auto& l : listeners_) {
      if (!l->accept_pending && !l->removed && !loop_->stopping()) Arm(*l);
    }
    ticking_ = false;
    if (!loop_->stopping() && NeedsTicks()) ArmTicker();
  }

  // A fall of at least this many connections (to half the peak or less)
  // is worth a malloc_trim.
  static constexpr size_t kTrimDrop = 64;

  std::unique_ptr<EventLoop> loop_;
  LoopContext ctx_;
  size_t peak_since_trim_ = 0;  // most connections seen at a tick since the last trim
  Listeners listeners_;
  FdReserve fd_reserve_;  // for refusing at the fd limit (RefuseForWantOfDescriptors)
  bool running_ = false;  // the loop's thread has started
  Ticker ticker_;
  bool ticking_ = false;  // ticker_ is armed
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
  if (options.max_inbound_handshakes <= 0 || options.max_outbound_handshakes <= 0 ||
      options.max_handshakes_per_source <= 0) {
    // Zero would refuse every connection of a direction.
    return absl::InvalidArgumentError(
        "max_inbound_handshakes, max_outbound_handshakes and max_handshakes_per_source must be "
        "positive");
  }
  if (options.first_byte_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("first_byte_timeout must be positive");
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
  shared->ktls_reason = engine->data_path_reason_;
  shared->options = std::move(options);
  shared->client_tls = *std::move(client_tls);
  shared->server_tls = *std::move(server_tls);
  shared->authorizer = std::move(authorizer);
  auto own_listeners = std::make_shared<ListenerGroup>();
  own_listeners->outbound = std::move(outbound);
  own_listeners->inbound = std::move(inbound);
  shared->own_listeners = std::move(own_listeners);
  shared->table = engine->table_;
  shared->counters = engine->counters_;
  shared->handshakes = std::make_unique<HandshakeBudget>(shared->options, *engine->counters_);
  engine->shared_ = std::move(shared);
  return engine;
}

Engine::~Engine() { Stop(); }

absl::Status Engine::Start() {
  absl::MutexLock lock(&runtime_mu_);
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
  // The loops inherit this thread's namespace: where a thread returns after
  // making a socket in a netns listener's.
  shared.own_netns.Reset(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!shared.own_netns.valid()) {
    return absl::ErrnoToStatus(errno, "open /proc/thread-self/ns/net");
  }
  for (int i = 0; i < shared.options.loops; ++i) {
    auto loop = EventLoop::Create();
    if (!loop.ok()) return loop.status();
    loops_.push_back(std::make_unique<Loop>(shared, *std::move(loop)));
  }
  auto opened = Loop::Open(loops_, shared.own_listeners);
  if (!opened.ok()) return opened.status();
  own_opened_ = {0, std::move(opened->outbound_addresses), std::move(opened->inbound_addresses),
                 std::move(opened->outbound_fds), std::move(opened->inbound_fds)};
  for (size_t i = 0; i < loops_.size(); ++i) loops_[i]->Adopt(std::move(opened->per_loop[i]));
  for (auto& loop : loops_) loop->Start();
  running_ = true;
  return absl::OkStatus();
}

void Engine::Stop() {
  absl::MutexLock lock(&runtime_mu_);
  running_ = false;
  for (auto& loop : loops_) loop->Stop();
  loops_.clear();
  netns_listener_groups_.clear();
}

absl::StatusOr<ListenerGroupHandle> Engine::AddNetnsListeners(NetnsListeners listeners) {
  // Fail closed: without a namespace these would be listeners in the
  // engine's own, which the caller did not ask for.
  if (listeners.netns_fd < 0) {
    return absl::InvalidArgumentError("netns listeners need a network namespace (netns_fd)");
  }
  for (const auto& l : listeners.outbound) {
    if (!l.route) return absl::InvalidArgumentError("an outbound listener needs a route");
  }
  if (!listeners.inbound.empty() && !shared_->authorizer.load()) {
    return absl::InvalidArgumentError("inbound listeners need an authorizer");
  }
  absl::MutexLock lock(&runtime_mu_);
  if (!running_) return absl::FailedPreconditionError("the engine is not running");
  if (!accepting_.load()) {
    return absl::FailedPreconditionError("the engine is draining: it opens no new listeners");
  }
  auto group = std::make_shared<ListenerGroup>();
  group->netns_owner.Reset(fcntl(listeners.netns_fd, F_DUPFD_CLOEXEC, 0));
  if (!group->netns_owner.valid()) return absl::ErrnoToStatus(errno, "dup netns_fd");
  group->id = next_listener_group_++;
  group->netns = {group->netns_owner.get(), shared_->own_netns.get()};
  group->netns_name = NetnsName(group->netns_owner.get());
  group->outbound = std::move(listeners.outbound);
  group->inbound = std::move(listeners.inbound);

  auto opened = Loop::Open(loops_, group);
  if (!opened.ok()) {
    return absl::Status(opened.status().code(), absl::StrCat("listeners in ", group->netns_name,
                                                             ": ", opened.status().message()));
  }
  ListenerGroupHandle handle{group->id, std::move(opened->outbound_addresses),
                             std::move(opened->inbound_addresses), std::move(opened->outbound_fds),
                             std::move(opened->inbound_fds)};
  netns_listener_groups_[group->id] = group;
  for (size_t i = 0; i < loops_.size(); ++i) {
    Loop* loop = loops_[i].get();
    // std::function must be copyable: the sockets travel in a shared_ptr.
    auto sockets = std::make_shared<Loop::Listeners>(std::move(opened->per_loop[i]));
    if (!loop->Post([loop, sockets] { loop->Adopt(std::move(*sockets)); })) {
      // A loop has ended (it only does at Stop): take back what the others got.
      netns_listener_groups_.erase(group->id);
      CloseListenerGroup(group->id);
      return absl::UnavailableError("the engine's event loops have stopped");
    }
  }
  LogEvent(spdlog::level::info, {{"event", "netns_listeners_added"},
                                 {"id", handle.id},
                                 {"netns", group->netns_name},
                                 {"outbound", AddressStrings(handle.outbound_addresses)},
                                 {"inbound", AddressStrings(handle.inbound_addresses)}});
  return handle;
}

void Engine::RemoveNetnsListeners(uint64_t id) {
  absl::MutexLock lock(&runtime_mu_);
  auto group = netns_listener_groups_.find(id);
  if (group == netns_listener_groups_.end()) return;
  std::string netns_name = group->second->netns_name;
  netns_listener_groups_.erase(group);
  CloseListenerGroup(id);
  LogEvent(spdlog::level::info,
           {{"event", "netns_listeners_removed"}, {"id", id}, {"netns", netns_name}});
}

void Engine::CloseListenerGroup(uint64_t id) {
  OnEveryLoop([id](Loop& loop) { loop.CloseGroup(id); });
}

void Engine::OnEveryLoop(const std::function<void(Loop&)>& task) {
  absl::BlockingCounter done(static_cast<int>(loops_.size()));
  for (auto& owned : loops_) {
    Loop* loop = owned.get();
    // A loop that has ended closed everything already.
    if (!loop->Post([loop, &task, &done] {
          task(*loop);
          done.DecrementCount();
        })) {
      done.DecrementCount();
    }
  }
  done.Wait();
}

void Engine::StopAccepting() {
  absl::MutexLock lock(&runtime_mu_);
  if (!accepting_.exchange(false)) return;
  OnEveryLoop([](Loop& loop) { loop.StopAccepting(); });
  LogEvent(spdlog::level::info,
           {{"event", "listeners_closed"},
            {"connections", counters_->active.load()},
            {"reason", "draining: the kernel hands this agent no new connections"}});
}

void Engine::EndConnections(CloseResult result, const std::string& explanation) {
  absl::MutexLock lock(&runtime_mu_);
  OnEveryLoop([&](Loop& loop) {
    loop.TerminateIf([](const Connection&) { return true; }, result, explanation);
  });
}

std::vector<DetachedConnection> Engine::DetachForHandover(size_t max, absl::Duration timeout) {
  struct Taken {
    absl::Mutex mu;
    int outstanding ABSL_GUARDED_BY(mu) = 0;
    std::vector<DetachedConnection> connections ABSL_GUARDED_BY(mu);
  };
  auto taken = std::make_shared<Taken>();
  std::atomic<size_t> budget{max};
  absl::Time deadline = absl::Now() + timeout;
  auto started = [taken] {
    absl::MutexLock lock(&taken->mu);
    ++taken->outstanding;
  };
  Connection::DetachDone done = [taken](absl::StatusOr<DetachedConnection> result) {
    if (!result.ok()) {
      LogEvent(spdlog::level::info,
               {{"event", "connection_not_moved"}, {"reason", result.status().message()}});
    }
    absl::MutexLock lock(&taken->mu);
    if (result.ok()) taken->connections.push_back(*std::move(result));
    --taken->outstanding;
  };
  {
    absl::MutexLock lock(&runtime_mu_);
    OnEveryLoop([&](Loop& loop) { loop.DetachMovable(budget, deadline, started, done); });
  }
  // Each Detach ends by itself: handed over, given up at the deadline (the
  // loops tick every second while they hold connections), or closed.
  absl::MutexLock lock(&taken->mu);
  auto all_done = [](Taken* t) ABSL_SHARED_LOCKS_REQUIRED(t->mu) { return t->outstanding == 0; };
  taken->mu.Await(absl::Condition(+all_done, taken.get()));
  return std::move(taken->connections);
}

absl::Status Engine::Adopt(DetachedConnection& connection) {
  if (auto st = CheckMovedSockets(connection.meta, connection.app.get(), connection.wire.get());
      !st.ok()) {
    return st;
  }
  absl::MutexLock lock(&runtime_mu_);
  if (!running_ || loops_.empty())
    return absl::FailedPreconditionError("the engine is not running");
  // With the listeners of its namespace, so that removing them ends it too.
  std::shared_ptr<const ListenerGroup> group = shared_->own_listeners;
  for (const auto& [id, g] : netns_listener_groups_) {
    if (!connection.meta.netns.empty() && g->netns_name == connection.meta.netns) group = g;
  }
  Loop* loop = loops_[next_adopt_loop_.fetch_add(1) % loops_.size()].get();
  auto moved = std::make_shared<DetachedConnection>(std::move(connection));
  if (!loop->Post([loop, group, moved] { loop->AdoptConnection(group, std::move(*moved)); })) {
    connection = std::move(*moved);
    return absl::UnavailableError("the engine's event loops have stopped");
  }
  return absl::OkStatus();
}

void Engine::HandshakeInPlace(InPlaceOutbound request) {
  if (!request.socket.valid() || !request.identity) {
    RefuseInPlace(std::move(request), CloseReason::kConnectFailed,
                  "a zero-hop request needs the workload's socket and an identity");
    return;
  }
  auto pending = std::make_shared<PendingInPlace>(std::move(request));
  absl::MutexLock lock(&runtime_mu_);
  if (!running_ || loops_.empty()) return;  // `pending` answers as it goes
  Loop* loop = loops_[next_in_place_loop_.fetch_add(1) % loops_.size()].get();
  loop->Post([loop, pending] { loop->AdmitInPlace(pending->Take()); });
}

void Engine::SetAuthorizer(std::shared_ptr<const Authorizer> authorizer) {
  shared_->authorizer.store(std::move(authorizer));
  shared_->authorizer_generation.fetch_add(1);
  // A session ticket never outlives the policy it was issued under.
  shared_->client_tls->InvalidateTickets();
  shared_->server_tls->InvalidateTickets();
}

// Setting the trust store also drops every session ticket (TlsContext).
void Engine::SetTrustStore(std::shared_ptr<const TrustStore> trust) {
  shared_->client_tls->SetTrustStore(trust);
  shared_->server_tls->SetTrustStore(std::move(trust));
  // Live connections are re-checked on the next tick, as after a new policy.
  shared_->authorizer_generation.fetch_add(1);
}

}  // namespace ktrust
