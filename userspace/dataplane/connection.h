// One proxied connection, from accept to close, as a state machine driven by
// poll completions on its event loop (see event_loop.h for the threading).
//
//   outbound: kConnecting -> kHandshaking -> kEstablished
//   inbound:  kHandshaking -> (authorize) -> kConnectingApp -> kEstablished
//
// A permissive listener first peeks at the client's first bytes (still
// kHandshaking): a TLS handshake record goes on as above; anything else, or
// nothing within the sniff timeout, is a plaintext client, delivered as is:
//   kHandshaking (sniffing) -> kConnectingApp -> kEstablished (data path "plaintext")
//
// Zero-hop: an outbound handshake on the workload's own socket runs the first
// two states and hands the socket back instead of pumping:
//   kConnecting -> kHandshaking -> (ALPN acked, kTLS installed) -> handed over
// and an inbound one whose listener has a deliver hook may be handed to the
// workload after authorization instead of kConnectingApp.
//
// Every failure aborts both sockets (RST), so neither side mistakes a broken
// stream for a complete one; a workload's own socket that failed is left dead
// (it is the workload's to close).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "engine_shared.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/dataplane/close_reason.h"
#include "ktrust/tls/ktls.h"
#include "ktrust/tls/tls_session.h"
#include "pump.h"

namespace ktrust {

class Connection {
 public:
  // `listener` belongs to `group`; the connection keeps the group, and makes
  // its other socket in the group's network namespace. `slot`: its place in
  // the handshake budget, held until the peer proved its identity.
  static void StartOutbound(LoopContext& ctx, std::shared_ptr<const ListenerGroup> group,
                            const OutboundListener& listener, UniqueFd app, HandshakeSlot slot);
  static void StartInbound(LoopContext& ctx, std::shared_ptr<const ListenerGroup> group,
                           const InboundListener& listener, UniqueFd wire, HandshakeSlot slot);
  // Zero-hop, outbound: `request.socket` is the workload's own.
  static void StartInPlace(LoopContext& ctx, std::shared_ptr<const ListenerGroup> group,
                           InPlaceOutbound request, HandshakeSlot slot);

  // Carries a connection another engine detached (an agent handover), or
  // one this engine detached and takes back, from where its pumps stopped.
  // Its sockets were checked (CheckMovedSockets).
  static void Adopt(LoopContext& ctx, std::shared_ptr<const ListenerGroup> group,
                    DetachedConnection moved);

  // The ListenerGroup id of the listener that accepted it.
  uint64_t listener_group() const { return listeners_->id; }

  // Handover: established, and both sockets on kernel TLS or plain, so that
  // nothing of the stream is in this process but what the pumps hold.
  bool Movable() const;
  using DetachDone = std::function<void(absl::StatusOr<DetachedConnection>)>;
  // Quiesces a Movable connection (no more reads; what the pumps hold goes
  // to their sinks) and gives it up: `done` runs once, on the loop, with its
  // sockets and record, and the connection is gone. Or with why not: not
  // movable, its sinks did not take the held bytes by `deadline` (it then
  // carries on), or it ended meanwhile (closed and logged as usual).
  void Detach(absl::Time deadline, DetachDone done);

  // Enforces the connect, first-byte, handshake and idle deadlines.
  void Tick(absl::Time now);
  // After a reload: a connection whose peer chain the new trust store refuses
  // (revoked, root dropped), or an inbound one the new policy denies, is closed.
  void Recheck();
  // Resets both sockets for a reason outside the connection (its listener
  // was removed): logged with `result`, not counted as an error.
  void Terminate(CloseResult result, const std::string& explanation);
  // Engine shutdown: close now, without waiting for io_uring.
  void Destroy();

  // Inbound, while the inbound budget is full: the handshake slot a new
  // client may take (HandshakeBudget::Acquire). Once taken, call Evict.
  HandshakeSlot* evictable_slot() { return &handshake_slot_; }
  // Its slot went to a newer client: reset, logged as evicted_handshake.
  // `silent`: it had sent nothing; `limit`: max_inbound_handshakes;
  // `newcomer`: the new client's source.
  void Evict(bool silent, int limit, const std::string& newcomer);

