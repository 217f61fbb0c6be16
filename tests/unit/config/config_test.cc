#include "ktrust/config/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace ktrust {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// Two lines every malformed case builds on, so line numbers start at 3.
constexpr absl::string_view kHeader = "version: 1\ntrust_domain: example.org\n";

absl::StatusOr<Config> Parse(absl::string_view body) {
  return ParseConfig(absl::StrCat(kHeader, body), "t.yaml");
}

TEST(ConfigTest, MinimalConfigTakesTheDefaults) {
  auto config = ParseConfig("version: 1\ntrust_domain: example.org\n", "min.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->source_path, "min.yaml");
  EXPECT_EQ(config->trust_domain, "example.org");
  EXPECT_EQ(config->identity.source, IdentityConfig::Source::kEmbeddedCa);
  EXPECT_EQ(config->identity.svid_ttl, absl::Hours(1));
  EXPECT_TRUE(config->workloads.empty());
  EXPECT_TRUE(config->policy.empty());
  EXPECT_EQ(config->agent.outbound_port, 15001);
  EXPECT_EQ(config->agent.log_format, "json");
  EXPECT_EQ(config->agent.drain_timeout, absl::Seconds(30));
  EXPECT_FALSE(config->agent.tls_resumption) << "resumption is opt-in";
  EXPECT_FALSE(config->agent.node_name.empty()) << "defaults to the host name";
}

TEST(ConfigTest, TrustDomainMayBeWrittenAsItsId) {
  auto config = ParseConfig("version: 1\ntrust_domain: spiffe://example.org\n", "t.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->trust_domain, "example.org");
}

TEST(ConfigTest, ReadsWorkloadsMeshAndPolicy) {
  auto config = Parse(
      "workloads:\n"
      "  - name: web\n"
      "    cgroup: system.slice/nginx.service\n"
      "    spiffe_id: spiffe://{trust_domain}/{unit}\n"
      "    mode: permissive\n"
      "    ports: [8080, 8443]\n"
      "mesh:\n"
      "  destinations:\n"
      "    - cidr: 10.0.0.0/8\n"
      "      ports: [443, \"8000-8999\"]\n"
      "  bypass:\n"
      "    - cidr: 10.0.0.53\n"
      "expected_servers:\n"
      "  - cidr: fd00::/8\n"
      "    spiffe_id: spiffe://example.org/db/*\n"
      "policy:\n"
      "  - to: web\n"
      "    ports: [8080]\n"
      "    from: [spiffe://example.org/client]\n"
      "  - to: spiffe://example.org/ns/*\n"
      "    from:\n"
      "      - spiffe://example.org/admin\n"
      "agent:\n"
      "  node_name: n1\n"
      "  socket_mark: 0x10\n"
      "  metrics_address: \"\"\n"
      "  max_inbound_handshakes: 2048\n"
      "  max_outbound_handshakes: 512\n"
      "  max_handshakes_per_source: 32\n"
      "  first_byte_timeout: 5s\n"
      "  tls_resumption: true\n"
      "  drain_timeout: 2m\n"
      "  handover_socket: /run/ktrust-handover/handover.sock\n");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->workloads.size(), 1u);
  const WorkloadConfig& web = config->workloads[0];
  EXPECT_EQ(web.name, "web");
  EXPECT_EQ(web.cgroup, "system.slice/nginx.service");
  EXPECT_EQ(web.spiffe_id, "spiffe://{trust_domain}/{unit}");
  EXPECT_EQ(web.mode, WorkloadMode::kPermissive);
  EXPECT_THAT(web.ports, ::testing::ElementsAre(8080, 8443));

  ASSERT_EQ(config->mesh.size(), 1u);
  EXPECT_EQ(config->mesh[0].prefix.ToString(), "10.0.0.0/8");
  ASSERT_EQ(config->mesh[0].ports.size(), 2u);
  EXPECT_EQ(config->mesh[0].ports[1].first, 8000);
  EXPECT_EQ(config->mesh[0].ports[1].last, 8999);
  ASSERT_EQ(config->bypass.size(), 1u);
  EXPECT_EQ(config->bypass[0].prefix.ToString(), "10.0.0.53/32");
  EXPECT_TRUE(config->bypass[0].ports.empty()) << "absent ports: every port";

  ASSERT_EQ(config->expected_servers.size(), 1u);
  EXPECT_EQ(config->expected_servers[0].server.ToString(), "spiffe://example.org/db/*");

  ASSERT_EQ(config->policy.size(), 2u);
  EXPECT_EQ(config->policy[0].to_workload, "web");
  EXPECT_FALSE(config->policy[0].to_id.has_value());
  EXPECT_EQ(config->policy[0].origin, "t.yaml:19");
  EXPECT_EQ(config->policy[1].to_id->ToString(), "spiffe://example.org/ns/*");
  EXPECT_EQ(config->policy[1].origin, "t.yaml:22");
  EXPECT_TRUE(config->policy[1].ports.empty());

  EXPECT_EQ(config->agent.node_name, "n1");
  EXPECT_EQ(config->agent.socket_mark, 0x10u);
  EXPECT_EQ(config->agent.metrics_address, "");
  EXPECT_EQ(config->agent.max_inbound_handshakes, 2048);
  EXPECT_EQ(config->agent.max_outbound_handshakes, 512);
  EXPECT_EQ(config->agent.max_handshakes_per_source, 32);
  EXPECT_EQ(config->agent.first_byte_timeout, absl::Seconds(5));
  EXPECT_TRUE(config->agent.tls_resumption);
  EXPECT_EQ(config->agent.drain_timeout, absl::Minutes(2));
  EXPECT_EQ(config->agent.handover_socket, "/run/ktrust-handover/handover.sock");
}

const std::string kWebZeroHop =
    "workloads:\n"
    "  - name: web\n"
    "    cgroup: system.slice/web.service\n"
    "    spiffe_id: spiffe://{trust_domain}/w/{name}\n"
    "    data_path: zero_hop\n"
    "  - name: api\n"
    "    cgroup: system.slice/api.service\n"
    "    spiffe_id: spiffe://{trust_domain}/w/{name}\n";

TEST(ConfigTest, WorkloadDataPathDefaultsToProxy) {
  auto config = Parse(kWebZeroHop);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->workloads.size(), 2u);
  EXPECT_EQ(config->workloads[0].data_path, WorkloadDataPath::kZeroHop);
  EXPECT_EQ(config->workloads[1].data_path, WorkloadDataPath::kProxy);
  EXPECT_EQ(WorkloadDataPathName(config->workloads[0].data_path), "zero_hop");
  EXPECT_EQ(config->agent.holder_socket, "/run/ktrust/holder.sock");
  EXPECT_EQ(config->agent.registration_socket, "/run/ktrust/zerohop.sock");
  EXPECT_EQ(config->agent.oci_socket, "/run/ktrust/oci-seccomp.sock");
}

