#include "ktrust/agent/cgroup_place.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ktrust {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kContainerNamespace = 4026532177;

TEST(ClassifyCgroupNamespaceTest, InitialNamespaceIsTheHostsWithoutAskingPidOne) {
  auto verdict = ClassifyCgroupNamespace({1234, kInitialCgroupNamespace, std::nullopt, "EACCES"});
  EXPECT_EQ(verdict.kind, CgroupNamespaceKind::kHost) << verdict.why;
}

TEST(ClassifyCgroupNamespaceTest, PidOnesNamespaceIsTheHostsWhenPidOneIsNotTheAgent) {
  // A node that is itself a container (kind): its init is not in the
  // initial namespace, and the agent beside it shares init's.
  auto verdict = ClassifyCgroupNamespace({1234, kContainerNamespace, kContainerNamespace, ""});
  EXPECT_EQ(verdict.kind, CgroupNamespaceKind::kHost) << verdict.why;
}

TEST(ClassifyCgroupNamespaceTest, ANamespaceOtherThanPidOnesIsTheAgentsOwn) {
  auto verdict = ClassifyCgroupNamespace({1234, kContainerNamespace, kInitialCgroupNamespace, ""});
  EXPECT_EQ(verdict.kind, CgroupNamespaceKind::kOwn) << verdict.why;
  EXPECT_THAT(verdict.why, HasSubstr("cgroup namespace of its own"));
}

TEST(ClassifyCgroupNamespaceTest, CannotTellAsPidOneOrWithoutPidOne) {
  // pid 1 of a container without hostPID: pid 1 is the agent itself.
  auto as_init = ClassifyCgroupNamespace({1, kContainerNamespace, kContainerNamespace, ""});
  EXPECT_EQ(as_init.kind, CgroupNamespaceKind::kUnknown);
  EXPECT_THAT(as_init.why, HasSubstr("pid 1"));
  auto unreadable = ClassifyCgroupNamespace(
      {1234, kContainerNamespace, std::nullopt, "/proc/1/ns/cgroup: Permission denied"});
  EXPECT_EQ(unreadable.kind, CgroupNamespaceKind::kUnknown);
  EXPECT_THAT(unreadable.why, HasSubstr("Permission denied"));
}

TEST(HostCgroupRootFromInitTest, ThroughPidOnesRoot) {
  auto root = HostCgroupRootFromInit(
      "22 28 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n"
      "26 22 0:23 /../../.. /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n");
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_EQ(*root, "/proc/1/root/sys/fs/cgroup");
  EXPECT_EQ(HostCgroupRootFromInit("22 28 0:21 / /sys rw - sysfs sysfs rw\n").status().code(),
            absl::StatusCode::kNotFound);
}

// A cgroup tree made of plain directories and cgroup.procs files.
class FakeTree {
 public:
  FakeTree() {
    char tmpl[] = "/tmp/cgroup_place_test.XXXXXX";
    root_ = mkdtemp(tmpl);
  }
  ~FakeTree() { std::filesystem::remove_all(root_); }
  void Add(const std::string& dir, const std::string& procs) {
    std::filesystem::create_directories(root_ + "/" + dir);
    std::ofstream(root_ + "/" + dir + "/cgroup.procs") << procs;
  }
  const std::string& root() const { return root_; }

 private:
  std::string root_;
};

TEST(FindProcessCgroupUnderTest, FindsTheDirectoryListingThePid) {
  FakeTree tree;
  tree.Add("", "1\n");
  tree.Add("kubepods.slice/kubepods-pod1.slice/cri-containerd-a.scope", "4200\n4201\n");
  tree.Add("kubepods.slice/kubepods-pod2.slice/cri-containerd-b.scope", "42\n");
  tree.Add("system.slice/web.service", "420\n");
  auto found = FindProcessCgroupUnder(tree.root(), 42);
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, tree.root() + "/kubepods.slice/kubepods-pod2.slice/cri-containerd-b.scope");
  auto at_root = FindProcessCgroupUnder(tree.root(), 1);
  ASSERT_TRUE(at_root.ok()) << at_root.status();
  EXPECT_EQ(*at_root, tree.root());
  auto missing = FindProcessCgroupUnder(tree.root(), 7);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("process 7"));
}

TEST(FindProcessCgroupUnderTest, FollowsNoSymlink) {
  FakeTree tree;
  tree.Add("a", "");
  FakeTree elsewhere;
  elsewhere.Add("b", "42\n");
  std::filesystem::create_directory_symlink(elsewhere.root() + "/b", tree.root() + "/a/link");
  EXPECT_EQ(FindProcessCgroupUnder(tree.root(), 42).status().code(), absl::StatusCode::kNotFound);
}

// On this machine's host view (the unit tier runs wherever): the place is
// found and its directory lists this process; or the reason is given.
TEST(FindCgroupPlaceTest, ANonCgroupRootIsRefused) {
  FakeTree tree;
  auto place = FindCgroupPlace(tree.root());
  ASSERT_FALSE(place.ok());
  EXPECT_THAT(place.status().message(), HasSubstr("is not on a cgroup2 filesystem"));
}

// Where this test runs: its own cgroup is found and is the one whose
// cgroup.procs lists it.
TEST(FindCgroupPlaceTest, FindsTheCgroupThatListsThisProcess) {
  // ktrust needs cgroup2; a machine without it cannot run the agent at all.
  ASSERT_TRUE(Cgroup2Mount().ok()) << "no cgroup2 filesystem is mounted here";
  auto place = FindCgroupPlace("");
  ASSERT_TRUE(place.ok()) << place.status();
  std::ifstream procs(place->own_dir + "/cgroup.procs");
  std::string text((std::istreambuf_iterator<char>(procs)), std::istreambuf_iterator<char>());
  EXPECT_TRUE(CgroupProcsLists(text, getpid())) << place->own_dir << " lists " << text;
  EXPECT_EQ(place->own_dir.rfind(place->root, 0), 0u)
      << place->own_dir << " is not under " << place->root;
  EXPECT_FALSE(place->how.empty());
}

}  // namespace
}  // namespace ktrust