 private:
  enum Slot { kAppIn, kAppOut, kWireIn, kWireOut, kSlots };
  struct Waiter : EventLoop::Op {
    Connection* connection = nullptr;
    Slot slot = kAppIn;
    bool pending = false;
    int fd = -1;
    short events = 0;
    // The kernel had no memory for the poll: asked again on the next tick
    // rather than failing a live connection.
    bool retry = false;
    void OnComplete(int result) override { connection->OnPoll(slot, result); }
  };
  // Permissive listeners: ends the wait for a client's first bytes.
  struct SniffTimer : EventLoop::Op {
    Connection* connection = nullptr;
    bool pending = false;
    __kernel_timespec ts{};
    void OnComplete(int result) override { connection->OnSniffTimer(result); }
  };

  Connection(LoopContext& ctx, std::shared_ptr<const ListenerGroup> listeners, Direction direction,
             std::string workload, absl::Time started = absl::Now());
  ~Connection();

  void OnPoll(Slot slot, int result);
  void Advance();
  void StartSniffing();
  void Sniff(bool timed_out);
  void OnSniffTimer(int result);
  void EndSniffing();
  void AcceptPlaintext(std::string why);
  void StartHandshake(const SvidProvider& identity, std::optional<SpiffeIdPattern> expected);
  void DriveHandshake();
  void OnHandshakeDone();
  bool ClientSentNothing() const;
  // Inbound: the handshake has read a byte from the client.
  bool ClientSentAnything() const;
  AuthorizationDecision Authorize() const;
  void ConnectApplication();
  void StartPumping();
  // splice(2) both ways: `ktls`, the wire is kernel TLS (close_notify ends
  // a direction, unless `fin_only`); otherwise both sockets are plain.
  void CreateSplicePumps(bool ktls, bool fin_only);
  // Handover: flushes the pumps; hands the connection over once they hold
  // nothing and no poll is pending.
  void ContinueDetach();
  // Runs the Detach callback (once) with `result`.
  void FinishDetach(absl::StatusOr<DetachedConnection> result);
  PeerVerdict ReverifyPeer() const;
  // Inbound, zero-hop offered and acked: installs kTLS and offers the socket
  // to the listener's deliver hook. True if the connection is done with
  // (handed over, or aborted); false: proxy it.
  bool TryDeliver();
  // Zero-hop, outbound: the handshake is done; check ALPN, then await the
  // server's acceptance.
  void FinishInPlace();
  // Zero-hop, outbound: accepted by the server; install kTLS, hand back.
  void CompleteInPlace();
  // Zero-hop acceptance (TlsSession::SendZeroHopAccept/ReadZeroHopAccept).
  void DriveZeroHopAccept();
  bool StepDone(HandshakeProgress progress);
  // Inbound: verified, authorized and (zero-hop) acceptance sent: hand over
  // or connect the application.
  void Accepted();
  // Leaves a workload's socket unusable: no byte of the workload's can go
  // out on it, and its close resets the peer.
  void KillWorkloadSocket();
  void RestoreFileFlags();
  // Zero-hop: closes the engine's copy of the socket and ends the
  // connection's life in the engine (logged as handed over).
  void HandedOver();
  // Zero-hop, outbound: closes the duplicate, then reports to `done`.
  void ReportInPlace(const ClosedConnection& closed);
  void Established();
  // Steps each direction's pump whose poll has fired (or that waits on
  // none).
  void RunPumps();
  // One direction: false if the connection was aborted. `waits_on`: the
  // slot the pump's last step waits on, -1 for none.
  bool StepPump(Pump& pump, bool& done, int& waits_on, std::atomic<uint64_t>& bytes,
                uint64_t& moved);
  // Polls `fd` for `events` (once: a wait already pending stays); returns
  // the slot.
  Slot Wait(int fd, short events);
  // A pump found no pipe (PumpStatus::kStarved): the tick steps the pumps
  // again.
  void PumpStarved(const std::string& error);
  void StreamFailed(const std::string& error);
  // Resets both sockets; `result` and `explanation` go to the log line and
  // ClosedConnection.
  void Abort(CloseResult result, const std::string& explanation);
  // The other socket could not be made or connected: fd_limit when the
  // agent is out of descriptors, memory when short of memory, else
  // `otherwise`.
  void AbortConnect(const absl::Status& failed, CloseReason otherwise);
  // The handshake is over (or the connection is): frees the slot and leaves
  // the loop's pending list.
  void ReleaseHandshakeSlot();
  // Inbound: the client's first byte arrived; it is no longer silent.
  void NoteClientSpoke();
  void CloseGracefully();
  void Cancel();
  void MaybeFinalize();
  ClosedConnection Summary() const;
  absl::Status CheckRecordLimits();

