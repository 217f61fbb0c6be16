#include "ktrust/common/log.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ktrust {
namespace {

std::atomic<LogFormat> g_format{LogFormat::kJson};

std::string Json(const nlohmann::ordered_json& value) {
  return value.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

// A string as a text value: bare when that is unambiguous, else quoted.
std::string TextString(const std::string& s) {
  bool bare = !s.empty();
  for (unsigned char c : s) {
    if (c <= ' ' || c >= 0x7f || c == '"' || c == '=' || c == '\\') {
      bare = false;
      break;
    }
  }
  if (bare) return s;
  // JSON's escapes: \" \\ \n \uXXXX. Non-ASCII text stays readable, and
  // invalid UTF-8 is replaced.
  return Json(nlohmann::ordered_json(s));
}

std::string TextValue(const nlohmann::ordered_json& value) {
  if (value.is_string()) return TextString(value.get<std::string>());
  if (value.is_array()) {
    bool scalars = true;
    for (const auto& v : value) scalars &= !v.is_structured();
    if (scalars) {
      std::vector<std::string> parts;
      for (const auto& v : value) parts.push_back(v.is_string() ? v.get<std::string>() : Json(v));
      return TextString(absl::StrJoin(parts, ","));
    }
  }
  if (value.is_structured()) return TextString(Json(value));
  return Json(value);  // numbers, true, false, null
}

std::string TextEvent(const nlohmann::ordered_json& event) {
  if (!event.is_object()) return TextValue(event);
  std::string line;
  auto name = event.find("event");
  if (name != event.end()) line = TextValue(*name);
  for (auto it = event.begin(); it != event.end(); ++it) {
    if (it == name) continue;
    if (!line.empty()) line += ' ';
    absl::StrAppend(&line, TextString(it.key()), "=", TextValue(it.value()));
  }
  return line;
}

// %* in the text pattern: ERROR, WARN, INFO, DEBUG, TRACE, CRITICAL.
class UpperLevel : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    const char* name = "INFO";
    switch (msg.level) {
      case spdlog::level::trace:
        name = "TRACE";
        break;
      case spdlog::level::debug:
        name = "DEBUG";
        break;
      case spdlog::level::info:
        name = "INFO";
        break;
      case spdlog::level::warn:
        name = "WARN";
        break;
      case spdlog::level::err:
        name = "ERROR";
        break;
      case spdlog::level::critical:
        name = "CRITICAL";
        break;
      default:
        break;
    }
    dest.append(name, name + strlen(name));
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<UpperLevel>();
  }
};

}  // namespace

absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name) {
  if (name == "json") return LogFormat::kJson;
  if (name == "text") return LogFormat::kText;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown log format \"", name, "\" (expected json or text)"));
}

std::string FormatEvent(const nlohmann::ordered_json& event, LogFormat format) {
  if (format == LogFormat::kText) return TextEvent(event);
  if (!event.is_object() || !event.contains("event")) return Json(event);
  // "event" first, whatever order the caller built the object in.
  nlohmann::ordered_json ordered = nlohmann::ordered_json::object();
  ordered["event"] = event.at("event");
  for (auto it = event.begin(); it != event.end(); ++it) {
    if (it.key() != "event") ordered[it.key()] = it.value();
  }
  return Json(ordered);
}

void LogEvent(spdlog::level::level_enum level, const nlohmann::ordered_json& event) {
  // Skip formatting for lines the logger would drop anyway.
  if (!spdlog::default_logger_raw()->should_log(level)) return;
  spdlog::log(level, "{}", FormatEvent(event, g_format.load(std::memory_order_relaxed)));
}

void SetUpLogging(spdlog::level::level_enum level, LogFormat format) {
  // Not registered by name first: set_default_logger swaps it in under the
  // registry's lock, replacing an earlier "ktrust" logger.
  auto logger =
      std::make_shared<spdlog::logger>("ktrust", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  if (format == LogFormat::kText) {
    auto formatter = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
    formatter->add_flag<UpperLevel>('*').set_pattern("%Y-%m-%dT%H:%M:%SZ %* %v");
    logger->set_formatter(std::move(formatter));
  } else {
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %l %v", spdlog::pattern_time_type::utc);
  }
  logger->set_level(level);
  logger->flush_on(spdlog::level::info);
  g_format.store(format);
  spdlog::set_default_logger(logger);
}

}  // namespace ktrust
