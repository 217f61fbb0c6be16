// The engine: accepts connections, runs the identity-verified TLS 1.3
// handshake, and moves bytes, with the kernel doing the crypto where it can.
//
//   outbound  app --plain--> [listener] engine --TLS, our client SVID--> destination
//   inbound   peer --TLS--> [listener] engine --plain--> application
//
// Fail closed: the application's bytes are read only after the server proved
// an acceptable identity, and an inbound connection reaches the application
// only after the client proved its identity and the Authorizer allowed it.
// Any error closes both sides.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ktrust/common/socket_address.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/dataplane/close_reason.h"
#include "ktrust/dataplane/connection_table.h"
#include "ktrust/identity/authorizer.h"
#include "ktrust/identity/spiffe_id.h"
#include "ktrust/identity/svid.h"
#include "ktrust/identity/trust_bundle.h"
#include "ktrust/tls/tls_context.h"

namespace ktrust {

// The SVID to present for a workload, fetched per connection so rotation
// takes effect on the next handshake.
using SvidProvider = std::function<std::shared_ptr<const Svid>()>;

// Where one accepted application connection goes, and as whom.
struct OutboundRoute {
  SocketAddress destination;
  std::string workload;  // the local workload, for the connection table and logs
  SvidProvider identity;
  // If set, the server must present an ID matching this.
  std::optional<SpiffeIdPattern> expected_server;
};

struct OutboundListener {
  SocketAddress listen;
  // Tunnel mode: a fixed route. With eBPF interception: the connection's
  // original destination and its workload. An error refuses the connection.
  std::function<absl::StatusOr<OutboundRoute>(int app_fd)> route;
};

// The peer's certificate chain as a handshake verified it, so that a
// connection the engine no longer holds (zero-hop) can be checked again
// when the trust bundle or a revocation list changes.
struct VerifiedPeer {
  std::string chain_pem;  // leaf first, then the intermediates the peer sent
  absl::Time verified_at;
};

struct InboundListener {
  SocketAddress listen;
  std::string workload;
  SvidProvider identity;
  // Where authorized connections are delivered. Unset: the address the
  // client dialled, i.e. the accepted socket's local address, which
  // sk_lookup steering preserves.
  std::optional<SocketAddress> application;
  // The workload's `permissive` mode: a client that does not open with a TLS
  // record (or sends nothing within EngineOptions::permissive_sniff_timeout,
  // as the client of a server-speaks-first protocol does) is delivered to
  // the application in plaintext and logged as "plaintext_client". A client
  // that does speak TLS is verified and authorized as on any listener.
  // false (enforce): every client must complete the mutual-TLS handshake.
  bool permissive = false;
  // Zero-hop, inbound: called, on the engine's loop thread, for a client
  // that offered ALPN "ktrust-zh/1" (which the engine acked), was verified
  // and authorized, once kernel TLS TX and RX are installed on the accepted
  // socket and OpenSSL holds none of its bytes (nothing read or written
  // after the handshake). `info.data_path` is "zero-hop". Returning true
  // hands the connection over: the callee has taken `socket` (moved it out;
  // if it left it, the engine closes its copy without a reset), the engine
  // never connects to the application and keeps no reference; logged as
  // "connection_handed_over", counted in zero_hop_delivered, no on_closed.
  // Returning false (no zero-hop workload listens there) leaves `socket` in
  // place and the engine proxies the connection as usual, on kernel TLS,
  // under the zero-hop end rule. Must not block. Unset: always proxied.
  // Without kernel TLS it is never called.
  std::function<bool(UniqueFd& socket, const ConnectionInfo& info, const VerifiedPeer& peer)>
      deliver = nullptr;
};

// Zero-hop, outbound: what HandshakeInPlace reports, once.
struct InPlaceResult {
  // 0: the socket is connected to the destination, the server verified
  // (with the expected-server check) and acked "ktrust-zh/1", and kernel TLS
  // TX and RX are installed; nothing of the application's was read or sent.
  // Otherwise the errno the application's connect() should fail with: the
  // kernel's own for a failed connect (ECONNREFUSED, ENETUNREACH, ...),
  // ETIMEDOUT for the connect or handshake timeout, ECONNREFUSED for every
  // other refusal or failure. The socket is then dead (SO_LINGER{1,0},
  // shutdown(SHUT_RDWR)): the application can never send on it.
  int error = 0;
  CloseResult result;   // kOk, or why not (its code() is the stable code)
  std::string reason;   // in words; empty for kOk
  ConnectionInfo info;  // ids, addresses, cipher; data_path "zero-hop" when ok
  absl::Time started;
  uint64_t socket_cookie = 0;  // SO_COOKIE of the socket, when ok
  VerifiedPeer peer;           // when ok
  // The server completed a verified handshake but did not ack "ktrust-zh/1":
  // a TLS end that is not zero-hop capable. Serve this destination through
  // the proxy from now on.
  bool proxy_only() const { return result.reason == CloseReason::kNotZeroHopCapable; }
};

// Zero-hop, outbound: connect the workload's own socket and run the
// handshake on it as `workload`.
struct InPlaceOutbound {
  // A duplicate (pidfd_getfd) of the workload's TCP socket, not yet
  // connected. It shares the open file with the workload, so its file flags
  // are the workload's: a blocking file is made non-blocking for the work
  // and its flags are restored before `done` runs. Nothing else of the
  // socket's options is changed (no SO_MARK, no TCP_NODELAY).
  UniqueFd socket;
  SocketAddress destination;
  std::string workload;
  SvidProvider identity;
  std::optional<SpiffeIdPattern> expected_server;
  // Called exactly once, on any thread (an engine loop's, or the caller's if
  // the engine is not running), after the engine closed its duplicate.
  std::function<void(InPlaceResult)> done;
};

// Listeners in another network namespace (a pod's), added while the engine
// runs. Their sockets, and every socket their connections open, live in that
// namespace: an outbound connection dials its destination from there (the
// peer sees the pod's address), an inbound one reaches the application
// there (from upstream_source4/6, which must exist in that namespace).
struct NetnsListeners {
  // The namespace, e.g. open("/proc/<pid>/ns/net"). Borrowed: the engine
  // keeps its own duplicate for as long as any of these listeners or their
  // connections live.
  int netns_fd = -1;
  std::vector<OutboundListener> outbound;
  std::vector<InboundListener> inbound;
};

// A group of listeners the engine opened: those of Create (id 0, in the
// engine's own namespace, see Engine::own_listeners) or of one
// AddNetnsListeners call.
struct ListenerGroupHandle {
  uint64_t id = 0;  // for RemoveNetnsListeners
  // As bound (port 0 resolved), in the order the listeners were given.
  std::vector<SocketAddress> outbound_addresses;
  std::vector<SocketAddress> inbound_addresses;
  // Per listener, in the same order: loop 0's socket, for sk_lookup's
  // sockmap (the kernel spreads steered connections over the loops'
  // SO_REUSEPORT group). Valid until RemoveNetnsListeners(id), or for
  // group 0 while the engine runs.
  std::vector<int> outbound_fds;
  std::vector<int> inbound_fds;
};

// How a connection ended, for the agent's denial list and metrics.
struct ClosedConnection {
  Direction direction = Direction::kOutbound;
  std::string workload;
  // "ok", "plaintext_client" (a permissive listener let a non-TLS client
  // through, and it ended normally) or why it failed: result.code() is the
  // stable code ("denied", "expired", ...).
  CloseResult result;
  std::string reason;  // in words; empty for "ok"
  ConnectionInfo info;
  uint64_t bytes_to_wire = 0, bytes_from_wire = 0;
  absl::Duration duration;
};

// A proxied connection on its way from one engine to another (an agent
// handover, docs/operations.md): what the connection table shows of it and
// what the new engine needs to carry it on. Only connections whose two
// sockets hold no userspace state move: kernel TLS ("ktls-sw", "ktls-hw")
// or plain ("plaintext", a permissive listener's non-TLS client) on the
// wire, a plain socket to the application.
struct MovedConnection {
  uint64_t id = 0;  // in the engine it leaves (for the logs)
  Direction direction = Direction::kOutbound;
  std::string workload;
  ConnectionInfo info;  // info.data_path says what the wire socket carries
  absl::Time started;   // when its first agent accepted it
  uint64_t bytes_to_wire = 0, bytes_from_wire = 0;
  // A direction that has already ended (its sink was shut down).
  bool to_wire_done = false;
  bool from_wire_done = false;
  // The zero-hop end rule was negotiated: a bare FIN ends a direction.
  bool fin_only = false;
  // The peer's chain as the handshake verified it, so that the new engine
  // can check it again after a reload; empty for a plaintext client.
  VerifiedPeer peer;
  // "net:[<inode>]" of the namespace its listener was in; empty: the
  // engine's own. The new engine files it with its listeners there.
  std::string netns;
};

// A connection taken out of an engine (Engine::DetachForHandover), or
// received by one that is to adopt it: its record and both sockets.
struct DetachedConnection {
  MovedConnection meta;
  UniqueFd app;   // the application's end: plain TCP
  UniqueFd wire;  // the peer's end: kernel TLS, or plain TCP for "plaintext"
};

// Checks that `app` and `wire` are what `meta` says they are: connected TCP
// sockets, the wire one with kernel TLS installed both ways unless the data
// path is "plaintext" (and then without any), and a data path the engine
// can carry. Never adopt on trust: a plaintext socket taken for a kTLS one
// would put the application's bytes on the wire in the clear.
absl::Status CheckMovedSockets(const MovedConnection& meta, int app, int wire);

enum class DataPathMode {
  kAuto,       // kTLS when the kernel has it, else the userspace record layer
  kUserspace,  // always the userspace record layer
};

// Defaults are documented in docs/dataplane.md.
struct EngineOptions {
  int loops = 0;  // event-loop threads; 0 = one per core
  DataPathMode data_path = DataPathMode::kAuto;
  absl::Duration connect_timeout = absl::Seconds(5);
  absl::Duration handshake_timeout = absl::Seconds(10);
  absl::Duration idle_timeout = absl::Hours(1);
  // Above these, new connections are refused at once (RST), logged and
  // counted. A handshake is pending from accept until the peer proved its
  // identity (outbound: including the connect). The directions have
  // separate budgets, so a flood of inbound clients cannot starve the local
  // workloads' outbound connections, nor the reverse.
  int max_connections = 65536;
  // Full, a new inbound client takes the place of the longest-pending one
  // on its loop (one that has sent nothing first), which is reset
  // (evicted_handshake), rather than being refused.
  int max_inbound_handshakes = 1024;
  int max_outbound_handshakes = 1024;
  // Inbound pending handshakes from one source: an IPv4 address, or an IPv6
  // /64 (what one host is usually given, and can pick addresses from at
  // will). IPv4-mapped IPv6 sources count as their IPv4 address.
  int max_handshakes_per_source = 128;
  // How long an inbound client may take to send its first byte (the start
  // of its ClientHello) before it is dropped: a silent client then holds a
  // budget slot for this long rather than handshake_timeout. Permissive
  // listeners keep permissive_sniff_timeout (silence there is a plaintext
  // client, not a failure). Bounded by handshake_timeout.
  absl::Duration first_byte_timeout = absl::Seconds(3);
  TlsContextOptions tls;  // suites, groups, clock skew; the role is set per side
  // SO_MARK on the engine's own sockets (0: none): the interception programs
  // never redirect a socket with the agent's mark.
  uint32_t socket_mark = 0;
  // Source addresses (port 0) for connections to local applications, e.g.
  // 127.0.0.6: sk_lookup lets them through instead of steering them back.
  std::optional<SocketAddress> upstream_source4;
  std::optional<SocketAddress> upstream_source6;
  // Permissive listeners: how long to wait for a client's first bytes before
  // deciding that no TLS ClientHello is coming (a server-speaks-first
  // client). Bounded by handshake_timeout.
  absl::Duration permissive_sniff_timeout = absl::Milliseconds(200);
  // Called on the connection's loop thread once it has ended and been logged.
  std::function<void(const ClosedConnection&)> on_closed;
};

// Counters for status and metrics.
struct EngineCounters {
  std::atomic<uint64_t> accepted{0};
  std::atomic<uint64_t> established{0};
  std::atomic<uint64_t> refused_limit{0};               // at accept, over any of the limits below
  std::atomic<uint64_t> refused_connections{0};         // over max_connections
  std::atomic<uint64_t> refused_inbound_handshakes{0};  // over max_inbound_handshakes
  std::atomic<uint64_t> refused_outbound_handshakes{0};
  std::atomic<uint64_t> refused_source_handshakes{0};  // over max_handshakes_per_source
  // At accept, out of file descriptors (EMFILE, ENFILE): result fd_limit,
  // as a connection refused later for want of one for its other socket.
  std::atomic<uint64_t> refused_fd_limit{0};
  // Accepts that failed for want of memory (ENOMEM, ENOBUFS): the clients
  // stay queued until the next second's try. (A connection refused later
  // for want of memory ends with result memory.)
  std::atomic<uint64_t> refused_memory{0};
  // Inbound pending handshakes reset to make room for a new client while
  // max_inbound_handshakes was full (not counted in refused_limit).
  std::atomic<uint64_t> evicted_handshakes{0};
  std::atomic<uint64_t> handshake_failures{0};
  // Handshakes that resumed a session (TLS 1.3 ticket, agent.tls_resumption);
  // their peers were verified and authorized as any other.
  std::atomic<uint64_t> resumed_handshakes{0};
  std::atomic<uint64_t> authorizations{0};  // inbound peers verified and put to the Authorizer
  std::atomic<uint64_t> denied{0};          // the Authorizer said no (at once or after a reload)
  std::atomic<uint64_t> errors{0};          // closed by an I/O or protocol error
  std::atomic<uint64_t> plaintext_accepted{0};  // permissive: non-TLS clients let through
  std::atomic<uint64_t> active{0};
  std::atomic<uint64_t> handshaking{0};  // pending handshakes, both directions
  std::atomic<uint64_t> handshaking_inbound{0};
  std::atomic<uint64_t> handshaking_outbound{0};
  // Zero-hop: handshakes on a workload's own socket that handed it back with
  // kernel TLS (outbound), and inbound connections handed to a workload's
  // listener (InboundListener::deliver). Neither is in `established`: the
  // engine carries none of their bytes.
  std::atomic<uint64_t> zero_hop_outbound{0};
  std::atomic<uint64_t> zero_hop_delivered{0};
  // Handover: connections taken out for a successor (DetachForHandover),
  // and connections taken in (Adopt). Moved ones are not in `established`
  // a second time.
  std::atomic<uint64_t> detached{0};
  std::atomic<uint64_t> adopted{0};
};

struct ListenerGroup;  // engine_shared.h

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(
      EngineOptions options, std::shared_ptr<const TrustStore> trust,
      std::shared_ptr<const Authorizer> authorizer, std::vector<OutboundListener> outbound,
      std::vector<InboundListener> inbound);
  ~Engine();

