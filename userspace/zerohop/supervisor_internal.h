// The supervisor's state, shared by supervisor.cc (thread, outbound) and
// supervisor_inbound.cc (accepts, Deliver, doorbells). Not a public header.
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ktrust/common/log.h"
#include "ktrust/common/socket_address.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/zerohop/notify.h"
#include "ktrust/zerohop/supervisor.h"

namespace ktrust::zerohop::internal {

// A mesh connect being handshaken on the application's socket.
struct Outbound {
  uint64_t cookie = 0;
  SocketAddress destination;
  // The supervisor's own dup, kept until the outcome so the socket can be
  // reset whatever the hook does with its copy.
  UniqueFd keep;
  // The application's O_NONBLOCK, restored before answering.
  bool app_nonblocking = false;
  // Notifications waiting for this socket's outcome, oldest first: the
  // original and SA_RESTART re-entries (or a second thread's connect).
  std::vector<Notification> waiters;
  absl::Time deadline;
};

// An authenticated socket waiting for the application's accept.
struct ReadySocket {
  UniqueFd fd;
  SocketAddress local;
  SocketAddress peer;
};

// A blocking accept with nothing to hand out yet.
struct HeldAccept {
  Notification notification;
  int accept_flags = 0;
  int listener_family = AF_INET;
};

// A doorbell connection from the agent to the application's listener.
struct Doorbell {
  UniqueFd client;
  // The client's own address: what the drained connection's peer must be.
  SocketAddress source;
  bool connected = false;
};

struct Port {
  std::deque<ReadySocket> ready;
  std::deque<HeldAccept> held;
  std::vector<Doorbell> doorbells;
  // The ready queue emptied while a doorbell had not reached the listener
  // yet: drain it from this dup of the application's listener when it does.
  UniqueFd drain_listener;
};

struct Workload {
  Workload(uint64_t id_in, NotificationListener listener_in, WorkloadHooks hooks_in,
           AddOptions options_in)
      : id(id_in),
        listener(std::move(listener_in)),
        hooks(std::move(hooks_in)),
        options(std::move(options_in)) {}
  uint64_t id;
  NotificationListener listener;
  WorkloadHooks hooks;
  AddOptions options;
  UniqueFd netns;
  bool removed = false;
  std::map<uint64_t, std::shared_ptr<Outbound>> outbound;  // by socket cookie
  // Cookies of sockets made zero-hop here (bounded, oldest dropped): refuse
  // connect(AF_UNSPEC) on them even where TCP_ULP cannot tell.
  std::deque<uint64_t> zero_hop_order;
  std::set<uint64_t> zero_hop;
  std::map<uint16_t, Port> ports;
  SupervisorCounters counters;
};

inline constexpr size_t kZeroHopCookiesKept = 65536;
inline constexpr absl::Duration kHeldAcceptCheck = absl::Milliseconds(100);

struct State : std::enable_shared_from_this<State> {
  std::mutex mu;
  std::map<uint64_t, std::shared_ptr<Workload>> workloads;
  uint64_t next_id = 1;
  UniqueFd wake;  // eventfd
  std::thread thread;
  bool stopping = false;
  // False: take no new notification (another agent answers them).
  bool receiving = true;
  // "ip:port" of destinations that do not speak zero-hop, until when.
  std::map<std::string, absl::Time> proxy_only;
  // Hook calls collected under the lock, run after it is released.
  std::vector<std::function<void()>> deferred;

  void Wake();
  void Loop();
  // Runs `deferred` without the lock.
  void RunDeferred(std::unique_lock<std::mutex>& lock);
  void RemoveLocked(Workload& w, absl::string_view why);

  // Outbound (supervisor.cc).
  void OnConnect(std::unique_lock<std::mutex>& lock, const std::shared_ptr<Workload>& w,
                 const Notification& n);
  // With the lock held (the hook's done takes it first).
  void FinishOutbound(const std::shared_ptr<Workload>& w, const std::shared_ptr<Outbound>& out,
                      OutboundOutcome outcome);
  void ExpireHandshakes(const std::shared_ptr<Workload>& w, absl::Time now);

  // Inbound (supervisor_inbound.cc).
  void OnAccept(const std::shared_ptr<Workload>& w, const Notification& n);
  DeliverResult DeliverLocked(Workload& w, UniqueFd& socket, const SocketAddress& local,
                              const SocketAddress& peer);
  void CheckHeldAccepts(Workload& w);
  void DrainWhenArrived(Workload& w, uint16_t port);
  void DoorbellProgress(Workload& w, uint16_t port, int client_fd, short revents);
  void ResetInbound(Workload& w, int held_errno);
};

// Helpers shared by both files.
void LogZeroHop(spdlog::level::level_enum level, absl::string_view event, const Workload& w,
                std::initializer_list<std::pair<const char*, std::string>> fields);
// SO_LINGER {1, 0}: the last close sends RST, not FIN, and leaves no
// TIME_WAIT; then shut both directions so the socket is dead for every
// holder now.
void ResetSocket(int fd);
absl::StatusOr<uint64_t> SocketCookie(int fd);
// getsockopt(SOL_SOCKET, opt) as an int; -errno on failure.
int IntSockOpt(int fd, int opt);

}  // namespace ktrust::zerohop::internal
