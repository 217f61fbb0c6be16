// A problem a periodic task may meet pass after pass (an enrolment scan that
// cannot read the whole cgroup tree at the fd limit): said when it starts, at
// most once per `every` while it lasts (with how many passes met it; the
// passes between are said at debug level), and once when a pass is clean
// again. Not "once a second forever", and never silent.
//
// Not thread-safe: the owner serializes its passes.
#pragma once

#include <spdlog/spdlog.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ktrust {

class RecurringProblem {
 public:
  // event: the problem's log event; resolved_event: the line when it ends.
  RecurringProblem(std::string event, std::string resolved_event,
                   absl::Duration every = absl::Minutes(1))
      : event_(std::move(event)), resolved_event_(std::move(resolved_event)), every_(every) {}

  // A pass met the problem; `fields` (reason, ...) go into the line.
  void Met(spdlog::level::level_enum level, const nlohmann::ordered_json& fields,
           absl::Time now = absl::Now());
  // A pass went well: ends the problem, if there was one.
  void Cleared(absl::Time now = absl::Now());

  uint64_t passes_met() const { return passes_met_; }  // since the start, for metrics

 private:
  const std::string event_;
  const std::string resolved_event_;
  const absl::Duration every_;
  bool ongoing_ = false;
  absl::Time since_;
  absl::Time last_said_;
  uint64_t passes_now_ = 0;  // in the current run of the problem
  uint64_t passes_met_ = 0;
};

}  // namespace ktrust