  // Binds the listeners and starts the loops. Port 0 binds an ephemeral
  // port: see outbound_addresses() / inbound_addresses().
  absl::Status Start();
  // Stops accepting, closes every connection (those of netns listeners
  // too), joins the loops.
  void Stop();

  // Opens `listeners` in their network namespace on every loop, while the
  // engine runs (after Start). All or nothing: on an error no socket stays
  // open. They accept from the moment this returns.
  //
  // AddNetnsListeners and RemoveNetnsListeners may be called from any thread
  // except the engine's own loops (so not from on_closed or a route
  // callback), concurrently with traffic and with each other.
  absl::StatusOr<ListenerGroupHandle> AddNetnsListeners(NetnsListeners listeners);
  // Stops accepting on the listeners of AddNetnsListeners' `id` (new
  // connections to them are refused) and resets the connections they
  // accepted; returns once every loop has done so. An unknown id is a no-op.
  void RemoveNetnsListeners(uint64_t id);

  // Draining (the agent stops or hands over): every loop takes what is
  // already queued on its listeners, then closes them all (the engine's own
  // and every netns group's), so the kernel hands this engine no more
  // connections. Live connections and handshakes in progress go on. Later
  // AddNetnsListeners calls fail. Returns once every loop has done so.
  void StopAccepting();
  // Ends every connection still open, each reset both ways with one log
  // line (`result`, `explanation`) and reported to on_closed, as a removed
  // listener's are; returns once every loop has done so. Listeners stay.
  void EndConnections(CloseResult result, const std::string& explanation);
  // StopAccepting was called.
  bool accepting() const { return accepting_.load(); }

