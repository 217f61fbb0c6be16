#include "ktrust/config/registry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

namespace ktrust {
namespace {

using ::testing::HasSubstr;

struct GlobCase {
  const char* glob;
  const char* path;
  bool matches;
};

class CgroupGlobTest : public ::testing::TestWithParam<GlobCase> {};

TEST_P(CgroupGlobTest, Matches) {
  EXPECT_EQ(CgroupGlobMatch(GetParam().glob, GetParam().path), GetParam().matches)
      << GetParam().glob << " vs " << GetParam().path;
}

INSTANTIATE_TEST_SUITE_P(
    Table, CgroupGlobTest,
    ::testing::Values(
        GlobCase{"system.slice/nginx.service", "system.slice/nginx.service", true},
        GlobCase{"system.slice/nginx.service", "system.slice/nginx.service/sub", false},
        GlobCase{"system.slice/nginx.service", "system.slice/nginxXservice", false},
        GlobCase{"system.slice/*.service", "system.slice/nginx.service", true},
        GlobCase{"system.slice/*.service", "system.slice/.service", true},
        GlobCase{"system.slice/*.service", "system.slice/a/b.service",
                 false},  // '*' stays in one segment
        GlobCase{"system.slice/*", "system.slice", false}, GlobCase{"*", "system.slice", true},
        GlobCase{"*", "system.slice/a", false}, GlobCase{"**", "system.slice/a/b", true},
        GlobCase{"system.slice/**", "system.slice/a/b.service", true},
        GlobCase{"system.slice/**", "system.slice", false},
        GlobCase{"kubepods.slice/**/cri-containerd-*.scope",
                 "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/"
                 "cri-containerd-abc.scope",
                 true},
        GlobCase{"kubepods.slice/**/cri-containerd-*.scope",
                 "kubepods.slice/cri-containerd-abc.scope/x", false},
        GlobCase{"kubepods.slice/*/pod*", "kubepods.slice/burstable/pod123", true},
        GlobCase{"kubepods.slice/*/pod*", "kubepods.slice/burstable/x/pod123", false},
        GlobCase{"a?c", "abc", true}, GlobCase{"a?c", "a/c", false}, GlobCase{"a?c", "ac", false},
        // '[', '\', '@' and '.' are literal: cgroup names are full of them.
        GlobCase{"user.slice/user@1000.service", "user.slice/user@1000.service", true},
        GlobCase{"system.slice/foo\\x2dbar.service", "system.slice/foo\\x2dbar.service", true},
        GlobCase{"system.slice/foo\\x2dbar.service", "system.slice/foo-bar.service", false},
        GlobCase{"[ab]", "a", false}, GlobCase{"[ab]", "[ab]", true},
        // No exponential backtracking on many stars.
        GlobCase{"*a*a*a*a*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false},
        GlobCase{"", "", true}, GlobCase{"", "a", false}));

TEST(SystemdUnitTest, DeepestServiceOrScope) {
  EXPECT_EQ(*SystemdUnitOf("system.slice/nginx.service"), "nginx");
  EXPECT_EQ(*SystemdUnitOf("system.slice/nginx.service/worker"), "nginx");
  EXPECT_EQ(*SystemdUnitOf("user.slice/user-1000.slice/user@1000.service/app.slice/"
                           "app-gnome-firefox-1234.scope"),
            "app-gnome-firefox-1234");
  EXPECT_EQ(*SystemdUnitOf("system.slice/foo\\x2dbar.service"), "foo\\x2dbar")
      << "systemd's escapes are kept as they are";
}

TEST(SystemdUnitTest, NoUnit) {
  for (const char* path : {"system.slice", "kubepods.slice/pod1/abc", "a/.service", "a.socket"}) {
    auto unit = SystemdUnitOf(path);
    ASSERT_FALSE(unit.ok()) << path;
    EXPECT_THAT(unit.status().message(),
                HasSubstr("is not a systemd unit, but the template uses {unit}"));
  }
}

TemplateValues Values(std::string cgroup) {
  TemplateValues values;
  values.trust_domain = "example.org";
  values.node = "node-1";
  values.name = "web";
  values.cgroup = std::move(cgroup);
  return values;
}

TEST(RenderSpiffeIdTest, FillsEveryPlaceholder) {
  auto id = RenderSpiffeId("spiffe://{trust_domain}/node/{node}/{name}/{unit}",
                           Values("system.slice/nginx.service"));
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->ToString(), "spiffe://example.org/node/node-1/web/nginx");

  auto by_cgroup = RenderSpiffeId("spiffe://{trust_domain}/cg/{cgroup}",
                                  Values("kubepods.slice/pod-1/cri-containerd-abc.scope"));
  ASSERT_TRUE(by_cgroup.ok()) << by_cgroup.status();
  EXPECT_EQ(by_cgroup->path(), "/cg/kubepods.slice/pod-1/cri-containerd-abc.scope");
}

TEST(RenderSpiffeIdTest, UnitOnlyNeededWhenUsed) {
  EXPECT_TRUE(RenderSpiffeId("spiffe://{trust_domain}/{name}", Values("kubepods.slice/x")).ok());
  auto id = RenderSpiffeId("spiffe://{trust_domain}/{unit}", Values("kubepods.slice/x"));
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().message(),
            "cgroup kubepods.slice/x is not a systemd unit, but the template uses {unit}");
}

TEST(RenderSpiffeIdTest, EscapedUnitNameIsNotAValidIdSegment) {
  // "foo\x2dbar" stays as systemd wrote it; '\' is not a SPIFFE path character.
  auto id =
      RenderSpiffeId("spiffe://{trust_domain}/{unit}", Values("system.slice/foo\\x2dbar.service"));
  ASSERT_FALSE(id.ok());
  EXPECT_THAT(id.status().message(), HasSubstr("character '\\' is not allowed in the path"));
}

TEST(RenderSpiffeIdTest, RefusesBadTemplates) {
  struct Case {
    const char* tmpl;
    const char* says;
  };
  for (const Case& c : {
           Case{"spiffe://{trust_domain}/{ns}", "unknown placeholder {ns}"},
           Case{"spiffe://{trust_domain}/{name", "has no closing '}'"},
           Case{"spiffe://{trust_domain}/{na{me}", "has no closing '}'"},
           Case{"spiffe://{trust_domain}/name}", "closes nothing"},
           Case{"spiffe://other.org/{name}", "outside trust domain example.org"},
           Case{"spiffe://{name}.{trust_domain}/x", "outside trust domain example.org"},
           Case{"spiffe://{trust_domain}", "needs a path"},
           Case{"{trust_domain}/{name}", "scheme"},
       }) {
    auto id = RenderSpiffeId(c.tmpl, Values("system.slice/a.service"));
    ASSERT_FALSE(id.ok()) << c.tmpl;
    EXPECT_THAT(id.status().message(), HasSubstr(c.says)) << c.tmpl;
  }
}

TemplateValues PodValues() {
  TemplateValues values = Values("kubepods.slice/kubepods-pod1.slice");
  values.pod_namespace = "shop";
  values.service_account = "cart.v2";
  values.pod_name = "cart-7d9f8-x2x4q";
  values.pod_uid = "0b7c1f5e-3a2d-4c8e-9f10-2b3c4d5e6f70";
  return values;
}

TEST(RenderSpiffeIdTest, FillsThePodsPlaceholders) {
  auto id = RenderSpiffeId(
      "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}/{pod_name}/{pod_uid}",
      PodValues());
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->ToString(),
            "spiffe://example.org/ns/shop/sa/cart.v2/cart-7d9f8-x2x4q/"
            "0b7c1f5e-3a2d-4c8e-9f10-2b3c4d5e6f70");
  EXPECT_TRUE(TemplateUsesKubernetes("spiffe://{trust_domain}/{pod_uid}"));
  EXPECT_FALSE(TemplateUsesKubernetes("spiffe://{trust_domain}/{name}/{unit}"));
}

