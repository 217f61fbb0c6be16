// The refusal log's budget, with the clock passed in: a flood of refusals
// writes a bounded number of lines and says how many it left out.
#include "ktrust/common/log_limiter.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "unit/common/log_capture.h"

namespace ktrust {
namespace {

using ::testing::HasSubstr;

const absl::Time kStart = absl::FromUnixSeconds(1767225600);

TEST(LogLimiterTest, EachKeyHasItsOwnBudgetPerWindow) {
  LogLimiter limiter({3, absl::Seconds(1), 16});
  LogLimiter::Suppressed ended;
  int written = 0;
  for (int i = 0; i < 1000; ++i) {
    written += limiter.Admit("connection_failed/denied", spdlog::level::warn, kStart, &ended);
    EXPECT_EQ(ended.count, 0u);
  }
  EXPECT_EQ(written, 3);
  // Another reason is not silenced by the flood.
  EXPECT_TRUE(limiter.Admit("connection_failed/handshake_failed", spdlog::level::warn,
                            kStart + absl::Milliseconds(500), &ended));
  EXPECT_FALSE(limiter.Admit("connection_failed/denied", spdlog::level::warn,
                             kStart + absl::Milliseconds(999), &ended));
  // The next window writes again, and first says how many the last one left out.
  EXPECT_TRUE(limiter.Admit("connection_failed/denied", spdlog::level::warn,
                            kStart + absl::Seconds(1), &ended));
  EXPECT_EQ(ended.key, "connection_failed/denied");
  EXPECT_EQ(ended.count, 998u);
  EXPECT_EQ(ended.level, spdlog::level::warn);
}

TEST(LogLimiterTest, AFloodThatStoppedIsStillSummed) {
  LogLimiter limiter({2, absl::Seconds(1), 16});
  LogLimiter::Suppressed ended;
  for (int i = 0; i < 7; ++i) limiter.Admit("k/a", spdlog::level::warn, kStart, &ended);
  limiter.Admit("k/quiet", spdlog::level::warn, kStart, &ended);
  EXPECT_THAT(limiter.TakeEnded(kStart + absl::Milliseconds(900)), ::testing::IsEmpty());
  auto ended_windows = limiter.TakeEnded(kStart + absl::Seconds(1));
  ASSERT_EQ(ended_windows.size(), 1u);
  EXPECT_EQ(ended_windows[0].key, "k/a");
  EXPECT_EQ(ended_windows[0].count, 5u);
  // Said once.
  EXPECT_THAT(limiter.TakeEnded(kStart + absl::Seconds(5)), ::testing::IsEmpty());
  EXPECT_TRUE(limiter.Admit("k/a", spdlog::level::warn, kStart + absl::Seconds(5), &ended));
  EXPECT_EQ(ended.count, 0u);
}

TEST(LogLimiterTest, KeysPastTheBoundShareOneBudget) {
  LogLimiter limiter({1, absl::Seconds(1), 2});
  LogLimiter::Suppressed ended;
  EXPECT_TRUE(limiter.Admit("a", spdlog::level::warn, kStart, &ended));
  EXPECT_TRUE(limiter.Admit("b", spdlog::level::warn, kStart, &ended));
  EXPECT_TRUE(limiter.Admit("c", spdlog::level::warn, kStart, &ended));   // "(other)"
  EXPECT_FALSE(limiter.Admit("d", spdlog::level::warn, kStart, &ended));  // "(other)" again
  auto ended_windows = limiter.TakeEnded(kStart + absl::Seconds(1));
  ASSERT_EQ(ended_windows.size(), 1u);
  EXPECT_EQ(ended_windows[0].key, "(other)");
}

// As an operator reads it: ten lines of a flood of 25, then one summary.
TEST(LogRefusalTest, WritesTheBudgetThenOneSummaryLine) {
  std::vector<std::string> lines;
  {
    testing::LogCapture log;
    for (int i = 0; i < 25; ++i) {
      LogRefusal(spdlog::level::warn, {{"event", "test_refused"}, {"result", "denied"}, {"id", i}},
                 "denied", kStart);
    }
    FlushSuppressedRefusals(kStart + absl::Seconds(1));
    lines = log.lines();
  }
  ASSERT_EQ(lines.size(), 11u);
  EXPECT_EQ(lines[0], R"(warning {"event":"test_refused","result":"denied","id":0})");
  EXPECT_EQ(lines[9], R"(warning {"event":"test_refused","result":"denied","id":9})");
  EXPECT_THAT(lines[10], HasSubstr(R"("event":"log_suppressed","suppressed_event":"test_refused",)"
                                   R"("code":"denied","count":15)"));
  EXPECT_THAT(lines[10], HasSubstr("suppressed 15 similar lines"));
}

}  // namespace
}  // namespace ktrust
