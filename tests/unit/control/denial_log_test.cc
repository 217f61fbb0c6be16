#include "ktrust/control/denial_log.h"

#include <gtest/gtest.h>

#include <thread>

namespace ktrust::control {
namespace {

DenialView At(double time, std::string result = "denied", std::string peer = "") {
  DenialView d;
  d.time = time;
  d.result = std::move(result);
  d.peer_id = std::move(peer);
  return d;
}

absl::Time Unix(double seconds) { return absl::UnixEpoch() + absl::Seconds(seconds); }

TEST(DenialLog, SinceReturnsNewerEntriesNewestLast) {
  DenialLog log;
  log.Add(At(100));
  log.Add(At(200));
  log.Add(At(300));
  auto found = log.Since(Unix(200));
  ASSERT_EQ(found.size(), 2u);
  EXPECT_EQ(found[0].time, 200);
  EXPECT_EQ(found[1].time, 300);
  EXPECT_EQ(log.Since(absl::InfinitePast()).size(), 3u);
  EXPECT_TRUE(log.Since(Unix(301)).empty());
}

TEST(DenialLog, KeepsOnlyTheNewestButCountsEverything) {
  DenialLog log(3);
  for (int i = 1; i <= 5; ++i) log.Add(At(i, i % 2 ? "denied" : "handshake_failed"));
  EXPECT_EQ(log.size(), 3u);
  auto all = log.Since(absl::InfinitePast());
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all.front().time, 3);
  EXPECT_EQ(all.back().time, 5);
  auto counts = log.CountsByResult();
  EXPECT_EQ(counts["denied"], 3u);
  EXPECT_EQ(counts["handshake_failed"], 2u);
}

TEST(DenialLog, DefaultCapacityAndZeroCapacity) {
  EXPECT_EQ(DenialLog().capacity(), 1024u);
  DenialLog tiny(0);  // taken as 1: a log that keeps nothing is a bug
  tiny.Add(At(1));
  tiny.Add(At(2));
  ASSERT_EQ(tiny.size(), 1u);
  EXPECT_EQ(tiny.Since(absl::InfinitePast())[0].time, 2);
}

TEST(DenialLog, AnEntryWithoutATimeGetsNow) {
  DenialLog log;
  absl::Time before = absl::Now();
  log.Add(At(0));
  auto found = log.Since(before - absl::Seconds(1));
  ASSERT_EQ(found.size(), 1u);
  EXPECT_GE(found[0].time, absl::ToDoubleSeconds(before - absl::UnixEpoch()) - 1);
}

TEST(DenialLog, ConcurrentWritersAndReaders) {
  DenialLog log(64);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&log] {
      for (int i = 1; i <= 1000; ++i) log.Add(At(i));
    });
  }
  threads.emplace_back([&log] {
    for (int i = 0; i < 200; ++i) EXPECT_LE(log.Since(absl::InfinitePast()).size(), 64u);
  });
  for (auto& t : threads) t.join();
  EXPECT_EQ(log.size(), 64u);
  EXPECT_EQ(log.CountsByResult()["denied"], 4000u);
}

}  // namespace
}  // namespace ktrust::control