TEST(RenderSpiffeIdTest, PodValuesMustBeOneWholeSegment) {
  struct Case {
    const char* what;
    std::string TemplateValues::*field;
    const char* value;
    const char* says;
  };
  for (const Case& c : {
           Case{"unknown pod", &TemplateValues::pod_namespace, "", "{namespace} has no value"},
           Case{"a slash adds a segment", &TemplateValues::service_account, "a/b",
                "{service_account} is \"a/b\", which is not one SPIFFE path segment"},
           Case{"dot-dot", &TemplateValues::pod_name, "..", "{pod_name} is \"..\""},
           Case{"dot", &TemplateValues::pod_namespace, ".", "{namespace} is \".\""},
           Case{"percent is not escaped", &TemplateValues::pod_name, "a%2fb",
                "not one SPIFFE path segment"},
           Case{"colon", &TemplateValues::service_account, "system:serviceaccount",
                "not one SPIFFE path segment"},
           Case{"control character", &TemplateValues::pod_uid, "a\nb", "\"a\\nb\""},
       }) {
    TemplateValues values = PodValues();
    values.*c.field = c.value;
    auto id = RenderSpiffeId(
        "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}/{pod_name}/{pod_uid}", values);
    ASSERT_FALSE(id.ok()) << c.what << ": " << id->ToString();
    EXPECT_THAT(id.status().message(), HasSubstr(c.says)) << c.what;
  }
  // An unused placeholder's value is not looked at.
  TemplateValues values = PodValues();
  values.pod_name = "a/b";
  EXPECT_TRUE(RenderSpiffeId("spiffe://{trust_domain}/ns/{namespace}", values).ok());
}

class ScanCgroupsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = std::filesystem::path(::testing::TempDir()) /
            ("scan_cgroups_" + std::to_string(::getpid()));
    std::filesystem::remove_all(root_);
    for (const char* dir :
         {"system.slice/nginx.service", "system.slice/batch-a.service",
          "system.slice/batch-b.service/worker", "system.slice/sshd.service",
          "system.slice/user@1000.service", "kubepods.slice/pod-1/cri-containerd-abc.scope",
          "elsewhere/target.service"}) {
      std::filesystem::create_directories(root_ / dir);
    }
    // Not cgroups: a file and a symlink to a directory must be ignored.
    std::ofstream(root_ / "system.slice" / "cgroup.procs") << "1\n";
    std::filesystem::create_directory_symlink(root_ / "elsewhere",
                                              root_ / "system.slice" / "linked.service");
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::permissions(root_ / "kubepods.slice", std::filesystem::perms::owner_all, ec);
    std::filesystem::remove_all(root_, ec);
  }

  static Config MakeConfig() {
    Config config;
    config.trust_domain = "example.org";
    config.agent.node_name = "node-1";
    config.workloads = {
        {"nginx",
         "system.slice/nginx.service",
         "spiffe://{trust_domain}/{node}/{unit}",
         WorkloadMode::kEnforce,
         {443}},
        // Listed before the catch-all below: first match wins.
        {"batch",
         "system.slice/batch-*.service",
         "spiffe://{trust_domain}/batch/{unit}",
         WorkloadMode::kPermissive,
         {}},
        {"services",
         "system.slice/*.service",
         "spiffe://{trust_domain}/svc/{unit}",
         WorkloadMode::kEnforce,
         {}},
        {"pods",
         "kubepods.slice/**/*.scope",
         "spiffe://{trust_domain}/pod/{unit}",
         WorkloadMode::kEnforce,
         {}},
        {"linked",
         "system.slice/linked.service/**",
         "spiffe://{trust_domain}/linked",
         WorkloadMode::kEnforce,
         {}},
    };
    return config;
  }

  std::filesystem::path root_;
};

uint64_t InodeOf(const std::filesystem::path& path) {
  struct stat st {};
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_ino;
}