  // Handover, the giving side: takes up to `max` established connections
  // out of the engine, each with both sockets on kernel TLS or plain. Each
  // is quiesced first: its pumps stop reading and write what they hold to
  // their sinks, so that no byte is lost or sent twice. One whose sink does
  // not take those bytes within `timeout` (a stalled receiver) stays and
  // carries on. A taken connection is in no table, has no log line and no
  // on_closed: its sockets are the caller's, who must close them without a
  // reset or a shutdown (the successor owns them then), or Adopt them back.
  // Returns once every loop has done so. Any thread but the loops'.
  std::vector<DetachedConnection> DetachForHandover(size_t max, absl::Duration timeout);
  // Handover, the taking side (or the giving side taking one back): carries
  // `connection` on from where its pumps stopped, in the connection table
  // with its record (ids, counters, start time), re-checked after reloads
  // like any other. CheckMovedSockets first; on an error nothing changed
  // and the sockets stay with the caller. Any thread but the loops'.
  absl::Status Adopt(DetachedConnection& connection);

  // Zero-hop, outbound: connects `request.socket` to its destination and
  // runs the mutual-TLS handshake on it on one of the engine's loops, under
  // the same connect and handshake timeouts, outbound handshake budget,
  // counters and logging as a proxied connection (a failure is logged as
  // "connection_failed" and reported to on_closed; a success is logged as
  // "connection_handed_over" and reported only to `done`). The client offers
  // ALPN "ktrust-zh/1" and requires it acked. Without kernel TLS it fails
  // at once ("no_kernel_tls"), before connecting: never userspace TLS on an
  // application's socket. Any thread but the engine's own loops (so not from
  // `done` or on_closed), as AddNetnsListeners; see InPlaceResult.
  void HandshakeInPlace(InPlaceOutbound request);

