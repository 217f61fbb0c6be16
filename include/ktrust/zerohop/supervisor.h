// The supervisor: answers the connect/accept notifications of zero-hop
// workloads (docs/dataplane.md, "Zero-hop"; design notes §2, §3).
//
// Outbound: a TCP connect to a mesh destination is handshaken in place on
// the application's own socket (a pidfd_getfd dup) by the `handshake` hook,
// asynchronously; the application's connect returns only when the hook
// reports the outcome: 0 once the socket is connected with kTLS, an errno
// otherwise, and then the socket is reset so nothing half-made is left to the
// application. Anything else (non-inet, non-TCP, non-mesh) continues in the
// kernel, where the eBPF connect hooks stay the guard.
//
// Inbound: the agent hands authenticated sockets over with Deliver(). The
// application's accept() returns them (SECCOMP_ADDFD_FLAG_SEND); to wake an
// epoll/select server the supervisor rings one doorbell, a loopback TCP
// connection from the agent to the application's listener, and removes it
// from that listener's queue itself, so the application never accepts it.
//
// Every received notification is answered exactly once, on every path
// (a received one is never delivered again: design §1.5). Failures answer
// with an errno, never by letting a mesh connect continue, and log one
// structured line with a reason in words.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "ktrust/common/socket_address.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/zerohop/notify.h"