TEST_F(ScanCgroupsTest, MatchesDirectoriesToWorkloadsInConfigOrder) {
  auto scan = ScanCgroupTree(MakeConfig(), root_.string());
  ASSERT_TRUE(scan.ok()) << scan.status();

  std::vector<std::string> summary;
  for (const RegisteredWorkload& w : scan->found) {
    summary.push_back(w.cgroup_path + " " + std::to_string(w.workload_index) + " " +
                      (w.id ? w.id->ToString() : "(no ID)"));
    EXPECT_EQ(w.cgroup_id, InodeOf(root_ / w.cgroup_path)) << w.cgroup_path;
  }
  EXPECT_THAT(summary, ::testing::ElementsAre(
                           "kubepods.slice/pod-1/cri-containerd-abc.scope 3 "
                           "spiffe://example.org/pod/cri-containerd-abc",
                           "system.slice/batch-a.service 1 spiffe://example.org/batch/batch-a",
                           "system.slice/batch-b.service 1 spiffe://example.org/batch/batch-b",
                           "system.slice/nginx.service 0 spiffe://example.org/node-1/nginx",
                           "system.slice/sshd.service 2 spiffe://example.org/svc/sshd",
                           "system.slice/user@1000.service 2 (no ID)"));
  EXPECT_THAT(scan->problems, ::testing::IsEmpty());
  EXPECT_TRUE(scan->complete);
}

// user@1000.service matches "services", but '@' cannot be in a SPIFFE ID.
// Leaving it out would leave it unenforced (its mesh traffic in plaintext);
// it is registered to the workload it matched, with no ID and the reason, so
// the agent enrols it and refuses its connections. Never a later workload.
TEST_F(ScanCgroupsTest, CgroupWhoseIdCannotBeRenderedIsRegisteredWithItsReason) {
  auto scan = ScanCgroupTree(MakeConfig(), root_.string());
  ASSERT_TRUE(scan.ok()) << scan.status();
  const RegisteredWorkload* user = nullptr;
  for (const RegisteredWorkload& w : scan->found) {
    if (w.cgroup_path == "system.slice/user@1000.service") user = &w;
  }
  ASSERT_NE(user, nullptr) << "the cgroup was left out, so it would not be enforced";
  EXPECT_EQ(user->workload_index, 2u);  // "services", the first glob that matches
  EXPECT_FALSE(user->id.has_value());
  EXPECT_EQ(user->cgroup_id, InodeOf(root_ / "system.slice/user@1000.service"));
  EXPECT_THAT(user->id_problem, HasSubstr("spiffe://{trust_domain}/svc/{unit}"));
  EXPECT_THAT(user->id_problem, HasSubstr("@"));
  for (const RegisteredWorkload& w : scan->found) {
    if (w.id) {
      EXPECT_TRUE(w.id_problem.empty()) << w.cgroup_path;
    }
  }
}

// The agent classifies every cgroup, workload or not, so that one missing
// from its map is known to be new.
TEST_F(ScanCgroupsTest, GivesTheIdOfEveryCgroupWhenAsked) {
  auto scan = ScanCgroupTree(MakeConfig(), root_.string());
  ASSERT_TRUE(scan.ok()) << scan.status();
  std::set<uint64_t> expected = {InodeOf(root_)};
  for (const char* dir :
       {"system.slice", "system.slice/nginx.service", "system.slice/batch-a.service",
        "system.slice/batch-b.service", "system.slice/batch-b.service/worker",
        "system.slice/sshd.service", "system.slice/user@1000.service", "kubepods.slice",
        "kubepods.slice/pod-1", "kubepods.slice/pod-1/cri-containerd-abc.scope", "elsewhere",
        "elsewhere/target.service"}) {
    expected.insert(InodeOf(root_ / dir));
  }
  // Not the symlink's target again, nor the file.
  EXPECT_EQ(scan->every_cgroup, expected);
}

// Kubernetes mode asks the cluster about the cgroups no glob claims: every
// one, by path and id, and none a glob took.
TEST_F(ScanCgroupsTest, ListsTheCgroupsNoGlobClaims) {
  auto scan = ScanCgroupTree(MakeConfig(), root_.string());
  ASSERT_TRUE(scan.ok()) << scan.status();
  std::vector<std::string> unclaimed;
  for (const ScannedCgroup& c : scan->unclaimed) {
    unclaimed.push_back(c.path);
    EXPECT_EQ(c.id, InodeOf(root_ / c.path)) << c.path;
  }
  EXPECT_THAT(unclaimed,
              ::testing::UnorderedElementsAre("system.slice", "system.slice/batch-b.service/worker",
                                              "kubepods.slice", "kubepods.slice/pod-1", "elsewhere",
                                              "elsewhere/target.service"));
}

