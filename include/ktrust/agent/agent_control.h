// The agent as operators see it: the control API methods, the Prometheus
// scrape and the denial log, built from a running Agent.
#pragma once

#include <map>
#include <string>

#include "ktrust/agent/agent.h"
#include "ktrust/control/control_server.h"
#include "ktrust/control/denial_log.h"

namespace ktrust {

// What the agent counts beyond the engine's own counters; fed by the
// engine's on_closed and the interception event reader.
class AgentStats {
 public:
  void ConnectionClosed(const ClosedConnection& closed);
  void Intercepted(const InterceptionEvent& event);

  control::DenialLog& denials() { return denials_; }
  const control::DenialLog& denials() const { return denials_; }

  struct Totals {
    std::map<std::tuple<std::string, std::string, std::string>, uint64_t>
        closed;  // dir, path, result
    uint64_t bytes_to_wire = 0, bytes_from_wire = 0;
    std::map<std::string, uint64_t> events;  // by reason name
  };
  Totals totals() const;

 private:
  control::DenialLog denials_;
  mutable absl::Mutex mu_;
  Totals totals_ ABSL_GUARDED_BY(mu_);
};

// A refused or failed connection as the denial list shows it; nullopt for
// connections that ended normally or by an I/O error.
std::optional<control::DenialView> DenialOf(const ClosedConnection& closed);

std::map<std::string, control::ControlHandler> ControlHandlers(const Agent& agent,
                                                               const AgentStats& stats);
std::string RenderMetrics(const Agent& agent, const AgentStats& stats);

}  // namespace ktrust
