// A budget for log lines a flood repeats: one structured line per refused
// connection until a key (an event and its result, e.g.
// "connection_failed/denied") has used its lines for the window, then one
// summary line saying how many were left out. Counters, metrics and the
// denial log keep exact totals; only the log is thinned.
#pragma once

#include <spdlog/spdlog.h>

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace ktrust {

class LogLimiter {
 public:
  struct Options {
    int lines_per_window = 10;  // per key
    absl::Duration window = absl::Seconds(1);
    // Keys are codes from a short fixed list; the bound only keeps a bug
    // from growing the map. Past it, new keys share one budget.
    size_t max_keys = 256;
  };
  struct Suppressed {
    std::string key;
    uint64_t count = 0;
    spdlog::level::level_enum level = spdlog::level::warn;  // of the lines left out
  };

  LogLimiter() : LogLimiter(Options{}) {}
  explicit LogLimiter(Options options) : options_(options) {}

  // Whether the line keyed `key` may be written at `now`. A call that opens
  // a new window for a key whose last window left lines out puts that count
  // in *ended (count 0 otherwise), to be said before this line.
  bool Admit(absl::string_view key, spdlog::level::level_enum level, absl::Time now,
             Suppressed* ended);
  // The counts of windows that ended with lines left out, for keys that saw
  // no line since (a flood that stopped): said by a periodic caller.
  std::vector<Suppressed> TakeEnded(absl::Time now);

 private:
  struct Window {
    absl::Time start;
    int admitted = 0;
    uint64_t suppressed = 0;
    spdlog::level::level_enum level = spdlog::level::warn;
  };

  const Options options_;
  absl::Mutex mu_;
  std::map<std::string, Window, std::less<>> windows_ ABSL_GUARDED_BY(mu_);
};

// The process's refusal lines go through one limiter: `event` is written at
// `level` unless its key ("<event>/<code>", code being a stable reason code
// such as "denied", never free text) is over budget; a summary line, event
// "log_suppressed", says how many were left out.
void LogRefusal(spdlog::level::level_enum level, const nlohmann::ordered_json& event,
                absl::string_view code, absl::Time now = absl::Now());
// Says the counts of floods that stopped; ktrustd calls it every second.
void FlushSuppressedRefusals(absl::Time now = absl::Now());

}  // namespace ktrust