// EACCES says nothing about what the subtree holds either: skipped, said,
// and the scan is incomplete.
TEST_F(ScanCgroupsTest, UnreadableSubtreeIsSkippedAndMakesTheScanIncomplete) {
  std::filesystem::permissions(root_ / "kubepods.slice", std::filesystem::perms::none);
  auto scan_as_unprivileged = [&] {
    // Root reads every directory: drop to nobody (in a child) to be refused.
    if (::geteuid() == 0 && ::setresuid(65534, 65534, 65534) != 0) std::_Exit(2);
    auto scan = ScanCgroupTree(MakeConfig(), root_.string());
    bool as_expected = scan.ok() && scan->found.size() == 5 && !scan->complete &&
                       scan->unread.size() == 1 &&
                       scan->unread[0].find("cgroup kubepods.slice: cannot list") == 0;
    if (!as_expected) {
      std::fprintf(stderr, "status %s, %zu found, unread:\n", scan.status().ToString().c_str(),
                   scan.ok() ? scan->found.size() : 0);
      for (const std::string& p : scan.ok() ? scan->unread : std::vector<std::string>{}) {
        std::fprintf(stderr, "  %s\n", p.c_str());
      }
    }
    std::_Exit(as_expected ? 0 : 1);
  };
  EXPECT_EXIT(scan_as_unprivileged(), ::testing::ExitedWithCode(0), "");
}

// A lister that fails on one directory as the real one does at the fd limit.
CgroupLister FailingOn(std::string failing, int error) {
  return [failing, error](const std::string& dir) -> absl::StatusOr<std::vector<std::string>> {
    if (dir.size() >= failing.size() &&
        dir.compare(dir.size() - failing.size(), failing.size(), failing) == 0) {
      return absl::ErrnoToStatus(error, absl::StrCat("cannot list ", dir));
    }
    return ListCgroupDirectory(dir);
  };
}

// Issue 13: at the fd limit opendir fails with EMFILE. That says nothing
// about what the directory holds, so the scan must not be taken as complete
// (the agent then removes nothing).
TEST_F(ScanCgroupsTest, ListingThatFailsWithEmfileMakesTheScanIncomplete) {
  auto scan = ScanCgroupTree(MakeConfig(), root_.string(), FailingOn("/system.slice", EMFILE));
  ASSERT_TRUE(scan.ok()) << scan.status();
  EXPECT_FALSE(scan->complete) << "a listing that failed with EMFILE was taken as complete";
  ASSERT_EQ(scan->unread.size(), 1u);
  EXPECT_THAT(scan->unread[0], HasSubstr("cgroup system.slice: cannot list"));
  EXPECT_THAT(scan->unread[0], HasSubstr("Too many open files"));
  EXPECT_THAT(scan->problems, ::testing::IsEmpty());
  ASSERT_EQ(scan->found.size(), 1u);  // the pod only: system.slice was not seen
  EXPECT_EQ(scan->found[0].cgroup_path, "kubepods.slice/pod-1/cri-containerd-abc.scope");
}

// ENOENT is a definite answer: the cgroup went away while it was scanned.
TEST_F(ScanCgroupsTest, ACgroupThatVanishedLeavesTheScanComplete) {
  auto scan = ScanCgroupTree(MakeConfig(), root_.string(), FailingOn("/batch-b.service", ENOENT));
  ASSERT_TRUE(scan.ok()) << scan.status();
  EXPECT_TRUE(scan->complete) << (scan->unread.empty() ? "" : scan->unread[0]);
  EXPECT_THAT(scan->problems, ::testing::IsEmpty());
  EXPECT_EQ(scan->found.size(), 6u);
}

