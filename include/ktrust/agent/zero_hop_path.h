// The agent's side of the zero-hop data path (docs/dataplane.md, "Zero-hop"):
// takes the seccomp listeners the holder keeps (`ktrustd holder`), works out
// whose they are, and serves each with the supervisor, which asks the engine
// for handshakes on the workloads' own sockets and hands it authenticated
// inbound sockets.
//
// Every listener the holder gives is served, whatever its workload: one of a
// proxy-mode workload, of a cgroup no workload claims, or on a kernel without
// what zero-hop needs has every connect and accept continue in the kernel,
// where the eBPF hooks redirect it to the proxy as for any process. A
// listener nobody serves would leave its workload's connects waiting.
#pragma once

#include <sys/eventfd.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "ktrust/agent/agent_listeners.h"
#include "ktrust/agent/mesh_table.h"
#include "ktrust/agent/outbound_routing.h"
#include "ktrust/bpf/cgroup2.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/dataplane/engine.h"
#include "ktrust/identity/trust_bundle.h"
#include "ktrust/zerohop/connection_registry.h"
#include "ktrust/zerohop/features.h"
#include "ktrust/zerohop/holder_client.h"
#include "ktrust/zerohop/holder_protocol.h"
#include "ktrust/zerohop/supervisor.h"

namespace ktrust {

struct ZeroHopSettings {
  std::string holder_socket;
  CgroupView cgroup_view;  // the agent's (CgroupPlace), to find a registered process's cgroup
  uint32_t socket_mark = 0;
  std::optional<SocketAddress> doorbell_source4;
  std::optional<SocketAddress> doorbell_source6;
  // The live zero-hop connections' journal, for a restarted agent; empty:
  // in memory only.
  std::string journal_path;
  // Told of every zero-hop connection that ended or that the agent reset,
  // as the engine tells of the ones it carries (bytes 0: the agent carries
  // none): the denial list and the metrics by data path.
  std::function<void(const ClosedConnection&)> on_closed;
  // Not 0: a lower AEAD record limit than the ciphers' (tests; it can only
  // make the agent end connections sooner).
  uint64_t record_limit_override = 0;
};

// One listener the agent serves, for `ktrust status` and `ktrust workloads`.
struct ZeroHopListener {
  uint64_t holder_id = 0;
  pid_t pid = 0;
  std::string source;    // "exec" or "oci"
  std::string workload;  // empty: no workload claims its cgroup
  uint64_t cgroup_id = 0;
  uint64_t netns = 0;  // inode of its network namespace
  // "zero-hop", "zero-hop inbound" or "proxy (why)".
  std::string data_path;
};

struct ZeroHopStatus {
  bool holder_connected = false;
  std::string holder_problem;  // why not, in words
  std::vector<ZeroHopListener> listeners;
};

class ZeroHopPath {
 public:
  // Serves nothing until Start: Deliver says false until then.
  ZeroHopPath(ZeroHopSettings settings, zerohop::ZeroHopFeatures features,
              const OutboundRouting& routing);
  ~ZeroHopPath();  // Stop()

  // Connects to the holder in the background, again whenever the link
  // drops; the holder may start before or after the agent.
  void Start(Engine& engine);
  // Answers every notification the supervisor holds and stops; the
  // listeners stay with the holder for the next agent.
  void Stop();

  // InboundListener::deliver for `workload`'s listener in the network
  // namespace `netns`: hands the socket to the accept of a zero-hop process
  // of that workload there. false: none, the engine proxies it.
  bool Deliver(const std::string& workload, uint64_t netns, UniqueFd& socket,
               const ConnectionInfo& info, const VerifiedPeer& verified);

  // The live zero-hop connections (the agent holds none of them: see
  // docs/dataplane.md), oldest first.
  std::vector<zerohop::ZeroHopConnection> connections() const;
  // After a reload, as the engine does for the connections it carries:
  // resets (SOCK_DESTROY) every live connection whose peer `trust` no longer
  // accepts (revoked, its root dropped) and every inbound one `authorizer`
  // no longer allows, with a log line and a denial each.
  void Recheck(const TrustStore& trust, const Authorizer& authorizer);

