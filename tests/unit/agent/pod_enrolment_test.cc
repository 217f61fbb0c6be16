#include "ktrust/agent/pod_enrolment.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ktrust/agent/enrolment_plan.h"
#include "unit/test_pki.h"

namespace ktrust {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kUid[] = "0b7c1f5e-3a2d-4c8e-9f10-2b3c4d5e6f70";
constexpr char kUidSystemd[] = "0b7c1f5e_3a2d_4c8e_9f10_2b3c4d5e6f70";
constexpr char kOtherUid[] = "11111111-2222-4333-8444-555555555555";
constexpr char kOtherUidSystemd[] = "11111111_2222_4333_8444_555555555555";
constexpr char kStaticUid[] = "9a4f3c2b1d0e8f7a6b5c4d3e2f1a0b9c";
constexpr char kCid[] = "4f2a9c0d1e8b7a6f5e4d3c2b1a09f8e7d6c5b4a3928170615f4e3d2c1b0a9f8e";
constexpr char kCid2[] = "5f2a9c0d1e8b7a6f5e4d3c2b1a09f8e7d6c5b4a3928170615f4e3d2c1b0a9f8e";
constexpr uint64_t kOwnCgroup = 99;

std::string PodSlice(const std::string& uid_systemd) {
  return "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uid_systemd + ".slice";
}
std::string Container(const std::string& uid_systemd, const std::string& cid) {
  return PodSlice(uid_systemd) + "/cri-containerd-" + cid + ".scope";
}

class PodEnrolmentTest : public ::testing::Test {
 protected:
  PodEnrolmentTest() {
    config_.trust_domain = "cluster.local";
    config_.agent.node_name = "node-a";
    config_.agent.outbound_port = 15001;
    config_.kubernetes.enabled = true;
    config_.kubernetes.node_name = "node-a";
    cluster_.synced = true;
    AddNamespace("mesh", true);
    AddNamespace("plain", false);
    pods_[kUid] = Pod(kUid, "mesh", "web-0", "web");
  }

  void AddNamespace(const std::string& name, bool opted_in) {
    KubernetesNamespace ns{name, {}};
    if (opted_in) ns.labels["ktrust.io/mesh"] = "enabled";
    namespaces_[name] = ns;
  }

  static KubernetesPod Pod(const std::string& uid, const std::string& ns, const std::string& name,
                           const std::string& sa) {
    KubernetesPod pod;
    pod.uid = uid;
    pod.namespace_name = ns;
    pod.name = name;
    pod.service_account = sa;
    pod.node_name = "node-a";
    pod.phase = "Running";
    pod.ips = {"10.244.1.7", "fd00:10:244:1::7"};
    pod.ports = {{"http", 8080, "TCP"}, {"dns", 53, "UDP"}, {"metrics", 9090, "TCP"}};
    return pod;
  }

  std::vector<RegisteredWorkload> Resolve(const std::vector<ScannedCgroup>& cgroups) {
    cluster_.pods = std::make_shared<const KubernetesPodMap>(pods_);
    cluster_.namespaces = std::make_shared<const KubernetesNamespaceMap>(namespaces_);
    return ResolvePodCgroups(config_, cluster_, cgroups, kOwnCgroup, before_);
  }

  // One cgroup's answer, which must exist.
  RegisteredWorkload One(const std::string& path, uint64_t id = 10) {
    auto found = Resolve({{path, id}});
    EXPECT_EQ(found.size(), 1u) << path;
    return found.empty() ? RegisteredWorkload{} : found.front();
  }

  static void ExpectRefused(const RegisteredWorkload& r, const std::string& code,
                            const std::string& words) {
    ASSERT_TRUE(r.pod.has_value());
    EXPECT_EQ(r.pod->refusal_code, code) << r.pod->refusal;
    EXPECT_THAT(r.pod->refusal, HasSubstr(words));
    EXPECT_FALSE(r.id.has_value());
    EXPECT_THAT(r.id_problem, HasSubstr(code));
    EXPECT_THAT(r.pod->ports, IsEmpty());
  }

