// ClusterWatcher against a fake API server replaying recorded objects
// (fake_api_server.h, tests/testdata/kubernetes): over real HTTPS on
// 127.0.0.1, with the token and CA in files as a pod has them.
#include "ktrust/kubernetes/cluster_watcher.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>

#include <filesystem>
#include <sstream>

#include "ktrust/common/files.h"
#include "ktrust/identity/x509.h"
#include "unit/kubernetes/fake_api_server.h"
#include "unit/kubernetes/testdata.h"
#include "unit/test_pki.h"

namespace ktrust {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using testing::FakeApiServer;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::RecordedItem;

// Generous: the tests wait for conditions, never for time; this only bounds
// a failure.
constexpr absl::Duration kDeadline = absl::Seconds(20);
constexpr std::chrono::seconds kServerDeadline(20);

std::vector<std::string> Keys(const auto& map) {
  std::vector<std::string> keys;
  for (const auto& [key, value] : map) keys.push_back(key);
  return keys;
}

class ClusterWatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir_template[] = "/tmp/ktrust-k8s-watch-XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
    root_ = testing::MintRoot("cluster.local");
    testing::CertSpec spec;
    spec.common_name = "kube-apiserver";
    spec.ip_sans = {"127.0.0.1"};
    spec.extended_key_usage = "serverAuth";
    server_identity_ = testing::Mint(spec, &root_);
    ASSERT_TRUE(WriteFileAtomically(dir_ + "/ca.crt", ToPem(root_.cert.get()), 0644).ok());
    WriteToken("good-token");
    server_ = std::make_unique<FakeApiServer>(server_identity_, "good-token");

    blog_ = RecordedItem(testing::kSpirePods, testing::kBlogPod);
    registry_ = RecordedItem(testing::kSpirePods, testing::kRegistryProxyPod);
    flannel_ = RecordedItem(testing::kSpirePods, testing::kFlannelPod);
    server_->SetObjects("pods", {blog_, registry_});
    server_->SetObjects("namespaces", testing::LoadRecorded(testing::kNamespaces)["items"]);

    previous_logger_ = spdlog::default_logger();
    auto logger = std::make_shared<spdlog::logger>(
        "capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(log_));
    logger->set_pattern("%l %v");
    spdlog::set_default_logger(logger);
  }

  void TearDown() override {
    watcher_.reset();
    server_.reset();
    spdlog::set_default_logger(previous_logger_);
    std::filesystem::remove_all(dir_);
  }

  void WriteToken(const std::string& token) {
    ASSERT_TRUE(WriteFileAtomically(dir_ + "/token", token + "\n", 0600).ok());
  }

  KubernetesApiOptions Options() const {
    KubernetesApiOptions options;
    options.host = "127.0.0.1";
    options.port = static_cast<uint16_t>(server_->port());
    options.token_file = dir_ + "/token";
    options.ca_file = dir_ + "/ca.crt";
    options.node_name = testing::kRecordedNode;
    options.watch_timeout = absl::Seconds(60);
    options.backoff_initial = absl::Milliseconds(10);
    options.backoff_max = absl::Milliseconds(100);
    options.backoff_jitter = 0;
    return options;
  }

  void Start(KubernetesApiOptions options) {
    auto watcher = ClusterWatcher::Create(std::move(options), [this](const auto& snapshot) {
      std::lock_guard<std::mutex> lock(callback_mu_);
      delivered_.push_back(snapshot->generation);
    });
    ASSERT_TRUE(watcher.ok()) << watcher.status();
    watcher_ = *std::move(watcher);
    watcher_->Start();
  }

  bool WaitFor(const std::function<bool(const ClusterWatcherStatus&)>& condition) {
    return watcher_->WaitUntil(condition, kDeadline);
  }
  bool WaitForSync() {
    return WaitFor([](const ClusterWatcherStatus& s) { return s.synced; });
  }
  bool WaitForPodsAt(const std::string& version) {
    return WaitFor(
        [&](const ClusterWatcherStatus& s) { return s.pods.resource_version == version; });
  }
  // Requests for the pods, watches or lists.
  static std::vector<FakeApiServer::Request> PodRequests(
      const std::vector<FakeApiServer::Request>& all, bool watches) {
    std::vector<FakeApiServer::Request> out;
    for (const auto& r : all) {
      if (r.path == "/api/v1/pods" && r.watch() == watches) out.push_back(r);
    }
    return out;
  }
  bool WaitForPodWatches(size_t count) {
    return server_->WaitForRequests(
        [&](const auto& all) { return PodRequests(all, true).size() >= count; }, kServerDeadline);
  }
  std::string Log() {
    watcher_->Stop();  // no thread writes to the log any more
    return log_.str();
  }

