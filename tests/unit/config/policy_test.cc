#include "ktrust/config/policy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "absl/strings/str_cat.h"

namespace ktrust {
namespace {

using ::testing::HasSubstr;

SpiffeId Id(absl::string_view text) { return *SpiffeId::Parse(text); }

// Line numbers matter: the reasons quote them.
constexpr absl::string_view kPolicyYaml =
    "version: 1\n"                             // 1
    "trust_domain: td\n"                       // 2
    "workloads:\n"                             // 3
    "  - name: web\n"                          // 4
    "    cgroup: system.slice/web.service\n"   // 5
    "    spiffe_id: spiffe://td/web\n"         // 6
    "    ports: [8080, 8443]\n"                // 7
    "  - name: db\n"                           // 8
    "    cgroup: system.slice/db.service\n"    // 9
    "    spiffe_id: spiffe://td/ns/prod/db\n"  // 10
    "    mode: permissive\n"                   // 11
    "    ports: [5432]\n"                      // 12
    "  - name: idle\n"                         // 13
    "    cgroup: system.slice/idle.service\n"  // 14
    "    spiffe_id: spiffe://td/idle\n"        // 15
    "    mode: off\n"                          // 16
    "policy:\n"                                // 17
    "  - to: web\n"                            // 18
    "    ports: [8080]\n"                      // 19
    "    from: [spiffe://td/client]\n"         // 20
    "  - to: web\n"                            // 21
    "    ports: [\"9000-9099\"]\n"             // 22
    "    from: [spiffe://td/ns/prod/*]\n"      // 23
    "  - to: spiffe://td/ns/prod/*\n"          // 24
    "    from: [spiffe://td/ops/backup]\n"     // 25
    "  - to: idle\n"                           // 26
    "    from:\n"                              // 27
    "      - spiffe://other.org/a\n"           // 28
    "      - spiffe://td/b\n";                 // 29

class PolicyTest : public ::testing::Test {
 protected:
  PolicyTest() : config_(*ParseConfig(kPolicyYaml, "policy.yaml")), policy_(config_) {}

  PolicyCheckResult Check(absl::string_view from, absl::string_view workload,
                          absl::string_view local, uint16_t port) {
    SpiffeId local_id = Id(local);
    return policy_.Check(Id(from), workload, &local_id, port);
  }

