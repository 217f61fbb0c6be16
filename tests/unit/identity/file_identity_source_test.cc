#include "ktrust/identity/file_identity_source.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "ktrust/common/files.h"
#include "ktrust/identity/certificate_authority.h"
#include "ktrust/identity/x509.h"

namespace ktrust {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

class FileIdentitySourceTest : public ::testing::Test {
 protected:
  FileIdentitySourceTest()
      : ca_(*CertificateAuthority::CreateRoot(*TrustDomain::Parse("example.org"),
                                              kDefaultRootValidity, absl::Now())) {
    std::string tmpl = ::testing::TempDir() + "ktrust-files-XXXXXX";
    dir_ = mkdtemp(tmpl.data());
  }
  ~FileIdentitySourceTest() override { fs::remove_all(dir_); }

  Svid Issue(const char* id, absl::Duration ttl = absl::Hours(1), absl::Time now = absl::Now()) {
    return *ca_.IssueSvid(*SpiffeId::Parse(id), ttl, now);
  }

  // Writes the cert-manager layout into `dir` (default: the watched dir).
  void Write(const Svid& svid, const std::string& dir = "") {
    std::string d = dir.empty() ? dir_ : dir;
    ASSERT_TRUE(WriteFileAtomically(d + "/tls.key", svid.KeyPem()->view(), 0600).ok());
    ASSERT_TRUE(WriteFileAtomically(d + "/tls.crt", svid.ChainPem(), 0644).ok());
    ASSERT_TRUE(WriteFileAtomically(d + "/ca.crt", ToPem(ca_.roots()), 0644).ok());
  }
  void WriteRaw(const std::string& name, const std::string& content) {
    ASSERT_TRUE(WriteFileAtomically(dir_ + "/" + name, content, 0600).ok());
  }

