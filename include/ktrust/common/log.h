// Structured logs: one event per line, through spdlog. Log levels:
//   error  the agent cannot do its job (a listener failed, identity lost)
//   warn   a connection was refused or failed (one line each, with a reason
//          code and words), a bad reload, a limit reached
//   info   lifecycle (started, stopped, reloaded) and the access log: one
//          line per connection when it closes
//   debug  per-connection progress, for development
//
// An event is a JSON object whose "event" key names it. Two formats
// (agent.log_format):
//   json  2026-11-23T10:00:00.123Z warning {"event":"connection_failed","result":"denied",...}
//   text  2026-11-23T10:00:00Z WARN connection_failed result=denied reason="not allowed" ...
// Both keep the event's keys in the order they were added, "event" first.
#pragma once

#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ktrust {

enum class LogFormat { kJson, kText };

// "json" or "text", as agent.log_format spells them.
absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name);

// The event part of a line (no time, no level).
//   json: the object on one line; invalid UTF-8 is replaced, never dropped.
//   text: the event's name, then key=value for every other key in order.
//         Strings are bare unless they are empty or hold a space, a quote,
//         '=', a backslash, a control or non-ASCII byte: then they are
//         quoted with JSON escapes, so a value can never start a new line.
//         Arrays of scalars are joined with ","; objects are written as JSON.
std::string FormatEvent(const nlohmann::ordered_json& event, LogFormat format);

// Writes `event` at `level` in the format SetUpLogging chose (json until then).
void LogEvent(spdlog::level::level_enum level, const nlohmann::ordered_json& event);

// Routes spdlog's default logger to stderr with a UTC timestamp and the
// level, then the event: "<time> <level> <event>". May be called again (the
// last call wins).
void SetUpLogging(spdlog::level::level_enum level, LogFormat format = LogFormat::kJson);

}  // namespace ktrust
