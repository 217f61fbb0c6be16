#include "ktrust/bpf/cgroup2.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ktrust {
namespace {

// The CI machines' hybrid layout: v1 controllers plus the unified hierarchy.
constexpr char kHybrid[] =
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
    "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

TEST(Cgroup2Test, FindsTheUnifiedMountOnAHybridHost) {
  auto mount = FindCgroup2Mount(kHybrid);
  ASSERT_TRUE(mount.ok()) << mount.status();
  EXPECT_EQ(*mount, "/sys/fs/cgroup/unified");
}

TEST(Cgroup2Test, FindsTheRootOnAUnifiedHostWithOptionalFields) {
  auto mount = FindCgroup2Mount(
      "22 28 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n"
      "26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev shared:9 master:1 - cgroup2 cgroup2 "
      "rw,nsdelegate,memory_recursiveprot\n");
  ASSERT_TRUE(mount.ok()) << mount.status();
  EXPECT_EQ(*mount, "/sys/fs/cgroup");
}

TEST(Cgroup2Test, DecodesEscapedSpaces) {
  auto mount = FindCgroup2Mount("41 31 0:38 / /mnt/my\\040cgroups rw - cgroup2 none rw\n");
  ASSERT_TRUE(mount.ok()) << mount.status();
  EXPECT_EQ(*mount, "/mnt/my cgroups");
}

// An agent under `ip netns exec` sees other tests' cgroup2 mounts come and
// go: its own cgroup must be found under the mount that holds its root.
TEST(Cgroup2Test, TheMountHoldingAPathIsTheLongestPrefixOfIt) {
  std::vector<std::string> mounts = FindCgroup2Mounts(
      "41 31 0:38 / /tmp/x/cgroup2 rw - cgroup2 none rw\n"
      "42 31 0:38 / /tmp/y/cgroup2 rw - cgroup2 none rw\n"
      "43 31 0:38 / / rw - cgroup2 none rw\n");
  ASSERT_EQ(mounts.size(), 3u);
  EXPECT_EQ(Cgroup2MountHolding(mounts, "/tmp/y/cgroup2/ktrust-test-1/a"), "/tmp/y/cgroup2");
  EXPECT_EQ(Cgroup2MountHolding(mounts, "/tmp/y/cgroup2"), "/tmp/y/cgroup2");
  EXPECT_EQ(Cgroup2MountHolding(mounts, "/tmp/y/cgroup2x/a"), "/");
  EXPECT_EQ(Cgroup2MountHolding({"/tmp/x/cgroup2"}, "/sys/fs/cgroup"), "");
}

TEST(Cgroup2Test, NotFoundWithOnlyVersion1) {
  auto mount = FindCgroup2Mount(
      "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
      "41 31 0:38 / /cgroup2-lookalike rw - tmpfs cgroup2 rw\n");
  EXPECT_EQ(mount.status().code(), absl::StatusCode::kNotFound);
}

// A test's cgroup2 mount listed before the host's, as under `ip netns exec`.
constexpr char kTwoMounts[] =
    "41 31 0:38 / /tmp/t/cgroup2 rw - cgroup2 none rw\n"
    "26 22 0:23 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n";
// A hybrid host's /proc/self/cgroup: v1 controllers first, the v2 line last.
constexpr char kProcCgroup[] =
    "12:cpu,cpuacct:/system.slice/ktrustd.service\n"
    "1:name=systemd:/system.slice/ktrustd.service\n"
    "0::/system.slice/ktrustd.service\n";

TEST(Cgroup2Test, OwnCgroupIsTheV2LineUnderTheMountHoldingTheRoot) {
  auto path = FindOwnCgroupPath(kProcCgroup, kTwoMounts, "/sys/fs/cgroup/kubepods.slice");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, "/sys/fs/cgroup/system.slice/ktrustd.service");
}

TEST(Cgroup2Test, OwnCgroupFallsBackToTheFirstMountWhenNoneHoldsTheRoot) {
  auto path = FindOwnCgroupPath(kProcCgroup, kTwoMounts, "/srv/elsewhere");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, "/tmp/t/cgroup2/system.slice/ktrustd.service");
}

TEST(Cgroup2Test, OwnCgroupInTheRootCgroupIsTheMountItself) {
  auto path = FindOwnCgroupPath("0::/\n", kTwoMounts, "/sys/fs/cgroup");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, "/sys/fs/cgroup");
}