TEST(ConfigTest, ZeroHopSocketsAreConfigurable) {
  auto config = Parse(
      "agent:\n"
      "  holder_socket: /run/k/h.sock\n"
      "  registration_socket: /run/k/r.sock\n"
      "  oci_socket: /run/k/o.sock\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->agent.holder_socket, "/run/k/h.sock");
  EXPECT_EQ(config->agent.registration_socket, "/run/k/r.sock");
  EXPECT_EQ(config->agent.oci_socket, "/run/k/o.sock");
}

TEST(ConfigTest, WorkloadModeNamesRoundTrip) {
  for (WorkloadMode mode :
       {WorkloadMode::kEnforce, WorkloadMode::kPermissive, WorkloadMode::kOff}) {
    auto parsed = ParseWorkloadMode(WorkloadModeName(mode));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, mode);
  }
  EXPECT_EQ(WorkloadModeName(WorkloadMode::kOff), "off");
  EXPECT_FALSE(ParseWorkloadMode("Enforce").ok());
}

TEST(ConfigTest, DocumentedExampleParses) {
  auto config = LoadConfig(KTRUST_DOCS_DIR "/examples/ktrustd.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->trust_domain, "example.org");
  EXPECT_EQ(config->workloads.size(), 3u);
  EXPECT_EQ(config->policy.size(), 3u);
  EXPECT_EQ(config->agent.node_name, "web-1");
  EXPECT_EQ(config->agent.socket_mark, 0x6b74u);
  EXPECT_THAT(config->policy[0].origin, HasSubstr("ktrustd.yaml:"));
}

// The ConfigMap of the Kubernetes DaemonSet (tools/kubernetes/ktrustd.yaml,
// generated into the ConfigMap as is): with the environment the DaemonSet
// gives its pod it loads in Kubernetes mode, it enrols nothing until a
// namespace is labelled, and its paths are the DaemonSet's mounts
// (tests/k8s/check_manifests.js checks the other side).
TEST(ConfigTest, KubernetesConfigMapParses) {
  auto config = LoadConfig(KTRUST_K8S_DIR "/ktrustd.yaml", {"node-7", "10.96.0.1", "443"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->kubernetes.enabled);
  EXPECT_EQ(config->kubernetes.node_name, "node-7");
  EXPECT_EQ(config->kubernetes.namespace_label_key, "ktrust.io/mesh");
  EXPECT_EQ(config->kubernetes.namespace_label_value, "enabled");
  EXPECT_EQ(config->agent.node_name, "node-7");
  EXPECT_TRUE(config->workloads.empty());
  EXPECT_TRUE(config->policy.empty());
  EXPECT_EQ(config->agent.cgroup_root, "/host/sys/fs/cgroup");
  EXPECT_EQ(config->agent.bpf_pin_dir, "/sys/fs/bpf/ktrust");
  EXPECT_EQ(config->agent.control_socket, "/run/ktrust/control.sock");
  EXPECT_EQ(config->agent.handover_socket, "/run/ktrust-handover/handover.sock");
  EXPECT_EQ(config->agent.metrics_address, "127.0.0.1:9464");
  // Outside a pod (no NODE_NAME) it says what is missing.
  auto outside = LoadConfig(KTRUST_K8S_DIR "/ktrustd.yaml", ConfigEnvironment{});
  ASSERT_FALSE(outside.ok());
  EXPECT_THAT(outside.status().message(), HasSubstr("NODE_NAME"));
}

// Finding 9 of issue 10: each bundle file is bound to one trust domain; a
// plain path means the local one.
TEST(ConfigTest, TrustBundlesAreBoundToATrustDomain) {
  auto config = Parse(
      "trust_bundles:\n"
      "  - /etc/ktrust/old-root.crt\n"
      "  - trust_domain: partner.example.com\n"
      "    file: /etc/ktrust/partner.crt\n"
      "  - {trust_domain: spiffe://example.org, file: /etc/ktrust/next-root.crt}\n"
      "crls: [/etc/ktrust/root-crl.pem]\n");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->trust_bundles.size(), 3u);
  EXPECT_EQ(config->trust_bundles[0].trust_domain, "example.org");
  EXPECT_EQ(config->trust_bundles[0].path, "/etc/ktrust/old-root.crt");
  EXPECT_EQ(config->trust_bundles[1].trust_domain, "partner.example.com");
  EXPECT_EQ(config->trust_bundles[1].path, "/etc/ktrust/partner.crt");
  EXPECT_EQ(config->trust_bundles[2].trust_domain, "example.org");
  EXPECT_THAT(config->crls, ::testing::ElementsAre("/etc/ktrust/root-crl.pem"));
}

TEST(ConfigTest, DocumentedExampleTrustsThePartnerItsPolicyNames) {
  auto config = LoadConfig(KTRUST_DOCS_DIR "/examples/ktrustd.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  bool partner = false;
  for (const auto& b : config->trust_bundles) partner |= b.trust_domain == "partner.example.com";
  EXPECT_TRUE(partner) << "the policy's from: spiffe://partner.example.com/... needs its bundle";
  EXPECT_FALSE(config->crls.empty());
}

TEST(ConfigTest, BareMetalExampleEnrolsTwoSystemdServices) {
  auto config = LoadConfig(KTRUST_DOCS_DIR "/examples/bare-metal.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->workloads.size(), 2u);
  EXPECT_EQ(config->workloads[0].cgroup, "system.slice/nginx.service");
  EXPECT_EQ(config->workloads[1].cgroup, "system.slice/report-worker.service");
}

TEST(ConfigTest, LoadConfigNamesAMissingFile) {
  auto config = LoadConfig("/nonexistent/ktrustd.yaml");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("/nonexistent/ktrustd.yaml"));
}

TEST(ConfigTest, LoadConfigReportsTheRealPath) {
  std::string path = ::testing::TempDir() + "/config_test_bad.yaml";
  std::ofstream(path) << "version: 1\ntrust_domain: example.org\nagent:\n  log_level: loud\n";
  auto config = LoadConfig(path);
  std::remove(path.c_str());
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(std::string(config.status().message()),
              StartsWith(path + ":4:14: agent.log_level: expected"));
}

TEST(ConfigTest, NeverThrowsOnHostileInput) {
  for (absl::string_view text :
       {"", "\t", "[", "{a: b", "&a [*a]", "!!binary x",
        "version: &v 1\ntrust_domain: a\nagent: *v", "? [a]\n: b", "- - - -",
        "version: 1\ntrust_domain: example.org\nworkloads: [[[]]]"}) {
    auto config = ParseConfig(text, "h.yaml");
    EXPECT_FALSE(config.ok()) << text;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << config.status();
    EXPECT_THAT(std::string(config.status().message()), StartsWith("h.yaml:")) << text;
  }
}

TEST(ConfigTest, DeepNestingIsAnErrorNotACrash) {
  auto config = ParseConfig(std::string(100000, '['), "deep.yaml");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(std::string(config.status().message()), StartsWith("deep.yaml:"));
}

TEST(ConfigTest, RangesMayBeUnquoted) {
  auto config =
      Parse("mesh:\n  destinations:\n    - cidr: 10.0.0.0/8\n      ports: [8000-8999, 53]\n");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->mesh[0].ports.size(), 2u);
  EXPECT_EQ(config->mesh[0].ports[0].first, 8000);
  EXPECT_EQ(config->mesh[0].ports[0].last, 8999);
  EXPECT_TRUE(config->mesh[0].ports[1].Contains(53));
}

struct Malformed {
  const char* name;
  std::string yaml;  // appended to kHeader unless `whole` is set
  // The message's beginning: "t.yaml:<line>:<col>: <path>: "
  const char* location;
  const char* says;
  bool whole = false;
};

void PrintTo(const Malformed& m, std::ostream* os) { *os << m.name; }

class MalformedConfigTest : public ::testing::TestWithParam<Malformed> {};

TEST_P(MalformedConfigTest, NamesFileLineColumnAndKeyPath) {
  const Malformed& m = GetParam();
  auto config = m.whole ? ParseConfig(m.yaml, "t.yaml") : Parse(m.yaml);
  ASSERT_FALSE(config.ok()) << m.name;
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(config.status().message()), StartsWith(m.location));
  EXPECT_THAT(std::string(config.status().message()), HasSubstr(m.says));
  // One message, one line: it goes into a log and a terminal.
  EXPECT_EQ(config.status().message().find('\n'), absl::string_view::npos);
}