namespace ktrust::zerohop {

namespace internal {
struct State;
}
struct ListenerStatus;

// What the handshake hook reports for one outbound connection.
struct OutboundOutcome {
  // 0: the socket is connected, authenticated and carries kTLS both ways:
  // the application's connect returns 0. Otherwise the errno its connect
  // returns (ECONNREFUSED for a refusal, ETIMEDOUT ...); the supervisor
  // resets the socket.
  int error = 0;
  // Why, in words, for the log line and `ktrust status`.
  std::string reason;
  // The destination does not speak zero-hop (it did not acknowledge the
  // zero-hop ALPN token): connects there continue to the proxy for
  // kProxyOnlyFor. This connection fails (error, ECONNREFUSED if 0) because
  // its handshake already ran on the application's socket.
  bool proxy_only = false;
};

inline constexpr absl::Duration kProxyOnlyFor = absl::Minutes(10);

struct WorkloadHooks {
  // Name for logs and status.
  std::string workload;
  // True if a connect to this address must go through the mesh. Called on
  // the notification thread: must be quick and must not block.
  std::function<bool(const SocketAddress&)> is_mesh;
  // Connects `socket` (a dup of the application's socket: the same open
  // file; non-blocking for the duration, the supervisor restores the
  // application's flags) to `destination`, runs the handshake and installs
  // kTLS, then calls `done` exactly once, from any thread, possibly before
  // returning. Must not block the caller.
  std::function<void(UniqueFd socket, SocketAddress destination,
                     std::function<void(OutboundOutcome)> done)>
      handshake;
  // Optional: a connection became zero-hop (outbound: connected; inbound:
  // handed to the application's accept). For the connection registry.
  std::function<void(uint64_t socket_cookie, const SocketAddress& peer, bool outbound)>
      on_connection;
  // Optional: the listener was dropped (the workload exited: POLLHUP, or a
  // fatal listener error), after everything it held was answered; `last` is
  // its final status (counters). Called on the notification thread without
  // the supervisor's lock.
  std::function<void(const ListenerStatus& last, const std::string& why)> on_removed;
};

struct AddOptions {
  // The filter was installed with SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV.
  // Without it (runc's listenerPath, design D10) a signal can take the
  // application out of a connect the agent is still working on, leaving it a
  // half-made socket to write plaintext on: every connect is then answered
  // Continue (the eBPF hooks redirect mesh ones to the proxy).
  bool wait_killable_recv = false;
  // Serve accepts (false: every accept continues in the kernel, i.e. proxy
  // mode inbound).
  bool inbound = false;
  // Handshake mesh connects in place (false: Continue, proxy mode).
  bool outbound = false;
  // The workload's network namespace, for the doorbell socket (duplicated;
  // the caller keeps its fd). -1: the supervisor's own namespace.
  int netns_fd = -1;
  // SO_MARK for the doorbell socket: the agent's own mark, so ktrust's
  // sk_lookup lets the doorbell reach the application's listener instead of
  // steering it to the agent. 0: none (needs CAP_NET_ADMIN otherwise).
  uint32_t socket_mark = 0;
  // Source address to bind the doorbell to (port 0 recommended), per family.
  std::optional<SocketAddress> doorbell_source4;
  std::optional<SocketAddress> doorbell_source6;
  // Authenticated sockets waiting per port for the application's accept;
  // beyond this a delivered socket is reset (an application that never
  // accepts cannot make the agent hoard sockets).
  size_t max_ready_per_port = 256;
  // Safety net for a handshake hook that never calls done: the connect is
  // answered ETIMEDOUT and the socket reset.
  absl::Duration handshake_timeout = absl::Seconds(30);
};

// One port of a workload with inbound state.
struct PortStatus {
  uint16_t port = 0;
  size_t ready = 0;
  size_t held_accepts = 0;
  size_t doorbells = 0;
};

struct SupervisorCounters {
  uint64_t connects_continued = 0;
  uint64_t connects_zero_hop = 0;
  uint64_t connects_failed = 0;
  uint64_t connects_reentered = 0;
  uint64_t accepts_delivered = 0;
  uint64_t accepts_eagain = 0;
  uint64_t accepts_interrupted = 0;
  uint64_t accepts_continued = 0;
  uint64_t accepts_failed = 0;
  uint64_t doorbells_rung = 0;
  uint64_t doorbells_drained = 0;
  // Connections the kernel queued on an application's listener itself (a
  // connection the agent proxied, or a port ktrust does not enforce), handed
  // to its accept like the others.
  uint64_t accepts_direct = 0;
  // Delivered sockets reset because the port's ready queue was full or the
  // doorbell was refused.
  uint64_t ready_reset = 0;
};

struct ListenerStatus {
  uint64_t id = 0;
  std::string workload;
  bool inbound = false;
  bool outbound = false;
  size_t pending_handshakes = 0;
  std::vector<PortStatus> ports;
  SupervisorCounters counters;
};

enum class DeliverResult {
  // Queued for the application's accept (a doorbell rang, or was ringing).
  kQueued,
  // Handed straight to a held blocking accept.
  kAccepted,
  // Not taken: the id is unknown, removed, or not zero-hop inbound. The
  // socket stays with the caller (serve it in proxy mode).
  kNotZeroHop,
  // Taken and reset: the port's ready queue is full (logged).
  kRefused,
};

class Supervisor {
 public:
  Supervisor();
  ~Supervisor();  // Stop()
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Starts serving `listener`. Returns its id (never 0). Starts the
  // notification thread on first use.
  uint64_t Add(NotificationListener listener, WorkloadHooks hooks, AddOptions options);
  // Stops serving it: answers every notification it holds (connects in
  // handshake ECONNREFUSED with the socket reset, held accepts
  // ECONNABORTED), resets its ready sockets and doorbells, closes the
  // supervisor's copy of the listener. No hook is called after it returns,
  // except `done` callbacks already handed out, which then do nothing.
  void Remove(uint64_t id);
  // Hands an authenticated socket to workload `id`'s accept on
  // `local.port()`. `local` is the address the client connected to (the
  // doorbell's destination), `peer` what the application's accept reports.
  // `socket` is moved out unless the result is kNotZeroHop.
  DeliverResult Deliver(uint64_t id, UniqueFd& socket, const SocketAddress& local,
                        const SocketAddress& peer);
  std::vector<ListenerStatus> Status() const;
  // false: takes no new notification from any listener (an agent that
  // handed over: its successor answers them all); what it holds already is
  // answered as before (connects in handshake finish), except held accepts,
  // answered ECONNABORTED at once (the application retries, and the
  // retry goes to whoever takes notifications now). Deliver is the
  // caller's to stop. true: takes them again.
  void SetReceiving(bool receiving);
  // Remove() for every listener, then ends the thread. Idempotent.
  void Stop();

 private:
  std::shared_ptr<internal::State> state_;
};

}  // namespace ktrust::zerohop
