// Structured logs: one JSON object per line, through spdlog. Log levels:
//   error  the agent cannot do its job (a listener failed, identity lost)
//   warn   a connection was refused or failed (one line each, with a reason
//          code and words), a bad reload, a limit reached
//   info   lifecycle (started, stopped, reloaded) and the access log: one
//          line per connection when it closes
//   debug  per-connection progress, for development
#pragma once

#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

namespace ktrust {

inline void LogEvent(spdlog::level::level_enum level, const nlohmann::json& event) {
  spdlog::log(level, "{}", event.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

// Routes spdlog's default logger to stderr with a timestamp and no other
// decoration, so every line is "<time> <level> {json}".
void SetUpLogging(spdlog::level::level_enum level);

}  // namespace ktrust