const std::string kWeb =
    "workloads:\n"                                       // 3
    "  - name: web\n"                                    // 4
    "    cgroup: system.slice/web.service\n"             // 5
    "    spiffe_id: spiffe://{trust_domain}/w/{name}\n"  // 6
    "    ports: [8080]\n";                               // 7

INSTANTIATE_TEST_SUITE_P(
    Cases, MalformedConfigTest,
    ::testing::Values(
        Malformed{"YamlSyntax", "version: 1\ntrust_domain: [a, b\nagent: {}\n",
                  "t.yaml:3:", "YAML syntax error: end of sequence flow not found", true},
        Malformed{"YamlBadIndent", "version: 1\ntrust_domain: example.org\n  agent: 2\n",
                  "t.yaml:3:", "YAML syntax error", true},
        Malformed{"MissingVersion", "trust_domain: example.org\n",
                  "t.yaml:1:1: version: ", "expected 1, got nothing (the key is required)", true},
        Malformed{"WrongVersion", "version: 2\ntrust_domain: example.org\n",
                  "t.yaml:1:10: version: ", "got \"2\"", true},
        Malformed{"EmptyDocument", "", "t.yaml:1:1: document: ", "expected a mapping", true},
        Malformed{"TopLevelList", "- version: 1\n", "t.yaml:1:1: document: ",
                  "expected a mapping with the keys version, trust_domain", true},
        Malformed{"MissingTrustDomain", "version: 1\n",
                  "t.yaml:1:1: trust_domain: ", "got nothing (the key is required)", true},
        Malformed{"BadTrustDomain", "version: 1\ntrust_domain: Example.org\n",
                  "t.yaml:2:15: trust_domain: ", "lowercase", true},
        Malformed{"TrustBundleWithoutDomain", "trust_bundles:\n  - file: /a.crt\n",
                  "t.yaml:4:5: trust_bundles[0].trust_domain: ", "the key is required"},
        Malformed{"TrustBundleBadDomain",
                  "trust_bundles:\n  - {trust_domain: Partner.example, file: /a.crt}\n",
                  "t.yaml:4:20: trust_bundles[0].trust_domain: ", "lowercase"},
        Malformed{"TrustBundleRelativeFile",
                  "trust_bundles:\n  - {trust_domain: p.example, file: a.crt}\n",
                  "t.yaml:4:37: trust_bundles[0].file: ", "expected an absolute path"},
        Malformed{"TrustBundleUnknownKey",
                  "trust_bundles:\n  - {trust_domain: p.example, path: /a.crt}\n",
                  "t.yaml:4:31: trust_bundles[0].path: ", "unknown key"},
        Malformed{"CrlRelative", "crls: [crl.pem]\n",
                  "t.yaml:3:8: crls[0]: ", "expected an absolute path"},
        Malformed{"UnknownTopLevelKey", "trsut_bundles: [/a]\n", "t.yaml:3:1: trsut_bundles: ",
                  "unknown key; expected one of version, trust_domain, identity, trust_bundles"},
        Malformed{
            "UnknownWorkloadKey", "workloads:\n  - name: web\n    mdoe: enforce\n",
            "t.yaml:5:5: workloads[0].mdoe: ",
            "unknown key; expected one of name, cgroup, spiffe_id, mode, ports, data_path, got "
            "\"mdoe\""},
        Malformed{
            "RepeatedKey", "agent:\n  log_level: debug\n  log_level: info\n",
            "t.yaml:5:3: agent.log_level: ", "a second \"log_level\" (the first is on line 4)"},
        Malformed{"WorkloadsNotAList", "workloads: {}\n",
                  "t.yaml:3:12: workloads: ", "expected a list of workloads, got an empty mapping"},
        Malformed{
            "WorkloadNotAMapping", "workloads: [web]\n", "t.yaml:3:13: workloads[0]: ",
            "expected a mapping with the keys name, cgroup, spiffe_id, mode, ports, data_path, got "
            "\"web\""},
        Malformed{"BadMode", kWeb + "    mode: strict\n", "t.yaml:8:11: workloads[0].mode: ",
                  "expected one of enforce, permissive, off, got \"strict\""},
        Malformed{"EmptyMode", kWeb + "    mode:\n",
                  "t.yaml:8:5: workloads[0].mode: ", "got nothing"},
        Malformed{
            "PortTooLarge",
            "workloads:\n  - name: web\n    cgroup: a\n    spiffe_id: spiffe://{trust_domain}/w\n"
            "    ports: [8080, 70000]\n",
            "t.yaml:7:19: workloads[0].ports[1]: ",
            "expected a port number 1-65535, got \"70000\""},
        Malformed{
            "PortZero",
            "workloads:\n  - name: web\n    cgroup: a\n    spiffe_id: spiffe://{trust_domain}/w\n"
            "    ports: [0]\n",
            "t.yaml:7:13: workloads[0].ports[0]: ", "got \"0\""},
        Malformed{"PortNegative",
                  "mesh:\n  destinations:\n    - cidr: 10.0.0.0/8\n      ports: [-1]\n",
                  "t.yaml:6:15: mesh.destinations[0].ports[0]: ",
                  "expected a port 1-65535 or a range \"first-last\", got \"-1\""},
        Malformed{
            "PortRangeBackwards",
            "mesh:\n  destinations:\n    - cidr: 10.0.0.0/8\n      ports: [443, \"9000-8000\"]\n",
            "t.yaml:6:20: mesh.destinations[0].ports[1]: ",
            "expected a range whose first port is not above its last, got \"9000-8000\""},
        Malformed{"PortRangeOpen",
                  "mesh:\n  bypass:\n    - cidr: 10.0.0.0/8\n      ports: [\"9000-\"]\n",
                  "t.yaml:6:15: mesh.bypass[0].ports[0]: ", "got \"9000-\""},
        Malformed{"EmptyPortList", "mesh:\n  bypass:\n    - cidr: 10.0.0.0/8\n      ports: []\n",
                  "t.yaml:6:14: mesh.bypass[0].ports: ", "leave `ports` out for every port"},
        Malformed{"CidrWithHostBits", "mesh:\n  destinations:\n    - cidr: 10.0.0.1/8\n",
                  "t.yaml:5:13: mesh.destinations[0].cidr: ", "host bits are set"},
        Malformed{"CidrMissing", "mesh:\n  destinations:\n    - ports: [80]\n",
                  "t.yaml:5:7: mesh.destinations[0].cidr: ", "the key is required"},
        Malformed{"DuplicateWorkload",
                  kWeb + "  - name: web\n    cgroup: b\n    spiffe_id: spiffe://{trust_domain}/b\n",
                  "t.yaml:8:11: workloads[1].name: ",
                  "expected a name no other workload has (workloads[0] is \"web\" already)"},
        Malformed{
            "WorkloadNameCharset",
            "workloads:\n  - name: Web\n    cgroup: a\n    spiffe_id: spiffe://{trust_domain}/w\n",
            "t.yaml:4:11: workloads[0].name: ", "lowercase letters, digits"},
        Malformed{"WorkloadWithoutCgroup",
                  "workloads:\n  - name: web\n    spiffe_id: spiffe://{trust_domain}/w\n",
                  "t.yaml:4:5: workloads[0].cgroup: ", "the key is required"},
        Malformed{"AbsoluteCgroupGlob",
                  "workloads:\n  - name: web\n    cgroup: /system.slice/a.service\n"
                  "    spiffe_id: spiffe://{trust_domain}/w\n",
                  "t.yaml:5:13: workloads[0].cgroup: ", "no leading or trailing '/'"},
        Malformed{"PortOfTwoWorkloads",
                  kWeb + "  - name: api\n    cgroup: b\n    spiffe_id: spiffe://{trust_domain}/b\n"
                         "    ports: [9090, 8080]\n",
                  "t.yaml:11:19: workloads[1].ports[1]: ",
                  "a port no other workload enforces (workloads[0].ports[0] has 8080 already)"},
        Malformed{"UnknownDataPath", kWeb + "    data_path: zerohop\n",
                  "t.yaml:8:16: workloads[0].data_path: ",
                  "expected one of proxy, zero_hop, got \"zerohop\""},
        Malformed{
            "ZeroHopForAnOffWorkload",
            "workloads:\n  - name: web\n    cgroup: a\n    spiffe_id: spiffe://{trust_domain}/w\n"
            "    mode: off\n    data_path: zero_hop\n",
            "t.yaml:8:16: workloads[0].data_path: ", "proxy for a workload whose mode is off"},
        Malformed{"RelativeHolderSocket", "agent:\n  holder_socket: run/h.sock\n",
                  "t.yaml:4:18: agent.holder_socket: ", "absolute"},
        Malformed{"OffWorkloadWithPorts", kWeb + "    mode: off\n",
                  "t.yaml:7:12: workloads[0].ports: ", "no ports for a workload whose mode is off"},
        Malformed{"UnknownPlaceholder",
                  "workloads:\n  - name: web\n    cgroup: a\n"
                  "    spiffe_id: spiffe://{trust_domain}/{ns}/{name}\n",
                  "t.yaml:6:16: workloads[0].spiffe_id: ",
                  "unknown placeholder {ns} (known: {trust_domain}, {node}, {name}, {unit}, "
                  "{cgroup}, and in Kubernetes mode {namespace}, {service_account}, {pod_name}, "
                  "{pod_uid})"},
        Malformed{"UnterminatedPlaceholder",
                  "workloads:\n  - name: web\n    cgroup: a\n"
                  "    spiffe_id: \"spiffe://{trust_domain}/{name\"\n",
                  "t.yaml:6:16: workloads[0].spiffe_id: ", "has no closing '}'"},
        Malformed{"TemplateInAnotherTrustDomain",
                  "workloads:\n  - name: web\n    cgroup: a\n"
                  "    spiffe_id: spiffe://other.org/{name}\n",
                  "t.yaml:6:16: workloads[0].spiffe_id: ",
                  "spiffe://other.org/web, outside trust domain example.org"},
        Malformed{"TemplateWithoutPath",
                  "workloads:\n  - name: web\n    cgroup: a\n"
                  "    spiffe_id: spiffe://{trust_domain}\n",
                  "t.yaml:6:16: workloads[0].spiffe_id: ", "needs a path"},
        Malformed{"TemplateCgroupWithBadCharacters",
                  "workloads:\n  - name: web\n    cgroup: user.slice/user@1000.service\n"
                  "    spiffe_id: spiffe://{trust_domain}/{cgroup}\n",
                  "t.yaml:6:16: workloads[0].spiffe_id: ", "'@' is not allowed in the path"},
        Malformed{
            "UnknownWorkloadInPolicy",
            kWeb + "policy:\n  - to: wbe\n    from: [spiffe://example.org/c]\n",
            "t.yaml:9:9: policy[0].to: ",
            "expected the name of a workload in `workloads` (web) or a spiffe:// pattern, got "
            "\"wbe\""},
        Malformed{
            "BadFromPattern",
            kWeb + "policy:\n  - to: web\n    from:\n      - spiffe://example.org/c\n"
                   "      - spiffe://example.org/ns*\n",
            "t.yaml:12:9: policy[0].from[1]: ", "'*' is only allowed as a whole last segment"},
        Malformed{"BadToPattern",
                  "policy:\n  - to: spiffe://Example.org/x\n    from: [spiffe://example.org/c]\n",
                  "t.yaml:4:9: policy[0].to: ", "lowercase"},
        Malformed{"PolicyWithoutFrom", kWeb + "policy:\n  - to: web\n    ports: [8080]\n",
                  "t.yaml:9:5: policy[0].from: ", "the key is required"},
        Malformed{"PolicyFromNotAList",
                  kWeb + "policy:\n  - to: web\n    from: spiffe://example.org/c\n",
                  "t.yaml:10:11: policy[0].from: ", "expected a non-empty list"},
        Malformed{"ExpectedServerWithoutId", "expected_servers:\n  - cidr: 10.0.0.0/8\n",
                  "t.yaml:4:5: expected_servers[0].spiffe_id: ", "the key is required"},
        Malformed{"SvidTtlTooShort", "identity:\n  svid_ttl: 30s\n",
                  "t.yaml:4:13: identity.svid_ttl: ", "between 1m and 24h"},
        Malformed{"SvidTtlTooLong", "identity:\n  svid_ttl: 25h\n",
                  "t.yaml:4:13: identity.svid_ttl: ", "got \"25h\""},
        Malformed{"SvidTtlNotADuration", "identity:\n  svid_ttl: an hour\n",
                  "t.yaml:4:13: identity.svid_ttl: ", "got \"an hour\""},
        Malformed{"SvidFilesWithoutDir", "identity:\n  source: svid_files\n",
                  "t.yaml:4:3: identity.svid_dir: ", "source is svid_files"},
        Malformed{"BadIdentitySource", "identity:\n  source: spire\n",
                  "t.yaml:4:11: identity.source: ", "expected one of embedded_ca, svid_files"},
        Malformed{"RelativeCaDir", "identity:\n  ca_dir: ca\n",
                  "t.yaml:4:11: identity.ca_dir: ", "expected an absolute path, got \"ca\""},
        Malformed{"UpstreamSourceNotAnAddress", "agent:\n  upstream_source: localhost\n",
                  "t.yaml:4:20: agent.upstream_source: ", "an IPv4 address"},
        Malformed{"UpstreamSource6NotIpv6", "agent:\n  upstream_source6: 127.0.0.6\n",
                  "t.yaml:4:21: agent.upstream_source6: ", "an IPv6 address"},
        Malformed{"BadMetricsAddress", "agent:\n  metrics_address: 9464\n",
                  "t.yaml:4:20: agent.metrics_address: ", "127.0.0.1:9464"},
        Malformed{"BadLogLevel", "agent:\n  log_level: verbose\n", "t.yaml:4:14: agent.log_level: ",
                  "expected one of trace, debug, info, warn, error, got \"verbose\""},
        Malformed{"BadSocketMark", "agent:\n  socket_mark: 0xzz\n",
                  "t.yaml:4:16: agent.socket_mark: ", "a non-zero 32-bit mark"},
        Malformed{"ZeroHandshakeBudget", "agent:\n  max_inbound_handshakes: 0\n",
                  "t.yaml:4:27: agent.max_inbound_handshakes: ", "between 1 and 1000000"},
        Malformed{"NegativePerSourceCap", "agent:\n  max_handshakes_per_source: -5\n",
                  "t.yaml:4:30: agent.max_handshakes_per_source: ", "got \"-5\""},
        Malformed{"FirstByteTimeoutTooShort", "agent:\n  first_byte_timeout: 100ms\n",
                  "t.yaml:4:23: agent.first_byte_timeout: ", "between 1s and 1m"},
        Malformed{"TlsResumptionNotABool", "agent:\n  tls_resumption: yes please\n",
                  "t.yaml:4:19: agent.tls_resumption: ", "true or false"},
        Malformed{"DrainTimeoutTooLong", "agent:\n  drain_timeout: 2h\n",
                  "t.yaml:4:18: agent.drain_timeout: ", "between 0s and 1h"},
        Malformed{"DrainTimeoutNegative", "agent:\n  drain_timeout: -1s\n",
                  "t.yaml:4:18: agent.drain_timeout: ", "between 0s and 1h"},
        Malformed{
            "WorkloadPortIsOutboundPort",
            "workloads:\n  - name: web\n    cgroup: a\n    spiffe_id: spiffe://{trust_domain}/w\n"
            "    ports: [15001]\n",
            "t.yaml:7:13: workloads[0].ports[0]: ", "the agent's outbound port 15001"},
        Malformed{"ZeroSocketMark", "agent:\n  socket_mark: 0\n",
                  "t.yaml:4:16: agent.socket_mark: ", "a non-zero 32-bit mark"},
        Malformed{"KeyNotAScalar", "agent:\n  [a]: 1\n", "t.yaml:4:3: agent: ", "a key name"}),
    [](const ::testing::TestParamInfo<Malformed>& case_info) {
      return std::string(case_info.param.name);
    });

