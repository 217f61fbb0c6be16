#include "ktrust/kubernetes/backoff.h"

#include <gtest/gtest.h>

#include "ktrust/kubernetes/api_options.h"

namespace ktrust {
namespace {

TEST(BackoffTest, DoublesUpToTheCapAndStartsOverAfterASuccess) {
  Backoff backoff(absl::Milliseconds(100), absl::Milliseconds(1000), 0.5, [] { return 0.0; });
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(100));
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(200));
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(400));
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(800));
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(1000));
  for (int i = 0; i < 100; ++i) EXPECT_EQ(backoff.Next(), absl::Milliseconds(1000));
  EXPECT_EQ(backoff.failures(), 105);
  backoff.Reset();
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(100));
}

TEST(BackoffTest, JitterOnlyShortensTheWait) {
  double draw = 0.999;
  Backoff backoff(absl::Milliseconds(100), absl::Milliseconds(400), 0.5, [&] { return draw; });
  absl::Duration shortest = backoff.Next();
  EXPECT_GT(shortest, absl::Milliseconds(50));
  EXPECT_LT(shortest, absl::Milliseconds(51));
  draw = 0.25;
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(175));  // 200 less 12.5%
  // Real randomness stays within [max * (1 - jitter), max].
  Backoff random(absl::Milliseconds(100), absl::Milliseconds(400), 0.5);
  for (int i = 0; i < 50; ++i) {
    absl::Duration d = random.Next();
    EXPECT_LE(d, absl::Milliseconds(400));
    if (i >= 2) {
      EXPECT_GE(d, absl::Milliseconds(200));
    }
  }
}

TEST(InClusterApiOptionsTest, TheServiceEnvironmentAndTheServiceAccountFiles) {
  auto env = [](const char* name) -> const char* {
    if (std::string(name) == "KUBERNETES_SERVICE_HOST") return "10.96.0.1";
    if (std::string(name) == "KUBERNETES_SERVICE_PORT") return "443";
    return nullptr;
  };
  auto options = InClusterApiOptions("node-a", env);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->Endpoint(), "10.96.0.1:443");
  EXPECT_EQ(options->token_file, "/var/run/secrets/kubernetes.io/serviceaccount/token");
  EXPECT_EQ(options->ca_file, "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt");
  EXPECT_EQ(options->node_name, "node-a");
  EXPECT_TRUE(options->Validate().ok());

  auto outside = InClusterApiOptions("node-a", [](const char*) -> const char* { return nullptr; });
  EXPECT_EQ(outside.status().code(), absl::StatusCode::kFailedPrecondition);
  auto bad_port = InClusterApiOptions("node-a", [](const char* name) -> const char* {
    return std::string(name) == "KUBERNETES_SERVICE_PORT" ? "https" : "fd00::1";
  });
  EXPECT_EQ(bad_port.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(KubernetesApiOptionsTest, ValidateRefusesWhatWouldWeakenOrBreakTheClient) {
  KubernetesApiOptions options;
  options.host = "fd00::1";
  options.node_name = "node-a";
  EXPECT_TRUE(options.Validate().ok());
  EXPECT_EQ(options.Endpoint(), "[fd00::1]:443");
  KubernetesApiOptions no_ca = options;
  no_ca.ca_file.clear();
  EXPECT_FALSE(no_ca.Validate().ok());
  KubernetesApiOptions no_node = options;
  no_node.node_name.clear();
  EXPECT_FALSE(no_node.Validate().ok());
  KubernetesApiOptions bad_jitter = options;
  bad_jitter.backoff_jitter = 1;
  EXPECT_FALSE(bad_jitter.Validate().ok());
  KubernetesApiOptions unbounded = options;
  unbounded.max_event_bytes = 0;
  EXPECT_FALSE(unbounded.Validate().ok());
}

}  // namespace
}  // namespace ktrust