TEST(Cgroup2Test, OwnCgroupNotFoundWithoutAV2LineOrAV2Mount) {
  EXPECT_EQ(FindOwnCgroupPath("1:name=systemd:/a\n", kTwoMounts, "/sys/fs/cgroup").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(
      FindOwnCgroupPath(kProcCgroup, "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n",
                        "/sys/fs/cgroup")
          .status()
          .code(),
      absl::StatusCode::kNotFound);
}

// What the kernel shows (6.18, checked with `unshare --cgroup`): a process
// in a cgroup namespace rooted at <host>/t/node/agent sees the host's whole
// hierarchy mounted with root "/../../..", itself at "/", a sibling at
// "/../web". The mount cannot name the agent's cgroup: never the mount root.
constexpr char kInCgroupNamespace[] =
    "40 30 0:37 /../../.. /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

TEST(Cgroup2Test, MountRootIsRead) {
  std::vector<Cgroup2MountEntry> mounts =
      ParseCgroup2Mounts(std::string(kInCgroupNamespace) +
                         "41 31 0:38 /kubepods.slice /mnt/pods rw - cgroup2 none rw\n");
  ASSERT_EQ(mounts.size(), 2u);
  EXPECT_EQ(mounts[0].mount_point, "/sys/fs/cgroup/unified");
  EXPECT_EQ(mounts[0].root, "/../../..");
  EXPECT_EQ(mounts[1].root, "/kubepods.slice");
}

TEST(Cgroup2Test, InACgroupNamespaceTheHostMountNamesNoOwnCgroup) {
  auto path = FindOwnCgroupPath("0::/\n", kInCgroupNamespace, "/sys/fs/cgroup/unified");
  EXPECT_EQ(path.status().code(), absl::StatusCode::kNotFound) << (path.ok() ? *path : "");
  EXPECT_THAT(std::string(path.status().message()), ::testing::HasSubstr("above"));
}

TEST(Cgroup2Test, ASubtreeMountMapsOnlyWhatIsUnderItsRoot) {
  constexpr char kSubtree[] = "41 31 0:38 /kubepods.slice /mnt/pods rw - cgroup2 none rw\n";
  auto inside = FindOwnCgroupPath("0::/kubepods.slice/a/b\n", kSubtree, "/mnt/pods");
  ASSERT_TRUE(inside.ok()) << inside.status();
  EXPECT_EQ(*inside, "/mnt/pods/a/b");
  auto outside = FindOwnCgroupPath("0::/system.slice/x.service\n", kSubtree, "/mnt/pods");
  EXPECT_FALSE(outside.ok()) << *outside;
}

TEST(Cgroup2Test, V2PathNeedsTheZeroLine) {
  EXPECT_EQ(*CgroupV2PathOf(kProcCgroup), "/system.slice/ktrustd.service");
  EXPECT_EQ(*CgroupV2PathOf("0::/../web\n"), "/../web");
  EXPECT_FALSE(CgroupV2PathOf("0::\n").ok());
  EXPECT_FALSE(CgroupV2PathOf("").ok());
}

TEST(Cgroup2Test, CgroupProcsListsWholeNumbersOnly) {
  EXPECT_TRUE(CgroupProcsLists("1\n42\n4242\n", 42));
  EXPECT_FALSE(CgroupProcsLists("1\n420\n4242\n", 42));
  EXPECT_FALSE(CgroupProcsLists("", 42));
}

TEST(CgroupViewTest, NamesCgroupsFromItsAnchor) {
  // Found by its pid: the agent at /sys/fs/cgroup/unified/t/node/agent,
  // which its namespace calls "/".
  CgroupView view{"/", "/sys/fs/cgroup/unified/t/node/agent", "/sys/fs/cgroup/unified"};
  EXPECT_EQ(*view.DirOf("/"), "/sys/fs/cgroup/unified/t/node/agent");
  EXPECT_EQ(*view.DirOf("/../web"), "/sys/fs/cgroup/unified/t/node/web");
  EXPECT_EQ(*view.DirOf("/sub/x"), "/sys/fs/cgroup/unified/t/node/agent/sub/x");
  EXPECT_EQ(*view.DirOf("/../../../init.scope"), "/sys/fs/cgroup/unified/init.scope");
  // Never above the mount.
  EXPECT_FALSE(view.DirOf("/../../../../x").ok());
  EXPECT_FALSE(view.DirOf("/../../../..").ok());
}

TEST(CgroupViewTest, AnchorBelowTheNamespaceRoot) {
  CgroupView view{"/a/b", "/cg/t/a/b", "/cg"};
  EXPECT_EQ(*view.DirOf("/a/c"), "/cg/t/a/c");
  EXPECT_EQ(*view.DirOf("/"), "/cg/t");
  EXPECT_EQ(*view.DirOf("/../x"), "/cg/x");
  EXPECT_FALSE(view.DirOf("/../../x").ok());
}

TEST(CgroupViewTest, AnAnchorAboveTheNamespaceCannotBeClimbedOver) {
  // The agent moved out of its namespace's root after it was made: the
  // name of the namespace's root is unknown.
  CgroupView view{"/../other", "/cg/t/other", "/cg"};
  EXPECT_EQ(*view.DirOf("/../other/x"), "/cg/t/other/x");
  EXPECT_FALSE(view.DirOf("/").ok());
}

TEST(CgroupViewTest, RootFloor) {
  CgroupView view{"/", "/", "/"};
  EXPECT_EQ(*view.DirOf("/a/b"), "/a/b");
  EXPECT_EQ(*view.DirOf("/"), "/");
  EXPECT_FALSE(view.DirOf("/..").ok());
}

}  // namespace
}  // namespace ktrust
