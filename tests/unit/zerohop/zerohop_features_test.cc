#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ktrust/tls/ktls.h"
#include "ktrust/zerohop/features.h"

namespace ktrust::zerohop {
namespace {

// The seccomp and no_new_privs lines of this process's status.
std::string OwnSeccompState() {
  std::ifstream status("/proc/self/status");
  std::string state;
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("Seccomp", 0) == 0 || line.rfind("NoNewPrivs", 0) == 0) state += line + "\n";
  }
  return state;
}

// The CI and development kernels are 6.x: everything but kTLS is there; kTLS
// is whatever the existing probe finds (absent on the host, present in the VM).
TEST(FeaturesTest, ReportsWhatThisKernelOffers) {
  ZeroHopFeatures f = ProbeZeroHopFeatures();
  EXPECT_TRUE(f.user_notif.available) << f.user_notif.reason;
  EXPECT_TRUE(f.wait_killable_recv.available) << f.wait_killable_recv.reason;
  EXPECT_TRUE(f.addfd_send.available) << f.addfd_send.reason;
  EXPECT_TRUE(f.pidfd_getfd.available) << f.pidfd_getfd.reason;
  KtlsSupport ktls = ProbeKtls();
  EXPECT_EQ(f.ktls.available, ktls.available);
  if (!f.ktls.available) {
    EXPECT_THAT(f.ktls.reason, testing::HasSubstr("kernel TLS"));
    EXPECT_THAT(f.ktls.reason, testing::Not(testing::HasSubstr("userspace record layer")));
    EXPECT_FALSE(f.outbound());
    EXPECT_FALSE(f.inbound());
  } else {
    EXPECT_TRUE(f.outbound());
    EXPECT_TRUE(f.inbound());
  }
}

TEST(FeaturesTest, LeavesTheCallerWithoutAFilter) {
  std::string before = OwnSeccompState();
  ASSERT_FALSE(before.empty());
  ProbeZeroHopFeatures();
  EXPECT_EQ(OwnSeccompState(), before);
}

}  // namespace
}  // namespace ktrust::zerohop
