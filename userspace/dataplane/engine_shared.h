// Engine internals shared by its loops and connections.
#pragma once

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "event_loop.h"
#include "handshake_budget.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/dataplane/engine.h"
#include "pump.h"
#include "sockets.h"

namespace ktrust {

class Connection;

// Listeners that share a network namespace and a lifetime: the engine's own
// (id 0, from Create) or those of one AddNetnsListeners call. Immutable once
// built. Each listening socket and each connection accepted on one holds a
// reference, so the config outlives its removal for as long as they use it.
struct ListenerGroup {
  uint64_t id = 0;
  std::vector<OutboundListener> outbound;
  std::vector<InboundListener> inbound;
  SocketNetns netns;       // netns.fd is owned by netns_owner
  UniqueFd netns_owner;    // invalid for the engine's own namespace
  std::string netns_name;  // "net:[<inode>]" for the logs; empty for the engine's own
};

struct Engine::Shared {
  EngineOptions options;
  std::unique_ptr<TlsContext> client_tls;
  std::unique_ptr<TlsContext> server_tls;
  // Replaced at runtime (policy reload) while the loops read it.
  std::atomic<std::shared_ptr<const Authorizer>> authorizer;
  std::atomic<uint64_t> authorizer_generation{0};
  std::shared_ptr<const ListenerGroup> own_listeners;
  // The engine's own network namespace (the loops' threads'), opened at
  // Start: where a thread returns after making a socket in another one.
  UniqueFd own_netns;
  std::shared_ptr<ConnectionTable> table;
  std::shared_ptr<EngineCounters> counters;
  std::unique_ptr<HandshakeBudget> handshakes;  // admission at accept
  // When a loop last called malloc_trim (Unix ns): one per second at most.
  std::atomic<int64_t> last_trim_ns{0};
  bool use_ktls = false;
  std::string ktls_reason;  // why kernel TLS is (not) in use, for zero-hop refusals
};

// What a connection needs from the loop that owns it.
struct LoopContext {
  EventLoop& loop;
  Engine::Shared& shared;
  std::set<Connection*> connections;  // live, for timeouts and shutdown
  // Inbound connections holding a handshake slot: which one gives it up when
  // the inbound budget is full.
  PendingHandshakes<Connection> pending_inbound;
  uint64_t authorizer_generation = 0;  // the policy the live connections were checked against
  // What every CopyPump of this loop reads into (see CopyPump).
  std::unique_ptr<char[]> pump_scratch{new char[CopyPump::kBufferSize]};
  // What every SplicePump of this loop borrows its pipe from (see PipePool).
  PipePool pipes{};
};

}  // namespace ktrust