  CertificateAuthority ca_;
  std::string dir_;
};

TEST_F(FileIdentitySourceTest, LoadsTheCertManagerLayout) {
  Write(Issue("spiffe://example.org/ns/a"));
  auto source = FileIdentitySource::Create(dir_);
  ASSERT_TRUE(source.ok()) << source.status();
  auto identity = (*source)->Current();
  EXPECT_EQ(identity->svid.id().ToString(), "spiffe://example.org/ns/a");
  EXPECT_EQ(identity->bundle.trust_domain().name(), "example.org");
  EXPECT_EQ((*source)->last_error(), "");
}

TEST_F(FileIdentitySourceTest, FirstLoadMustSucceed) {
  EXPECT_THAT(FileIdentitySource::Create(dir_).status().message(), HasSubstr("tls.crt"));
  Write(Issue("spiffe://example.org/ns/a", absl::Hours(1), absl::Now() - absl::Hours(3)));
  EXPECT_THAT(FileIdentitySource::Create(dir_).status().message(), HasSubstr("expired"));
}

// Issue 10, finding 10: an SVID key other users can read is refused, and a
// reload to such a file keeps the previous identity.
TEST_F(FileIdentitySourceTest, RefusesAKeyFileOthersCanRead) {
  Write(Issue("spiffe://example.org/ns/a"));
  std::string key = dir_ + "/tls.key";
  ASSERT_EQ(chmod(key.c_str(), 0644), 0);
  auto refused = FileIdentitySource::Create(dir_);
  EXPECT_THAT(refused.status().message(), HasSubstr("mode 0644"));
  EXPECT_THAT(refused.status().message(), HasSubstr("chmod 600 " + key));
  ASSERT_EQ(chmod(key.c_str(), 0600), 0);
  auto source = *FileIdentitySource::Create(dir_);
  ASSERT_EQ(chmod(key.c_str(), 0604), 0);
  EXPECT_FALSE(source->ReloadIfChanged().ok());
  EXPECT_THAT(source->last_error(), HasSubstr("mode 0604"));
}

TEST_F(FileIdentitySourceTest, ReloadSwapsOnlyWhenContentChanges) {
  Write(Issue("spiffe://example.org/ns/a"));
  auto source = *FileIdentitySource::Create(dir_);
  auto before = source->Current();
  EXPECT_FALSE(*source->ReloadIfChanged());
  EXPECT_EQ(source->Current(), before);

  Write(Issue("spiffe://example.org/ns/b"));
  EXPECT_TRUE(*source->ReloadIfChanged());
  EXPECT_EQ(source->Current()->svid.id().ToString(), "spiffe://example.org/ns/b");
  EXPECT_EQ(source->reloads(), 1u);
  // The previous identity stays usable by whoever holds it.
  EXPECT_EQ(before->svid.id().ToString(), "spiffe://example.org/ns/a");
}

TEST_F(FileIdentitySourceTest, BrokenUpdatesKeepThePreviousIdentityAndSayWhy) {
  Write(Issue("spiffe://example.org/ns/a"));
  auto source = *FileIdentitySource::Create(dir_);
  auto good = source->Current();
  Svid other = Issue("spiffe://example.org/ns/b");

  struct Case {
    std::string name, file, content, why;
  } cases[] = {
      {"garbage key", "tls.key", "not a key", "no readable unencrypted PEM private key"},
      {"key of another SVID", "tls.key", std::string(other.KeyPem()->view()), "does not match"},
      {"empty certificate", "tls.crt", "", "empty input"},
      {"truncated certificate", "tls.crt", other.ChainPem().substr(0, 200), "malformed"},
      {"garbage bundle", "ca.crt", "\x01\x02\x03", "no PEM CERTIFICATE"},
  };
  for (const auto& c : cases) {
    Write(Issue("spiffe://example.org/ns/a"));
    ASSERT_TRUE(source->ReloadIfChanged().ok()) << c.name;
    good = source->Current();
    WriteRaw(c.file, c.content);
    auto result = source->ReloadIfChanged();
    EXPECT_FALSE(result.ok()) << c.name;
    EXPECT_THAT(result.status().message(), HasSubstr(c.why)) << c.name;
    EXPECT_THAT(source->last_error(), HasSubstr("keeping the previous identity")) << c.name;
    EXPECT_EQ(source->Current(), good) << c.name;
  }
  // Recovery clears the error.
  Write(other);
  EXPECT_TRUE(*source->ReloadIfChanged());
  EXPECT_EQ(source->last_error(), "");
}

TEST_F(FileIdentitySourceTest, RefusesAnSvidFromAnotherCa) {
  Write(Issue("spiffe://example.org/ns/a"));
  auto source = *FileIdentitySource::Create(dir_);
  auto rogue = *CertificateAuthority::CreateRoot(*TrustDomain::Parse("example.org"),
                                                 kDefaultRootValidity, absl::Now());
  Svid svid = *rogue.IssueSvid(*SpiffeId::Parse("spiffe://example.org/ns/evil"), absl::Hours(1),
                               absl::Now());
  WriteRaw("tls.key", std::string(svid.KeyPem()->view()));
  WriteRaw("tls.crt", svid.ChainPem());
  auto result = source->ReloadIfChanged();
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr("issued by an authority not in the trust bundle"));
  EXPECT_EQ(source->Current()->svid.id().ToString(), "spiffe://example.org/ns/a");
}

// cert-manager and kubelet publish Secret updates by swapping a "..data"
// symlink; the files themselves are symlinks through it.
TEST_F(FileIdentitySourceTest, FollowsAnAtomicSymlinkSwap) {
  fs::create_directory(dir_ + "/..v1");
  fs::create_directory(dir_ + "/..v2");
  Write(Issue("spiffe://example.org/ns/v1"), dir_ + "/..v1");
  Write(Issue("spiffe://example.org/ns/v2"), dir_ + "/..v2");
  fs::create_directory_symlink("..v1", dir_ + "/..data");
  for (const char* f : {"tls.crt", "tls.key", "ca.crt"}) {
    fs::create_symlink(std::string("..data/") + f, dir_ + "/" + f);
  }
  auto source = *FileIdentitySource::Create(dir_);
  EXPECT_EQ(source->Current()->svid.id().path(), "/ns/v1");
  fs::create_directory_symlink("..v2", dir_ + "/..data_tmp");
  fs::rename(dir_ + "/..data_tmp", dir_ + "/..data");
  EXPECT_TRUE(*source->ReloadIfChanged());
  EXPECT_EQ(source->Current()->svid.id().path(), "/ns/v2");
}

TEST_F(FileIdentitySourceTest, WatcherPicksUpChanges) {
  Write(Issue("spiffe://example.org/ns/a"));
  auto source = *FileIdentitySource::Create(dir_);
  source->StartWatching(absl::Milliseconds(20));
  Write(Issue("spiffe://example.org/ns/b"));
  // Wait for the observable effect, bounded.
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (source->reloads() == 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(source->Current()->svid.id().path(), "/ns/b");
}

}  // namespace
}  // namespace ktrust