  std::string dir_;
  testing::KeyAndCert root_;
  testing::KeyAndCert server_identity_;
  std::unique_ptr<FakeApiServer> server_;
  std::unique_ptr<ClusterWatcher> watcher_;
  json blog_, registry_, flannel_;
  std::ostringstream log_;
  std::shared_ptr<spdlog::logger> previous_logger_;
  std::mutex callback_mu_;
  std::vector<uint64_t> delivered_;
};

TEST_F(ClusterWatcherTest, ListsThenWatchesThisNodesPodsAndTheNamespaces) {
  Start(Options());
  ASSERT_TRUE(WaitForSync()) << watcher_->Status().pods.last_error;
  auto snapshot = watcher_->Snapshot();
  EXPECT_TRUE(snapshot->synced);
  EXPECT_THAT(Keys(*snapshot->pods),
              ElementsAre(testing::kBlogPodUid, "d48d002f-b2a0-11e7-9350-020968147796"));
  const KubernetesPod* blog = snapshot->FindPod(testing::kBlogPodUid);
  ASSERT_NE(blog, nullptr);
  EXPECT_EQ(blog->namespace_name, "default");
  EXPECT_EQ(blog->service_account, "default");
  EXPECT_THAT(blog->ips, ElementsAre("10.244.1.3"));
  ASSERT_NE(snapshot->FindNamespace("kube-system"), nullptr);
  EXPECT_EQ(snapshot->FindNamespace("kube-system")->labels.at("kubernetes.io/metadata.name"),
            "kube-system");
  EXPECT_EQ(snapshot->namespaces->size(), 4u);

  // What the server was asked: this node's pods, then a watch from the list.
  ASSERT_TRUE(WaitForPodWatches(1));
  auto requests = server_->Requests();
  auto lists = PodRequests(requests, false);
  ASSERT_EQ(lists.size(), 1u);
  EXPECT_EQ(lists[0].param("fieldSelector"), "spec.nodeName=k8s-node-1");
  EXPECT_EQ(lists[0].param("limit"), "500");
  EXPECT_EQ(lists[0].authorization, "Bearer good-token");
  auto watch = PodRequests(requests, true).at(0);
  EXPECT_EQ(watch.param("watch"), "1");
  EXPECT_EQ(watch.param("allowWatchBookmarks"), "true");
  EXPECT_EQ(watch.param("fieldSelector"), "spec.nodeName=k8s-node-1");
  EXPECT_EQ(watch.param("resourceVersion"), watcher_->Status().pods.resource_version);
  int timeout = std::stoi(watch.param("timeoutSeconds"));
  EXPECT_GE(timeout, 60);
  EXPECT_LT(timeout, 120);

  // ADDED, MODIFIED, DELETED.
  const uint64_t synced_generation = snapshot->generation;
  ASSERT_TRUE(WaitForPodsAt(server_->Add("pods", flannel_)));
  EXPECT_NE(watcher_->Snapshot()->FindPod("d488cae9-b2a0-11e7-9350-020968147796"), nullptr);
  EXPECT_TRUE(watcher_->Snapshot()->FindPod("d488cae9-b2a0-11e7-9350-020968147796")->host_network);
  json terminating = blog_;
  terminating["metadata"]["deletionTimestamp"] = "2017-10-16T23:30:00Z";  // the change
  ASSERT_TRUE(WaitForPodsAt(server_->Modify("pods", terminating)));
  EXPECT_TRUE(watcher_->Snapshot()->FindPod(testing::kBlogPodUid)->deleting);
  ASSERT_TRUE(WaitForPodsAt(server_->Delete("pods", testing::kBlogPodUid)));
  snapshot = watcher_->Snapshot();
  EXPECT_EQ(snapshot->FindPod(testing::kBlogPodUid), nullptr);
  EXPECT_EQ(snapshot->pods->size(), 2u);
  EXPECT_EQ(snapshot->generation, synced_generation + 3);

  // The callback saw every change, in order, ending with the snapshot held.
  watcher_->Stop();
  std::lock_guard<std::mutex> lock(callback_mu_);
  ASSERT_FALSE(delivered_.empty());
  EXPECT_TRUE(std::is_sorted(delivered_.begin(), delivered_.end()));
  EXPECT_EQ(delivered_.back(), snapshot->generation);
}

