#include "ktrust/agent/enrolment_plan.h"

#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "unit/test_pki.h"

namespace ktrust {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr uint64_t kOwnCgroup = 99;

class EnrolmentPlanTest : public ::testing::Test {
 protected:
  EnrolmentPlanTest() {
    config_ = std::make_shared<Config>();
    config_->trust_domain = "example.org";
    config_->workloads = {
        {"web", "web.service", "spiffe://{trust_domain}/web", WorkloadMode::kEnforce, {80}},
        {"legacy",
         "legacy.service",
         "spiffe://{trust_domain}/legacy",
         WorkloadMode::kPermissive,
         {8080}},
        {"batch", "batch.service", "spiffe://{trust_domain}/batch", WorkloadMode::kOff, {9000}},
        {"client", "client.service", "spiffe://{trust_domain}/client", WorkloadMode::kEnforce, {}},
    };
    auto root = testing::MintRoot("example.org");
    for (const char* name : {"web", "legacy", "client"}) {
      svids_[name] = std::make_shared<const Svid>(
          testing::MintSvid({.uri_sans = {absl::StrCat("spiffe://example.org/", name)}}, root));
    }
  }

  static RegisteredWorkload Cgroup(size_t workload, uint64_t id, const std::string& path,
                                   bool with_id = true) {
    RegisteredWorkload r{workload, path, id, std::nullopt, "", std::nullopt};
    if (with_id) {
      r.id = *SpiffeId::Parse(absl::StrCat("spiffe://example.org/", path));
    } else {
      r.id_problem = "the name makes no valid SPIFFE ID";
    }
    return r;
  }

  EnrolmentPlan Plan(const std::vector<RegisteredWorkload>& found,
                     std::set<uint64_t> every_cgroup = {}, bool complete = true) {
    CgroupScan scan{found, std::move(every_cgroup), {}, complete, {}, {}, {}, 0};
    if (!complete) scan.unread = {"cgroup system.slice: cannot list: Too many open files"};
    for (const auto& r : found) scan.every_cgroup.insert(r.cgroup_id);
    return PlanScan(scan);
  }

  EnrolmentPlan PlanScan(const CgroupScan& scan) {
    return PlanEnrolment(
        *config_, config_, scan, before_, kOwnCgroup,
        [this](const SpiffeId& id, const std::string& workload) -> absl::StatusOr<SvidProvider> {
          looked_up_.push_back(id.ToString());
          if (refuse_issue_) return absl::UnavailableError("the CA is away");
          auto svid = svids_.at(workload);
          return SvidProvider([svid] { return svid; });
        },
        [this](const RegisteredWorkload& r) -> absl::StatusOr<std::optional<PodNetns>> {
          if (pod_errors_.count(r.cgroup_id)) {
            return absl::ResourceExhaustedError("/proc/42/ns/net: Too many open files");
          }
          auto it = pods_.find(r.cgroup_id);
          if (it == pods_.end()) return std::nullopt;
          return PodNetns{it->second, absl::StrCat("/proc/1", it->second, "/ns/net"), {}};
        });
  }

  static std::vector<uint64_t> Ids(const EnrolmentPlan& plan) {
    std::vector<uint64_t> ids;
    for (const CgroupToEnrol& e : plan.enrol) ids.push_back(e.cgroup_id);
    return ids;
  }