// The lister the real scan uses, recording every directory it lists.
CgroupLister Recording(std::vector<std::string>& listed, const std::filesystem::path& root) {
  return [&listed, root](const std::string& dir) -> absl::StatusOr<std::vector<std::string>> {
    std::string relative = std::filesystem::path(dir).lexically_relative(root).string();
    listed.push_back(relative == "." ? "" : relative);
    return ListCgroupDirectory(dir);
  };
}

std::vector<std::string> FoundPaths(const CgroupScan& scan) {
  std::vector<std::string> paths;
  for (const RegisteredWorkload& r : scan.found) paths.push_back(r.cgroup_path);
  return paths;
}

// A rescan of what changed must give what a full scan gives, in the same
// order (the first cgroup of a workload serves its ports), having listed
// only the changed subtrees: a cgroup created and one removed, in two
// different subtrees.
TEST_F(ScanCgroupsTest, RescanOfChangedSubtreesGivesWhatAFullScanGives) {
  Config config = MakeConfig();
  auto previous = ScanCgroupTree(config, root_.string());
  ASSERT_TRUE(previous.ok()) << previous.status();
  std::filesystem::create_directories(root_ / "system.slice/batch-c.service/worker");
  std::filesystem::remove(root_ / "kubepods.slice/pod-1/cri-containerd-abc.scope");

  std::vector<std::string> listed;
  auto rescan = RescanCgroupSubtrees(
      config, root_.string(), *previous,
      {"system.slice/batch-c.service", "kubepods.slice/pod-1/cri-containerd-abc.scope"},
      Recording(listed, root_));
  ASSERT_TRUE(rescan.ok()) << rescan.status();
  auto full = ScanCgroupTree(config, root_.string());
  ASSERT_TRUE(full.ok()) << full.status();

  EXPECT_THAT(FoundPaths(*rescan), ::testing::ElementsAreArray(FoundPaths(*full)));
  EXPECT_THAT(FoundPaths(*rescan), ::testing::Contains("system.slice/batch-c.service"));
  EXPECT_THAT(FoundPaths(*rescan),
              ::testing::Not(::testing::Contains("kubepods.slice/pod-1/cri-containerd-abc.scope")));
  EXPECT_EQ(rescan->every_cgroup, full->every_cgroup);
  EXPECT_EQ(rescan->cgroups, full->cgroups);
  std::vector<std::string> unclaimed, unclaimed_full;
  for (const ScannedCgroup& c : rescan->unclaimed) unclaimed.push_back(c.path);
  for (const ScannedCgroup& c : full->unclaimed) unclaimed_full.push_back(c.path);
  EXPECT_EQ(unclaimed, unclaimed_full);
  EXPECT_TRUE(rescan->complete);
  // The unchanged subtrees (system.slice's other services, elsewhere, the
  // root) were not listed again.
  EXPECT_THAT(listed, ::testing::UnorderedElementsAre(
                          "system.slice/batch-c.service", "system.slice/batch-c.service/worker",
                          "kubepods.slice/pod-1/cri-containerd-abc.scope"));
  EXPECT_EQ(rescan->listed, listed.size());
}

// A cgroup whose cgroup.events changed (a process came) is walked again:
// here it was replaced by another directory of the same name, so its id
// changed, which only a walk of it can see.
TEST_F(ScanCgroupsTest, RescanSeesAChangedCgroupAndOnlyIt) {
  Config config = MakeConfig();
  auto previous = ScanCgroupTree(config, root_.string());
  ASSERT_TRUE(previous.ok()) << previous.status();
  std::filesystem::remove(root_ / "system.slice/sshd.service");
  std::filesystem::create_directory(root_ / "system.slice/sshd.service");

  std::vector<std::string> listed;
  auto rescan = RescanCgroupSubtrees(config, root_.string(), *previous,
                                     {"system.slice/sshd.service"}, Recording(listed, root_));
  ASSERT_TRUE(rescan.ok()) << rescan.status();
  EXPECT_THAT(listed, ::testing::ElementsAre("system.slice/sshd.service"));
  for (const RegisteredWorkload& r : rescan->found) {
    EXPECT_EQ(r.cgroup_id, InodeOf(root_ / r.cgroup_path)) << r.cgroup_path;
  }
  EXPECT_TRUE(rescan->every_cgroup.count(InodeOf(root_ / "system.slice/sshd.service")));
  EXPECT_EQ(rescan->found.size(), previous->found.size());
}

