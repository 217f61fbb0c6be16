#include "ktrust/common/recurring_problem.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "unit/common/log_capture.h"

namespace ktrust {
namespace {

using ::testing::HasSubstr;

const absl::Time kStart = absl::FromUnixSeconds(1800000000);

// As an operator reads it: an enrolment pass failing every second for five
// minutes, then a clean one. Warnings when it starts and once a minute,
// every pass at debug, one line when it ends; never a warning a second.
TEST(RecurringProblemTest, SaysItWhenItStartsOnceAMinuteAndWhenItEnds) {
  testing::LogCapture log(spdlog::level::debug);
  RecurringProblem problem("enrolment_incomplete", "enrolment_complete");
  for (int pass = 0; pass < 300; ++pass) {
    problem.Met(spdlog::level::warn, {{"reason", "cannot list: Too many open files"}},
                kStart + absl::Seconds(pass));
  }
  problem.Cleared(kStart + absl::Seconds(300));
  problem.Cleared(kStart + absl::Seconds(301));  // nothing more to say

  std::vector<std::string> warnings, others;
  for (const std::string& line : log.lines()) {
    (line.rfind("warning ", 0) == 0 ? warnings : others).push_back(line);
  }
  ASSERT_EQ(warnings.size(), 5u) << log.text();  // at 0, 60, 120, 180, 240 s
  EXPECT_EQ(
      warnings[0],
      R"(warning {"event":"enrolment_incomplete","reason":"cannot list: Too many open files"})");
  EXPECT_THAT(warnings[1], HasSubstr(R"("passes":61)"));
  ASSERT_EQ(others.size(), 296u);  // 295 passes at debug, then the end
  EXPECT_THAT(others.back(), HasSubstr(R"(info {"event":"enrolment_complete","passes":300)"));
  EXPECT_EQ(problem.passes_met(), 300u);
}

}  // namespace
}  // namespace ktrust
