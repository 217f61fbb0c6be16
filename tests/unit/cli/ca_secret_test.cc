// `ktrust ca kubernetes-secret`: the Secret it prints, mounted as the kubelet
// mounts a Secret volume, must be what the agent loads with the DaemonSet's
// own configuration (tools/kubernetes/ktrustd.yaml); and what must never
// enter the cluster, or would not work there, is refused with the reason.
#include "ca_secret.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "ktrust/agent/workload_identities.h"
#include "ktrust/common/files.h"
#include "ktrust/config/config.h"
#include "ktrust/identity/certificate_authority.h"
#include "ktrust/identity/x509.h"

namespace ktrust::cli {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// What the DaemonSet gives the agent's pod (NODE_NAME, the API server's service).
const ConfigEnvironment kInTheDaemonSet{"node-7", "10.96.0.1", "443"};

std::vector<SpiffeIdPattern> Scope(const std::string& text) {
  auto pattern = SpiffeIdPattern::Parse(text);
  EXPECT_TRUE(pattern.ok()) << pattern.status();
  return {*pattern};
}

class CaSecretTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir_template[] = "/tmp/ktrust-ca-secret-test-XXXXXX";
    ASSERT_NE(::mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
    auto td = TrustDomain::Parse("cluster.local");
    ASSERT_TRUE(td.ok());
    auto root = CertificateAuthority::CreateRoot(*td, kDefaultRootValidity, now_ - absl::Hours(4));
    ASSERT_TRUE(root.ok()) << root.status();
    ASSERT_TRUE(root->Save(dir_ + "/root", false).ok());
    // As docs/kubernetes.md makes it.
    auto cluster = root->CreateIntermediate("cluster", kDefaultIntermediateValidity, now_,
                                            Scope("spiffe://cluster.local/ns/*"));
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    ASSERT_TRUE(cluster->Save(dir_ + "/cluster-ca", false).ok());
    root_ = std::make_unique<CertificateAuthority>(*std::move(root));
  }
  void TearDown() override { fs::remove_all(dir_); }

  absl::StatusOr<CaSecret> Make(const std::string& ca_dir) {
    CaSecretOptions options;
    options.ca_dir = ca_dir;
    auto secret = KubernetesCaSecret(options, now_);
    if (!secret.ok()) std::cout << "refused: " << secret.status().message() << "\n";
    return secret;
  }

  // What the kubelet makes of a Secret volume (its atomic writer): the files
  // in a timestamped directory with defaultMode, `..data` pointing at it,
  // and one symlink per key through `..data`.
  std::string MountAsTheKubeletDoes(const YAML::Node& secret, mode_t default_mode) {
    std::string mount = dir_ + "/mount";
    std::string payload = "..2026_12_02_21_00_00.000000001";
    fs::create_directories(mount + "/" + payload);
    for (const auto& item : secret["data"]) {
      std::string key = item.first.as<std::string>(), bytes;
      EXPECT_TRUE(absl::Base64Unescape(item.second.as<std::string>(), &bytes)) << key;
      std::string path = absl::StrCat(mount, "/", payload, "/", key);
      std::ofstream(path) << bytes;
      ::chmod(path.c_str(), default_mode);
      fs::create_symlink("..data/" + key, mount + "/" + key);
    }
    fs::create_directory_symlink(payload, mount + "/..data");
    return mount;
  }

  std::string dir_;
  absl::Time now_ = absl::Now();
  std::unique_ptr<CertificateAuthority> root_;
};

TEST_F(CaSecretTest, TheAgentLoadsTheMountedSecretWithTheDaemonSetsConfiguration) {
  auto secret = Make(dir_ + "/cluster-ca");
  ASSERT_TRUE(secret.ok()) << secret.status();
  for (const auto& line : secret->summary) std::cout << line << "\n";
  YAML::Node yaml = YAML::Load(std::string(secret->yaml.view()));
  EXPECT_EQ(yaml["apiVersion"].as<std::string>(), "v1");
  EXPECT_EQ(yaml["kind"].as<std::string>(), "Secret");
  EXPECT_EQ(yaml["type"].as<std::string>(), "Opaque");
  // The names the DaemonSet mounts (tools/kubernetes/daemonset.yaml, volume ca).
  EXPECT_EQ(yaml["metadata"]["name"].as<std::string>(), "ktrust-ca");
  EXPECT_EQ(yaml["metadata"]["namespace"].as<std::string>(), "ktrust-system");
  std::set<std::string> keys;
  for (const auto& item : yaml["data"]) keys.insert(item.first.as<std::string>());
  EXPECT_EQ(keys, (std::set<std::string>{"bundle.crt", "ca.crt", "ca.key"}));

  auto config = LoadConfig(KTRUST_K8S_DIR "/ktrustd.yaml", kInTheDaemonSet);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->identity.ca_dir, "/var/lib/ktrust/ca");     // where the Secret is mounted
  config->identity.ca_dir = MountAsTheKubeletDoes(yaml, 0400);  // the DaemonSet's defaultMode
  auto ids = WorkloadIdentities::Create(*config, now_);
  ASSERT_TRUE(ids.ok()) << ids.status();
  auto cluster = CertificateAuthority::Load(dir_ + "/cluster-ca", now_);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  EXPECT_EQ((*ids)->ca_expires_at(), NotAfter(cluster->certificate()))
      << "the cluster intermediate";
  auto pod = SpiffeId::ParseWorkload("spiffe://cluster.local/ns/shop/sa/web");
  ASSERT_TRUE(pod.ok());
  auto provider = (*ids)->ProviderFor(*pod, "web");
  ASSERT_TRUE(provider.ok()) << provider.status();
  std::shared_ptr<const Svid> svid = (*provider)();
  ASSERT_NE(svid, nullptr);
  EXPECT_THAT(svid->ChainPem(), HasSubstr(*ReadFile(dir_ + "/cluster-ca/ca.crt")))
      << "the SVID is presented with the cluster intermediate";
  // The intermediate's scope came along: no ID outside spiffe://cluster.local/ns/*.
  auto outside = SpiffeId::ParseWorkload("spiffe://cluster.local/node-a/admin");
  ASSERT_TRUE(outside.ok());
  auto refused = (*ids)->ProviderFor(*outside, "admin");
  EXPECT_FALSE(refused.ok());
  std::cout << "outside the scope: " << refused.status().message() << "\n";
}

