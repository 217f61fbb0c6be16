#include "connection.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "ktrust/common/error_text.h"
#include "ktrust/common/fd_reserve.h"
#include "ktrust/common/log.h"
#include "ktrust/common/log_limiter.h"
#include "ktrust/identity/x509.h"
#include "ktrust/tls/ktls.h"
#include "sockets.h"
#include "stream_ends.h"

namespace ktrust {
namespace {

void SetNoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

int SocketError(int fd) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
  return err;
}

std::string AddressOf(const absl::StatusOr<SocketAddress>& addr) {
  return addr.ok() ? addr->ToString() : "?";
}

// Non-blocking connect; on success the caller waits for POLLOUT. The mark
// keeps interception away from the agent's own sockets; the source, when
// given, is the reserved address sk_lookup lets through to applications.
absl::StatusOr<UniqueFd> StartConnect(SocketNetns netns, const SocketAddress& to, uint32_t mark,
                                      const std::optional<SocketAddress>& source) {
  absl::StatusOr<UniqueFd> made = SocketIn(netns, to.family());
  if (!made.ok()) return made.status();
  UniqueFd fd = *std::move(made);
  SetNoDelay(fd.get());
  if (mark != 0 && setsockopt(fd.get(), SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0) {
    return absl::ErrnoToStatus(errno, "SO_MARK");
  }
  if (source) {
    // Many connections share the source address: let the kernel pick the
    // port at connect time instead of reserving one at bind.
    int one = 1;
    setsockopt(fd.get(), IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    if (bind(fd.get(), source->get(), source->size()) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("bind ", source->ToString()));
    }
  }
  if (connect(fd.get(), to.get(), to.size()) != 0 && errno != EINPROGRESS) {
    return absl::ErrnoToStatus(errno, absl::StrCat("connect to ", to.ToString()));
  }
  return fd;
}

// The peer has ended its side (FIN: CLOSE_WAIT) or reset the connection
// (CLOSE): the client went away.
bool PeerHasClosed(int fd) {
  tcp_info info{};
  socklen_t len = sizeof(info);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return false;
  return info.tcpi_state == TCP_CLOSE_WAIT || info.tcpi_state == TCP_CLOSE;
}

VerifiedPeer VerifiedPeerOf(const TlsSession& tls) {
  return {ToPem(tls.peer_chain()), tls.verified_at()};
}

}  // namespace

Connection::Connection(LoopContext& ctx, std::shared_ptr<const ListenerGroup> listeners,
                       Direction direction, std::string workload, absl::Time started)
    : ctx_(ctx),
      listeners_(std::move(listeners)),
      direction_(direction),
      last_activity_(ctx.loop.now()) {
  record_ = ctx_.shared.table->Add(direction, std::move(workload), started);
  for (int i = 0; i < kSlots; ++i) {
    waiters_[i].connection = this;
    waiters_[i].slot = static_cast<Slot>(i);
  }
  sniff_timer_.connection = this;
  ctx_.connections.insert(this);
  ctx_.shared.counters->active.fetch_add(1);
}

Connection::~Connection() {
  ReleaseHandshakeSlot();
  ctx_.connections.erase(this);
  ctx_.shared.table->Remove(record_->id);
  ctx_.shared.counters->active.fetch_sub(1);
}

void Connection::StartOutbound(LoopContext& ctx, std::shared_ptr<const ListenerGroup> group,
                               const OutboundListener& listener, UniqueFd app, HandshakeSlot slot) {
  absl::StatusOr<OutboundRoute> route = listener.route(app.get());
  auto* c = new Connection(ctx, std::move(group), Direction::kOutbound,
                           route.ok() ? route->workload : "");
  c->handshake_slot_ = std::move(slot);
  c->app_ = std::move(app);
  SetNoDelay(c->app_.get());
  {
    absl::MutexLock lock(&c->record_->mu);
    c->record_->info.app_address = AddressOf(SocketAddress::PeerOf(c->app_.get()));
  }
  if (!route.ok()) {
    // The original destination is dropped when the client's socket closes:
    // a client that connected and went away before this lookup is no
    // failure of anyone's (port probes do this all the time).
    if (PeerHasClosed(c->app_.get())) {
      c->Terminate(CloseReason::kClientClosed,
                   absl::StrCat("the client closed its connection before the agent looked up its "
                                "destination (",
                                route.status().message(), ")"));
      return;
    }
    c->Abort(CloseReason::kNoDestination, std::string(route.status().message()));
    return;
  }
  c->route_ = *std::move(route);
  // From the listener's namespace: the destination sees the workload's own
  // address, as it would without the engine.
  auto wire = StartConnect(c->listeners_->netns, c->route_.destination,
                           ctx.shared.options.socket_mark, std::nullopt);
  if (!wire.ok()) {
    c->AbortConnect(wire.status(), CloseReason::kConnectFailed);
    return;
  }
  c->wire_ = *std::move(wire);
  {
    absl::MutexLock lock(&c->record_->mu);
    c->record_->info.wire_peer = c->route_.destination.ToString();
  }
  c->state_ = ConnectionState::kConnecting;
  c->deadline_ = ctx.loop.now() + ctx.shared.options.connect_timeout;
  c->Wait(c->wire_.get(), POLLOUT);
}

void Connection::StartInbound(LoopContext& ctx, std::shared_ptr<const ListenerGroup> group,
                              const InboundListener& listener, UniqueFd wire, HandshakeSlot slot) {
  auto* c = new Connection(ctx, std::move(group), Direction::kInbound, listener.workload);
  c->handshake_slot_ = std::move(slot);
  if (c->handshake_slot_.held()) c->pending_ticket_ = ctx.pending_inbound.Add(c);
  c->inbound_ = &listener;
  c->wire_ = std::move(wire);
  SetNoDelay(c->wire_.get());
  {
    absl::MutexLock lock(&c->record_->mu);
    c->record_->info.wire_local = AddressOf(SocketAddress::LocalOf(c->wire_.get()));
    c->record_->info.wire_peer = AddressOf(SocketAddress::PeerOf(c->wire_.get()));
  }
  if (listener.permissive) {
    c->StartSniffing();
  } else {
    // A client sends its ClientHello right after connecting: one that stays
    // silent is dropped well before handshake_timeout, freeing its slot.
    const EngineOptions& options = ctx.shared.options;
    c->first_byte_deadline_ =
        ctx.loop.now() + std::min(options.first_byte_timeout, options.handshake_timeout);
    c->StartHandshake(listener.identity, std::nullopt);
  }
}

void Connection::StartInPlace(LoopContext& ctx, std::shared_ptr<const ListenerGroup> group,
                              InPlaceOutbound request, HandshakeSlot slot) {
  auto* c = new Connection(ctx, std::move(group), Direction::kOutbound, request.workload);
  c->in_place_ = true;
  c->in_place_done_ = std::move(request.done);
  c->handshake_slot_ = std::move(slot);
  c->wire_ = std::move(request.socket);
  c->route_ = OutboundRoute{request.destination, request.workload, std::move(request.identity),
                            std::move(request.expected_server)};
  const SocketAddress& to = c->route_.destination;
  {
    absl::MutexLock lock(&c->record_->mu);
    c->record_->info.wire_peer = to.ToString();
  }
  // Before the socket is touched: without kernel TLS the workload's socket
  // could only carry the connection in plaintext, which it never may.
  if (!ctx.shared.use_ktls) {
    c->Abort(CloseReason::kNoKernelTls,
             absl::StrCat("no kernel TLS: ", ctx.shared.ktls_reason,
                          "; a zero-hop connection needs it on the workload's own socket (serve "
                          "this workload through the proxy)"));
    return;
  }
  int fd = c->wire_.get();
  int protocol = 0;
  socklen_t len = sizeof(protocol);
  if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len) != 0 || protocol != IPPROTO_TCP) {
    c->Abort(CloseReason::kConnectFailed, "the workload's socket is not a TCP socket");
    return;
  }
  // The file (and its O_NONBLOCK) is the workload's: a blocking one is made
  // non-blocking for the loop, and restored before the workload gets it back.
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) {
    c->Abort(CloseReason::kConnectFailed, absl::StrCat("fcntl(F_GETFL): ", ErrnoText(errno)));
    return;
  }
  if ((flags & O_NONBLOCK) == 0) {
    if (fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
      c->Abort(CloseReason::kConnectFailed, absl::StrCat("fcntl(F_SETFL): ", ErrnoText(errno)));
      return;
    }
    c->original_file_flags_ = flags;
  }
  c->state_ = ConnectionState::kConnecting;
  c->record_->state.store(c->state_);
  c->deadline_ = ctx.loop.now() + ctx.shared.options.connect_timeout;
  if (connect(fd, to.get(), to.size()) != 0 && errno != EINPROGRESS) {
    c->connect_errno_ = errno;
    c->Abort(CloseReason::kConnectFailed,
             absl::StrCat("connect to ", to.ToString(), ": ", ErrnoText(errno)));
    return;
  }
  c->Wait(fd, POLLOUT);
}

