#include "ktrust/common/recurring_problem.h"

#include "ktrust/common/log.h"

namespace ktrust {

void RecurringProblem::Met(spdlog::level::level_enum level, const nlohmann::ordered_json& fields,
                           absl::Time now) {
  ++passes_met_;
  ++passes_now_;
  nlohmann::ordered_json line = {{"event", event_}};
  for (const auto& [key, value] : fields.items()) line[key] = value;
  if (!ongoing_) {
    ongoing_ = true;
    since_ = now;
    last_said_ = now;
    passes_now_ = 1;
    LogEvent(level, line);
    return;
  }
  line["passes"] = passes_now_;
  line["since"] = absl::FormatTime(since_);
  if (now - last_said_ >= every_) {
    last_said_ = now;
    LogEvent(level, line);
  } else {
    LogEvent(spdlog::level::debug, line);
  }
}

void RecurringProblem::Cleared(absl::Time now) {
  if (!ongoing_) return;
  ongoing_ = false;
  LogEvent(spdlog::level::info, {{"event", resolved_event_},
                                 {"passes", passes_now_},
                                 {"lasted", absl::FormatDuration(now - since_)}});
}

}  // namespace ktrust
