#include "ktrust/kubernetes/api_objects.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "unit/kubernetes/testdata.h"
#include "unit/test_pki.h"

namespace ktrust {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;
using testing::RecordedItem;
using ::testing::UnorderedElementsAre;

constexpr size_t kMaxBytes = 512 << 10;

TEST(ParsePodTest, ReadsWhatTheAgentUsesFromARecordedPod) {
  auto pod = ParsePod(RecordedItem(testing::kSpirePods, testing::kBlogPod), kMaxBytes);
  ASSERT_TRUE(pod.ok()) << pod.status();
  EXPECT_EQ(pod->uid, testing::kBlogPodUid);
  EXPECT_EQ(pod->name, "blog-24ck7");
  EXPECT_EQ(pod->namespace_name, "default");
  EXPECT_EQ(pod->service_account, "default");
  EXPECT_EQ(pod->node_name, "k8s-node-1");
  EXPECT_EQ(pod->phase, "Running");
  // A 1.7 server says status.podIP only.
  EXPECT_THAT(pod->ips, ElementsAre("10.244.1.3"));
  EXPECT_FALSE(pod->host_network);
  EXPECT_FALSE(pod->deleting);
  EXPECT_THAT(pod->labels, UnorderedElementsAre(Pair("k8s-app", "blog"), Pair("version", "v0")));
  EXPECT_THAT(pod->annotations, ::testing::Contains(Pair("kubernetes.io/config.source", "api")));
  EXPECT_THAT(pod->ports, ElementsAre(KubernetesContainerPort{"ghostunnel", 3306, "TCP"},
                                      KubernetesContainerPort{"blog", 8080, "TCP"}));
}

TEST(ParsePodTest, HostNetworkPodAndItsHostPort) {
  auto pod = ParsePod(RecordedItem(testing::kSpirePods, testing::kRegistryProxyPod), kMaxBytes);
  ASSERT_TRUE(pod.ok()) << pod.status();
  EXPECT_TRUE(pod->host_network);
  EXPECT_EQ(pod->namespace_name, "kube-system");
  EXPECT_THAT(pod->ports, ElementsAre(KubernetesContainerPort{"registry", 80, "TCP"}));
}

TEST(ParsePodTest, PodIpsOfANewerServer) {
  auto pod = ParsePod(RecordedItem(testing::kMinikubePods, "queue-l4dv8"), kMaxBytes);
  ASSERT_TRUE(pod.ok()) << pod.status();
  EXPECT_EQ(pod->uid, "d8aa9a47-ad0f-4bbe-bc12-ab31605d3211");
  EXPECT_EQ(pod->node_name, "minikube");
  EXPECT_THAT(pod->ips, ElementsAre("172.17.0.6"));
  EXPECT_TRUE(pod->ports.empty());
}

TEST(ParsePodTest, TerminatingPod) {
  json object = RecordedItem(testing::kSpirePods, testing::kBlogPod);
  object["metadata"]["deletionTimestamp"] = "2017-10-16T23:30:00Z";  // the change under test
  auto pod = ParsePod(object, kMaxBytes);
  ASSERT_TRUE(pod.ok()) << pod.status();
  EXPECT_TRUE(pod->deleting);
}

TEST(ParsePodTest, SidecarPortsCountInitContainersDoNot) {
  json object = RecordedItem(testing::kSpirePods, testing::kBlogPod);
  // The two containers become init containers: only the restartable one
  // (a sidecar) serves.
  json containers = object["spec"]["containers"];
  containers[0]["restartPolicy"] = "Always";
  object["spec"]["initContainers"] = containers;
  object["spec"]["containers"] = json::array();
  auto pod = ParsePod(object, kMaxBytes);
  ASSERT_TRUE(pod.ok()) << pod.status();
  EXPECT_THAT(pod->ports, ElementsAre(KubernetesContainerPort{"ghostunnel", 3306, "TCP"}));
}

// Each malformed shape is refused with the field it is about.
TEST(ParsePodTest, RefusesMalformedPodsAndSaysWhere) {
  const json recorded = RecordedItem(testing::kSpirePods, testing::kBlogPod);
  struct Case {
    std::function<void(json&)> damage;
    std::string expected;
  };
  std::vector<Case> cases = {
      {[](json& o) { o["spec"]["containers"][0]["ports"][0]["containerPort"] = "3306"; },
       "spec.containers[0].ports[0].containerPort is not a port number"},
      {[](json& o) { o["spec"]["containers"][1]["ports"][0]["containerPort"] = 70000; },
       "spec.containers[1].ports[0].containerPort is not a port number"},
      {[](json& o) { o["spec"]["containers"][0]["ports"][0]["protocol"] = "HTTP"; },
       "protocol is not TCP, UDP or SCTP"},
      {[](json& o) { o["metadata"].erase("uid"); }, "metadata.uid is missing"},
      {[](json& o) { o["metadata"]["uid"] = "../../etc"; }, "metadata.uid is not a UID"},
      {[](json& o) { o["metadata"]["namespace"] = ""; }, "metadata.namespace is empty"},
      {[](json& o) { o["metadata"]["labels"]["version"] = 0; },
       "metadata.labels[version] is not a string"},
      {[](json& o) { o["spec"]["hostNetwork"] = "true"; }, "spec.hostNetwork is not a boolean"},
      {[](json& o) { o["status"]["podIP"] = "10.244.1"; }, "non-address"},
      {[](json& o) { o["status"]["podIPs"] = json::object(); }, "status.podIPs is not an array"},
      {[](json& o) { o["kind"] = "Namespace"; }, "not a Pod"},
      {[](json& o) { o.erase("spec"); }, "spec is missing"},
      {[](json& o) { o = json::array(); }, "not a JSON object"},
  };
  for (const Case& c : cases) {
    json object = recorded;
    c.damage(object);
    auto pod = ParsePod(object, kMaxBytes);
    ASSERT_FALSE(pod.ok()) << c.expected;
    EXPECT_THAT(pod.status().message(), HasSubstr(c.expected));
  }
}

TEST(ParsePodTest, RefusesAPodOverTheSizeLimit) {
  json object = RecordedItem(testing::kSpirePods, testing::kBlogPod);
  object["metadata"]["annotations"]["big"] = std::string(600 << 10, 'x');
  auto pod = ParsePod(object, kMaxBytes);
  ASSERT_FALSE(pod.ok());
  EXPECT_EQ(pod.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(pod.status().message(), HasSubstr("over the limit"));
}

TEST(ParseNamespaceTest, ReadsTheLabelsOfARecordedNamespace) {
  auto ns = ParseNamespace(RecordedItem(testing::kNamespaces, "kube-system"), kMaxBytes);
  ASSERT_TRUE(ns.ok()) << ns.status();
  EXPECT_EQ(ns->name, "kube-system");
  EXPECT_THAT(ns->labels, ElementsAre(Pair("kubernetes.io/metadata.name", "kube-system")));
  json object = RecordedItem(testing::kNamespaces, "default");
  object["metadata"].erase("name");
  EXPECT_THAT(ParseNamespace(object, kMaxBytes).status().message(),
              HasSubstr("metadata.name is missing"));
}

TEST(ParseListPageTest, ResourceVersionItemsAndContinue) {
  json list = {{"kind", "NamespaceList"},
               {"apiVersion", "v1"},
               {"metadata", {{"resourceVersion", "2138754"}, {"continue", "next"}}},
               {"items", testing::LoadRecorded(testing::kNamespaces)["items"]}};
  auto page = ParseListPage(list.dump());
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->resource_version, "2138754");
  EXPECT_EQ(page->continue_token, "next");
  EXPECT_EQ(page->items.size(), 4u);

  list["items"] = nullptr;  // an empty list
  page = ParseListPage(list.dump());
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_TRUE(page->items.empty());

  list["metadata"].erase("resourceVersion");
  EXPECT_THAT(ParseListPage(list.dump()).status().message(),
              HasSubstr("metadata.resourceVersion is missing"));
  EXPECT_THAT(ParseListPage(R"({"kind": "PodList", "items": [)").status().message(),
              HasSubstr("not JSON"));
}

TEST(ParseWatchEventTest, TheFiveTypesAndMalformedLines) {
  auto added = ParseWatchEvent(
      json{{"type", "ADDED"}, {"object", RecordedItem(testing::kSpirePods, testing::kBlogPod)}}
          .dump());
  ASSERT_TRUE(added.ok()) << added.status();
  EXPECT_EQ(added->type, WatchEventType::kAdded);
  EXPECT_EQ(UidOf(added->object), testing::kBlogPodUid);

  auto bookmark = ParseWatchEvent(
      R"({"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"12746"}}})");
  ASSERT_TRUE(bookmark.ok()) << bookmark.status();
  EXPECT_EQ(bookmark->type, WatchEventType::kBookmark);
  EXPECT_EQ(*ResourceVersionOf(bookmark->object), "12746");

  auto expired = ParseWatchEvent(
      R"json({"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (3473)","reason":"Expired","code":410}})json");
  ASSERT_TRUE(expired.ok()) << expired.status();
  auto status = ParseApiStatus(expired->object);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->code, 410);
  EXPECT_EQ(status->reason, "Expired");

  EXPECT_THAT(ParseWatchEvent(R"({"type":"ADDED","object":{"kind":"Pod")").status().message(),
              HasSubstr("not JSON"));
  EXPECT_THAT(ParseWatchEvent(R"({"type":"SYNC","object":{}})").status().message(),
              HasSubstr("unknown watch event type SYNC"));
  EXPECT_THAT(ParseWatchEvent(R"({"type":"ADDED"})").status().message(), HasSubstr("no object"));
  EXPECT_THAT(ParseWatchEvent(R"(["ADDED"])").status().message(), HasSubstr("not a JSON object"));
}