// A cgroup created inside a directory also created since the last scan is
// walked from the directory the last scan knew: the new parent is found too.
TEST_F(ScanCgroupsTest, RescanWalksFromTheNearestKnownAncestor) {
  Config config = MakeConfig();
  auto previous = ScanCgroupTree(config, root_.string());
  ASSERT_TRUE(previous.ok()) << previous.status();
  std::filesystem::create_directories(root_ / "kubepods.slice/pod-2/cri-containerd-def.scope");

  std::vector<std::string> listed;
  auto rescan = RescanCgroupSubtrees(config, root_.string(), *previous,
                                     {"kubepods.slice/pod-2/cri-containerd-def.scope"},
                                     Recording(listed, root_));
  ASSERT_TRUE(rescan.ok()) << rescan.status();
  EXPECT_THAT(FoundPaths(*rescan),
              ::testing::Contains("kubepods.slice/pod-2/cri-containerd-def.scope"));
  EXPECT_TRUE(rescan->every_cgroup.count(InodeOf(root_ / "kubepods.slice/pod-2")));
  EXPECT_THAT(listed, ::testing::UnorderedElementsAre(
                          "kubepods.slice/pod-2", "kubepods.slice/pod-2/cri-containerd-def.scope"));
}

// Fail closed: a changed subtree that cannot be listed (EMFILE) keeps what
// the last scan saw under it, and the rescan is incomplete (nothing is
// removed on its word).
TEST_F(ScanCgroupsTest, RescanThatCannotListAChangedSubtreeKeepsWhatWasThere) {
  Config config = MakeConfig();
  auto previous = ScanCgroupTree(config, root_.string());
  ASSERT_TRUE(previous.ok()) << previous.status();
  auto rescan = RescanCgroupSubtrees(config, root_.string(), *previous, {"system.slice"},
                                     FailingOn("/system.slice", EMFILE));
  ASSERT_TRUE(rescan.ok()) << rescan.status();
  EXPECT_FALSE(rescan->complete) << "a listing that failed with EMFILE was taken as complete";
  EXPECT_THAT(FoundPaths(*rescan), ::testing::ElementsAreArray(FoundPaths(*previous)));
  EXPECT_EQ(rescan->every_cgroup, previous->every_cgroup);
}

// A changed cgroup that is gone takes its subtree with it.
TEST_F(ScanCgroupsTest, RescanOfARemovedSubtreeDropsIt) {
  Config config = MakeConfig();
  auto previous = ScanCgroupTree(config, root_.string());
  ASSERT_TRUE(previous.ok()) << previous.status();
  uint64_t worker = InodeOf(root_ / "system.slice/batch-b.service/worker");
  std::filesystem::remove_all(root_ / "system.slice/batch-b.service");
  auto rescan =
      RescanCgroupSubtrees(config, root_.string(), *previous, {"system.slice/batch-b.service"});
  ASSERT_TRUE(rescan.ok()) << rescan.status();
  EXPECT_TRUE(rescan->complete);
  EXPECT_THAT(FoundPaths(*rescan),
              ::testing::Not(::testing::Contains("system.slice/batch-b.service")));
  EXPECT_FALSE(rescan->every_cgroup.count(worker));
  EXPECT_FALSE(rescan->cgroups.count("system.slice/batch-b.service/worker"));
}

TEST_F(ScanCgroupsTest, MissingRootIsAnError) {
  auto scan = ScanCgroupTree(MakeConfig(), (root_ / "absent").string());
  ASSERT_FALSE(scan.ok());
  EXPECT_THAT(scan.status().message(), HasSubstr("absent"));
}

TEST_F(ScanCgroupsTest, NoWorkloadsNoRegistrations) {
  Config config = MakeConfig();
  config.workloads.clear();
  auto scan = ScanCgroupTree(config, root_.string());
  ASSERT_TRUE(scan.ok());
  EXPECT_TRUE(scan->found.empty());
}

}  // namespace
}  // namespace ktrust
