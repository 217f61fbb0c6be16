// The CLI's rendering of each view, without an agent.
#include "render.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ktrust::cli {
namespace {

using control::ConnectionView;
using control::DenialView;
using control::WorkloadView;
using ::testing::HasSubstr;
using ::testing::Not;

// 2026-01-01T00:00:00Z
constexpr int64_t kNow = 1767225600;
absl::Time Now() { return absl::FromUnixSeconds(kNow); }

TEST(RenderTable, AlignsColumnsAndDashesEmptyCells) {
  EXPECT_EQ(RenderTable({"A", "LONG HEADER", "C"}, {{"wide cell", "", "x"}, {"b", "y", ""}}),
            "A          LONG HEADER  C\n"
            "wide cell  -            x\n"
            "b          y            -\n");
}

TEST(RenderTable, CountsCharactersNotBytes) {
  EXPECT_EQ(RenderTable({"N", "X"}, {{"é", "1"}, {"ab", "2"}}),
            "N   X\n"
            "é   1\n"
            "ab  2\n");
}

TEST(HumanUnits, BytesAndAges) {
  EXPECT_EQ(HumanBytes(0), "0 B");
  EXPECT_EQ(HumanBytes(1023), "1023 B");
  EXPECT_EQ(HumanBytes(1024), "1.0 KiB");
  EXPECT_EQ(HumanBytes(1536), "1.5 KiB");
  EXPECT_EQ(HumanBytes(5ull << 30), "5.0 GiB");
  EXPECT_EQ(HumanAge(-3), "0s");
  EXPECT_EQ(HumanAge(42.9), "42s");
  EXPECT_EQ(HumanAge(252), "4m12s");
  EXPECT_EQ(HumanAge(7500), "2h05m");
  EXPECT_EQ(HumanAge(273600), "3d04h");
  EXPECT_EQ(FormatUnixTime(0), "-");
  EXPECT_EQ(FormatUnixTime(kNow), "2026-01-01T00:00:00Z");
  EXPECT_EQ(FormatExpiry(kNow + 2700, Now()), "2026-01-01T00:45:00Z (in 45m00s)");
  EXPECT_EQ(FormatExpiry(kNow - 180, Now()), "2025-12-31T23:57:00Z (expired 3m00s ago)");
}

TEST(RenderStatus, ShowsEverySection) {
  control::StatusView s;
  s.version = "0.1.0";
  s.node = "node-a";
  s.started = kNow - 3720;
  s.data_path = "userspace";
  s.data_path_reason = "the kernel has no TLS module";
  s.kernel_features = {{"btf", true, ""}, {"ktls", false, "TCP_ULP tls: ENOENT"}};
  s.bpf = {true, "/sys/fs/bpf/ktrust", {"connect4 on /sys/fs/cgroup", "sockops"}, 2};
  s.config = {"/etc/ktrust/config.yaml", 3, kNow - 60, false, "line 4: unknown key \"mdoe\""};
  s.ca = {"example.org", kNow + 86400 * 364};
  s.bundle_expires_at = kNow + 86400 * 364;
  s.counts = {4, 120, 3, 2, 5};
  s.ready = false;
  s.not_ready_reason = "no SVID for web yet";
  s.zero_hop = {true,
                "/run/ktrust/holder.sock",
                "",
                {{41, "exec", "web", "zero-hop"},
                 {52, "oci", "", "proxy (no enrolled workload has cgroup /x)"}}};
  EXPECT_EQ(RenderStatus(s, Now()),
            "ktrustd 0.1.0 on node-a, up 1h02m (since 2025-12-31T22:58:00Z)\n"
            "ready        no: no SVID for web yet\n"
            "data path    userspace (the kernel has no TLS module)\n"
            "kernel       btf yes\n"
            "             ktls no (TCP_ULP tls: ENOENT)\n"
            "zero-hop     holder connected (/run/ktrust/holder.sock)\n"
            "             pid 41 (exec) web: zero-hop\n"
            "             pid 52 (oci) no workload: proxy (no enrolled workload has cgroup /x)\n"
            "bpf          attached, pinned at /sys/fs/bpf/ktrust, 2 links adopted\n"
            "             connect4 on /sys/fs/cgroup\n"
            "             sockops\n"
            "config       /etc/ktrust/config.yaml, generation 3, loaded 2025-12-31T23:59:00Z\n"
            "             last reload failed: line 4: unknown key \"mdoe\"\n"
            "ca           example.org, expires 2026-12-31T00:00:00Z (in 364d00h)\n"
            "bundle       expires 2026-12-31T00:00:00Z (in 364d00h)\n"
            "connections  4 active, 120 total, 3 failed handshakes, 2 denied\n"
            "workloads    5\n");
}

// The lines an empty status ends with.
constexpr char kEmptyStatusRest[] =
    "data path    -\n"
    "kernel       -\n"
    "bpf          not attached\n"
    "config       -\n"
    "ca           -\n"
    "bundle       -\n"
    "connections  0 active, 0 total, 0 failed handshakes, 0 denied\n"
    "workloads    0\n";

TEST(RenderStatus, AnEmptyStatusPrintsDashes) {
  control::StatusView s;
  s.ready = true;
  EXPECT_EQ(RenderStatus(s, Now()),
            "ktrustd - on -\n"
            "ready        yes\n" +
                std::string(kEmptyStatusRest));
}

TEST(RenderStatus, ADrainingAgentSaysWhatItCarriesAndUntilWhen) {
  control::StatusView s;
  s.ready = true;
  s.drain = {true,
             "handed over to ktrustd pid 42",
             kNow - 5,
             kNow + 25,
             3,
             1,
             "ktrustd pid 42 (its status: ktrust status)",
             "",
             0,
             0};
  EXPECT_EQ(RenderStatus(s, Now()),
            "ktrustd - on -\n"
            "ready        yes\n"
            "draining     handed over to ktrustd pid 42: 3 connections open (1 in handshake), "
            "closed at 2026-01-01T00:00:25Z (in 25s) if still open; accepting no new connections\n"
            "successor    ktrustd pid 42 (its status: ktrust status)\n" +
                std::string(kEmptyStatusRest));
}

TEST(RenderStatus, AHandoverSaysHowManyConnectionsMovedEachWay) {
  control::StatusView s;
  s.ready = true;
  s.drain.draining = true;
  s.drain.reason = "handed over to ktrustd pid 42";
  s.drain.deadline = kNow + 25;
  s.drain.connections = 2;
  s.drain.moved = 51;
  std::string old_agent = RenderStatus(s, Now());
  EXPECT_THAT(old_agent,
              HasSubstr("\ndraining     handed over to ktrustd pid 42: 2 connections open"));
  EXPECT_THAT(old_agent, HasSubstr("\nmoved        51 connections to the successor\n"));
  control::StatusView n;
  n.ready = true;
  n.drain.predecessor = "ktrustd pid 7 is draining";
  n.drain.moved_in = 51;
  EXPECT_THAT(RenderStatus(n, Now()),
              HasSubstr("\nmoved in     51 connections from the predecessor\n"));
  EXPECT_THAT(RenderStatus(control::StatusView{}, Now()), Not(HasSubstr("moved")));
}

TEST(RenderStatus, KubernetesModeSaysWhetherThePodsCanBeResolved) {
  control::StatusView s;
  s.ready = true;
  s.kubernetes = {true, true, "https://10.96.0.1:443", "node-7", 12, 2, 5, 1, ""};
  EXPECT_THAT(RenderStatus(s, Now()),
              HasSubstr("\nkubernetes   synced with https://10.96.0.1:443 as node node-7: 12 pods "
                        "here, 5 enrolled, 1 refused; 2 namespaces opted in\n"));
  s.kubernetes.synced = false;
  s.kubernetes.problem = "pods: HTTP 403 Forbidden (3 failures in a row, next try in 4s)";
  EXPECT_THAT(RenderStatus(s, Now()),
              HasSubstr("\nkubernetes   NOT synced (its pods' mesh connections are refused "
                        "meanwhile) with https://10.96.0.1:443 as node node-7: 12 pods here, 5 "
                        "enrolled, 1 refused; 2 namespaces opted in\n"
                        "             pods: HTTP 403 Forbidden (3 failures in a row, next try in "
                        "4s)\n"));
  s.kubernetes = {};
  EXPECT_THAT(RenderStatus(s, Now()), Not(HasSubstr("kubernetes"))) << "quiet outside it";
}

TEST(RenderConnections, OneRowPerConnection) {
  ConnectionView out;
  out.id = 7;
  out.direction = "outbound";
  out.workload = "web";
  out.local_id = "spiffe://example.org/web";
  out.peer_id = "spiffe://example.org/db";
  out.app_address = "10.0.0.1:40000";
  out.wire_peer = "10.0.0.2:15006";
  out.state = "established";
  out.tls_version = "TLSv1.3";
  out.cipher = "TLS_AES_128_GCM_SHA256";
  out.data_path = "ktls-sw";
  out.bytes_to_wire = 1536;
  out.bytes_from_wire = 10;
  out.age_seconds = 252;
  ConnectionView in;
  in.id = 12;
  in.direction = "inbound";
  in.workload = "db";
  in.state = "handshaking";
  EXPECT_EQ(RenderConnections({out, in}),
            "ID  DIRECTION  WORKLOAD  LOCAL ID                  PEER ID                  "
            "APP             WIRE PEER       STATE        TLS                         "
            "DATA PATH  SENT     RECEIVED  AGE\n"
            "7   outbound   web       spiffe://example.org/web  spiffe://example.org/db  "
            "10.0.0.1:40000  10.0.0.2:15006  established  TLSv1.3/AES_128_GCM_SHA256  "
            "ktls-sw    1.5 KiB  10 B      4m12s\n"
            "12  inbound    db        -                         -                        "
            "-               -               handshaking  -                           "
            "-          0 B      0 B       0s\n");
  EXPECT_EQ(RenderConnections({}), "no connections\n");
}

TEST(RenderWorkloads, OneRowPerWorkload) {
  WorkloadView web{"web",       "system.slice/web.service",
                   1234,        "spiffe://example.org/web",
                   "enforce",   {80, 443},
                   kNow + 2700, "pod 10.1.2.3",
                   "",          "zero-hop (2 processes)",
                   {}};
  WorkloadView batch{"batch",
                     "system.slice/batch.service",
                     99,
                     "spiffe://example.org/batch",
                     "permissive",
                     {},
                     0,
                     "node",
                     "",
                     "proxy",
                     {}};
  EXPECT_EQ(RenderWorkloads({web, batch}, Now()),
            "NAME   SPIFFE ID                   MODE        PORTS   CGROUP                      "
            "SVID               NETWORK       DATA PATH\n"
            "web    spiffe://example.org/web    enforce     80,443  system.slice/web.service    "
            "expires in 45m00s  pod 10.1.2.3  zero-hop (2 processes)\n"
            "batch  spiffe://example.org/batch  permissive  -       system.slice/batch.service  "
            "-                  node          proxy\n");
  EXPECT_EQ(RenderWorkloads({}, Now()), "no workloads\n");
}

// Kubernetes mode: pods get namespace, pod and service account columns; a
// pod the agent could not resolve shows its UID.
TEST(RenderWorkloads, PodsGetTheirColumns) {
  auto view = [](std::string name, std::string network, std::string problem, control::PodView pod) {
    WorkloadView w;
    w.name = std::move(name);
    w.mode = "enforce";
    w.network = std::move(network);
    w.problem = std::move(problem);
    w.pod = std::move(pod);
    return w;
  };
  WorkloadView web = view("mesh/web-0", "pod 10.244.1.7", "",
                          {"mesh", "web-0", "web", "0b7c1f5e-3a2d-4c8e-9f10-2b3c4d5e6f70"});
  web.spiffe_id = "spiffe://cluster.local/ns/mesh/sa/web";
  web.ports = {8080};
  WorkloadView unknown = view("pod:11111111-2222-4333-8444-555555555555", "pod 10.244.1.8",
                              "pod_unknown: not among this node's pods",
                              {"", "", "", "11111111-2222-4333-8444-555555555555"});
  WorkloadView host = view("sshd", "node", "", {});
  std::string out = RenderWorkloads({web, unknown, host}, Now());
  EXPECT_NE(out.find("DATA PATH  NAMESPACE  POD                                       SERVICE "
                     "ACCOUNT\n"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("proxy      mesh       web-0                                     web\n"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("proxy      -          uid 11111111-2222-4333-8444-555555555555  -\n"),
            std::string::npos)
      << out;
  // Without pods the table is as it was.
  EXPECT_EQ(RenderWorkloads({host}, Now()).find("NAMESPACE"), std::string::npos);
  ConnectionView c;
  c.id = 3;
  c.direction = "outbound";
  c.workload = "mesh/web-0";
  c.pod = web.pod;
  EXPECT_NE(RenderConnections({c}).find("AGE  NAMESPACE  POD    SERVICE ACCOUNT\n"),
            std::string::npos);
}

TEST(RenderPolicyCheck, AllowedAndDenied) {
  control::PolicyCheckParams query{"spiffe://example.org/web", "db", 5432};
  EXPECT_EQ(RenderPolicyCheck(query, {true, "allowed by rule \"web to db\"", "policy.yaml:12"}),
            "allowed: spiffe://example.org/web -> db port 5432\n"
            "  reason  allowed by rule \"web to db\"\n"
            "  rule    policy.yaml:12\n");
  EXPECT_EQ(RenderPolicyCheck(query, {false, "no rule allows this peer", ""}),
            "denied: spiffe://example.org/web -> db port 5432\n"
            "  reason  no rule allows this peer\n"
            "  rule    -\n");
}

TEST(RenderDenials, OneRowPerDenial) {
  DenialView d{static_cast<double>(kNow) + 0.5,
               "inbound",
               "db",
               "spiffe://example.org/batch",
               "10.0.0.9:51000",
               "10.0.0.2:5432",
               5432,
               "denied",
               "no rule allows spiffe://example.org/batch"};
  DenialView plain{static_cast<double>(kNow + 1),
                   "inbound",
                   "db",
                   "",
                   "10.0.0.8:50000",
                   "10.0.0.2:5432",
                   5432,
                   "plaintext_client",
                   "the client did not speak TLS"};
  EXPECT_EQ(
      RenderDenials({d, plain}),
      "TIME                  DIRECTION  WORKLOAD  PEER ID                     PEER            "
      "LOCAL          PORT  RESULT            REASON\n"
      "2026-01-01T00:00:00Z  inbound    db        spiffe://example.org/batch  10.0.0.9:51000  "
      "10.0.0.2:5432  5432  denied            no rule allows spiffe://example.org/batch\n"
      "2026-01-01T00:00:01Z  inbound    db        -                           10.0.0.8:50000  "
      "10.0.0.2:5432  5432  plaintext_client  the client did not speak TLS\n");
  EXPECT_EQ(RenderDenials({}), "no denials\n");
}

TEST(RenderWorkloads, ACgroupWithNoIdSaysWhyItIsRefused) {
  WorkloadView user{"services",
                    "system.slice/user@1000.service",
                    7,
                    "",
                    "enforce",
                    {},
                    0,
                    "node",
                    "its SPIFFE ID template spiffe://{trust_domain}/svc/{unit} gives no valid ID: "
                    "character '@' is not allowed",
                    "proxy",
                    {}};
  std::string out = RenderWorkloads({user}, Now());
  EXPECT_NE(out.find("services  -          enforce  -      system.slice/user@1000.service  "
                     "refused, no SPIFFE ID: its SPIFFE ID template "
                     "spiffe://{trust_domain}/svc/{unit} gives no valid ID: character '@' is "
                     "not allowed  node     proxy\n"),
            std::string::npos)
      << out;
}

// Warnings come right under "ready", one per line; without any, the status
// is exactly as it was.
TEST(RenderStatus, ShowsWarnings) {
  control::StatusView s;
  s.ready = true;
  std::string quiet = RenderStatus(s, Now());
  s.warnings = {"outbound to 10.0.0.0/8 accepts any server of example.org", "second warning"};
  std::string expected = quiet;
  expected.insert(quiet.find("data path"),
                  "warnings     outbound to 10.0.0.0/8 accepts any server of example.org\n"
                  "             second warning\n");
  EXPECT_EQ(RenderStatus(s, Now()), expected);
  EXPECT_EQ(quiet.find("warnings"), std::string::npos);
}

TEST(EscapeForTerminal, ControlBytesBecomeVisibleText) {
  EXPECT_EQ(EscapeForTerminal("spiffe://example.org/web"), "spiffe://example.org/web");
  EXPECT_EQ(EscapeForTerminal("caf\xc3\xa9 \\x2d"), "caf\xc3\xa9 \\x2d");  // UTF-8 and '\\' kept
  EXPECT_EQ(EscapeForTerminal("a\x1b[2Jb\rc\nd\ae\tf\x7fg"),
            "a\\x1b[2Jb\\x0dc\\x0ad\\x07e\\x09f\\x7fg");
  // C1 controls (CSI is U+009B), a bare 0x9B (8-bit terminals read it as CSI),
  // and a right-to-left override that would reorder what follows.
  EXPECT_EQ(EscapeForTerminal("a\xc2\x9b"
                              "2Jb\x9b"
                              "c\xe2\x80\xae"
                              "d"),
            "a\\u009b2Jb\\x9bc\\u202ed");
  // A truncated sequence at the end.
  EXPECT_EQ(EscapeForTerminal("x\xe2\x80"), "x\\xe2\\x80");
}

// A hostile peer chooses the SPIFFE ID in its certificate and, through it,
// parts of the reasons: nothing it sends may move the cursor, clear the
// screen or start a line of its own in any text the CLI prints.
TEST(EscapeForTerminal, EveryRenderingEscapesPeerText) {
  const std::string hostile = "spiffe://example.org/a\x1b[2J\rfake\nline\a";
  const std::string shown = "spiffe://example.org/a\\x1b[2J\\x0dfake\\x0aline\\x07";
  ConnectionView c;
  c.id = 1;
  c.peer_id = hostile;
  c.workload = hostile;
  DenialView d;
  d.peer_id = hostile;
  d.reason = "peer " + hostile + " not allowed";
  WorkloadView w;
  w.name = hostile;
  w.spiffe_id = hostile;
  w.problem = hostile;
  control::StatusView s;
  s.not_ready_reason = hostile;
  s.config.last_reload_ok = false;
  s.config.last_reload_error = hostile;
  s.warnings = {hostile};
  control::PolicyCheckParams query{hostile, "db", 1};
  for (const std::string& out :
       {RenderConnections({c}), RenderDenials({d}), RenderWorkloads({w}, Now()),
        RenderStatus(s, Now()), RenderPolicyCheck(query, {false, hostile, hostile})}) {
    EXPECT_NE(out.find(shown), std::string::npos) << out;
    for (char ch : out) {
      unsigned char b = static_cast<unsigned char>(ch);
      EXPECT_TRUE(ch == '\n' || (b >= 0x20 && b != 0x7f)) << "byte " << int(b) << " in\n" << out;
    }
    EXPECT_EQ(out.find("\nline"), std::string::npos) << out;
    EXPECT_EQ(out.find("\nfake"), std::string::npos) << out;
  }
}

}  // namespace
}  // namespace ktrust::cli