  Config config_;
  PolicyAuthorizer policy_;
};

struct Decision {
  const char* from;
  const char* workload;
  const char* local;
  uint16_t port;
  bool allowed;
  const char* origin;  // "" on default deny
};

TEST_F(PolicyTest, DecisionTable) {
  for (const Decision& d : {
           Decision{"spiffe://td/client", "web", "spiffe://td/web", 8080, true, "policy.yaml:18"},
           // Exact IDs are exact.
           Decision{"spiffe://td/client/x", "web", "spiffe://td/web", 8080, false, ""},
           Decision{"spiffe://other.org/client", "web", "spiffe://td/web", 8080, false, ""},
           // The workload's other port has no rule: default deny.
           Decision{"spiffe://td/client", "web", "spiffe://td/web", 8443, false, ""},
           // Port ranges include both ends.
           Decision{"spiffe://td/ns/prod/api", "web", "spiffe://td/web", 9000, true,
                    "policy.yaml:21"},
           Decision{"spiffe://td/ns/prod/api", "web", "spiffe://td/web", 9099, true,
                    "policy.yaml:21"},
           Decision{"spiffe://td/ns/prod/api", "web", "spiffe://td/web", 9100, false, ""},
           Decision{"spiffe://td/ns/prod/api", "web", "spiffe://td/web", 8999, false, ""},
           // Prefix patterns: whole segments, at least one more.
           Decision{"spiffe://td/ns/prod/a/b", "web", "spiffe://td/web", 9001, true,
                    "policy.yaml:21"},
           Decision{"spiffe://td/ns/production", "web", "spiffe://td/web", 9001, false, ""},
           Decision{"spiffe://td/ns/production/api", "web", "spiffe://td/web", 9001, false, ""},
           Decision{"spiffe://td/ns/prod", "web", "spiffe://td/web", 9001, false, ""},
           // A rule written against the local ID, every port; the mode
           // (permissive here) does not change who may connect.
           Decision{"spiffe://td/ops/backup", "db", "spiffe://td/ns/prod/db", 5432, true,
                    "policy.yaml:24"},
           Decision{"spiffe://td/ops/backup", "db", "spiffe://td/ns/prod/db", 1, true,
                    "policy.yaml:24"},
           Decision{"spiffe://td/client", "db", "spiffe://td/ns/prod/db", 5432, false, ""},
           // The same rule does not reach a workload whose ID it does not match.
           Decision{"spiffe://td/ops/backup", "web", "spiffe://td/web", 8080, false, ""},
           // Mode off: the rules still decide.
           Decision{"spiffe://other.org/a", "idle", "spiffe://td/idle", 22, true, "policy.yaml:26"},
           Decision{"spiffe://td/b", "idle", "spiffe://td/idle", 22, true, "policy.yaml:26"},
           Decision{"spiffe://td/c", "idle", "spiffe://td/idle", 22, false, ""},
       }) {
    PolicyCheckResult result = Check(d.from, d.workload, d.local, d.port);
    EXPECT_EQ(result.allowed, d.allowed)
        << d.from << " -> " << d.workload << ":" << d.port << ": " << result.reason;
    EXPECT_EQ(result.origin, d.origin) << d.from << " -> " << d.workload << ":" << d.port;
  }
}

TEST_F(PolicyTest, AllowedReasonNamesTheRule) {
  EXPECT_EQ(Check("spiffe://td/client", "web", "spiffe://td/web", 8080).reason,
            "allowed by policy rule policy.yaml:18 (to web, ports 8080, from spiffe://td/client)");
  EXPECT_EQ(Check("spiffe://td/ns/prod/x", "web", "spiffe://td/web", 9050).reason,
            "allowed by policy rule policy.yaml:21 (to web, ports 9000-9099, from "
            "spiffe://td/ns/prod/*)");
  EXPECT_EQ(Check("spiffe://td/ops/backup", "db", "spiffe://td/ns/prod/db", 5432).reason,
            "allowed by policy rule policy.yaml:24 (to spiffe://td/ns/prod/*, all ports, from "
            "spiffe://td/ops/backup)");
}

TEST_F(PolicyTest, DeniedReasonSaysWhatWouldBeAllowed) {
  // A rule for the workload, none for the port.
  EXPECT_EQ(Check("spiffe://td/x", "web", "spiffe://td/web", 8443).reason,
            "SPIFFE ID spiffe://td/x is not allowed for port 8443 of workload web; rules for web "
            "allow ports 8080, 9000-9099");
  // A rule for the port, not for this peer.
  EXPECT_EQ(
      Check("spiffe://td/x", "web", "spiffe://td/web", 8080).reason,
      "SPIFFE ID spiffe://td/x is not allowed for port 8080 of workload web; port 8080 of web "
      "allows spiffe://td/client");
  // No rule at all.
  Config bare = config_;
  bare.policy.clear();
  SpiffeId web = Id("spiffe://td/web");
  EXPECT_EQ(PolicyAuthorizer(bare).Check(Id("spiffe://td/x"), "web", &web, 8080).reason,
            "SPIFFE ID spiffe://td/x is not allowed for port 8080 of workload web; no policy rule "
            "applies to web");
}

TEST_F(PolicyTest, WithoutTheLocalIdOnlyNamedRulesApply) {
  EXPECT_TRUE(policy_.Check(Id("spiffe://td/client"), "web", nullptr, 8080).allowed);
  PolicyCheckResult result = policy_.Check(Id("spiffe://td/ops/backup"), "db", nullptr, 5432);
  EXPECT_FALSE(result.allowed);
  EXPECT_THAT(result.reason, HasSubstr("no policy rule applies to db"));
}

TEST_F(PolicyTest, ByIdWhenTheWorkloadNameIsUnknown) {
  SpiffeId db = Id("spiffe://td/ns/prod/db");
  EXPECT_TRUE(policy_.Check(Id("spiffe://td/ops/backup"), "", &db, 5432).allowed);
  PolicyCheckResult denied = policy_.Check(Id("spiffe://td/x"), "", &db, 5432);
  EXPECT_FALSE(denied.allowed);
  EXPECT_THAT(denied.reason, HasSubstr("of workload spiffe://td/ns/prod/db"));
}

TEST_F(PolicyTest, AuthorizeAgreesWithCheck) {
  SpiffeId peer = Id("spiffe://td/client");
  std::string workload = "web";
  SpiffeId local = Id("spiffe://td/web");
  AuthorizationDecision allowed = policy_.Authorize({peer, workload, local, 8080});
  EXPECT_TRUE(allowed.allowed);
  EXPECT_THAT(allowed.reason, HasSubstr("policy.yaml:18"));
  AuthorizationDecision denied = policy_.Authorize({peer, workload, local, 8443});
  EXPECT_FALSE(denied.allowed);
  EXPECT_THAT(denied.reason, HasSubstr("is not allowed for port 8443 of workload web"));
}

TEST(PolicyAuthorizerTest, EmptyPolicyDeniesEverything) {
  Config config;
  config.trust_domain = "td";
  PolicyAuthorizer policy(config);
  SpiffeId peer = Id("spiffe://td/a");
  std::string workload = "web";
  SpiffeId local = Id("spiffe://td/web");
  EXPECT_FALSE(policy.Authorize({peer, workload, local, 80}).allowed);
}

TEST(PolicyAuthorizerTest, OutlivesTheConfigAndServesManyThreads) {
  std::unique_ptr<PolicyAuthorizer> policy;
  {
    auto config = ParseConfig(kPolicyYaml, "policy.yaml");
    ASSERT_TRUE(config.ok()) << config.status();
    policy = std::make_unique<PolicyAuthorizer>(*config);
  }
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      SpiffeId client = Id("spiffe://td/client");
      SpiffeId web = Id("spiffe://td/web");
      for (int i = 0; i < 2000; ++i) {
        uint16_t port = i % 2 ? 8080 : 8443;
        if (policy->Check(client, "web", &web, port).allowed != (port == 8080)) ++wrong;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(DescribePortsTest, Words) {
  EXPECT_EQ(DescribePorts({}), "all ports");
  EXPECT_EQ(DescribePorts({{80, 80}, {8000, 8999}}), "80, 8000-8999");
}

}  // namespace
}  // namespace ktrust
