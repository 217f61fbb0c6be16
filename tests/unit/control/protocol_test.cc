#include "ktrust/control/protocol.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "ktrust/control/methods.h"
#include "ktrust/control/views.h"

namespace ktrust::control {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

TEST(ParseControlRequest, AcceptsAWellFormedRequest) {
  auto request =
      ParseControlRequest(R"({"version":1,"method":"policy.check","params":{"port":80}})");
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->method, "policy.check");
  EXPECT_EQ(request->params, json({{"port", 80}}));
}

TEST(ParseControlRequest, ParamsDefaultToAnEmptyObject) {
  auto request = ParseControlRequest(R"({"method":"status","version":1})");
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->method, "status");
  EXPECT_TRUE(request->params.is_object());
  EXPECT_TRUE(request->params.empty());
}

struct Malformed {
  const char* line;
  const char* message;
};

TEST(ParseControlRequest, RejectsEachMalformedRequestWithItsReason) {
  const Malformed cases[] = {
      {"", "request is not JSON"},
      {"status", "request is not JSON"},
      {R"({"version":1,"method":"status")", "request is not JSON"},
      {R"({"version":1,"method":"status"} trailing)", "request is not JSON"},
      {"[1,2]", "request must be a JSON object, not an array"},
      {"\"status\"", "request must be a JSON object, not a string"},
      {"null", "request must be a JSON object, not null"},
      {R"({"method":"status"})", "request has no \"version\""},
      {R"({"version":"1","method":"status"})", "\"version\" must be an integer, not a string"},
      {R"({"version":1.5,"method":"status"})",
       "\"version\" must be an integer, not a number with a fraction"},
      {R"({"version":2,"method":"status"})",
       "unsupported protocol version 2 (this agent speaks 1)"},
      {R"({"version":0,"method":"status"})",
       "unsupported protocol version 0 (this agent speaks 1)"},
      {R"({"version":-1,"method":"status"})",
       "unsupported protocol version -1 (this agent speaks 1)"},
      {R"({"version":18446744073709551615,"method":"status"})",
       "unsupported protocol version 18446744073709551615 (this agent speaks 1)"},
      {R"({"version":1})", "request has no \"method\""},
      {R"({"version":1,"method":7})", "\"method\" must be a string, not an integer"},
      {R"({"version":1,"method":""})", "\"method\" must be 1 to 64 characters of a-z, '.' and '_'"},
      {R"({"version":1,"method":"Status"})",
       "\"method\" must be 1 to 64 characters of a-z, '.' and '_'"},
      {R"({"version":1,"method":"status\n"})",
       "\"method\" must be 1 to 64 characters of a-z, '.' and '_'"},
      {R"({"version":1,"method":"policy-check"})",
       "\"method\" must be 1 to 64 characters of a-z, '.' and '_'"},
      {R"({"version":1,"method":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"})",
       "\"method\" must be 1 to 64 characters of a-z, '.' and '_'"},
      {R"({"version":1,"method":"status","params":[]})",
       "\"params\" must be an object, not an array"},
      {R"({"version":1,"method":"status","params":null})",
       "\"params\" must be an object, not null"},
      {R"({"version":1,"method":"status","parms":{}})",
       "unknown field \"parms\" (a request has version, method and params)"},
      {"{\"version\":1,\"method\":\"st\xff\"}", "request is not JSON"},
  };
  for (const Malformed& c : cases) {
    auto request = ParseControlRequest(c.line);
    ASSERT_FALSE(request.ok()) << "accepted: " << c.line;
    EXPECT_EQ(request.status().code(), absl::StatusCode::kInvalidArgument) << c.line;
    EXPECT_EQ(request.status().message(), c.message) << c.line;
  }
}

TEST(ParseControlRequest, AMethodOfExactlyTheLimitIsAccepted) {
  std::string method(kMaxMethodBytes, 'a');
  EXPECT_TRUE(ParseControlRequest(FormatControlRequest(method, json::object())).ok());
}

TEST(FormatControlRequest, RoundTripsThroughTheParser) {
  std::string line = FormatControlRequest("connections", {{"workload", "web"}});
  ASSERT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1) << "one line only";
  auto request = ParseControlRequest(absl::string_view(line).substr(0, line.size() - 1));
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->method, "connections");
  EXPECT_EQ(request->params, json({{"workload", "web"}}));
}