  std::shared_ptr<Config> config_;
  std::map<std::string, std::shared_ptr<const Svid>> svids_;
  std::map<uint64_t, uint64_t> pods_;  // cgroup id -> netns inode
  std::set<uint64_t> pod_errors_;      // cgroups whose pod lookup fails
  RoutingTable before_;                // what the last pass published
  std::vector<std::string> looked_up_;
  bool refuse_issue_ = false;
};

TEST_F(EnrolmentPlanTest, EnrolsEachCgroupWithItsWorkloadsModeAndIdentity) {
  EnrolmentPlan plan =
      Plan({Cgroup(0, 10, "web"), Cgroup(1, 11, "legacy"), Cgroup(3, 12, "client")}, {1, 2});
  ASSERT_EQ(plan.enrol.size(), 3u);
  EXPECT_EQ(plan.enrol[0].workload, "web");
  EXPECT_EQ(plan.enrol[0].mode, WorkloadMode::kEnforce);
  EXPECT_EQ(plan.enrol[0].workload_index, 0u);
  EXPECT_EQ(plan.enrol[0].id, "spiffe://example.org/web");
  EXPECT_EQ(plan.enrol[1].mode, WorkloadMode::kPermissive);
  EXPECT_EQ(plan.enrol[1].workload_index, 1u);
  EXPECT_EQ(plan.routing.by_cgroup.at(10).identity(), svids_["web"]);
  EXPECT_EQ(plan.routing.by_cgroup.at(11).identity(), svids_["legacy"]);
  // Serving: the workloads with ports; a client-only one has no listener.
  EXPECT_EQ(plan.routing.serving.size(), 2u);
  EXPECT_EQ(plan.routing.serving.at("web")(), svids_["web"]);
  // The other cgroups found (the root, say) are left alone.
  EXPECT_THAT(plan.not_enrolled, ElementsAre(1, 2));
  EXPECT_EQ(plan.routing.config, config_);
}

TEST_F(EnrolmentPlanTest, TheAgentsOwnCgroupIsNeverEnrolled) {
  EnrolmentPlan plan = Plan({Cgroup(0, kOwnCgroup, "ktrustd"), Cgroup(0, 10, "web")});
  EXPECT_THAT(Ids(plan), ElementsAre(10));
  ASSERT_TRUE(plan.own_cgroup_path.has_value());
  EXPECT_EQ(*plan.own_cgroup_path, "ktrustd");
  EXPECT_EQ(plan.routing.enrolled.size(), 1u);  // not listed as a workload either
  EXPECT_TRUE(plan.not_enrolled.count(kOwnCgroup));
}

TEST_F(EnrolmentPlanTest, ModeOffIsListedButClassifiedNotEnrolled) {
  EnrolmentPlan plan = Plan({Cgroup(2, 20, "batch")});
  EXPECT_THAT(plan.enrol, IsEmpty());
  ASSERT_EQ(plan.routing.enrolled.size(), 1u);
  EXPECT_EQ(plan.routing.enrolled[0].mode, WorkloadMode::kOff);
  EXPECT_THAT(plan.not_enrolled, ElementsAre(20));
  EXPECT_THAT(plan.routing.serving, IsEmpty());  // its ports are not served
  EXPECT_THAT(looked_up_, IsEmpty());            // and no SVID is issued for it
}

// Enrolled and refused rather than left out in plaintext: a cgroup with no ID,
// or one whose SVID cannot be issued, presents nothing.
TEST_F(EnrolmentPlanTest, ACgroupWithoutAnIdentityIsEnrolledAndRefused) {
  EnrolmentPlan plan = Plan({Cgroup(0, 10, "web", /*with_id=*/false)});
  EXPECT_THAT(Ids(plan), ElementsAre(10));
  EXPECT_EQ(plan.enrol[0].id, "");
  EXPECT_EQ(plan.routing.by_cgroup.at(10).identity(), nullptr);
  EXPECT_EQ(plan.routing.serving.at("web")(), nullptr);
  EXPECT_THAT(looked_up_, IsEmpty());

  refuse_issue_ = true;
  plan = Plan({Cgroup(0, 10, "web")});
  EXPECT_THAT(Ids(plan), ElementsAre(10));
  EXPECT_EQ(plan.routing.by_cgroup.at(10).identity(), nullptr);
  EXPECT_THAT(plan.not_enrolled, IsEmpty());
}

TEST_F(EnrolmentPlanTest, TheFirstCgroupWithAnIdServesTheWorkloadsPorts) {
  // Scan order: the one without an ID first, then two with one.
  EnrolmentPlan plan =
      Plan({Cgroup(0, 10, "web", false), Cgroup(0, 11, "web"), Cgroup(0, 12, "web")});
  EXPECT_THAT(Ids(plan), ElementsAre(10, 11, 12));
  EXPECT_EQ(plan.routing.serving.at("web")(), svids_["web"]);
  EXPECT_THAT(looked_up_, ElementsAre("spiffe://example.org/web", "spiffe://example.org/web"));
}

TEST_F(EnrolmentPlanTest, CgroupsInAPodNamespaceMakeOnePodToServe) {
  pods_ = {{10, 5000}, {11, 5000}, {20, 5000}};
  EnrolmentPlan plan = Plan({Cgroup(0, 10, "web"), Cgroup(3, 11, "client"), Cgroup(2, 20, "batch"),
                             Cgroup(1, 12, "legacy")});
  ASSERT_EQ(plan.pods.size(), 1u);
  EXPECT_EQ(plan.pods[0].inode, 5000u);
  ASSERT_EQ(plan.pods[0].workloads.size(), 2u);  // not batch: mode off
  EXPECT_EQ(plan.pods[0].workloads[0].name, "web");
  EXPECT_EQ(plan.pods[0].workloads[0].ports, std::vector<uint16_t>{80});
  EXPECT_EQ(plan.pods[0].workloads[1].name, "client");
  EXPECT_EQ(plan.routing.enrolled[2].pod_netns, 5000u);  // batch is listed in it
  EXPECT_EQ(plan.routing.enrolled[3].pod_netns, 0u);     // legacy is the host's
}

// A pass that saw everything removes what is gone: the routing table loses
// it, and the kernel keeps only what was found.
TEST_F(EnrolmentPlanTest, ACompleteScanUnenrolsWhatIsGone) {
  before_ = Plan({Cgroup(0, 10, "web"), Cgroup(3, 12, "client")}).routing;
  EnrolmentPlan plan = Plan({Cgroup(0, 10, "web")}, {1});
  EXPECT_TRUE(plan.complete);
  ASSERT_EQ(plan.unenrolled.size(), 1u);
  EXPECT_EQ(plan.unenrolled[0].workload, "client");
  EXPECT_EQ(plan.unenrolled[0].cgroup_id, 12u);
  EXPECT_FALSE(plan.routing.by_cgroup.count(12));
  EXPECT_THAT(plan.keep, ElementsAre(1, 10));
}

// The bug of issue 13: a scan that could not read part of the tree (EMFILE)
// was taken as complete, and every workload in that part was unenrolled.
// What the last pass routed and this one did not see stays routed, with the
// identity it had, and nothing is unenrolled.
TEST_F(EnrolmentPlanTest, AnIncompleteScanRemovesNothing) {
  pods_ = {{12, 5000}};
  before_ = Plan({Cgroup(0, 10, "web"), Cgroup(3, 12, "client")}).routing;
  pods_.clear();
  EnrolmentPlan plan = Plan({Cgroup(0, 10, "web")}, {1}, /*complete=*/false);
  EXPECT_FALSE(plan.complete);
  EXPECT_THAT(plan.unenrolled, IsEmpty());
  ASSERT_TRUE(plan.routing.by_cgroup.count(12)) << "client was unenrolled by an incomplete scan";
  EXPECT_EQ(plan.routing.by_cgroup.at(12).identity(), svids_["client"]);
  ASSERT_EQ(plan.routing.enrolled.size(), 2u);  // still listed by `ktrust workloads`
  EXPECT_EQ(plan.routing.enrolled[1].name, "client");
  EXPECT_EQ(plan.routing.enrolled[1].pod_netns, 5000u);
  EXPECT_THAT(Ids(plan), ElementsAre(10));  // only what was seen is written again
}

// A cgroup whose pod namespace could not be read (EMFILE on cgroup.procs or
// /proc) is still enrolled; its pod stays as the last pass served it.
TEST_F(EnrolmentPlanTest, APodLookupErrorMakesThePassIncomplete) {
  pods_ = {{10, 5000}, {12, 5000}};
  before_ = Plan({Cgroup(0, 10, "web"), Cgroup(3, 12, "client")}).routing;
  pod_errors_ = {12};
  EnrolmentPlan plan = Plan({Cgroup(0, 10, "web"), Cgroup(3, 12, "client")});
  EXPECT_FALSE(plan.complete);
  ASSERT_EQ(plan.incomplete.size(), 1u);
  EXPECT_THAT(plan.incomplete[0], ::testing::HasSubstr("Too many open files"));
  EXPECT_THAT(Ids(plan), ElementsAre(10, 12));
  EXPECT_EQ(plan.routing.enrolled[1].pod_netns, 5000u);  // as before, not "the host's"
  EXPECT_THAT(plan.unenrolled, IsEmpty());
}

// Issue 13 end to end, without a kernel: a real tree scanned twice, the
// second time with the fd limit reached while listing system.slice (opendir
// fails with EMFILE). The first pass enrolled web; the second must neither
// unenrol it nor let the kernel forget it.
TEST_F(EnrolmentPlanTest, EmfileWhileListingTheTreeUnenrolsNothing) {
  std::filesystem::path root = std::filesystem::path(::testing::TempDir()) /
                               ("enrolment_plan_" + std::to_string(::getpid()));
  std::filesystem::remove_all(root);
  std::filesystem::create_directories(root / "system.slice" / "web.service");
  std::filesystem::create_directories(root / "other.slice");
  config_->workloads[0].cgroup = "system.slice/web.service";
  auto first = ScanCgroupTree(*config_, root.string());
  ASSERT_TRUE(first.ok()) << first.status();
  before_ = PlanScan(*first).routing;
  ASSERT_EQ(before_.by_cgroup.size(), 1u);
  uint64_t web = before_.by_cgroup.begin()->first;

  auto at_the_fd_limit = [&](const std::string& dir) -> absl::StatusOr<std::vector<std::string>> {
    if (dir.ends_with("/system.slice")) {
      return absl::ErrnoToStatus(EMFILE, absl::StrCat("cannot list ", dir));
    }
    return ListCgroupDirectory(dir);
  };
  auto second = ScanCgroupTree(*config_, root.string(), at_the_fd_limit);
  std::filesystem::remove_all(root);
  ASSERT_TRUE(second.ok()) << second.status();
  EnrolmentPlan plan = PlanScan(*second);
  EXPECT_THAT(plan.unenrolled, IsEmpty()) << "workload_unenrolled for a cgroup that is still there";
  EXPECT_TRUE(plan.routing.by_cgroup.count(web)) << "web is no longer routed";
  // The kernel forgets what is not kept, unless the pass is incomplete.
  EXPECT_TRUE(!plan.complete || plan.keep.count(web))
      << "the kernel's entry for web would be removed";
}

}  // namespace
}  // namespace ktrust
