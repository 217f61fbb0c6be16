#include "ktrust/common/recurring_problem.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>

#include <sstream>
#include <string>
#include <vector>

namespace ktrust {
namespace {

using ::testing::HasSubstr;

const absl::Time kStart = absl::FromUnixSeconds(1800000000);

// As an operator reads it: an enrolment pass failing every second for five
// minutes, then a clean one. Warnings when it starts and once a minute,
// every pass at debug, one line when it ends; never a warning a second.
TEST(RecurringProblemTest, SaysItWhenItStartsOnceAMinuteAndWhenItEnds) {
  std::ostringstream out;
  auto previous = spdlog::default_logger();
  auto logger = std::make_shared<spdlog::logger>(
      "capture", std::make_shared<spdlog::sinks::ostream_sink_st>(out));
  logger->set_pattern("%l %v");
  logger->set_level(spdlog::level::debug);
  spdlog::set_default_logger(logger);
  RecurringProblem problem("enrolment_incomplete", "enrolment_complete");
  for (int pass = 0; pass < 300; ++pass) {
    problem.Met(spdlog::level::warn, {{"reason", "cannot list: Too many open files"}},
                kStart + absl::Seconds(pass));
  }
  problem.Cleared(kStart + absl::Seconds(300));
  problem.Cleared(kStart + absl::Seconds(301));  // nothing more to say
  spdlog::set_default_logger(previous);

  std::vector<std::string> warnings, others;
  std::istringstream in(out.str());
  for (std::string line; std::getline(in, line);) {
    (line.rfind("warning ", 0) == 0 ? warnings : others).push_back(line);
  }
  ASSERT_EQ(warnings.size(), 5u) << out.str();  // at 0, 60, 120, 180, 240 s
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