  // Handover (docs/operations.md), the successor's side: zero-hop
  // connections the predecessor made, added to this agent's registry and
  // journal. An error when there is no registry yet (before Start).
  absl::Status MoveIn(std::vector<zerohop::ZeroHopConnection> connections);
  // The predecessor's side: the successor took these; forgotten here
  // without a journal line (the journal is the successor's).
  void MovedOut(const std::vector<zerohop::ZeroHopConnection>& connections);
  // The predecessor's side, when the handover failed or stopped half-way:
  // the journal file is this agent's again (ZeroHopConnections::Rejoin),
  // logged.
  void RejoinJournal(const std::string& why);
  // Handed over: the successor answers every zero-hop notification from
  // now on. This agent takes no more (connects it is handshaking finish
  // here), answers the accepts it holds with ECONNABORTED (the workload's
  // retry reaches the successor), and hands no inbound socket to an
  // application (the engine proxies it, and it moves as a proxied
  // connection). Resume() undoes it.
  void Yield();
  void Resume();
  const zerohop::ZeroHopFeatures& features() const { return features_; }
  ZeroHopStatus status() const;

 private:
  struct Served {
    uint64_t supervisor_id = 0;
    ZeroHopListener view;
    std::set<uint16_t> listening;  // ports its process was seen listening on
  };
  void Run();
  void Serve(zerohop::ListenerRegistration entry);
  void Forget(uint64_t holder_id);
  bool IsMesh(const SocketAddress& destination);
  void Handshake(const ZeroHopListener& owner, UniqueFd socket, SocketAddress destination,
                 std::function<void(zerohop::OutboundOutcome)> done);
  void Track(zerohop::ZeroHopConnection connection);
  // Once a second while there are connections (none: no wake-ups at all):
  // drops the connections that ended, and ends those near their cipher's
  // record limit.
  void RefreshConnections();
  // How long the holder thread may sleep before the next refresh is due.
  absl::Duration UntilRefresh() const;
  // Sleeps up to `d` or until Wake(); consumes the wake-up.
  void Sleep(absl::Duration d);
  void Wake();
  void EnforceRecordLimits();
  // Resets `c` and reports it ended with `result`. When it could not be
  // reset it stays in the registry (it is still live) and the reset is
  // tried again at every refresh until it is gone.
  void Reset(const zerohop::ZeroHopConnection& c, CloseResult result, const std::string& reason);
  void ReportClosed(const zerohop::ZeroHopConnection& c, CloseResult result,
                    const std::string& reason);

  // How often the registry is refreshed: ended connections, pending
  // resets, record limits.
  static constexpr absl::Duration kRefreshInterval = absl::Seconds(1);
  // Reconnecting to an absent holder backs off to this.
  static constexpr absl::Duration kHolderRetryMax = absl::Seconds(8);

  const ZeroHopSettings settings_;
  const zerohop::ZeroHopFeatures features_;
  Engine* engine_ = nullptr;  // set by Start, before the holder thread runs
  const OutboundRouting& routing_;
  // What the holder answers if this agent dies (shared with every listener).
  std::shared_ptr<zerohop::HolderJournal> journal_ = std::make_shared<zerohop::HolderJournal>();
  zerohop::Supervisor supervisor_;
  std::unique_ptr<zerohop::ZeroHopConnections> live_;  // set by Start
  zerohop::NetnsSocketLister lister_;                  // the holder thread's
  absl::Time last_refresh_;                            // the holder thread's
  // Set with a wake-up that brings entries to check against the kernel at
  // once (moved in from a predecessor, rejoined from the journal).
  std::atomic<bool> check_now_{false};
  std::thread thread_;
  absl::Notification stop_;
  // Wakes the holder thread: a new connection to watch, or stop.
  UniqueFd wake_{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};

  mutable absl::Mutex mu_;
  std::map<uint64_t, Served> served_ ABSL_GUARDED_BY(mu_);  // by holder id
  bool holder_connected_ ABSL_GUARDED_BY(mu_) = false;
  bool yielded_ ABSL_GUARDED_BY(mu_) = false;  // Yield()
  // Resets that failed, by cookie: the result and reason to report.
  std::map<uint64_t, std::pair<CloseResult, std::string>> pending_resets_ ABSL_GUARDED_BY(mu_);
  std::string holder_problem_ ABSL_GUARDED_BY(mu_);
  // The mesh table of the configuration in force, rebuilt when it changes.
  std::shared_ptr<const Config> mesh_config_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const MeshTable> mesh_ ABSL_GUARDED_BY(mu_);
};

// The hand-over of `workload`'s inbound listener in the network namespace
// with inode `netns`, for ServingListener::deliver.
DeliverFunction ZeroHopDeliver(ZeroHopPath& path, std::string workload, uint64_t netns);

}  // namespace ktrust
