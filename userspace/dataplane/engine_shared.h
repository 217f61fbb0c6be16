// Engine internals shared by its loops and connections.
#pragma once

#include <atomic>
#include <memory>
#include <set>
#include <vector>

#include "event_loop.h"
#include "ktrust/dataplane/engine.h"

namespace ktrust {

class Connection;

struct Engine::Shared {
  EngineOptions options;
  std::unique_ptr<TlsContext> client_tls;
  std::unique_ptr<TlsContext> server_tls;
  // Replaced at runtime (policy reload): read with std::atomic_load.
  std::shared_ptr<const Authorizer> authorizer;
  std::atomic<uint64_t> authorizer_generation{0};
  std::vector<OutboundListener> outbound;
  std::vector<InboundListener> inbound;
  std::shared_ptr<ConnectionTable> table;
  std::shared_ptr<EngineCounters> counters;
  bool use_ktls = false;
};

// What a connection needs from the loop that owns it.
struct LoopContext {
  EventLoop& loop;
  Engine::Shared& shared;
  std::set<Connection*> connections;   // live, for timeouts and shutdown
  uint64_t authorizer_generation = 0;  // the policy the live connections were checked against
};

}  // namespace ktrust