TEST(ParseControlResponse, ReadsOkAndErrorResponses) {
  std::string ok = FormatOkResponse({{"ready", true}});
  EXPECT_EQ(ok, "{\"ok\":true,\"result\":{\"ready\":true},\"version\":1}\n");
  auto parsed = ParseControlResponse(absl::string_view(ok).substr(0, ok.size() - 1));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->ok);
  EXPECT_EQ(parsed->result, json({{"ready", true}}));

  std::string error = FormatErrorResponse("no workload named \"web\"\n");
  EXPECT_EQ(error.find('\n'), error.size() - 1) << "a newline in the message stays escaped";
  parsed = ParseControlResponse(error);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_FALSE(parsed->ok);
  EXPECT_EQ(parsed->error, "no workload named \"web\"\n");
}

TEST(ParseControlResponse, RejectsBrokenResponses) {
  EXPECT_EQ(ParseControlResponse("oops").status().message(), "response is not JSON");
  EXPECT_EQ(ParseControlResponse(R"({"version":1})").status().message(),
            "response has no boolean \"ok\"");
  EXPECT_EQ(ParseControlResponse(R"({"version":1,"ok":true})").status().message(),
            "response has no \"result\"");
  EXPECT_EQ(ParseControlResponse(R"({"version":1,"ok":false,"error":3})").status().message(),
            "error response has no string \"error\"");
  EXPECT_EQ(ParseControlResponse(R"({"version":3,"ok":true,"result":{}})").status().message(),
            "unsupported protocol version 3 (this client speaks 1)");
}

TEST(FormatErrorResponse, InvalidUtf8IsReplacedNotThrown) {
  std::string line = FormatErrorResponse("bad \xff byte");
  EXPECT_THAT(line, HasSubstr("bad "));
  EXPECT_TRUE(ParseControlResponse(line).ok());
}

TEST(MethodParams, ConnectionsFiltersAreOptional) {
  auto p = ParseConnectionsParams(json::object());
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(Matches(*p, "web", "spiffe://td/a"));
  p = ParseConnectionsParams({{"workload", "web"}, {"peer", "spiffe://td/a"}});
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(Matches(*p, "web", "spiffe://td/a"));
  EXPECT_FALSE(Matches(*p, "db", "spiffe://td/a"));
  EXPECT_FALSE(Matches(*p, "web", "spiffe://td/b"));
  EXPECT_EQ(ParseConnectionsParams({{"workload", 3}}).status().message(),
            "parameter \"workload\" must be a string");
  EXPECT_EQ(ParseConnectionsParams({{"wokload", "x"}}).status().message(),
            "unknown parameter \"wokload\" (expected: workload, peer)");
  EXPECT_EQ(ToParams(ConnectionsParams{}), json::object());
}

TEST(MethodParams, PolicyCheckNeedsEveryField) {
  auto p = ParsePolicyCheckParams(ToParams(PolicyCheckParams{"spiffe://td/a", "web", 8080}));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->from, "spiffe://td/a");
  EXPECT_EQ(p->to, "web");
  EXPECT_EQ(p->port, 8080);
  EXPECT_EQ(ParsePolicyCheckParams({{"to", "web"}, {"port", 1}}).status().message(),
            "missing parameter \"from\"");
  EXPECT_EQ(ParsePolicyCheckParams({{"from", "a"}, {"to", "web"}}).status().message(),
            "missing parameter \"port\"");
  for (json port : {json(0), json(65536), json(-1), json("80"), json(80.5)}) {
    EXPECT_EQ(
        ParsePolicyCheckParams({{"from", "a"}, {"to", "web"}, {"port", port}}).status().message(),
        "parameter \"port\" must be an integer from 1 to 65535")
        << port;
  }
}

TEST(MethodParams, DenialsSinceIsOptionalAndNotNegative) {
  auto p = ParseDenialsParams(json::object());
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(p->since_seconds.has_value());
  p = ParseDenialsParams({{"since_seconds", 600}});
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->since_seconds, 600);
  EXPECT_FALSE(ParseDenialsParams({{"since_seconds", -1}}).ok());
  EXPECT_FALSE(ParseDenialsParams({{"since_seconds", "10m"}}).ok());
}

