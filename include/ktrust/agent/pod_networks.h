// Workloads in network namespaces of their own: pods, the DaemonSet case.
//
// A socket belongs to the namespace it was made in, so the agent's
// listeners in its own namespace cannot serve a pod. For each pod namespace
// the agent opens, inside it: the outbound listener pair that takes the
// pod's mesh connections (connect4/6 rewrite them to the pod's own address
// on the outbound port, and sk_lookup hands them to this pair alone), and an
// inbound listener pair per serving workload. The pod variant
// of sk_lookup, attached to the namespace, steers the pod's enforced
// (pod address, port) pairs to them. The engine makes each connection's
// other socket in the pod's namespace too, so wire connections leave from
// the pod's address and deliveries reach the pod's application.
//
// Fail closed: the enforced rules and the program are in place before the
// listeners, so an enforced port refuses until it is served, and refuses
// again when the agent is gone.
//
// Every non-loopback address of a served pod is enforced, link-local ones
// included (pod_addresses.h), and addresses that come later too: a netlink
// socket in each served namespace reports address changes, and the pod is
// rescanned (also on a lost event, and every kFullRescan regardless).
#pragma once

#include <sys/epoll.h>

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ktrust/agent/agent_listeners.h"
#include "ktrust/agent/pod_addresses.h"
#include "ktrust/bpf/bpf_loader.h"
#include "ktrust/common/socket_address.h"
#include "ktrust/config/config.h"
#include "ktrust/dataplane/engine.h"

namespace ktrust {

// An enrolled cgroup whose processes live in a pod's namespace.
struct PodWorkload {
  std::string name;
  std::string id;  // its SPIFFE ID
  uint32_t workload_index = 0;
  WorkloadMode mode = WorkloadMode::kEnforce;
  std::vector<uint16_t> ports;  // enforced; empty for a client-only workload
  SvidProvider identity;

  bool operator==(const PodWorkload& o) const {
    return name == o.name && id == o.id && workload_index == o.workload_index && mode == o.mode &&
           ports == o.ports;
  }
};

// A pod namespace as the agent found it: by one of its processes, and the
// enrolled workloads living there.
struct PodNetns {
  uint64_t inode = 0;
  std::string path;  // /proc/<pid>/ns/net
  std::vector<PodWorkload> workloads;
};

// What `ktrust workloads` and the logs show of a served pod.
struct ServedPod {
  uint64_t netns_inode = 0;
  std::vector<std::string> addresses;  // the enforced ones
  // Of those, the ones another served pod carries too: refused (see
  // pod_addresses.h).
  std::vector<std::string> shared;
  std::vector<std::string> workloads;
  std::string problem;  // why it is not (fully) served; empty when it is
};

struct PodNetworkSettings {
  uint16_t outbound_port = 0;
  // Put on the pod's loopback: the source of deliveries to its applications
  // over IPv6, which its sk_lookup lets through.
  std::optional<SocketAddress> upstream_source6;
  // Listener slots [first_slot, KTRUST_MAX_INBOUND_LISTENERS) are the pods'.
  uint32_t first_slot = 0;
  // The slots the pinned rules name, by (pod address, port): an earlier
  // run's, or those of the agent being taken over from, whose listeners
  // still fill them. A pod served again takes its rules' slot, which its
  // new listener replaces in place, so its ports never name an empty slot
  // meanwhile; no other pod is given one of these.
  std::map<std::string, uint32_t> inherited_slots;
  std::function<absl::StatusOr<OutboundRoute>(int app_fd)> route;
  // The zero-hop hand-over for a workload's listener in the pod whose
  // network namespace has this inode; unset: always proxied.
  std::function<DeliverFunction(const std::string& workload, uint64_t netns_inode)> deliver_for;
};

class PodNetworks {
 public:
  PodNetworks(Engine& engine, BpfLoader& bpf, PodNetworkSettings settings)
      : engine_(engine),
        bpf_(bpf),
        settings_(std::move(settings)),
        events_(epoll_create1(EPOLL_CLOEXEC)) {}
  // Releases nothing: the pods' rules and programs stay, so their enforced
  // ports refuse until an agent serves them again.

  // Serves each namespace in `wanted` not served yet (or whose workloads
  // changed) and releases those no longer wanted: a pod whose processes
  // are gone. Not `complete` (the enrolment pass could not read everything,
  // so `wanted` may lack pods that are there): only serves new namespaces,
  // and leaves the served ones as they are. Called with every enrolment
  // pass, from one thread at a time.
  void Reconcile(const std::vector<PodNetns>& wanted, bool complete);