  LoopContext& ctx_;
  std::shared_ptr<const ListenerGroup> listeners_;  // keeps inbound_ valid; the netns
  Direction direction_;
  std::shared_ptr<ConnectionRecord> record_;
  OutboundRoute route_;  // outbound only
  const InboundListener* inbound_ = nullptr;
  ConnectionState state_ = ConnectionState::kConnecting;

  UniqueFd app_;
  UniqueFd wire_;
  std::unique_ptr<TlsSession> tls_;
  std::unique_ptr<StreamEnd> app_end_;
  std::unique_ptr<StreamEnd> wire_end_;
  std::unique_ptr<Pump> to_wire_;
  std::unique_ptr<Pump> from_wire_;
  bool to_wire_done_ = false;
  bool from_wire_done_ = false;
  int to_wire_waits_on_ = -1;  // a Slot, or -1
  int from_wire_waits_on_ = -1;
  bool pumps_starved_ = false;
  bool ktls_ = false;
  std::optional<DataPath> ktls_path_;  // kTLS installed before pumping (deliver declined)
  uint64_t record_limit_ = 0;

  Waiter waiters_[kSlots];
  SniffTimer sniff_timer_;
  bool sniffing_ = false;   // permissive: waiting to see whether the client speaks TLS
  bool plaintext_ = false;  // permissive: a non-TLS client, carried without TLS
  int pending_ = 0;
  bool closing_ = false;
  HandshakeSlot handshake_slot_;
  uint64_t pending_ticket_ = 0;  // in ctx_.pending_inbound; 0: not listed
  bool client_spoke_ = false;
  absl::Time deadline_ = absl::InfiniteFuture();
  // Inbound, enforce: when a client that has sent nothing is dropped.
  absl::Time first_byte_deadline_ = absl::InfiniteFuture();
  absl::Time last_activity_;
  CloseResult result_;
  std::string result_detail_;

  // Zero-hop.
  enum class ZeroHopStep { kNone, kSendAccept, kReadAccept };
  ZeroHopStep zero_hop_step_ = ZeroHopStep::kNone;
  // Outbound, after the handshake: reading the session ticket the server
  // promised, before kernel TLS RX is installed (TlsSession::ReadTickets).
  bool reading_tickets_ = false;
  bool in_place_ = false;     // outbound on the workload's own socket (wire_)
  bool handed_over_ = false;  // the socket went to the workload: no on_closed
  std::function<void(InPlaceResult)> in_place_done_;
  int original_file_flags_ = -1;  // to restore; -1: not changed
  int connect_errno_ = 0;         // the kernel's connect error, for the workload
  uint64_t socket_cookie_ = 0;

  // Handover.
  DetachDone detach_done_;  // set while Detach quiesces it
  absl::Time detach_deadline_ = absl::InfiniteFuture();
  bool fin_only_ = false;  // the zero-hop end rule (tls_->zero_hop(), or moved in)
  // A connection moved in has no TlsSession: its peer as verified by the
  // agent that made the handshake, for Recheck.
  struct AdoptedPeer {
    CertChain chain;
    absl::Time verified_at;
    SpiffeId peer_id;
    SpiffeId local_id;
    VerifiedPeer verified;  // as received, to pass on again
  };
  std::unique_ptr<AdoptedPeer> adopted_peer_;
};

}  // namespace ktrust