TEST(Views, RoundTripThroughJson) {
  StatusView status;
  status.version = "0.1.0";
  status.node = "node-a";
  status.kernel_features = {{"ktls", false, "CONFIG_TLS missing"}};
  status.bpf.attachments = {"connect4"};
  status.counts.denied = 4;
  status.ready = true;
  status.warnings = {"mesh destination 10.0.0.0/8 (every port) is not pinned"};
  status.zero_hop = {true, "/run/ktrust/holder.sock", "", {{41, "exec", "web", "zero-hop"}}};
  status.kubernetes = {true, false, "https://10.96.0.1:443", "node-a", 3, 1, 2, 1, "pods: 403"};
  json j = status;
  EXPECT_EQ(j["zero_hop"]["listeners"][0]["data_path"], "zero-hop");
  EXPECT_EQ(j["kubernetes"]["pods_refused"], 1);
  EXPECT_EQ(j["kubernetes"]["problem"], "pods: 403");
  EXPECT_EQ(j["warnings"][0], "mesh destination 10.0.0.0/8 (every port) is not pinned");
  EXPECT_EQ(j["kernel_features"][0]["detail"], "CONFIG_TLS missing");
  EXPECT_EQ(j["counts"]["denied"], 4);
  auto back = ViewFromJson<StatusView>(j);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(json(*back), j);

  WorkloadListView list{{{"web",
                          "system.slice/web.service",
                          42,
                          "spiffe://td/web",
                          "enforce",
                          {80, 443},
                          1700000000,
                          "pod 10.244.1.7",
                          "its SPIFFE ID template gives no valid ID",
                          "zero-hop (1 process)",
                          {"mesh", "web-0", "web", "0b7c1f5e-3a2d-4c8e-9f10-2b3c4d5e6f70"}}}};
  auto list_back = ViewFromJson<WorkloadListView>(json(list));
  ASSERT_TRUE(list_back.ok()) << list_back.status();
  EXPECT_EQ(list_back->workloads.at(0).ports, (std::vector<uint16_t>{80, 443}));
  EXPECT_EQ(list_back->workloads.at(0).network, "pod 10.244.1.7");
  EXPECT_EQ(list_back->workloads.at(0).problem, "its SPIFFE ID template gives no valid ID");
  EXPECT_EQ(list_back->workloads.at(0).data_path, "zero-hop (1 process)");
  // The pod, under the names kubectl users know ("namespace", not a C++ name).
  EXPECT_EQ(json(list)["workloads"][0]["pod"],
            (json{{"namespace", "mesh"},
                  {"name", "web-0"},
                  {"service_account", "web"},
                  {"uid", "0b7c1f5e-3a2d-4c8e-9f10-2b3c4d5e6f70"}}));
  EXPECT_EQ(list_back->workloads.at(0).pod.namespace_name, "mesh");
  EXPECT_EQ(list_back->workloads.at(0).pod.service_account, "web");
  // An older agent sends no pod: empty, not an error.
  auto old_agent = ViewFromJson<WorkloadView>({{"name", "web"}});
  ASSERT_TRUE(old_agent.ok()) << old_agent.status();
  EXPECT_TRUE(old_agent->pod.empty());
  EXPECT_EQ(ViewFromJson<WorkloadView>({{"pod", {{"namespace", 3}}}}).status().message(),
            "field \"pod.namespace\" has the wrong type");
}

TEST(Views, MissingFieldsTakeDefaultsAndMistypedFieldsAreNamed) {
  auto status = ViewFromJson<StatusView>({{"node", "n"}});
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->node, "n");
  EXPECT_TRUE(status->config.last_reload_ok);

  EXPECT_EQ(ViewFromJson<StatusView>({{"bpf", {{"adopted", "two"}}}}).status().message(),
            "field \"bpf.adopted\" has the wrong type");
  EXPECT_EQ(ViewFromJson<StatusView>({{"bpf", 3}}).status().message(),
            "field \"bpf\" has the wrong type");
  EXPECT_EQ(ViewFromJson<ConnectionListView>({{"connections", {{{"id", "x"}}}}}).status().message(),
            "field \"connections.id\" has the wrong type");
  EXPECT_FALSE(ViewFromJson<DenialView>(json::array()).ok());
}

}  // namespace
}  // namespace ktrust::control
