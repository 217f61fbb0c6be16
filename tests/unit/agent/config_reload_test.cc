// What makes the agent reload: here, the embedded CA's files, as an
// operator replaces them or as the kubelet updates a Secret volume.
#include "ktrust/agent/config_reload.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

namespace ktrust {
namespace {

namespace fs = std::filesystem;

class ConfigReloadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir_template[] = "/tmp/ktrust-config-reload-test-XXXXXX";
    ASSERT_NE(::mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
    config_.identity.ca_dir = dir_ + "/ca";
  }
  void TearDown() override { fs::remove_all(dir_); }

  // The kubelet's layout of a Secret volume: the files of one version in a
  // directory of their own, `..data` pointing at it, one symlink per key.
  void WriteSecretVersion(const std::string& version, const std::string& content) {
    std::string payload = config_.identity.ca_dir + "/" + version;
    fs::create_directories(payload);
    for (const char* file : {"ca.crt", "ca.key", "bundle.crt"}) {
      std::ofstream(payload + "/" + file) << content;
      fs::path link = config_.identity.ca_dir + "/" + file;
      if (!fs::is_symlink(link)) fs::create_symlink(std::string("..data/") + file, link);
    }
    // Swapped as the kubelet does: a new link renamed over `..data`.
    fs::path tmp = config_.identity.ca_dir + "/..data_tmp";
    fs::create_directory_symlink(version, tmp);
    fs::rename(tmp, config_.identity.ca_dir + "/..data");
  }

  std::string dir_;
  Config config_;
};

TEST_F(ConfigReloadTest, TheEmbeddedCasFilesAreReloadInputs) {
  WriteSecretVersion("..v1", "one");
  FileTimes seen = TrustInputTimes(config_);
  std::vector<std::string> paths;
  for (const auto& [path, time] : seen) paths.push_back(path);
  EXPECT_THAT(paths, ::testing::IsSupersetOf({config_.identity.ca_dir + "/ca.crt",
                                              config_.identity.ca_dir + "/ca.key",
                                              config_.identity.ca_dir + "/bundle.crt"}));
  EXPECT_FALSE(AnyFileChanged(seen));
}

TEST_F(ConfigReloadTest, ASecretVolumeUpdateIsAChange) {
  WriteSecretVersion("..v1", "one");
  FileTimes seen = TrustInputTimes(config_);
  // The new version's files are older than the ones in use (written, say,
  // before a clock step): still a change, since only equality is compared.
  WriteSecretVersion("..v2", "two");
  for (const char* file : {"ca.crt", "ca.key", "bundle.crt"}) {
    struct timespec times[2] = {{1000, 0}, {1000, 0}};
    ::utimensat(AT_FDCWD, (config_.identity.ca_dir + "/..v2/" + file).c_str(), times, 0);
  }
  EXPECT_TRUE(AnyFileChanged(seen));
}

TEST_F(ConfigReloadTest, SvidFilesHaveNoCaToWatch) {
  config_.identity.source = IdentityConfig::Source::kSvidFiles;
  for (const auto& [path, time] : TrustInputTimes(config_)) {
    EXPECT_THAT(path, ::testing::Not(::testing::StartsWith(config_.identity.ca_dir))) << path;
  }
}

}  // namespace
}  // namespace ktrust