// Without an expected_servers rule an outbound connection accepts any SVID
// of the trust domain as its server: said at every load, per destination.
TEST(ConfigTest, WarnsAboutMeshDestinationsWhoseServersAreNotPinned) {
  auto config = Parse(
      "mesh:\n"
      "  destinations:\n"
      "    - cidr: 10.0.0.0/8\n"
      "    - cidr: fd00::/8\n"
      "      ports: [443, \"8000-8999\"]\n"
      "    - cidr: 192.168.1.0/24\n"
      "      ports: [5432]\n"
      "expected_servers:\n"
      "  - cidr: 10.1.0.0/16\n"  // only part of 10.0.0.0/8
      "    spiffe_id: spiffe://example.org/db/*\n"
      "  - cidr: fd00::/8\n"
      "    ports: [443]\n"  // not 8000-8999
      "    spiffe_id: spiffe://example.org/web\n"
      "  - cidr: 192.168.0.0/16\n"
      "    ports: [\"5000-6000\"]\n"
      "    spiffe_id: spiffe://example.org/pg\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->require_expected_server) << "off unless asked for";
  std::vector<std::string> warnings = ServerIdentityWarnings(*config);
  ASSERT_EQ(warnings.size(), 2u) << ::testing::PrintToString(warnings);
  EXPECT_THAT(warnings[0], HasSubstr("10.0.0.0/8"));
  EXPECT_THAT(warnings[0], HasSubstr("any SVID of example.org"));
  EXPECT_THAT(warnings[0], HasSubstr("expected_servers"));
  EXPECT_THAT(warnings[1], HasSubstr("fd00::/8 ports 443,8000-8999"));
}

TEST(ConfigTest, EveryDestinationPinnedOrStrictModeMeansNoWarning) {
  auto pinned = Parse(
      "mesh:\n"
      "  destinations:\n"
      "    - cidr: 10.1.2.0/24\n"
      "      ports: [5432]\n"
      "expected_servers:\n"
      "  - cidr: 10.1.0.0/16\n"
      "    spiffe_id: spiffe://example.org/db/*\n");
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  EXPECT_THAT(ServerIdentityWarnings(*pinned), ::testing::IsEmpty());

  auto strict = Parse(
      "mesh:\n"
      "  require_expected_server: true\n"
      "  destinations:\n"
      "    - cidr: 10.0.0.0/8\n");
  ASSERT_TRUE(strict.ok()) << strict.status();
  EXPECT_TRUE(strict->require_expected_server);
  EXPECT_THAT(ServerIdentityWarnings(*strict), ::testing::IsEmpty());
}

TEST(ConfigTest, RequireExpectedServerIsABoolean) {
  auto config = Parse(
      "mesh:\n"
      "  require_expected_server: yes please\n");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(),
              HasSubstr("t.yaml:4:28: mesh.require_expected_server: expected true or false"));
}

