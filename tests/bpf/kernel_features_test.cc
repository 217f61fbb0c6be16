#include "ktrust/bpf/kernel_features.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "bpf/bpf_test_env.h"
#include "ktrust/bpf/cgroup2.h"

namespace ktrust {
namespace {

using ::testing::HasSubstr;

// The CI kernel (6.18) has everything; a test that skipped here would hide a
// regression in the probes, so none does beyond the root requirement.
TEST(KernelFeaturesTest, ThisKernelHasEverythingInterceptionNeeds) {
  KTRUST_REQUIRE_ROOT();
  auto bpffs = testing::ScopedBpffs::Create();
  ASSERT_TRUE(bpffs.ok()) << bpffs.status();
  KernelFeatures features = KernelFeatures::Probe((*bpffs)->pin_dir());
  EXPECT_TRUE(features.btf());
  EXPECT_TRUE(features.sock_addr_hooks());
  EXPECT_TRUE(features.sk_lookup());
  EXPECT_TRUE(features.ring_buffer());
  EXPECT_TRUE(features.netns_cookies());
  EXPECT_TRUE(features.bpffs());
  EXPECT_EQ(features.cgroup2_mount(), *Cgroup2Mount());
  EXPECT_TRUE(features.Require().ok()) << features.Require();
}

TEST(KernelFeaturesTest, APinDirOffBpffsIsRefusedInOneSentence) {
  KTRUST_REQUIRE_ROOT();
  KernelFeatures features = KernelFeatures::Probe("/tmp/not-bpffs/ktrust");
  EXPECT_FALSE(features.bpffs());
  absl::Status status = features.Require();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(status.message()), HasSubstr("no BPF filesystem holds /tmp/not-bpffs"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("Linux 5.7 or later"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("refuses to enforce"));
}

TEST(KernelFeaturesTest, TheCgroupRootHasIdOne) {
  KTRUST_REQUIRE_ROOT();
  auto mount = Cgroup2Mount();
  ASSERT_TRUE(mount.ok()) << mount.status();
  auto id = CgroupIdOf(*mount);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(*id, 1u);
  EXPECT_FALSE(CgroupIdOf("/proc").ok());  // not a cgroup v2 directory
}

}  // namespace
}  // namespace ktrust