// A hostile server's nesting must not exhaust the stack, parsing or freeing.
TEST(ParseWatchEventTest, DeepNestingIsRefusedWithoutCrashing) {
  const size_t depth = 1 << 17;  // far past what a recursive parser's stack holds
  EXPECT_FALSE(ParseWatchEvent(std::string(depth, '[')).ok());
  EXPECT_THAT(ParseWatchEvent(std::string(depth, '[') + std::string(depth, ']')).status().message(),
              HasSubstr("not a JSON object"));
  std::string nested_object = R"({"type":"ADDED","object":{"metadata":)" + std::string(depth, '[') +
                              std::string(depth, ']') + "}}";
  auto event = ParseWatchEvent(nested_object);
  ASSERT_TRUE(event.ok()) << event.status();
  EXPECT_THAT(ParsePod(event->object, kMaxBytes).status().message(),
              HasSubstr("metadata is not an object"));
}

TEST(DescribeHttpErrorTest, UsesTheStatusTheServerSent) {
  EXPECT_EQ(
      DescribeHttpError(
          401,
          R"({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401})"),
      "HTTP 401 Unauthorized: Unauthorized");
  EXPECT_EQ(DescribeHttpError(502, "<html>bad gateway</html>"), "HTTP 502 (no Status in the body)");
}

}  // namespace
}  // namespace ktrust