  // New handshakes use `trust` (bundle rotation); live connections keep theirs.
  void SetTrustStore(std::shared_ptr<const TrustStore> trust);
  // New inbound connections are authorized by `authorizer`; live ones are
  // re-checked within a second and closed if it now denies them.
  void SetAuthorizer(std::shared_ptr<const Authorizer> authorizer);

  // The listeners of Create as Start opened them (group 0): their bound
  // addresses and sockets, per listener in Create's order.
  const ListenerGroupHandle& own_listeners() const { return own_opened_; }
  const std::vector<SocketAddress>& outbound_addresses() const {
    return own_opened_.outbound_addresses;
  }
  const std::vector<SocketAddress>& inbound_addresses() const {
    return own_opened_.inbound_addresses;
  }
  const ConnectionTable& connections() const { return *table_; }
  const EngineCounters& counters() const { return *counters_; }
  // "ktls-sw" or "userspace", and why.
  const std::string& data_path() const { return data_path_; }
  const std::string& data_path_reason() const { return data_path_reason_; }

  struct Shared;  // what every loop reads; defined in engine_shared.h

 private:
  Engine() = default;
  class Loop;

  // Makes every loop close the listeners of group `id` and their
  // connections; returns when all have.
  void CloseListenerGroup(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(runtime_mu_);
  // Runs `task` on every loop's thread; returns when all have run it (or
  // ended: a loop that has ended closed everything already).
  void OnEveryLoop(const std::function<void(Loop&)>& task)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(runtime_mu_);

  // Serializes Start, Stop and the runtime listener changes.
  absl::Mutex runtime_mu_;
  bool running_ ABSL_GUARDED_BY(runtime_mu_) = false;
  std::atomic<bool> accepting_{true};  // false once StopAccepting was called
  uint64_t next_listener_group_ ABSL_GUARDED_BY(runtime_mu_) = 1;  // 0: the listeners of Create
  std::atomic<uint64_t> next_in_place_loop_{0};  // HandshakeInPlace spreads over the loops
  // The groups of AddNetnsListeners: their namespace (for the logs, and
  // for filing an adopted connection with its listeners).
  std::map<uint64_t, std::shared_ptr<const ListenerGroup>> netns_listener_groups_
      ABSL_GUARDED_BY(runtime_mu_);
  std::atomic<uint64_t> next_adopt_loop_{0};  // Adopt spreads over the loops

  std::shared_ptr<Shared> shared_;
  std::shared_ptr<ConnectionTable> table_;
  std::shared_ptr<EngineCounters> counters_;
  std::vector<std::unique_ptr<Loop>> loops_;
  ListenerGroupHandle own_opened_;
  std::string data_path_;
  std::string data_path_reason_;
};

}  // namespace ktrust