// Kubernetes mode, with the environment a pod would have (or not).
const ConfigEnvironment kInPod{"node-7", "10.96.0.1", "443"};
const ConfigEnvironment kNoEnvironment{};

absl::StatusOr<Config> ParseIn(const ConfigEnvironment& env, absl::string_view body) {
  return ParseConfig(absl::StrCat(kHeader, body), "t.yaml", env);
}

TEST(KubernetesConfigTest, OffUnlessEnabledAndTheEnvironmentIsNotRead) {
  auto config = ParseIn(kInPod, "agent:\n  node_name: host-a\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->kubernetes.enabled);
  EXPECT_EQ(config->kubernetes.node_name, "");
  EXPECT_EQ(config->kubernetes.api_server, "");
  EXPECT_EQ(config->agent.node_name, "host-a");
}

void ExpectKubernetes(const KubernetesSettings& got, const KubernetesSettings& want) {
  EXPECT_EQ(got.enabled, want.enabled);
  EXPECT_EQ(got.node_name, want.node_name);
  EXPECT_EQ(got.api_server, want.api_server);
  EXPECT_EQ(got.token_file, want.token_file);
  EXPECT_EQ(got.ca_file, want.ca_file);
  EXPECT_EQ(got.namespace_label_key, want.namespace_label_key);
  EXPECT_EQ(got.namespace_label_value, want.namespace_label_value);
  EXPECT_EQ(got.spiffe_id, want.spiffe_id);
  EXPECT_EQ(got.ports_annotation, want.ports_annotation);
}

TEST(KubernetesConfigTest, EnabledTakesItsDefaultsFromThePodEnvironment) {
  auto config = ParseIn(kInPod, "kubernetes:\n  enabled: true\n");
  ASSERT_TRUE(config.ok()) << config.status();
  KubernetesSettings want;
  want.enabled = true;
  want.node_name = "node-7";
  want.api_server = "https://10.96.0.1:443";
  ExpectKubernetes(config->kubernetes, want);
  EXPECT_EQ(want.token_file, "/var/run/secrets/kubernetes.io/serviceaccount/token");
  EXPECT_EQ(want.ca_file, "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt");
  EXPECT_EQ(want.namespace_label_key, "ktrust.io/mesh");
  EXPECT_EQ(want.namespace_label_value, "enabled");
  EXPECT_EQ(want.spiffe_id, "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
  EXPECT_EQ(want.ports_annotation, "ktrust.io/inbound-ports");
  // {node} in SVIDs names the Kubernetes node.
  EXPECT_EQ(config->agent.node_name, "node-7");
}

TEST(KubernetesConfigTest, IPv6ServiceHostIsBracketed) {
  auto config = ParseIn({"n", "fd00:10:96::1", "6443"}, "kubernetes:\n  enabled: true\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->kubernetes.api_server, "https://[fd00:10:96::1]:6443");
}

TEST(KubernetesConfigTest, FileWinsOverEnvironment) {
  auto config =
      ParseIn(kInPod,
              "agent:\n"
              "  node_name: host-a\n"
              "kubernetes:\n"
              "  enabled: true\n"
              "  node_name: worker-3.example\n"
              "  api_server: https://api.cluster.example:6443\n"
              "  token_file: /etc/ktrust/token\n"
              "  ca_file: /etc/ktrust/api-ca.crt\n"
              "  namespace_label: mesh.example.com/ktrust=on\n"
              "  spiffe_id: spiffe://{trust_domain}/k8s/{namespace}/{pod_name}/{pod_uid}\n"
              "  ports_annotation: mesh.example.com/ports\n"
              "workloads:\n"
              "  - name: pods\n"
              "    cgroup: kubepods.slice/**\n"
              "    spiffe_id: spiffe://{trust_domain}/sa/{service_account}\n");
  ASSERT_TRUE(config.ok()) << config.status();
  ExpectKubernetes(
      config->kubernetes,
      {true, "worker-3.example", "https://api.cluster.example:6443", "/etc/ktrust/token",
       "/etc/ktrust/api-ca.crt", "mesh.example.com/ktrust", "on",
       "spiffe://{trust_domain}/k8s/{namespace}/{pod_name}/{pod_uid}", "mesh.example.com/ports"});
  EXPECT_EQ(config->agent.node_name, "host-a") << "an explicit agent.node_name stays";
  EXPECT_EQ(config->workloads[0].spiffe_id, "spiffe://{trust_domain}/sa/{service_account}");
}

TEST(KubernetesConfigTest, DisabledSectionIsStillCheckedButNeedsNoEnvironment) {
  auto config = ParseIn(kNoEnvironment, "kubernetes:\n  enabled: false\n  ca_file: /x/ca.crt\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->kubernetes.enabled);
  EXPECT_EQ(config->kubernetes.ca_file, "/x/ca.crt");
  auto bad = ParseIn(kNoEnvironment, "kubernetes:\n  enabled: false\n  ca_file: ca.crt\n");
  EXPECT_THAT(bad.status().message(), HasSubstr("kubernetes.ca_file: expected an absolute path"));
}

struct BadKubernetes {
  const char* name;
  ConfigEnvironment env;
  std::string yaml;  // after kHeader: line 3 is the first
  const char* location;
  const char* says;
};

void PrintTo(const BadKubernetes& m, std::ostream* os) { *os << m.name; }

class BadKubernetesConfigTest : public ::testing::TestWithParam<BadKubernetes> {};

TEST_P(BadKubernetesConfigTest, IsRefusedWithWhereAndWhy) {
  const BadKubernetes& m = GetParam();
  auto config = ParseIn(m.env, m.yaml);
  ASSERT_FALSE(config.ok()) << m.name;
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << config.status();
  EXPECT_THAT(std::string(config.status().message()), StartsWith(m.location));
  EXPECT_THAT(std::string(config.status().message()), HasSubstr(m.says));
  EXPECT_EQ(config.status().message().find('\n'), absl::string_view::npos);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BadKubernetesConfigTest,
    ::testing::Values(
        BadKubernetes{"UnknownKey", kInPod,
                      "kubernetes:\n  enabled: true\n  namespace_lable: a=b\n",
                      "t.yaml:5:3: kubernetes.namespace_lable: ",
                      "unknown key; expected one of enabled, node_name, api_server"},
        BadKubernetes{"NotAMapping", kInPod, "kubernetes: true\n",
                      "t.yaml:3:13: kubernetes: ", "expected a mapping with the keys enabled"},
        BadKubernetes{"EnabledNotBoolean", kInPod, "kubernetes:\n  enabled: yes\n",
                      "t.yaml:4:12: kubernetes.enabled: ", "expected true or false"},
        BadKubernetes{"NoNodeName", kNoEnvironment,
                      "kubernetes:\n  enabled: true\n  api_server: https://10.0.0.1\n",
                      "t.yaml:4:3: kubernetes.node_name: ", "NODE_NAME is not set either"},
        BadKubernetes{"EmptyNodeNameInEnvironment",
                      {"", "10.0.0.1", "443"},
                      "kubernetes:\n  enabled: true\n",
                      "t.yaml:4:3: kubernetes.node_name: ",
                      "NODE_NAME is not set either"},
        BadKubernetes{"BadNodeNameInEnvironment",
                      {"Node_1", "10.0.0.1", "443"},
                      "kubernetes:\n  enabled: true\n",
                      "t.yaml:4:3: kubernetes.node_name: ",
                      "\"Node_1\" from the environment variable NODE_NAME"},
        BadKubernetes{"BadNodeName", kInPod, "kubernetes:\n  node_name: Node/1\n",
                      "t.yaml:4:14: kubernetes.node_name: ", "a lowercase DNS subdomain"},
        BadKubernetes{"NoApiServer",
                      {"node-1", std::nullopt, std::nullopt},
                      "kubernetes:\n  enabled: true\n",
                      "t.yaml:4:3: kubernetes.api_server: ",
                      "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are set; they are not"},
        BadKubernetes{"HalfAnApiServerEnvironment",
                      {"node-1", "10.0.0.1", std::nullopt},
                      "kubernetes:\n  enabled: true\n",
                      "t.yaml:4:3: kubernetes.api_server: ",
                      "they are not"},
        BadKubernetes{"BadServicePort",
                      {"node-1", "10.0.0.1", "https"},
                      "kubernetes:\n  enabled: true\n",
                      "t.yaml:4:3: kubernetes.api_server: ",
                      "from KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT"},
        BadKubernetes{"PlainHttpApiServer", kInPod, "kubernetes:\n  api_server: http://10.0.0.1\n",
                      "t.yaml:4:15: kubernetes.api_server: ", "an https URL"},
        BadKubernetes{"ApiServerWithPath", kInPod,
                      "kubernetes:\n  api_server: https://10.0.0.1/api\n",
                      "t.yaml:4:15: kubernetes.api_server: ", "with no path"},
        BadKubernetes{"ApiServerBadPort", kInPod,
                      "kubernetes:\n  api_server: https://10.0.0.1:70000\n",
                      "t.yaml:4:15: kubernetes.api_server: ", "an https URL"},
        BadKubernetes{"ApiServerEmptyPort", kInPod,
                      "kubernetes:\n  api_server: \"https://[::1]:\"\n",
                      "t.yaml:4:15: kubernetes.api_server: ", "an https URL"},
        BadKubernetes{"RelativeTokenFile", kInPod, "kubernetes:\n  token_file: token\n",
                      "t.yaml:4:15: kubernetes.token_file: ", "an absolute path"},
        BadKubernetes{"LabelWithoutValue", kInPod,
                      "kubernetes:\n  namespace_label: ktrust.io/mesh\n",
                      "t.yaml:4:20: kubernetes.namespace_label: ", "a label \"key=value\""},
        BadKubernetes{"LabelEmptyValue", kInPod,
                      "kubernetes:\n  namespace_label: ktrust.io/mesh=\n",
                      "t.yaml:4:20: kubernetes.namespace_label: ", "a non-empty"},
        BadKubernetes{"LabelBadPrefix", kInPod,
                      "kubernetes:\n  namespace_label: Ktrust.IO/mesh=enabled\n",
                      "t.yaml:4:20: kubernetes.namespace_label: ", "a qualified key"},
        BadKubernetes{"LabelValueTooLong", kInPod,
                      "kubernetes:\n  namespace_label: mesh=" + std::string(64, 'a') + "\n",
                      "t.yaml:4:20: kubernetes.namespace_label: ", "up to 63"},
        BadKubernetes{"BadAnnotationKey", kInPod,
                      "kubernetes:\n  ports_annotation: ktrust.io/ports/inbound\n",
                      "t.yaml:4:21: kubernetes.ports_annotation: ", "an annotation key"},
        BadKubernetes{"TemplateUnknownPlaceholder", kInPod,
                      "kubernetes:\n  spiffe_id: spiffe://{trust_domain}/ns/{ns}\n",
                      "t.yaml:4:14: kubernetes.spiffe_id: ", "unknown placeholder {ns}"},
        BadKubernetes{
            "TemplateWithCgroupPlaceholder", kInPod,
            "kubernetes:\n  spiffe_id: spiffe://{trust_domain}/{unit}\n",
            "t.yaml:4:14: kubernetes.spiffe_id: ", "{unit} belongs to `workloads` templates"},
        BadKubernetes{"TemplateOtherTrustDomain", kInPod,
                      "kubernetes:\n  spiffe_id: spiffe://other.org/ns/{namespace}\n",
                      "t.yaml:4:14: kubernetes.spiffe_id: ", "outside trust domain example.org"},
        // A workload template with a pod's placeholders outside Kubernetes mode.
        BadKubernetes{"PodPlaceholderWithoutKubernetes", kInPod,
                      "workloads:\n  - name: web\n    cgroup: a\n"
                      "    spiffe_id: spiffe://{trust_domain}/ns/{namespace}\n",
                      "t.yaml:6:16: workloads[0].spiffe_id: ",
                      "come from the Kubernetes API: set kubernetes.enabled: true"},
        BadKubernetes{"PodPlaceholderWithKubernetesOff", kInPod,
                      "kubernetes:\n  enabled: false\n"
                      "workloads:\n  - name: web\n    cgroup: a\n"
                      "    spiffe_id: spiffe://{trust_domain}/pod/{pod_uid}\n",
                      "t.yaml:8:16: workloads[0].spiffe_id: ", "set kubernetes.enabled: true"}),
    [](const ::testing::TestParamInfo<BadKubernetes>& case_info) {
      return std::string(case_info.param.name);
    });

}  // namespace
}  // namespace ktrust