TEST_F(ClusterWatcherTest, NotSyncedUntilBothListsAreComplete) {
  server_->HoldLists("namespaces");
  Start(Options());
  ASSERT_TRUE(WaitFor([](const ClusterWatcherStatus& s) { return s.pods.listed; }));
  auto before = watcher_->Snapshot();
  EXPECT_FALSE(before->synced);
  EXPECT_FALSE(watcher_->Status().synced);
  EXPECT_EQ(before->pods->size(), 2u);  // read, but not yet to be trusted
  server_->ReleaseLists();
  ASSERT_TRUE(WaitForSync());
  EXPECT_TRUE(watcher_->Snapshot()->synced);
  EXPECT_GT(watcher_->Snapshot()->generation, before->generation);
}

TEST_F(ClusterWatcherTest, BookmarkMovesTheResourceVersionOnAndTheNextWatchStartsThere) {
  Start(Options());
  ASSERT_TRUE(WaitForSync());
  const uint64_t generation = watcher_->Snapshot()->generation;
  const std::string bookmark = server_->Bookmark("pods");
  ASSERT_TRUE(WaitForPodsAt(bookmark));
  EXPECT_EQ(watcher_->Snapshot()->generation, generation);  // no object changed
  server_->EndWatch("pods");                                // the watch's timeout
  ASSERT_TRUE(WaitForPodWatches(2));
  EXPECT_EQ(PodRequests(server_->Requests(), true).at(1).param("resourceVersion"), bookmark);
  EXPECT_EQ(PodRequests(server_->Requests(), false).size(), 1u);  // resumed, not listed again
}

TEST_F(ClusterWatcherTest, ADroppedConnectionResumesFromTheLastResourceVersion) {
  Start(Options());
  ASSERT_TRUE(WaitForSync());
  const std::string added = server_->Add("pods", flannel_);
  ASSERT_TRUE(WaitForPodsAt(added));
  server_->DropWatch("pods");
  ASSERT_TRUE(WaitForPodWatches(2));
  EXPECT_EQ(PodRequests(server_->Requests(), true).at(1).param("resourceVersion"), added);
  EXPECT_EQ(PodRequests(server_->Requests(), false).size(), 1u);
  // The new stream works, and the state was kept across the gap.
  ASSERT_TRUE(WaitForPodsAt(server_->Delete("pods", testing::kBlogPodUid)));
  auto snapshot = watcher_->Snapshot();
  EXPECT_TRUE(snapshot->synced);
  EXPECT_EQ(snapshot->pods->size(), 2u);
  EXPECT_NE(snapshot->FindPod("d488cae9-b2a0-11e7-9350-020968147796"), nullptr);
  EXPECT_THAT(Log(), HasSubstr("connection closed"));
}

TEST_F(ClusterWatcherTest, GoneMeansListAgainAndTheNewListReplacesTheState) {
  Start(Options());
  ASSERT_TRUE(WaitForSync());
  // Meanwhile, unseen by the watch: the blog pod went, flannel came.
  server_->SetObjects("pods", {registry_, flannel_});
  server_->SendExpired("pods");  // ERROR event, Status 410
  ASSERT_TRUE(WaitFor([](const ClusterWatcherStatus& s) { return s.pods.lists == 2; }));
  ASSERT_TRUE(WaitForPodWatches(2));
  auto snapshot = watcher_->Snapshot();
  EXPECT_TRUE(snapshot->synced);
  EXPECT_THAT(Keys(*snapshot->pods), ElementsAre("d488cae9-b2a0-11e7-9350-020968147796",
                                                 "d48d002f-b2a0-11e7-9350-020968147796"));
  EXPECT_EQ(snapshot->FindPod(testing::kBlogPodUid), nullptr);

  // The same as an HTTP 410 to the next watch.
  server_->SetObjects("pods", {blog_});
  server_->FailRequests("pods", /*watches=*/true, 410, 1);
  server_->EndWatch("pods");
  ASSERT_TRUE(WaitFor([](const ClusterWatcherStatus& s) { return s.pods.lists == 3; })) << Log();
  EXPECT_THAT(Keys(*watcher_->Snapshot()->pods), ElementsAre(testing::kBlogPodUid));
  // And the watch after the list starts from the new list's version.
  ASSERT_TRUE(WaitForPodWatches(4));
  EXPECT_EQ(PodRequests(server_->Requests(), true).at(3).param("resourceVersion"),
            watcher_->Status().pods.resource_version);
  EXPECT_THAT(Log(), HasSubstr("kubernetes_watch_expired"));
}