  // Readable when a served pod's addresses may have changed: then call
  // RefreshAddresses (Reconcile does too). -1 when epoll is unavailable:
  // the per-pass rescan still runs.
  int events_fd() const { return events_.get(); }
  // Rescans the pods whose addresses changed (or whose change events were
  // lost) and enforces their addresses now. The same thread rule as
  // Reconcile.
  void RefreshAddresses();

  // The enforced (pod address, port) rules of the served pods and of their
  // outbound targets: what a restarted agent keeps of the pinned rules.
  std::vector<SocketAddress> enforced() const;
  // The served pods' namespaces (SO_NETNS_COOKIE): what a restarted agent
  // keeps of the pinned outbound targets.
  std::set<uint64_t> netns_cookies() const;
  std::vector<ServedPod> served() const;
  // Once the pinned rules no served pod claims are pruned: the inherited
  // slots no pod took are free again.
  void ForgetInheritedSlots() { settings_.inherited_slots.clear(); }

  // After a successor that went away mid-handover: it pointed the served
  // pods' steering at its own listeners (rules, listener slots, outbound
  // targets), which closed with it. Writes every served pod's again, as
  // this agent serves them. What fails is logged and the pod is rescanned
  // on the next pass; the error names the first failure.
  absl::Status Resteer();

 private:
  // A full rescan of every served pod this often, should an address
  // change escape both the events and their overrun report.
  static constexpr absl::Duration kFullRescan = absl::Seconds(30);

  struct Served {
    std::vector<PodWorkload> workloads;
    UniqueFd netns;           // for rescans: the process it was found by may go
    UniqueFd address_events;  // invalid: rescanned on every pass instead
    bool rescan = false;      // events were lost or a rescan failed
    bool has_upstream6 = false;
    std::optional<uint64_t> listeners;  // the engine's handle
    // Its listeners' sockets (the engine's, valid while `listeners` is
    // open), as steered: served.slots[i] to inbound[i], outbound_slot to
    // outbound.
    AgentListenerFds listener_fds;
    std::vector<uint32_t> slots;
    std::vector<PodPortClaim> serving;   // per workload serving ports
    std::vector<std::string> addresses;  // enforced, as claimed in the rules
    std::string rules_problem;           // the last rule write that failed
    // Where its mesh connections go (PodOutboundTarget of its addresses),
    // taken by the outbound listeners in outbound_slot alone.
    std::optional<uint32_t> outbound_slot;
    std::optional<uint64_t> netns_cookie;
    OutboundTarget target;
    ServedPod view;
  };
  // Nothing when the namespace could not be opened (its process is gone):
  // the next pass finds it again, through another process or not at all.
  std::optional<Served> Serve(const PodNetns& pod);
  // successor: what replaces `served` in the same namespace, whose rules
  // and program stay.
  void Release(uint64_t inode, const Served& served, const Served* successor);
  // The first free slot no pinned rule names, or `local`'s (pod address,
  // port) pinned slot when this run has not given it.
  std::optional<uint32_t> AllocateSlot(const std::vector<SocketAddress>& locals);
  // (address, port) of every pair.
  static std::vector<SocketAddress> Locals(const std::vector<std::string>& addresses,
                                           const std::vector<uint16_t>& ports);
  // Writes the rules all served pods need together, `inode` being served
  // by `candidate` (nothing: released); sets the pods' shared addresses.
  // `rewrite`: every rule is written, also the ones written already (another
  // agent may have written over them).
  absl::Status SyncRules(uint64_t inode, Served* candidate, bool rewrite = false);
  // Points the pod's mesh connections at its current addresses, or refuses
  // them while it has none to send them to.
  absl::Status SyncOutboundTarget(Served& served);
  // Rereads one served pod's addresses; their rules follow.
  void Rescan(uint64_t inode);
  // Puts the agent's IPv6 upstream source on the pod's loopback once it
  // has an IPv6 address (deliveries come from there).
  absl::Status EnsureUpstream6(Served& served);

  Engine& engine_;
  BpfLoader& bpf_;
  PodNetworkSettings settings_;
  std::set<uint32_t> used_slots_;
  mutable absl::Mutex mu_;  // served_, for readers on other threads
  std::map<uint64_t, Served> served_ ABSL_GUARDED_BY(mu_);
  // What SyncRules last wrote to the shared inbound map.
  std::map<std::string, PodRule> written_ ABSL_GUARDED_BY(mu_);
  UniqueFd events_;  // epoll over the served pods' address_events
  absl::Time last_full_rescan_ = absl::InfinitePast();
};

}  // namespace ktrust