  Config config_;
  ClusterSnapshot cluster_;
  KubernetesPodMap pods_;
  KubernetesNamespaceMap namespaces_;
  RoutingTable before_;
};

TEST_F(PodEnrolmentTest, AnOptedInPodGetsItsIdentityAndDeclaredTcpPorts) {
  auto found = Resolve({{PodSlice(kUidSystemd), 10}, {Container(kUidSystemd, kCid), 11}});
  ASSERT_EQ(found.size(), 2u);
  for (const RegisteredWorkload& r : found) {
    ASSERT_TRUE(r.id.has_value()) << r.id_problem;
    EXPECT_EQ(r.id->ToString(), "spiffe://cluster.local/ns/mesh/sa/web");
    EXPECT_EQ(r.workload_index, kPodWorkloadIndex);
    EXPECT_EQ(r.pod->workload, "mesh/web-0");
    EXPECT_EQ(r.pod->uid, kUid);
    EXPECT_EQ(r.pod->service_account, "web");
    EXPECT_THAT(r.pod->ports, ElementsAre(8080, 9090));  // the UDP port is not enforced
    EXPECT_EQ(r.pod->refusal_code, "");
  }
  EXPECT_EQ(found[0].cgroup_id, 10u);
  EXPECT_EQ(found[1].cgroup_id, 11u);
}

TEST_F(PodEnrolmentTest, TheTemplateTakesThePodsValues) {
  config_.kubernetes.spiffe_id = "spiffe://{trust_domain}/{node}/{namespace}/{pod_name}/{pod_uid}";
  auto r = One(Container(kUidSystemd, kCid));
  ASSERT_TRUE(r.id.has_value()) << r.id_problem;
  EXPECT_EQ(r.id->ToString(), std::string("spiffe://cluster.local/node-a/mesh/web-0/") + kUid);
}

TEST_F(PodEnrolmentTest, APodOfANamespaceNotOptedInIsLeftAlone) {
  pods_[kOtherUid] = Pod(kOtherUid, "plain", "db-0", "db");
  namespaces_["mesh"].labels["ktrust.io/mesh"] = "disabled";  // the value counts too
  EXPECT_THAT(
      Resolve({{Container(kUidSystemd, kCid), 10}, {Container(kOtherUidSystemd, kCid), 11}}),
      IsEmpty());
}

TEST_F(PodEnrolmentTest, ANonPodCgroupAndTheAgentsOwnAreLeftOut) {
  EXPECT_THAT(Resolve({{"system.slice/sshd.service", 10},
                       {"kubepods.slice/kubepods-burstable.slice", 11},
                       {Container(kUidSystemd, kCid), kOwnCgroup}}),
              IsEmpty());
}

TEST_F(PodEnrolmentTest, BeforeTheFirstSyncEveryPodIsRefused) {
  cluster_.synced = false;
  // Even one the (partial) maps would resolve, or leave alone.
  pods_[kOtherUid] = Pod(kOtherUid, "plain", "db-0", "db");
  auto found =
      Resolve({{Container(kUidSystemd, kCid), 10}, {Container(kOtherUidSystemd, kCid), 11}});
  ASSERT_EQ(found.size(), 2u);
  for (const RegisteredWorkload& r : found) {
    ExpectRefused(r, "kubernetes_not_synced", "has not read this node's pods");
  }
  EXPECT_EQ(found[0].pod->workload, std::string("pod:") + kUid);
}

TEST_F(PodEnrolmentTest, UnresolvableCgroupsAreRefusedWithTheirReason) {
  ExpectRefused(One(Container(kOtherUidSystemd, kCid)), "pod_unknown",
                "is not among this node's pods");
  // A pod that names another pod below its own.
  ExpectRefused(One(Container(kUidSystemd, kCid) + "/kubepods-pod" + kOtherUidSystemd + ".slice"),
                "pod_cgroup_invalid", "names two pods");
  ExpectRefused(One(PodSlice(kUidSystemd) + "/other.scope"), "pod_cgroup_invalid",
                "cannot be trusted to name one pod");
}

TEST_F(PodEnrolmentTest, ConflictingAnswersAreRefused) {
  pods_[kUid].node_name = "node-b";
  ExpectRefused(One(Container(kUidSystemd, kCid)), "pod_other_node", "node-b");
  pods_[kUid].node_name = "node-a";
  pods_[kUid].host_network = true;
  ExpectRefused(One(Container(kUidSystemd, kCid)), "pod_host_network", "hostNetwork");
  pods_[kUid].host_network = false;
  namespaces_.erase("mesh");
  ExpectRefused(One(Container(kUidSystemd, kCid)), "namespace_unknown", "not known");
  AddNamespace("mesh", true);
}

// Anyone who may create a pod can name another pod's UID in the mirror
// annotation: two answers, neither trusted, and the ports of the pod whose
// own UID it is stay enforced (refusing), never opened to plaintext.
TEST_F(PodEnrolmentTest, APodClaimingAnothersUidTakesNoIdentityAndOpensNoPort) {
  KubernetesPod mirror = Pod(kOtherUid, "mesh", "imposter", "admin");
  mirror.annotations[kMirrorPodAnnotation] = kUid;
  mirror.annotations["ktrust.io/inbound-ports"] = "none";
  pods_[kOtherUid] = mirror;
  auto r = One(Container(kUidSystemd, kCid));
  ASSERT_TRUE(r.pod.has_value());
  EXPECT_EQ(r.pod->refusal_code, "pod_uid_conflict") << r.pod->refusal;
  EXPECT_THAT(r.pod->refusal, HasSubstr("claimed by 2 pods"));
  EXPECT_THAT(r.pod->refusal, HasSubstr("mesh/imposter"));
  EXPECT_FALSE(r.id.has_value());
  EXPECT_THAT(r.pod->ports, ElementsAre(8080, 9090)) << "the victim's declared ports";
  // Its own ports annotation too.
  pods_[kUid].annotations["ktrust.io/inbound-ports"] = "7000-7001";
  EXPECT_THAT(One(Container(kUidSystemd, kCid)).pod->ports, ElementsAre(7000, 7001));
}

// A static pod's UID is kubelet's, claimed only by annotations: a second
// claim leaves the ports its mirror pod had enforced, refusing.
TEST_F(PodEnrolmentTest, AStaticPodWhoseUidASecondPodClaimsKeepsItsPorts) {
  KubernetesPod mirror = Pod(kOtherUid, "mesh", "etcd-node-a", "default");
  mirror.annotations[kMirrorPodAnnotation] = kStaticUid;
  pods_[kOtherUid] = mirror;
  std::string cgroup = std::string("kubepods/burstable/pod") + kStaticUid + "/" + kCid;
  auto was = One(cgroup);
  ASSERT_TRUE(was.id.has_value()) << was.id_problem;
  before_.enrolled.push_back({was, was.pod->workload, WorkloadMode::kEnforce, was.pod->ports});
  KubernetesPod imposter = Pod(kUid, "mesh", "imposter", "admin");
  imposter.annotations[kMirrorPodAnnotation] = kStaticUid;
  pods_[kUid] = imposter;
  auto r = One(cgroup);
  ASSERT_TRUE(r.pod.has_value());
  EXPECT_EQ(r.pod->refusal_code, "pod_uid_conflict") << r.pod->refusal;
  EXPECT_FALSE(r.id.has_value());
  EXPECT_THAT(r.pod->ports, ElementsAre(8080, 9090)) << "what the last pass enforced";
}

TEST_F(PodEnrolmentTest, AStaticPodIsMatchedThroughItsMirrorPod) {
  // kubelet's UID for a static pod is its manifest's md5; the API server's
  // mirror pod has its own UID and names kubelet's in the annotation.
  KubernetesPod mirror = Pod(kOtherUid, "mesh", "etcd-node-a", "default");
  mirror.annotations[kMirrorPodAnnotation] = kStaticUid;
  pods_[kOtherUid] = mirror;
  auto r = One(std::string("kubepods/burstable/pod") + kStaticUid + "/" + kCid);
  ASSERT_TRUE(r.id.has_value()) << r.id_problem;
  EXPECT_EQ(r.id->ToString(), "spiffe://cluster.local/ns/mesh/sa/default");
  EXPECT_EQ(r.pod->uid, kStaticUid);  // what the cgroup names
  EXPECT_EQ(r.pod->workload, "mesh/etcd-node-a");
  // Without the annotation nothing claims kubelet's UID.
  pods_[kOtherUid].annotations.clear();
  ExpectRefused(One(std::string("kubepods/burstable/pod") + kStaticUid + "/" + kCid), "pod_unknown",
                kStaticUid);
}

TEST_F(PodEnrolmentTest, ThePortsAnnotationReplacesTheDeclaredPorts) {
  config_.kubernetes.ports_annotation = "example.com/ports";
  pods_[kUid].annotations["example.com/ports"] = "7000, 7100-7102";
  auto r = One(Container(kUidSystemd, kCid));
  EXPECT_THAT(r.pod->ports, ElementsAre(7000, 7100, 7101, 7102));
  pods_[kUid].annotations["example.com/ports"] = "none";
  EXPECT_THAT(One(Container(kUidSystemd, kCid)).pod->ports, IsEmpty());
  // Unreadable: refused, not enforced on fewer ports than meant.
  pods_[kUid].annotations["example.com/ports"] = "80,http";
  ExpectRefused(One(Container(kUidSystemd, kCid)), "pod_ports_invalid", "\"http\" is not a port");
  pods_[kUid].annotations["example.com/ports"] = "15001";
  ExpectRefused(One(Container(kUidSystemd, kCid)), "pod_ports_invalid", "agent.outbound_port");
}

TEST_F(PodEnrolmentTest, AnIdTheTemplateCannotMakeIsRefused) {
  pods_[kUid].service_account = "";  // the server gave none
  ExpectRefused(One(Container(kUidSystemd, kCid)), "pod_id_invalid", "{service_account}");
}

TEST_F(PodEnrolmentTest, ADeletedPodWhoseCgroupRemainsKeepsItsPortsRefused) {
  auto was = One(Container(kUidSystemd, kCid));
  ASSERT_TRUE(was.id.has_value());
  before_.enrolled.push_back({was, was.pod->workload, WorkloadMode::kEnforce, was.pod->ports});
  pods_.erase(kUid);
  auto r = One(Container(kUidSystemd, kCid));
  ASSERT_TRUE(r.pod.has_value());
  EXPECT_EQ(r.pod->refusal_code, "pod_deleted");
  EXPECT_FALSE(r.id.has_value());
  EXPECT_EQ(r.pod->workload, "mesh/web-0");
  EXPECT_THAT(r.pod->ports, ElementsAre(8080, 9090));  // still enforced, refusing
  // A cgroup the last pass did not resolve is merely unknown.
  ExpectRefused(One(Container(kUidSystemd, kCid2), 12), "pod_unknown", kUid);
}

TEST_F(PodEnrolmentTest, ANetnsIsThePodsOnlyIfItHoldsAPodIp) {
  auto ok = One(Container(kUidSystemd, kCid));
  CheckPodNetns(ok, {false, {"fd00:10:244:1::7"}});
  EXPECT_TRUE(ok.id.has_value()) << ok.id_problem;

  auto elsewhere = One(Container(kUidSystemd, kCid));
  CheckPodNetns(elsewhere, {false, {"10.244.1.8"}});
  ExpectRefused(elsewhere, "pod_netns_mismatch", "holds none of pod mesh/web-0's IPs");

  auto node = One(Container(kUidSystemd, kCid));
  CheckPodNetns(node, {true, {}});
  ExpectRefused(node, "pod_netns_mismatch", "node's network namespace");

  pods_[kUid].ips.clear();
  auto no_ip = One(Container(kUidSystemd, kCid));
  CheckPodNetns(no_ip, {false, {"10.244.1.7"}});
  ExpectRefused(no_ip, "pod_ip_unknown", "status.podIPs");
}

// A namespace whose addresses (or whose cgroup's processes) could not be
// read this pass (EMFILE, ENOMEM) is not shown to be the pod's: the pod is
// refused, and its ports stay enforced, refusing. Clearing them, as a
// refusal does, removed the pod's sk_lookup rules: its ports took
// plaintext until the next pass read the namespace.
TEST_F(PodEnrolmentTest, ANetnsThatCannotBeReadRefusesThePodAndKeepsItsPorts) {
  auto unreadable = One(Container(kUidSystemd, kCid));
  ASSERT_THAT(unreadable.pod->ports, ElementsAre(8080, 9090));
  CheckPodNetns(unreadable, {false, {}, absl::ResourceExhaustedError("Too many open files")});
  ASSERT_TRUE(unreadable.pod.has_value());
  EXPECT_EQ(unreadable.pod->refusal_code, "pod_netns_mismatch");
  EXPECT_THAT(unreadable.pod->refusal, HasSubstr("Too many open files"));
  EXPECT_FALSE(unreadable.id.has_value());
  EXPECT_THAT(unreadable.pod->ports, ElementsAre(8080, 9090));

  // Deleted while refused so: its ports stay enforced until the cgroup goes.
  before_.enrolled.push_back(
      {unreadable, unreadable.pod->workload, WorkloadMode::kEnforce, unreadable.pod->ports});
  pods_.erase(kUid);
  auto deleted = One(Container(kUidSystemd, kCid));
  ASSERT_TRUE(deleted.pod.has_value());
  EXPECT_EQ(deleted.pod->refusal_code, "pod_deleted");
  EXPECT_THAT(deleted.pod->ports, ElementsAre(8080, 9090));
}

TEST(ParsePortsAnnotationTest, PortsAndRangesOrAnError) {
  EXPECT_THAT(*ParsePortsAnnotation("8080"), ElementsAre(8080));
  EXPECT_THAT(*ParsePortsAnnotation(" 9000-9002 , 80,80 "), ElementsAre(80, 9000, 9001, 9002));
  EXPECT_THAT(*ParsePortsAnnotation(""), IsEmpty());
  EXPECT_THAT(*ParsePortsAnnotation("none"), IsEmpty());
  for (const char* bad :
       {"0", "65536", "80,", "http", "9002-9000", "-80", "80-", "1-65535", "+80", "8080 9090"}) {
    EXPECT_FALSE(ParsePortsAnnotation(bad).ok()) << bad;
  }
  EXPECT_THAT(ParsePortsAnnotation("1-65535").status().message(), HasSubstr("more than 64"));
}

// The pods' cgroups planned with the configured workloads': one workload per
// pod, refused ones enrolled with the route's refusal.
TEST_F(PodEnrolmentTest, PlannedPodsAreEnrolledServedOnceAndRefusedWithWords) {
  pods_[kOtherUid] = Pod(kOtherUid, "mesh", "api-0", "api");
  auto found = Resolve({{Container(kUidSystemd, kCid), 10},
                        {Container(kUidSystemd, kCid2), 11},
                        {Container("22222222_2222_4333_8444_555555555555", kCid), 12}});
  ASSERT_EQ(found.size(), 3u);
  CgroupScan scan;
  scan.found = found;
  scan.every_cgroup = {1, 10, 11, 12};
  auto root = testing::MintRoot("cluster.local");
  auto svid = std::make_shared<const Svid>(
      testing::MintSvid({.uri_sans = {"spiffe://cluster.local/ns/mesh/sa/web"}}, root));
  auto shared = std::make_shared<const Config>(config_);
  EnrolmentPlan plan = PlanEnrolment(
      config_, shared, scan, before_, kOwnCgroup,
      [&](const SpiffeId&, const std::string&) -> absl::StatusOr<SvidProvider> {
        return SvidProvider([svid] { return svid; });
      },
      [](const RegisteredWorkload& r) -> absl::StatusOr<std::optional<PodNetns>> {
        // Both containers of web-0 share its namespace; the unknown pod has its own.
        return PodNetns{r.cgroup_id == 12 ? 501u : 500u, "/proc/1/ns/net", {}};
      });
  ASSERT_EQ(plan.enrol.size(), 3u);
  EXPECT_EQ(plan.routing.by_cgroup.at(10).name, "mesh/web-0");
  EXPECT_EQ(plan.routing.by_cgroup.at(10).refusal, "");
  EXPECT_EQ(plan.routing.by_cgroup.at(10).identity(), svid);
  EXPECT_THAT(plan.routing.by_cgroup.at(12).refusal,
              HasSubstr("pod_unknown (pod:22222222-2222-4333-8444-555555555555): pod 22222222"));
  EXPECT_EQ(plan.routing.by_cgroup.at(12).identity(), nullptr);
  ASSERT_EQ(plan.pods.size(), 2u);
  ASSERT_EQ(plan.pods[0].workloads.size(), 1u);  // two containers, one workload
  EXPECT_EQ(plan.pods[0].workloads[0].name, "mesh/web-0");
  EXPECT_THAT(plan.pods[0].workloads[0].ports, ElementsAre(8080, 9090));
  ASSERT_EQ(plan.pods[1].workloads.size(), 1u);  // served, so its refusals have words
  EXPECT_THAT(plan.pods[1].workloads[0].ports, IsEmpty());
  EXPECT_TRUE(plan.routing.serving.count("mesh/web-0"));
  EXPECT_THAT(plan.not_enrolled, ElementsAre(1u));
}

}  // namespace
}  // namespace ktrust