TEST_F(ClusterWatcherTest, AnApiServerNotSignedByTheCaIsRefusedAndNeverSynced) {
  testing::KeyAndCert other_root = testing::MintRoot("other.example");
  ASSERT_TRUE(WriteFileAtomically(dir_ + "/ca.crt", ToPem(other_root.cert.get()), 0644).ok());
  Start(Options());
  ASSERT_TRUE(WaitFor([](const ClusterWatcherStatus& s) {
    return s.pods.consecutive_failures >= 2 && s.namespaces.consecutive_failures >= 2;
  }));
  ClusterWatcherStatus status = watcher_->Status();
  EXPECT_FALSE(status.synced);
  EXPECT_FALSE(watcher_->Snapshot()->synced);
  EXPECT_TRUE(watcher_->Snapshot()->pods->empty());
  EXPECT_THAT(status.pods.last_error, HasSubstr("the API server's certificate was refused"));
  EXPECT_THAT(status.pods.last_error, HasSubstr("unable to get local issuer certificate"));
  EXPECT_THAT(status.pods.last_error, HasSubstr(dir_ + "/ca.crt"));
  // No request reached it: the token was never sent to the impostor.
  EXPECT_TRUE(server_->Requests().empty());
}

TEST_F(ClusterWatcherTest, AServerCertificateForAnotherAddressIsRefused) {
  testing::CertSpec spec;
  spec.ip_sans = {"127.0.0.2"};
  spec.extended_key_usage = "serverAuth";
  testing::KeyAndCert elsewhere = testing::Mint(spec, &root_);
  server_ = std::make_unique<FakeApiServer>(elsewhere, "good-token");
  Start(Options());
  ASSERT_TRUE(
      WaitFor([](const ClusterWatcherStatus& s) { return s.pods.consecutive_failures >= 1; }));
  EXPECT_FALSE(watcher_->Status().synced);
  EXPECT_THAT(watcher_->Status().pods.last_error, HasSubstr("does not name 127.0.0.1"));
  EXPECT_TRUE(server_->Requests().empty());
}

TEST_F(ClusterWatcherTest, ARefusedTokenBacksOffAndTheRotatedTokenIsReadAtTheNextAttempt) {
  WriteToken("stale-token");
  Start(Options());
  ClusterWatcherStatus status;
  ASSERT_TRUE(WaitFor([&](const ClusterWatcherStatus& s) {
    status = s;
    return s.pods.consecutive_failures >= 4;
  }));
  EXPECT_FALSE(status.synced);
  EXPECT_THAT(status.pods.last_error, HasSubstr("HTTP 401 Unauthorized"));
  // The wait doubled per failure (no jitter here): 10, 20, 40, 80, then 100 ms.
  absl::Duration expected = absl::Milliseconds(10);
  for (int i = 1; i < status.pods.consecutive_failures; ++i) expected *= 2;
  EXPECT_EQ(status.pods.last_backoff, std::min(expected, absl::Milliseconds(100)));
  EXPECT_GE(status.pods.last_backoff, absl::Milliseconds(80));

  WriteToken("good-token");  // the kubelet rotated it
  ASSERT_TRUE(WaitForSync()) << watcher_->Status().pods.last_error;
  EXPECT_TRUE(watcher_->Status().pods.last_error.empty());
  auto lists = PodRequests(server_->Requests(), false);
  EXPECT_EQ(lists.front().authorization, "Bearer stale-token");
  EXPECT_EQ(lists.back().authorization, "Bearer good-token");
}

TEST_F(ClusterWatcherTest, MalformedEventsAreSkippedWithAReason) {
  Start(Options());
  ASSERT_TRUE(WaitForSync());
  server_->SendLine("pods", R"({"type":"ADDED","object":{"kind":"Pod")");  // cut short
  json broken = blog_;
  // The change under test: a port written as a string.
  broken["spec"]["containers"][0]["ports"][0]["containerPort"] = "3306";
  broken["metadata"].erase("resourceVersion");
  broken["kind"] = "Pod";
  broken["apiVersion"] = "v1";
  server_->SendLine("pods", json{{"type", "MODIFIED"}, {"object", broken}}.dump());
  ASSERT_TRUE(WaitForPodsAt(server_->Add("pods", flannel_)));
  ClusterWatcherStatus status = watcher_->Status();
  EXPECT_EQ(status.pods.skipped, 2u);
  EXPECT_TRUE(status.synced);
  auto snapshot = watcher_->Snapshot();
  // The pod whose new state could not be read is dropped, not kept stale.
  EXPECT_EQ(snapshot->FindPod(testing::kBlogPodUid), nullptr);
  EXPECT_NE(snapshot->FindPod("d488cae9-b2a0-11e7-9350-020968147796"), nullptr);
  std::string log = Log();
  EXPECT_THAT(
      log,
      HasSubstr(R"("event":"kubernetes_object_skipped","resource":"pods","what":"watch event")"));
  EXPECT_THAT(log, HasSubstr("watch event is not JSON"));
  EXPECT_THAT(log, HasSubstr("spec.containers[0].ports[0].containerPort is not a port number"));
}

