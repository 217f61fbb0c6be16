#include "ktrust/common/log_limiter.h"

#include "absl/strings/str_cat.h"
#include "ktrust/common/log.h"

namespace ktrust {

namespace {

constexpr absl::string_view kOverflowKey = "(other)";

LogLimiter& RefusalLimiter() {
  static LogLimiter* limiter = new LogLimiter();  // never destroyed: used until exit
  return *limiter;
}

void LogSuppressed(const LogLimiter::Suppressed& s, absl::Duration window) {
  size_t slash = s.key.find('/');
  nlohmann::ordered_json event = {{"event", "log_suppressed"},
                                  {"suppressed_event", s.key.substr(0, slash)}};
  if (slash != std::string::npos) event["code"] = s.key.substr(slash + 1);
  event["count"] = s.count;
  event["reason"] =
      absl::StrCat("suppressed ", s.count, " similar lines in ", absl::FormatDuration(window),
                   "; the metrics and `ktrust denials` keep the totals");
  LogEvent(s.level, event);
}

}  // namespace

bool LogLimiter::Admit(absl::string_view key, spdlog::level::level_enum level, absl::Time now,
                       Suppressed* ended) {
  absl::MutexLock lock(&mu_);
  *ended = {};
  auto it = windows_.find(key);
  if (it == windows_.end()) {
    if (windows_.size() >= options_.max_keys) key = kOverflowKey;
    it = windows_.try_emplace(std::string(key), Window{now, 0, 0, level}).first;
  }
  Window& w = it->second;
  if (now - w.start >= options_.window) {
    if (w.suppressed > 0) *ended = {it->first, w.suppressed, w.level};
    w = Window{now, 0, 0, level};
  }
  if (w.admitted < options_.lines_per_window) {
    ++w.admitted;
    return true;
  }
  ++w.suppressed;
  w.level = std::max(w.level, level);
  return false;
}

std::vector<LogLimiter::Suppressed> LogLimiter::TakeEnded(absl::Time now) {
  absl::MutexLock lock(&mu_);
  std::vector<Suppressed> out;
  for (auto it = windows_.begin(); it != windows_.end();) {
    Window& w = it->second;
    if (now - w.start < options_.window) {
      ++it;
      continue;
    }
    if (w.suppressed > 0) out.push_back({it->first, w.suppressed, w.level});
    // A quiet key's entry goes: the map holds only recent floods.
    it = windows_.erase(it);
  }
  return out;
}

void LogRefusal(spdlog::level::level_enum level, const nlohmann::ordered_json& event,
                absl::string_view code, absl::Time now) {
  auto name = event.find("event");
  std::string key = absl::StrCat(
      name != event.end() && name->is_string() ? name->get<std::string>() : "", "/", code);
  LogLimiter::Suppressed ended;
  bool write = RefusalLimiter().Admit(key, level, now, &ended);
  if (ended.count > 0) LogSuppressed(ended, LogLimiter::Options{}.window);
  if (write) LogEvent(level, event);
}

void FlushSuppressedRefusals(absl::Time now) {
  for (const auto& s : RefusalLimiter().TakeEnded(now)) {
    LogSuppressed(s, LogLimiter::Options{}.window);
  }
}

}  // namespace ktrust
