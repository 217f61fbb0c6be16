#include "ktrust/identity/svid_rotator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "ktrust/identity/certificate_authority.h"
#include "ktrust/identity/x509.h"

namespace ktrust {
namespace {

class SvidRotatorTest : public ::testing::Test {
 protected:
  SvidRotatorTest()
      : ca_(*CertificateAuthority::CreateRoot(*TrustDomain::Parse("example.org"),
                                              kDefaultRootValidity, start_)) {}

  SvidRotator::Issuer Issuer() {
    return [this](absl::Time now) -> absl::StatusOr<Svid> {
      ++issued_;
      if (fail_) return absl::UnavailableError("CA unreachable");
      return ca_.IssueSvid(*SpiffeId::Parse("spiffe://example.org/w"), absl::Hours(1), now);
    };
  }

  absl::Time start_ = absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()));
  CertificateAuthority ca_;
  int issued_ = 0;
  bool fail_ = false;
};

TEST_F(SvidRotatorTest, RenewsAtHalfLifeNotBefore) {
  auto rotator = SvidRotator::Create(Issuer(), start_);
  ASSERT_TRUE(rotator.ok());
  auto first = (*rotator)->Current();
  // Lifetime is 1h plus the backdate; half of it is past start_ + 30m.
  absl::Time half = first->not_before() + (first->not_after() - first->not_before()) / 2;
  EXPECT_EQ((*rotator)->RenewAt(), half);

  ASSERT_TRUE((*rotator)->RotateIfDue(half - absl::Seconds(1)).ok());
  EXPECT_EQ((*rotator)->Current(), first);
  EXPECT_EQ(issued_, 1);

  ASSERT_TRUE((*rotator)->RotateIfDue(half).ok());
  auto second = (*rotator)->Current();
  EXPECT_NE(second, first);
  EXPECT_EQ(issued_, 2);
  EXPECT_GT(second->not_after(), first->not_after());
  EXPECT_NE(SerialHex(second->leaf()), SerialHex(first->leaf()));
  // Holders of the old SVID keep a valid object (existing connections).
  EXPECT_EQ(first->id(), second->id());
}

TEST_F(SvidRotatorTest, FailedRenewalKeepsTheCurrentSvidAndRetries) {
  auto rotator = SvidRotator::Create(Issuer(), start_);
  auto first = (*rotator)->Current();
  fail_ = true;
  absl::Status st = (*rotator)->RotateIfDue(start_ + absl::Minutes(40));
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*rotator)->Current(), first);
  EXPECT_EQ((*rotator)->last_error(), "CA unreachable");
  fail_ = false;
  ASSERT_TRUE((*rotator)->RotateIfDue(start_ + absl::Minutes(41)).ok());
  EXPECT_NE((*rotator)->Current(), first);
  EXPECT_EQ((*rotator)->last_error(), "");
}

TEST_F(SvidRotatorTest, RotateNowRenewsBeforeHalfLifeWithAnSvidValidNow) {
  auto rotator = SvidRotator::Create(Issuer(), start_);
  auto first = (*rotator)->Current();
  absl::Time now = start_ + absl::Minutes(1);
  ASSERT_TRUE((*rotator)->RotateNow(now).ok());
  auto second = (*rotator)->Current();
  EXPECT_NE(second, first);
  EXPECT_EQ(issued_, 2);
  // Issued for the time given: valid now, for the full lifetime from now.
  EXPECT_LE(second->not_before(), now);
  EXPECT_EQ(second->not_after(), now + absl::Hours(1));
  fail_ = true;
  EXPECT_EQ((*rotator)->RotateNow(now).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*rotator)->Current(), second);
}

TEST_F(SvidRotatorTest, CreateFailsWhenTheFirstIssueFails) {
  fail_ = true;
  EXPECT_FALSE(SvidRotator::Create(Issuer(), start_).ok());
}

TEST_F(SvidRotatorTest, ReadersAlwaysSeeACompleteSvidDuringRotation) {
  auto rotator = SvidRotator::Create(Issuer(), start_);
  std::atomic<bool> stop{false};
  std::atomic<int> reads{0};
  std::vector<std::thread> readers;
  for (int i = 0; i < 4; ++i) {
    readers.emplace_back([&] {
      while (!stop.load()) {
        auto svid = (*rotator)->Current();
        // A torn swap would show a key that does not belong to the leaf.
        ASSERT_EQ(X509_check_private_key(svid->leaf(), svid->key()), 1);
        ++reads;
      }
    });
  }
  // Each rotation waits for the readers to read meanwhile, so every swap
  // races live readers even when a loaded machine schedules them late (it
  // once ran all 20 rotations before any reader had started).
  auto readers_ran = [&](int since) {
    absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (reads.load() < since + 8 && absl::Now() < deadline) std::this_thread::yield();
    return reads.load() >= since + 8;
  };
  absl::Time t = start_;
  bool raced = true;
  for (int i = 0; i < 20 && raced; ++i) {
    raced = readers_ran(reads.load());
    t += absl::Hours(1);
    EXPECT_TRUE((*rotator)->RotateIfDue(t).ok());
  }
  raced = raced && readers_ran(reads.load());
  stop = true;
  for (auto& r : readers) r.join();
  EXPECT_TRUE(raced) << "the readers stopped reading (" << reads.load() << " reads)";
  EXPECT_EQ(issued_, 21);
}

}  // namespace
}  // namespace ktrust