void Connection::StartSniffing() {
  state_ = ConnectionState::kHandshaking;
  record_->state.store(state_);
  // A client that has not yet shown what it speaks holds its handshake slot
  // (from accept) all along.
  const EngineOptions& options = ctx_.shared.options;
  deadline_ = ctx_.loop.now() + options.handshake_timeout;
  sniffing_ = true;
  int64_t wait_ns = absl::ToInt64Nanoseconds(
      std::min(options.permissive_sniff_timeout, options.handshake_timeout));
  sniff_timer_.ts.tv_sec = wait_ns / 1000000000;
  sniff_timer_.ts.tv_nsec = wait_ns % 1000000000;
  sniff_timer_.pending = true;
  ++pending_;
  ctx_.loop.Timeout(&sniff_timer_, &sniff_timer_.ts);
  // The first bytes may have arrived with the connection.
  Sniff(false);
}

void Connection::Sniff(bool timed_out) {
  // Peek, never read: a TLS client's ClientHello must stay in the socket for
  // the handshake, a plaintext client's request for the application.
  unsigned char head[2] = {0, 0};
  ssize_t n = 0;
  do {
    n = recv(wire_.get(), head, sizeof(head), MSG_PEEK | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && errno != EAGAIN) {
    Abort(CloseReason::kIoError, absl::StrCat("read from the client: ", ErrnoText(errno)));
    return;
  }
  // A TLS record starts with its type, 22 (handshake), and the major
  // version, 3. A lone 22 goes to the handshake, which decides: fail closed.
  if (n > 0 && head[0] == 0x16 && (n == 1 || head[1] == 0x03)) {
    EndSniffing();
    StartHandshake(inbound_->identity, std::nullopt);
    return;
  }
  if (n > 0) {
    AcceptPlaintext("permissive: the client's first bytes are not a TLS record");
    return;
  }
  if (n == 0) {
    AcceptPlaintext("permissive: the client ended its side without sending anything");
    return;
  }
  if (timed_out) {
    AcceptPlaintext(absl::StrCat(
        "permissive: the client sent nothing within ",
        absl::FormatDuration(ctx_.shared.options.permissive_sniff_timeout),
        ", so no TLS ClientHello is coming (a protocol where the server speaks first)"));
    return;
  }
  Wait(wire_.get(), POLLIN);
}

void Connection::OnSniffTimer(int /*result*/) {
  sniff_timer_.pending = false;
  --pending_;
  if (closing_) {
    MaybeFinalize();
    return;
  }
  // Cancelled (-ECANCELED) because the client's bytes decided first, or
  // expired (-ETIME): only a connection still sniffing cares.
  if (sniffing_) Sniff(true);
}

void Connection::EndSniffing() {
  sniffing_ = false;
  if (sniff_timer_.pending) ctx_.loop.TimeoutRemove(&sniff_timer_);
}

void Connection::AcceptPlaintext(std::string why) {
  EndSniffing();
  ReleaseHandshakeSlot();
  plaintext_ = true;
  ctx_.shared.counters->plaintext_accepted.fetch_add(1);
  // The access log's result unless the connection fails later on.
  result_ = CloseReason::kPlaintextClient;
  result_detail_ = std::move(why);
  {
    absl::MutexLock lock(&record_->mu);
    record_->info.data_path = "plaintext";
  }
  LogEvent(spdlog::level::debug, {{"event", "plaintext_client"},
                                  {"id", record_->id},
                                  {"workload", record_->workload},
                                  {"reason", result_detail_}});
  // No identity, so no policy: permissive means exactly this.
  ConnectApplication();
}

Connection::Slot Connection::Wait(int fd, short events) {
  Slot slot = fd == app_.get() ? (events == POLLIN ? kAppIn : kAppOut)
                               : (events == POLLIN ? kWireIn : kWireOut);
  Waiter& w = waiters_[slot];
  if (w.pending) return slot;
  w.pending = true;
  w.retry = false;
  w.fd = fd;
  w.events = events;
  ++pending_;
  ctx_.loop.PollAdd(&w, fd, events);
  return slot;
}

void Connection::OnPoll(Slot slot, int result) {
  waiters_[slot].pending = false;
  --pending_;
  if (closing_) {
    MaybeFinalize();
    return;
  }
  if (detach_done_) {
    // Quiescing: a cancelled poll has completed, or a sink can take more.
    ContinueDetach();
    return;
  }
  if (result == -ENOMEM || result == -ENOBUFS || result == -EAGAIN) {
    waiters_[slot].retry = true;
    return;
  }
  if (result < 0 && result != -ECANCELED) {
    Abort(CloseReason::kIoError, absl::StrCat("poll: ", ErrnoText(-result)));
    return;
  }
  Advance();
}

void Connection::Advance() {
  switch (state_) {
    case ConnectionState::kConnecting: {
      if (int err = SocketError(wire_.get()); err != 0) {
        std::string to;
        {
          absl::MutexLock lock(&record_->mu);
          to = record_->info.wire_peer;
        }
        connect_errno_ = err;
        Abort(CloseReason::kConnectFailed, absl::StrCat("connect to ", to, ": ", ErrnoText(err)));
        return;
      }
      {
        absl::MutexLock lock(&record_->mu);
        record_->info.wire_local = AddressOf(SocketAddress::LocalOf(wire_.get()));
      }
      StartHandshake(route_.identity, route_.expected_server);
      return;
    }
    case ConnectionState::kHandshaking:
      if (sniffing_) {
        Sniff(false);
      } else {
        DriveHandshake();
      }
      return;
    case ConnectionState::kConnectingApp: {
      // A completion for the wire (a plaintext client's bytes, say) says
      // nothing about the application's connect.
      if (waiters_[kAppOut].pending) return;
      if (int err = SocketError(app_.get()); err != 0) {
        std::string to;
        {
          absl::MutexLock lock(&record_->mu);
          to = record_->info.app_address;
        }
        Abort(CloseReason::kAppUnreachable,
              absl::StrCat("connect to the application at ", to, ": ", ErrnoText(err)));
        return;
      }
      StartPumping();
      return;
    }
    case ConnectionState::kEstablished:
      RunPumps();
      return;
    case ConnectionState::kClosing:
      return;
  }
}

void Connection::StartHandshake(const SvidProvider& identity,
                                std::optional<SpiffeIdPattern> expected) {
  state_ = ConnectionState::kHandshaking;
  record_->state.store(state_);
  deadline_ = ctx_.loop.now() + ctx_.shared.options.handshake_timeout;
  std::shared_ptr<const Svid> svid = identity();
  if (!svid) {
    ctx_.shared.counters->errors.fetch_add(1);
    Abort(CloseReason::kNoIdentity, "no SVID is available for this workload");
    return;
  }
  const TlsContext& tls =
      direction_ == Direction::kOutbound ? *ctx_.shared.client_tls : *ctx_.shared.server_tls;
  // Outbound: a ticket is kept, and offered, per workload and destination.
  std::string resumption_key =
      direction_ == Direction::kOutbound ? route_.destination.ToString() : std::string();
  auto session = tls.NewSession(std::move(svid), std::move(expected), std::move(resumption_key));
  if (!session.ok()) {
    if (int error = MemoryErrorOf(session.status()); error != 0) {
      Abort(CloseReason::kMemory,
            absl::StrCat(OutOfMemoryReason(error), " (", session.status().message(), ")"));
      return;
    }
    ctx_.shared.counters->errors.fetch_add(1);
    Abort(CloseReason::kTlsSetup, std::string(session.status().message()));
    return;
  }
  tls_ = *std::move(session);
  if (in_place_) {
    // Only an end that acks this follows the end rule a plain recv() on the
    // workload's kTLS socket needs.
    if (auto st = tls_->OfferZeroHop(); !st.ok()) {
      ctx_.shared.counters->errors.fetch_add(1);
      Abort(CloseReason::kTlsSetup, std::string(st.message()));
      return;
    }
  }
  if (auto st = tls_->SetFd(wire_.get()); !st.ok()) {
    ctx_.shared.counters->errors.fetch_add(1);
    Abort(CloseReason::kTlsSetup, std::string(st.message()));
    return;
  }
  DriveHandshake();
}

void Connection::DriveHandshake() {
  if (zero_hop_step_ != ZeroHopStep::kNone) {
    DriveZeroHopAccept();
    return;
  }
  if (reading_tickets_) {
    if (!StepDone(tls_->ReadTickets())) return;
    reading_tickets_ = false;
    StartPumping();
    return;
  }
  HandshakeProgress progress = tls_->Handshake();
  if (pending_ticket_ != 0 && !client_spoke_) NoteClientSpoke();
  if (StepDone(progress)) OnHandshakeDone();
}

void Connection::OnHandshakeDone() {
  ReleaseHandshakeSlot();
  if (tls_->resumed()) ctx_.shared.counters->resumed_handshakes.fetch_add(1);
  {
    absl::MutexLock lock(&record_->mu);
    record_->info.local_id = tls_->local_id().ToString();
    record_->info.peer_id = tls_->peer_id()->ToString();
    record_->info.tls_version = std::string(tls_->version());
    record_->info.cipher = std::string(tls_->cipher());
    record_->info.resumed = tls_->resumed();
  }
  if (in_place_) {
    FinishInPlace();
    return;
  }
  if (direction_ == Direction::kOutbound) {
    // The server's session ticket must be read in OpenSSL before kernel TLS
    // takes RX (on OpenSSL's record layer it is read with the data).
    if (ctx_.shared.use_ktls && tls_->tickets_pending()) {
      reading_tickets_ = true;
      DriveHandshake();
      return;
    }
    StartPumping();
    return;
  }
  // Inbound: the client proved its identity; may it reach this workload?
  ctx_.shared.counters->authorizations.fetch_add(1);
  AuthorizationDecision decision = Authorize();
  if (!decision.allowed) {
    ctx_.shared.counters->denied.fetch_add(1);
    Abort(CloseReason::kDenied, decision.reason);
    return;
  }
  // A zero-hop client waits for our word that it was accepted (it cannot
  // tell from the TLS 1.3 handshake) before its connect() returns.
  if (tls_->zero_hop()) {
    zero_hop_step_ = ZeroHopStep::kSendAccept;
    DriveZeroHopAccept();
    return;
  }
  Accepted();
}

// Waits for the socket, or fails the connection, unless the step is done.
bool Connection::StepDone(HandshakeProgress progress) {
  switch (progress) {
    case HandshakeProgress::kWantRead:
      Wait(wire_.get(), POLLIN);
      return false;
    case HandshakeProgress::kWantWrite:
      Wait(wire_.get(), POLLOUT);
      return false;
    case HandshakeProgress::kFailed: {
      const HandshakeFailure& f = tls_->failure();
      if (direction_ == Direction::kInbound && f.error == HandshakeError::kConnectionClosed &&
          !ClientSentAnything()) {
        // Connected and went away without a byte: a port probe, or a client
        // that gave up; nothing was refused.
        Terminate(CloseReason::kClientClosed,
                  "the client closed its connection before sending its TLS ClientHello");
        return false;
      }
      ctx_.shared.counters->handshake_failures.fetch_add(1);
      Abort(CloseResultOf(f), f.explanation);
      return false;
    }
    case HandshakeProgress::kDone:
      return true;
  }
  return false;
}

void Connection::DriveZeroHopAccept() {
  bool sending = zero_hop_step_ == ZeroHopStep::kSendAccept;
  HandshakeProgress progress = sending ? tls_->SendZeroHopAccept() : tls_->ReadZeroHopAccept();
  if (!StepDone(progress)) return;
  zero_hop_step_ = ZeroHopStep::kNone;
  if (sending) {
    Accepted();
  } else {
    CompleteInPlace();
  }
}

void Connection::Accepted() {
  // A zero-hop client (it offered the token, so it follows the end rule) to
  // a listener that can hand sockets to the workload.
  if (inbound_->deliver && tls_->zero_hop() && ctx_.shared.use_ktls && TryDeliver()) return;
  ConnectApplication();
}

bool Connection::TryDeliver() {
  absl::StatusOr<DataPath> installed = InstallKtls(wire_.get(), *tls_);
  if (!installed.ok()) {
    // Refused before the socket was touched: proxy it instead (on the
    // userspace record layer, StartPumping says why). Past that point the
    // socket is unusable.
    BIO* rbio = SSL_get_rbio(tls_->ssl());
    if (rbio == nullptr || BIO_method_type(rbio) != BIO_TYPE_SOCKET) {
      ctx_.shared.counters->errors.fetch_add(1);
      Abort(CloseReason::kKtlsInstall, std::string(installed.status().message()));
      return true;
    }
    LogEvent(spdlog::level::info, {{"event", "zero_hop_not_delivered"},
                                   {"id", record_->id},
                                   {"workload", record_->workload},
                                   {"reason", installed.status().message()}});
    return false;
  }
  ktls_path_ = *installed;
  ConnectionInfo info;
  {
    absl::MutexLock lock(&record_->mu);
    record_->info.data_path = "zero-hop";
    info = record_->info;
  }
  if (inbound_->deliver(wire_, info, VerifiedPeerOf(*tls_))) {
    ctx_.shared.counters->zero_hop_delivered.fetch_add(1);
    HandedOver();
    return true;
  }
  {
    absl::MutexLock lock(&record_->mu);
    record_->info.data_path.clear();  // StartPumping sets the proxy's
  }
  if (!wire_.valid()) {
    ctx_.shared.counters->errors.fetch_add(1);
    Abort(CloseReason::kIoError,
          "the zero-hop hand-over declined the connection but took its socket");
    return true;
  }
  return false;
}

void Connection::FinishInPlace() {
  if (!tls_->zero_hop()) {
    std::string server;
    {
      absl::MutexLock lock(&record_->mu);
      server = record_->info.peer_id;
    }
    Abort(CloseReason::kNotZeroHopCapable,
          absl::StrCat("the server ", server, " at ", route_.destination.ToString(),
                       " completed the handshake but did not ack ALPN ", std::string(kZeroHopAlpn),
                       ": it is not a zero-hop ktrust end, so a plain recv() on this socket could "
                       "fail at its close_notify; serve this destination through the proxy"));
    return;
  }
  zero_hop_step_ = ZeroHopStep::kReadAccept;
  DriveZeroHopAccept();
}

void Connection::CompleteInPlace() {
  absl::StatusOr<DataPath> installed = InstallKtls(wire_.get(), *tls_);
  if (!installed.ok()) {
    // Never the userspace record layer here: the workload reads this
    // socket itself.
    ctx_.shared.counters->errors.fetch_add(1);
    Abort(CloseReason::kKtlsInstall,
          absl::StrCat("no kernel TLS on the workload's socket: ", installed.status().message()));
    return;
  }
  uint64_t cookie = 0;
  socklen_t len = sizeof(cookie);
  if (getsockopt(wire_.get(), SOL_SOCKET, SO_COOKIE, &cookie, &len) == 0) socket_cookie_ = cookie;
  {
    absl::MutexLock lock(&record_->mu);
    record_->info.wire_local = AddressOf(SocketAddress::LocalOf(wire_.get()));
    record_->info.data_path = "zero-hop";
  }
  ctx_.shared.counters->zero_hop_outbound.fetch_add(1);
  HandedOver();
}

void Connection::HandedOver() {
  handed_over_ = true;
  result_ = CloseReason::kOk;
  result_detail_.clear();
  RestoreFileFlags();
  // Closed without a reset, a shutdown or an alert: the workload's own
  // reference keeps the connection, and the engine keeps none.
  wire_.Reset();
  Cancel();
}

void Connection::RestoreFileFlags() {
  if (original_file_flags_ < 0 || !wire_.valid()) return;
  fcntl(wire_.get(), F_SETFL, original_file_flags_);
  original_file_flags_ = -1;
}

void Connection::KillWorkloadSocket() {
  KillSocket(wire_.get());
  RestoreFileFlags();
}

void Connection::ReportInPlace(const ClosedConnection& closed) {
  RestoreFileFlags();
  wire_.Reset();  // the engine's duplicate goes before the workload hears
  InPlaceResult r;
  r.result = closed.result;
  r.reason = closed.reason;
  r.info = closed.info;
  r.started = record_->started;
  r.socket_cookie = socket_cookie_;
  if (tls_) r.peer = VerifiedPeerOf(*tls_);
  if (!handed_over_) {
    CloseReason why = closed.result.reason;
    r.error = connect_errno_ != 0 ? connect_errno_
              : why == CloseReason::kConnectTimeout || why == CloseReason::kHandshakeTimeout
                  ? ETIMEDOUT
                  : ECONNREFUSED;
  }
  std::function<void(InPlaceResult)> done = std::move(in_place_done_);
  in_place_done_ = nullptr;
  // The engine holds no part of it once `done` runs: not even its row in
  // the connection table (the destructor's Remove is then a no-op).
  ctx_.shared.table->Remove(record_->id);
  if (done) done(std::move(r));
}

AuthorizationDecision Connection::Authorize() const {
  std::shared_ptr<const Authorizer> authorizer = ctx_.shared.authorizer.load();
  auto local = SocketAddress::LocalOf(wire_.get());
  uint16_t port = local.ok() ? local->port() : uint16_t{0};
  // The record's workload is its inbound listener's.
  if (adopted_peer_) {
    return authorizer->Authorize(
        {adopted_peer_->peer_id, record_->workload, adopted_peer_->local_id, port});
  }
  return authorizer->Authorize({*tls_->peer_id(), record_->workload, tls_->local_id(), port});
}

PeerVerdict Connection::ReverifyPeer() const {
  if (adopted_peer_) {
    const TlsContext& context =
        direction_ == Direction::kOutbound ? *ctx_.shared.client_tls : *ctx_.shared.server_tls;
    return context.ReverifyPeer(adopted_peer_->chain, adopted_peer_->verified_at);
  }
  return tls_->ReverifyPeer();
}

void Connection::Recheck() {
  if (closing_ || detach_done_) return;
  if (!adopted_peer_ && (!tls_ || !tls_->peer_id())) return;
  if (state_ != ConnectionState::kEstablished && state_ != ConnectionState::kConnectingApp) return;
  // The peer's identity first, in both directions: a reload that revoked it
  // (or dropped its root) ends the connection, with the verifier's reason
  // ("revoked") as the result.
  PeerVerdict verdict = ReverifyPeer();
  if (!verdict.ok()) {
    if (direction_ == Direction::kInbound) ctx_.shared.counters->denied.fetch_add(1);
    Abort(CloseResult(CloseReason::kPeerRefused, verdict.reason),
          absl::StrCat("after a reload: ", verdict.explanation));
    return;
  }
  if (direction_ != Direction::kInbound) return;
  AuthorizationDecision decision = Authorize();
  if (decision.allowed) return;
  ctx_.shared.counters->denied.fetch_add(1);
  Abort(CloseReason::kDeniedAfterReload, decision.reason);
}

void Connection::ConnectApplication() {
  // The client dialled the application's own address (sk_lookup brought it
  // here), unless this listener delivers to a fixed one.
  absl::StatusOr<SocketAddress> target = inbound_->application
                                             ? absl::StatusOr<SocketAddress>(*inbound_->application)
                                             : SocketAddress::LocalOf(wire_.get());
  if (!target.ok()) {
    Abort(CloseReason::kAppUnreachable, std::string(target.status().message()));
    return;
  }
  const EngineOptions& options = ctx_.shared.options;
  const auto& source =
      target->family() == AF_INET6 ? options.upstream_source6 : options.upstream_source4;
  if (!inbound_->application && !source) {
    // From any other source sk_lookup would steer the connection back here.
    Abort(CloseReason::kAppUnreachable,
          absl::StrCat("no upstream source address is configured for IPv",
                       target->family() == AF_INET6 ? "6" : "4", " (agent.upstream_source6), so ",
                       target->ToString(), " cannot be reached without being intercepted again"));
    return;
  }
  auto app = StartConnect(listeners_->netns, *target, options.socket_mark, source);
  if (!app.ok()) {
    AbortConnect(app.status(), CloseReason::kAppUnreachable);
    return;
  }
  app_ = *std::move(app);
  {
    absl::MutexLock lock(&record_->mu);
    record_->info.app_address = target->ToString();
  }
  state_ = ConnectionState::kConnectingApp;
  record_->state.store(state_);
  deadline_ = ctx_.loop.now() + ctx_.shared.options.connect_timeout;
  Wait(app_.get(), POLLOUT);
}

void Connection::AbortConnect(const absl::Status& failed, CloseReason otherwise) {
  if (int error = DescriptorErrorOf(failed); error != 0) {
    Abort(CloseReason::kFdLimit,
          absl::StrCat(OutOfDescriptorsReason(error), " (", failed.message(), ")"));
    return;
  }
  if (int error = MemoryErrorOf(failed); error != 0) {
    Abort(CloseReason::kMemory,
          absl::StrCat(OutOfMemoryReason(error), " (", failed.message(), ")"));
    return;
  }
  Abort(otherwise, std::string(failed.message()));
}

void Connection::StartPumping() {
  if (plaintext_) {
    // Permissive, a non-TLS client: plain socket to plain socket, with splice.
    CreateSplicePumps(false, false);
    Established();
    return;
  }
  std::string data_path = "userspace";
  absl::StatusOr<DataPath> installed = absl::UnavailableError("kernel TLS is not in use");
  if (ktls_path_) {
    installed = *ktls_path_;  // installed for a hand-over the workload declined
  } else if (ctx_.shared.use_ktls) {
    installed = InstallKtls(wire_.get(), *tls_);
  }
  // The zero-hop end rule, when the peer negotiated it: a bare FIN ends a
  // direction both ways, and no close_notify is sent (its kTLS peer may be
  // an application reading with plain recv()).
  const bool fin_only = tls_->zero_hop();
  fin_only_ = fin_only;
  if (ctx_.shared.use_ktls && !installed.ok()) {
    // A refusal before the socket was touched leaves OpenSSL attached, and
    // OpenSSL's record layer can carry the connection instead. (A peer that
    // sent its request and FIN at once puts the socket in CLOSE_WAIT, where
    // TCP_ULP says ENOTCONN.) After that point the socket is unusable.
    BIO* rbio = SSL_get_rbio(tls_->ssl());
    if (rbio == nullptr || BIO_method_type(rbio) != BIO_TYPE_SOCKET) {
      Abort(CloseReason::kKtlsInstall, std::string(installed.status().message()));
      return;
    }
    LogEvent(spdlog::level::debug, {{"event", "ktls_fallback"},
                                    {"id", record_->id},
                                    {"reason", installed.status().message()}});
  }
  if (installed.ok()) {
    data_path = std::string(DataPathName(*installed));
    ktls_ = true;
    CreateSplicePumps(true, fin_only);
    // The kernel carries both directions, and nothing here reads or writes
    // through OpenSSL again: its SSL, most of an idle connection's memory,
    // goes (the identities were copied to the connection's record).
    if (absl::Status st = tls_->ReleaseSsl(); !st.ok()) {
      Abort(CloseReason::kKtlsInstall, std::string(st.message()));
      return;
    }
  } else {
    SSL_set_mode(tls_->ssl(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    app_end_ = std::make_unique<SocketEnd>(app_.get());
    wire_end_ = std::make_unique<SslEnd>(tls_->ssl(), wire_.get(), fin_only);
    char* scratch = ctx_.pump_scratch.get();
    to_wire_ = std::make_unique<CopyPump>(*app_end_, *wire_end_, scratch);
    from_wire_ = std::make_unique<CopyPump>(*wire_end_, *app_end_, scratch);
  }
  record_limit_ = RecordLimit(tls_->cipher());
  {
    absl::MutexLock lock(&record_->mu);
    record_->info.data_path = data_path;
  }
  ctx_.shared.counters->established.fetch_add(1);
  Established();
}

void Connection::CreateSplicePumps(bool ktls, bool fin_only) {
  int wire = wire_.get();
  SplicePump::SinkCloser close_wire = nullptr;             // FIN only
  SplicePump::ControlRecordReader read_control = nullptr;  // a plain source
  if (ktls) {
    read_control = &ReadControlRecordIsCleanEnd;
    if (!fin_only) {
      close_wire = [](int fd) {
        if (auto st = SendCloseNotify(fd); !st.ok()) return st;
        if (shutdown(fd, SHUT_WR) != 0 && errno != ENOTCONN) {
          return absl::ErrnoToStatus(errno, "shutdown");
        }
        return absl::OkStatus();
      };
    }
  }
  to_wire_ =
      std::make_unique<SplicePump>(app_.get(), wire, ctx_.pipes, nullptr, std::move(close_wire));
  from_wire_ = std::make_unique<SplicePump>(wire, app_.get(), ctx_.pipes, std::move(read_control),
                                            nullptr, ktls && fin_only);
}

void Connection::Adopt(LoopContext& ctx, std::shared_ptr<const ListenerGroup> group,
                       DetachedConnection moved) {
  const MovedConnection& m = moved.meta;
  auto* c = new Connection(ctx, std::move(group), m.direction, m.workload, m.started);
  {
    absl::MutexLock lock(&c->record_->mu);
    c->record_->info = m.info;
  }
  c->record_->bytes_to_wire.store(m.bytes_to_wire);
  c->record_->bytes_from_wire.store(m.bytes_from_wire);
  c->app_ = std::move(moved.app);
  c->wire_ = std::move(moved.wire);
  c->plaintext_ = m.info.data_path == "plaintext";
  c->ktls_ = !c->plaintext_;
  c->fin_only_ = m.fin_only;
  c->to_wire_done_ = m.to_wire_done;
  c->from_wire_done_ = m.from_wire_done;
  // The access log's result, as for the permissive listener that let it in.
  if (c->plaintext_) c->result_ = CloseReason::kPlaintextClient;
  ctx.shared.counters->adopted.fetch_add(1);
  if (c->ktls_) {
    c->record_limit_ = RecordLimit(m.info.cipher);
    auto chain = ParseCertificates(m.peer.chain_pem, "the moved connection's peer chain");
    auto peer = SpiffeId::Parse(m.info.peer_id);
    auto local = SpiffeId::Parse(m.info.local_id);
    // CheckMovedSockets saw these parse; this is the connection's own copy.
    if (!chain.ok() || chain->empty() || !peer.ok() || !local.ok()) {
      c->Abort(CloseReason::kPumpSetup, "the moved connection's peer identity does not parse");
      return;
    }
    c->adopted_peer_.reset(new AdoptedPeer{*std::move(chain), m.peer.verified_at, *std::move(peer),
                                           *std::move(local), m.peer});
  }
  c->CreateSplicePumps(c->ktls_, c->fin_only_);
  c->Established();
}

bool Connection::Movable() const {
  return state_ == ConnectionState::kEstablished && !closing_ && !detach_done_ && !in_place_ &&
         !handed_over_ && (ktls_ || plaintext_) && to_wire_ && from_wire_;
}

void Connection::Detach(absl::Time deadline, DetachDone done) {
  if (!Movable()) {
    done(absl::FailedPreconditionError(
        ktls_ || plaintext_ ? "it is not established"
                            : "it is on the userspace record layer, whose TLS state cannot move"));
    return;
  }
  detach_done_ = std::move(done);
  detach_deadline_ = deadline;
  // No more reads: every poll goes; the flush below asks for what it needs.
  for (Waiter& w : waiters_) {
    if (w.pending) ctx_.loop.PollRemove(&w);
  }
  ContinueDetach();
}

void Connection::ContinueDetach() {
  bool blocked = false;
  struct Half {
    Pump* pump;
    bool* done;
    std::atomic<uint64_t>* bytes;
  };
  for (Half d : {Half{to_wire_.get(), &to_wire_done_, &record_->bytes_to_wire},
                 Half{from_wire_.get(), &from_wire_done_, &record_->bytes_from_wire}}) {
    if (*d.done) continue;
    PumpStep step = d.pump->Flush();
    d.bytes->fetch_add(step.bytes, std::memory_order_relaxed);
    if (step.status == PumpStatus::kFailed) {
      FinishDetach(absl::AbortedError(absl::StrCat("it failed while quiescing: ", step.error)));
      StreamFailed(step.error);
      return;
    }
    if (step.status == PumpStatus::kBlocked) {
      blocked = true;
      Wait(step.wait.fd, step.wait.events);
    } else if (d.pump->source_ended()) {
      *d.done = true;
    }
  }
  if (to_wire_done_ && from_wire_done_) {
    FinishDetach(absl::AbortedError("it ended while quiescing"));
    CloseGracefully();
    return;
  }
  if (blocked || pending_ > 0) return;  // OnPoll comes back here
  // Nothing held, nothing pending: the sockets and the record go, untouched
  // (no reset, no shutdown: they are the successor's once it has them).
  DetachedConnection d;
  MovedConnection& m = d.meta;
  m.id = record_->id;
  m.direction = direction_;
  m.workload = record_->workload;
  m.info = record_->Info();
  m.started = record_->started;
  m.bytes_to_wire = record_->bytes_to_wire.load();
  m.bytes_from_wire = record_->bytes_from_wire.load();
  m.to_wire_done = to_wire_done_;
  m.from_wire_done = from_wire_done_;
  m.fin_only = fin_only_;
  if (tls_) {
    m.peer = VerifiedPeerOf(*tls_);
  } else if (adopted_peer_) {
    m.peer = adopted_peer_->verified;
  }
  m.netns = listeners_->netns_name;
  d.app = std::move(app_);
  d.wire = std::move(wire_);
  ctx_.shared.counters->detached.fetch_add(1);
  DetachDone done = std::move(detach_done_);
  detach_done_ = nullptr;
  delete this;
  done(std::move(d));
}

void Connection::FinishDetach(absl::StatusOr<DetachedConnection> result) {
  if (!detach_done_) return;
  DetachDone done = std::move(detach_done_);
  detach_done_ = nullptr;
  detach_deadline_ = absl::InfiniteFuture();
  done(std::move(result));
}

void Connection::Established() {
  state_ = ConnectionState::kEstablished;
  record_->state.store(state_);
  deadline_ = absl::InfiniteFuture();
  last_activity_ = ctx_.loop.now();
  RunPumps();
}

absl::Status Connection::CheckRecordLimits() {
  // TLS 1.3 must rekey before the AEAD limit; kernel TLS before 6.14 cannot
  // rekey, so ktrust never sends KeyUpdate and ends the connection instead.
  uint64_t sent = 0, received = 0;
  if (ktls_) {
    auto tx = RecordSequence(wire_.get(), KtlsDirection::kTx);
    auto rx = RecordSequence(wire_.get(), KtlsDirection::kRx);
    if (!tx.ok()) return tx.status();
    if (!rx.ok()) return rx.status();
    sent = *tx;
    received = *rx;
  } else {
    auto* ssl_end = static_cast<SslEnd*>(wire_end_.get());
    sent = ssl_end->records_written();
    received = ssl_end->records_read();
  }
  if (sent >= record_limit_ || received >= record_limit_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the connection reached the TLS record limit for ", record_->Info().cipher,
                     " (", record_limit_, " records) and must be re-established"));
  }
  return absl::OkStatus();
}

bool Connection::StepPump(Pump& pump, bool& done, int& waits_on, std::atomic<uint64_t>& bytes,
                          uint64_t& moved) {
  // Its poll has not fired: stepping it would only hear EAGAIN again, a
  // wasted system call each time the other direction wakes the connection.
  if (waits_on >= 0 && waiters_[waits_on].pending) return true;
  waits_on = -1;
  PumpStep step = pump.Step();
  bytes.fetch_add(step.bytes, std::memory_order_relaxed);
  moved += step.bytes;
  switch (step.status) {
    case PumpStatus::kFailed:
      StreamFailed(step.error);
      return false;
    case PumpStatus::kFinished:
      done = true;
      break;
    case PumpStatus::kStarved:
      PumpStarved(step.error);
      break;
    case PumpStatus::kBlocked:
      waits_on = Wait(step.wait.fd, step.wait.events);
      break;
  }
  return true;
}

void Connection::RunPumps() {
  uint64_t moved = 0;
  if (!to_wire_done_ &&
      !StepPump(*to_wire_, to_wire_done_, to_wire_waits_on_, record_->bytes_to_wire, moved)) {
    return;
  }
  if (!from_wire_done_ && !StepPump(*from_wire_, from_wire_done_, from_wire_waits_on_,
                                    record_->bytes_from_wire, moved)) {
    return;
  }
  if (moved > 0) last_activity_ = ctx_.loop.now();
  if (to_wire_done_ && from_wire_done_) CloseGracefully();
}

void Connection::PumpStarved(const std::string& error) {
  if (!pumps_starved_) {
    LogEvent(spdlog::level::debug,
             {{"event", "pump_starved"}, {"id", record_->id}, {"reason", error}});
  }
  pumps_starved_ = true;
}

void Connection::StreamFailed(const std::string& error) {
  // A server that resets right after the handshake, before sending anything,
  // has almost always refused us by policy: say so to whoever reads the log
  // on this (client) side.
  if (direction_ == Direction::kOutbound && record_->bytes_from_wire.load() == 0) {
    ConnectionInfo info = record_->Info();
    Abort(
        CloseReason::kRejectedByPeer,
        absl::StrCat("the server ", info.peer_id, " ended the connection before sending any data (",
                     error, "); its policy may not allow ", info.local_id,
                     ": check the denials on the server's node"));
    return;
  }
  Abort(CloseReason::kStreamError, error);
}

void Connection::ReleaseHandshakeSlot() {
  handshake_slot_.Release();
  if (pending_ticket_ != 0) ctx_.pending_inbound.Remove(pending_ticket_);
  pending_ticket_ = 0;
}

void Connection::NoteClientSpoke() {
  BIO* rbio = SSL_get_rbio(tls_->ssl());
  if (rbio == nullptr || BIO_number_read(rbio) == 0) return;
  client_spoke_ = true;
  ctx_.pending_inbound.Spoke(pending_ticket_);
}

void Connection::Evict(bool silent, int limit, const std::string& newcomer) {
  absl::Duration waited = absl::Trunc(ctx_.loop.now() - record_->started, absl::Milliseconds(1));
  Terminate(CloseReason::kEvictedHandshake,
            absl::StrCat("the inbound handshake budget (limit ", limit, ") was full: ",
                         silent ? absl::StrCat("this client had sent nothing in ",
                                               absl::FormatDuration(waited))
                                : absl::StrCat("no client was silent, and this one's handshake "
                                               "had not completed in ",
                                               absl::FormatDuration(waited)),
                         ", the longest wait on its loop, so it gave its place to a new client "
                         "from ",
                         newcomer));
}

bool Connection::ClientSentAnything() const {
  BIO* rbio = SSL_get_rbio(tls_->ssl());
  return rbio != nullptr && BIO_number_read(rbio) > 0;
}

bool Connection::ClientSentNothing() const {
  // What the handshake read, or what waits in the socket, is the first byte.
  if (ClientSentAnything()) return false;
  char byte = 0;
  ssize_t n = recv(wire_.get(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

void Connection::Tick(absl::Time now) {
  if (closing_) return;
  if (detach_done_) {
    // Its receiver did not take what the pumps hold in time: it stays here
    // and carries on.
    if (now > detach_deadline_) {
      FinishDetach(absl::DeadlineExceededError(
          "its receiver did not take the bytes in flight in time; it stays and drains here"));
      RunPumps();
    }
    return;
  }
  for (Waiter& w : waiters_) {
    if (w.retry && !w.pending) Wait(w.fd, w.events);
  }
  if (now > first_byte_deadline_ && state_ == ConnectionState::kHandshaking && tls_) {
    first_byte_deadline_ = absl::InfiniteFuture();
    if (ClientSentNothing()) {
      ctx_.shared.counters->handshake_failures.fetch_add(1);
      Abort(CloseReason::kFirstByteTimeout,
            absl::StrCat("the client sent nothing within ",
                         absl::FormatDuration(std::min(ctx_.shared.options.first_byte_timeout,
                                                       ctx_.shared.options.handshake_timeout)),
                         " of connecting"));
      return;
    }
  }
  if (now > deadline_) {
    if (state_ == ConnectionState::kHandshaking) {
      ctx_.shared.counters->handshake_failures.fetch_add(1);
      Abort(CloseReason::kHandshakeTimeout,
            absl::StrCat("the TLS handshake did not complete within ",
                         absl::FormatDuration(ctx_.shared.options.handshake_timeout)));
    } else {
      Abort(CloseReason::kConnectTimeout,
            absl::StrCat("connecting did not complete within ",
                         absl::FormatDuration(ctx_.shared.options.connect_timeout)));
    }
    return;
  }
  if (state_ != ConnectionState::kEstablished) return;
  if (now - last_activity_ > ctx_.shared.options.idle_timeout) {
    Abort(CloseReason::kIdleTimeout, "no data in either direction for the idle timeout");
    return;
  }
  if (pumps_starved_) {
    // A pump found no pipe (the agent is out of descriptors): its bytes
    // waited in the socket; try again.
    pumps_starved_ = false;
    RunPumps();
    if (closing_) return;
  }
  if (plaintext_) return;  // no TLS records to count
  if (absl::Status st = CheckRecordLimits(); !st.ok())
    Abort(CloseReason::kRecordLimit, std::string(st.message()));
}

void Connection::Abort(CloseResult result, const std::string& explanation) {
  if (closing_) return;
  // Refusals during the handshake are counted as handshake failures or
  // denials where they happen; everything else is an error.
  if (state_ != ConnectionState::kHandshaking) ctx_.shared.counters->errors.fetch_add(1);
  Terminate(result, explanation);
}

void Connection::Terminate(CloseResult result, const std::string& explanation) {
  if (closing_) return;
  ArmReset(app_.get());
  if (in_place_) {
    KillWorkloadSocket();
  } else {
    ArmReset(wire_.get());
  }
  result_ = result;
  result_detail_ = explanation;
  Cancel();
}

void Connection::CloseGracefully() {
  if (closing_) return;
  Cancel();
}

void Connection::Cancel() {
  FinishDetach(absl::AbortedError("it ended while quiescing"));
  // A closing connection is no longer a pending handshake.
  ReleaseHandshakeSlot();
  closing_ = true;
  state_ = ConnectionState::kClosing;
  record_->state.store(state_);
  for (Waiter& w : waiters_) {
    if (w.pending) ctx_.loop.PollRemove(&w);
  }
  if (sniff_timer_.pending) ctx_.loop.TimeoutRemove(&sniff_timer_);
  MaybeFinalize();
}

void Connection::MaybeFinalize() {
  if (pending_ > 0) return;
  ClosedConnection closed = Summary();
  // A permissive listener's plaintext client that ended normally is an
  // access, not a failure.
  bool ended_normally = closed.result.reason == CloseReason::kOk ||
                        closed.result.reason == CloseReason::kPlaintextClient;
  nlohmann::ordered_json event = {
      {"event", handed_over_     ? "connection_handed_over"
                : ended_normally ? "connection_closed"
                                 : "connection_failed"},
      {"id", record_->id},
      {"direction", DirectionName(closed.direction)},
      {"workload", closed.workload},
      {"result", std::string(closed.result.code())},
  };
  if (!listeners_->netns_name.empty()) event["netns"] = listeners_->netns_name;
  for (const auto& [key, value] :
       {std::pair<const char*, const std::string&>{"reason", closed.reason},
        {"local_id", closed.info.local_id},
        {"peer_id", closed.info.peer_id},
        {"app", closed.info.app_address},
        {"wire_local", closed.info.wire_local},
        {"wire_peer", closed.info.wire_peer},
        {"cipher", closed.info.cipher},
        {"data_path", closed.info.data_path}}) {
    if (!value.empty()) event[key] = value;
  }
  if (closed.info.resumed) event["resumed"] = true;
  event["bytes_to_wire"] = closed.bytes_to_wire;
  event["bytes_from_wire"] = closed.bytes_from_wire;
  event["duration_ms"] = absl::ToInt64Milliseconds(closed.duration);
  if (ended_normally) {
    LogEvent(spdlog::level::info, event);
  } else if (closed.result.reason == CloseReason::kClientClosed) {
    // Not a failure, and port probes make many: debug only (counted by
    // on_closed, ktrust_connections_total{result="client_closed"}). An
    // event of its own: it carried no data, unlike a connection_closed.
    event["event"] = "client_closed";
    LogEvent(spdlog::level::debug, event);
  } else {
    // A flood of refusals must not flood the log: counted in full, logged to a budget.
    LogRefusal(spdlog::level::warn, event, closed.result.code());
  }
  // A connection handed to its workload has not ended: only `done` (in
  // place) hears of it.
  if (!handed_over_ && ctx_.shared.options.on_closed) ctx_.shared.options.on_closed(closed);
  if (in_place_) ReportInPlace(closed);
  delete this;
}

ClosedConnection Connection::Summary() const {
  ClosedConnection closed;
  closed.direction = direction_;
  closed.workload = record_->workload;
  closed.result = result_;
  closed.reason = result_detail_;
  closed.info = record_->Info();
  closed.bytes_to_wire = record_->bytes_to_wire.load();
  closed.bytes_from_wire = record_->bytes_from_wire.load();
  closed.duration = ctx_.loop.now() - record_->started;
  return closed;
}

void Connection::Destroy() {
  FinishDetach(absl::AbortedError("the engine stopped"));
  ArmReset(app_.get());
  if (in_place_) {
    // The engine stops: the workload's connect still gets its answer.
    KillWorkloadSocket();
    if (!handed_over_ && !closing_) {
      result_ = CloseReason::kConnectFailed;
      result_detail_ = "the engine stopped before the zero-hop handshake completed";
    }
    ReportInPlace(Summary());
  } else {
    ArmReset(wire_.get());
  }
  delete this;
}

}  // namespace ktrust