// The defaultMode the DaemonSet sets is what makes it work: a Secret volume
// at Kubernetes' default 0644 is refused by the agent, with the fix.
TEST_F(CaSecretTest, TheAgentRefusesTheSecretMountedReadableByOthers) {
  auto secret = Make(dir_ + "/cluster-ca");
  ASSERT_TRUE(secret.ok()) << secret.status();
  auto config = LoadConfig(KTRUST_K8S_DIR "/ktrustd.yaml", kInTheDaemonSet);
  ASSERT_TRUE(config.ok()) << config.status();
  config->identity.ca_dir =
      MountAsTheKubeletDoes(YAML::Load(std::string(secret->yaml.view())), 0644);
  auto ids = WorkloadIdentities::Create(*config, now_);
  ASSERT_FALSE(ids.ok());
  EXPECT_THAT(ids.status().message(), HasSubstr("defaultMode: 0400"));
}

TEST_F(CaSecretTest, RefusesTheRoot) {
  auto secret = Make(dir_ + "/root");
  ASSERT_FALSE(secret.ok());
  EXPECT_THAT(secret.status().message(),
              HasSubstr("holds a root CA: its key must never enter the cluster"));
  EXPECT_THAT(secret.status().message(),
              HasSubstr("ktrust ca intermediate --ca-dir " + dir_ + "/root"));
}

TEST_F(CaSecretTest, RefusesAnExpiredIntermediate) {
  auto old = root_->CreateIntermediate("cluster", absl::Hours(1), now_ - absl::Hours(3),
                                       Scope("spiffe://cluster.local/ns/*"));
  ASSERT_TRUE(old.ok()) << old.status();
  ASSERT_TRUE(old->Save(dir_ + "/expired", false).ok());
  auto secret = Make(dir_ + "/expired");
  ASSERT_FALSE(secret.ok());
  EXPECT_THAT(secret.status().message(), HasSubstr("expired"));
}

TEST_F(CaSecretTest, RefusesAKeyOfAnotherTypeThanTheCertificates) {
  EvpPkeyPtr rsa(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048}));
  ASSERT_NE(rsa, nullptr);
  auto pem = ToPem(rsa.get());
  ASSERT_TRUE(pem.ok());
  ASSERT_TRUE(WriteFileAtomically(dir_ + "/cluster-ca/ca.key", pem->view(), 0600).ok());
  auto secret = Make(dir_ + "/cluster-ca");
  ASSERT_FALSE(secret.ok());
  EXPECT_THAT(secret.status().message(),
              HasSubstr("cluster-ca/ca.key does not match the certificate"));
}

TEST_F(CaSecretTest, RefusesAWorkloadsSvidInPlaceOfTheCa) {
  auto cluster = CertificateAuthority::Load(dir_ + "/cluster-ca", now_);
  ASSERT_TRUE(cluster.ok());
  auto id = SpiffeId::ParseWorkload("spiffe://cluster.local/ns/shop/sa/web");
  auto svid = cluster->IssueSvid(*id, absl::Hours(1), now_);
  ASSERT_TRUE(svid.ok());
  ASSERT_TRUE(WriteFileAtomically(dir_ + "/cluster-ca/ca.crt", svid->ChainPem(), 0644).ok());
  ASSERT_TRUE(WriteFileAtomically(dir_ + "/cluster-ca/ca.key", svid->KeyPem()->view(), 0600).ok());
  auto secret = Make(dir_ + "/cluster-ca");
  ASSERT_FALSE(secret.ok());
  EXPECT_THAT(secret.status().message(), HasSubstr("is not a CA certificate"));
}

TEST_F(CaSecretTest, RefusesGarbagePem) {
  ASSERT_TRUE(WriteFileAtomically(dir_ + "/cluster-ca/ca.crt",
                                  "-----BEGIN CERTIFICATE-----\nnot base64\n", 0644)
                  .ok());
  auto secret = Make(dir_ + "/cluster-ca");
  ASSERT_FALSE(secret.ok());
  EXPECT_THAT(secret.status().message(), HasSubstr("cluster-ca/ca.crt"));
}

TEST_F(CaSecretTest, RefusesNamesTheApiServerWouldRefuse) {
  CaSecretOptions options;
  options.ca_dir = dir_ + "/cluster-ca";
  options.kubernetes_namespace = "Ktrust_System";
  auto secret = KubernetesCaSecret(options, now_);
  ASSERT_FALSE(secret.ok());
  EXPECT_THAT(secret.status().message(),
              HasSubstr("namespace \"Ktrust_System\" is not a Kubernetes name"));
  options.kubernetes_namespace = "ktrust-system";
  options.name = "-ca";
  EXPECT_FALSE(KubernetesCaSecret(options, now_).ok());
}

}  // namespace
}  // namespace ktrust::cli