TEST_F(ClusterWatcherTest, AListThatCannotBeReadDoesNotCountAsSynced) {
  // Cut short, until the test says otherwise.
  server_->ServeListBody("namespaces", R"({"kind":"NamespaceList","apiVersion":"v1","metadata":{)",
                         1000000);
  Start(Options());
  ASSERT_TRUE(WaitFor([](const ClusterWatcherStatus& s) {
    return s.namespaces.consecutive_failures >= 2 && s.pods.listed;
  }));
  EXPECT_FALSE(watcher_->Status().synced);
  EXPECT_FALSE(watcher_->Snapshot()->synced);
  EXPECT_THAT(watcher_->Status().namespaces.last_error, HasSubstr("not JSON"));
  server_->ServeListBody("namespaces", "", 0);
  ASSERT_TRUE(WaitForSync());
  EXPECT_EQ(watcher_->Snapshot()->namespaces->size(), 4u);
}

TEST_F(ClusterWatcherTest, PagedListsAreReadToTheEnd) {
  KubernetesApiOptions options = Options();
  options.list_page_size = 1;
  Start(options);
  ASSERT_TRUE(WaitForSync());
  EXPECT_EQ(watcher_->Snapshot()->namespaces->size(), 4u);
  int pages = 0;
  for (const auto& r : server_->Requests()) {
    if (r.path == "/api/v1/namespaces" && !r.watch()) ++pages;
  }
  EXPECT_EQ(pages, 4);
}

TEST_F(ClusterWatcherTest, MorePodsThanTheLimitAreRefusedNotTruncated) {
  KubernetesApiOptions options = Options();
  options.max_pods = 1;
  Start(options);
  // Two pods listed, one allowed: the list is refused, never half-kept.
  ASSERT_TRUE(
      WaitFor([](const ClusterWatcherStatus& s) { return s.pods.consecutive_failures >= 1; }));
  EXPECT_THAT(watcher_->Status().pods.last_error, HasSubstr("more than 1"));
  EXPECT_FALSE(watcher_->Status().synced);
  EXPECT_TRUE(watcher_->Snapshot()->pods->empty());
  server_->SetObjects("pods", {blog_});
  ASSERT_TRUE(WaitForSync());
  EXPECT_EQ(watcher_->Snapshot()->pods->size(), 1u);
}

TEST_F(ClusterWatcherTest, AnEventOverTheLimitIsRefusedAndItsObjectReadByAList) {
  KubernetesApiOptions options = Options();
  options.max_event_bytes = 16 << 10;
  Start(options);
  ASSERT_TRUE(WaitForSync());
  json big = flannel_;
  big["metadata"]["annotations"]["padding"] = std::string(32 << 10, 'x');  // the change under test
  server_->Add("pods", big);
  ASSERT_TRUE(WaitFor([](const ClusterWatcherStatus& s) { return s.pods.lists >= 2; }));
  EXPECT_NE(watcher_->Snapshot()->FindPod("d488cae9-b2a0-11e7-9350-020968147796"), nullptr);
  EXPECT_THAT(Log(), HasSubstr("an event longer than 16384 bytes"));
}

TEST_F(ClusterWatcherTest, AnotherNodesPodIsNotBelieved) {
  server_->SetObjects("pods", {blog_, RecordedItem(testing::kMinikubePods, "queue-l4dv8")});
  Start(Options());
  ASSERT_TRUE(WaitForSync());
  EXPECT_THAT(Keys(*watcher_->Snapshot()->pods), ElementsAre(testing::kBlogPodUid));
  EXPECT_EQ(watcher_->Status().pods.skipped, 1u);
  EXPECT_THAT(Log(), HasSubstr(R"(pod is on node \"minikube\", not on this node \"k8s-node-1\")"));
}

}  // namespace
}  // namespace ktrust
