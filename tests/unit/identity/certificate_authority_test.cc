#include "ktrust/identity/certificate_authority.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <set>

#include "ktrust/common/files.h"
#include "ktrust/identity/peer_verifier.h"
#include "ktrust/identity/x509.h"
#include "unit/test_pki.h"

namespace ktrust {
namespace {

using ::testing::HasSubstr;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "ktrust-ca-XXXXXX";
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

TrustDomain Td(const char* name) { return *TrustDomain::Parse(name); }
SpiffeId Id(const char* text) { return *SpiffeId::Parse(text); }

PeerVerdict VerifySvid(const CertificateAuthority& ca, const Svid& svid, absl::Time now) {
  TrustStore store;
  store.Put(*ca.Bundle());
  std::vector<X509*> intermediates;
  for (size_t i = 1; i < svid.chain().size(); ++i) intermediates.push_back(svid.chain()[i].get());
  return VerifyPeerChain(store, svid.leaf(), intermediates, VerifyOptions{}, now);
}

TEST(CertificateAuthorityTest, RootIsACaOfItsTrustDomain) {
  absl::Time now = absl::Now();
  auto ca = CertificateAuthority::CreateRoot(Td("example.org"), kDefaultRootValidity, now);
  ASSERT_TRUE(ca.ok()) << ca.status();
  EXPECT_TRUE(ca->is_root());
  EXPECT_TRUE(IsCa(ca->certificate()));
  EXPECT_THAT(UriSans(ca->certificate()), ::testing::ElementsAre("spiffe://example.org"));
  EXPECT_EQ(X509_get_key_usage(ca->certificate()) & (KU_KEY_CERT_SIGN | KU_CRL_SIGN),
            static_cast<uint32_t>(KU_KEY_CERT_SIGN | KU_CRL_SIGN));
  EXPECT_LE(NotAfter(ca->certificate()) - now, kDefaultRootValidity + absl::Seconds(1));
}

TEST(CertificateAuthorityTest, IssuesSvidsThatFollowTheX509SvidRules) {
  absl::Time now = absl::Now();
  auto ca = CertificateAuthority::CreateRoot(Td("example.org"), kDefaultRootValidity, now);
  ASSERT_TRUE(ca.ok());
  auto svid = ca->IssueSvid(Id("spiffe://example.org/ns/prod/web"), kDefaultSvidTtl, now);
  ASSERT_TRUE(svid.ok()) << svid.status();
  X509* leaf = svid->leaf();
  EXPECT_EQ(svid->id().ToString(), "spiffe://example.org/ns/prod/web");
  EXPECT_THAT(UriSans(leaf), ::testing::ElementsAre("spiffe://example.org/ns/prod/web"));
  EXPECT_FALSE(IsCa(leaf));
  EXPECT_EQ(X509_get_key_usage(leaf), static_cast<uint32_t>(KU_DIGITAL_SIGNATURE));
  EXPECT_EQ(X509_get_extended_key_usage(leaf),
            static_cast<uint32_t>(XKU_SSL_SERVER | XKU_SSL_CLIENT));
  EXPECT_EQ(EVP_PKEY_get_base_id(svid->key()), EVP_PKEY_EC);
  char group[64] = {};
  size_t group_len = 0;
  EVP_PKEY_get_group_name(svid->key(), group, sizeof(group), &group_len);
  EXPECT_STREQ(group, "prime256v1");
  // One-hour TTL, backdated a little for peers with slow clocks.
  EXPECT_EQ(svid->not_after() - svid->not_before(), kDefaultSvidTtl + kBackdate);
  EXPECT_TRUE(VerifySvid(*ca, *svid, now).ok());
}

TEST(CertificateAuthorityTest, EverySvidHasItsOwnKeyAndSerial) {
  absl::Time now = absl::Now();
  auto ca = CertificateAuthority::CreateRoot(Td("example.org"), kDefaultRootValidity, now);
  std::set<std::string> serials;
  std::vector<Svid> svids;
  for (int i = 0; i < 20; ++i) {
    auto svid = ca->IssueSvid(Id("spiffe://example.org/w"), absl::Hours(1), now);
    ASSERT_TRUE(svid.ok());
    serials.insert(SerialHex(svid->leaf()));
    for (const auto& other : svids) EXPECT_NE(EVP_PKEY_eq(other.key(), svid->key()), 1);
    svids.push_back(*std::move(svid));
  }
  EXPECT_EQ(serials.size(), 20u);
}

TEST(CertificateAuthorityTest, SvidLifetimeNeverOutlivesTheCa) {
  absl::Time now = absl::Now();
  auto ca = CertificateAuthority::CreateRoot(Td("example.org"), absl::Minutes(10), now);
  auto svid = ca->IssueSvid(Id("spiffe://example.org/w"), absl::Hours(1), now);
  ASSERT_TRUE(svid.ok());
  EXPECT_EQ(svid->not_after(), NotAfter(ca->certificate()));
}

TEST(CertificateAuthorityTest, RefusesToIssueOutsideItsTrustDomainOrForBareDomain) {
  absl::Time now = absl::Now();
  auto ca = CertificateAuthority::CreateRoot(Td("example.org"), kDefaultRootValidity, now);
  auto other = ca->IssueSvid(Id("spiffe://other.org/w"), absl::Hours(1), now);
  EXPECT_THAT(other.status().message(), HasSubstr("this CA is for example.org"));
  EXPECT_FALSE(ca->IssueSvid(Id("spiffe://example.org"), absl::Hours(1), now).ok());
  EXPECT_FALSE(ca->IssueSvid(Id("spiffe://example.org/w"), absl::ZeroDuration(), now).ok());
  // Certificate times have one-second resolution: a shorter TTL would mint an
  // SVID that is expired on arrival.
  EXPECT_THAT(std::string(ca->IssueSvid(Id("spiffe://example.org/w"), absl::Milliseconds(500), now)
                              .status()
                              .message()),
              HasSubstr("at least 1s"));
}

TEST(CertificateAuthorityTest, RefusesToIssueFromAnExpiredCa) {
  absl::Time then = absl::Now() - absl::Hours(2);
  auto ca = CertificateAuthority::CreateRoot(Td("example.org"), absl::Hours(1), then);
  auto svid = ca->IssueSvid(Id("spiffe://example.org/w"), absl::Hours(1), absl::Now());
  EXPECT_THAT(svid.status().message(), HasSubstr("expired"));
}

TEST(CertificateAuthorityTest, IntermediateChainVerifiesToTheRootOnly) {
  absl::Time now = absl::Now();
  auto root = CertificateAuthority::CreateRoot(Td("example.org"), kDefaultRootValidity, now);
  auto node = root->CreateIntermediate("node-a", kDefaultIntermediateValidity, now);
  ASSERT_TRUE(node.ok()) << node.status();
  EXPECT_FALSE(node->is_root());
  auto svid = node->IssueSvid(Id("spiffe://example.org/node-a/w"), absl::Hours(1), now);
  ASSERT_TRUE(svid.ok());
  // The leaf is presented with the intermediate; the root comes from the bundle.
  ASSERT_EQ(svid->chain().size(), 2u);
  EXPECT_EQ(X509_cmp(svid->chain()[1].get(), node->certificate()), 0);
  EXPECT_TRUE(VerifySvid(*node, *svid, now).ok());

  EXPECT_THAT(node->CreateIntermediate("deeper", absl::Hours(1), now).status().message(),
              HasSubstr("intermediate"));
  EXPECT_FALSE(root->CreateIntermediate("bad name!", absl::Hours(1), now).ok());
  EXPECT_FALSE(root->CreateIntermediate("", absl::Hours(1), now).ok());
}

// Finding 3 of issue 10: a compromised node holds its intermediate's key and
// mints an SVID for another node's workload. Peers must refuse it, and the
// CA itself must refuse to issue it.
TEST(CertificateAuthorityTest, NodeIntermediateCannotVouchForAnotherNodesIds) {
  TempDir tmp;
  absl::Time now = absl::Now();
  auto root = CertificateAuthority::CreateRoot(Td("example.org"), kDefaultRootValidity, now);
  auto node = root->CreateIntermediate("reports-1", kDefaultIntermediateValidity, now);
  ASSERT_TRUE(node.ok()) << node.status();
  ASSERT_TRUE(node->Save(tmp / "reports-1", /*force=*/false).ok());
  // What the compromised node holds: its key and certificate.
  testing::KeyAndCert stolen;
  stolen.cert = std::move((*ParseCertificates(*ReadFile(tmp / "reports-1/ca.crt"), "ca.crt"))[0]);
  stolen.key = *ParsePrivateKey(*ReadSecretFile(tmp / "reports-1/ca.key"), "ca.key");
  testing::CertSpec spec;
  spec.uri_sans = {"spiffe://example.org/host/web-1/nginx"};
  testing::KeyAndCert forged = testing::Mint(spec, &stolen);

  TrustStore store;
  store.Put(*root->Bundle());
  PeerVerdict v =
      VerifyPeerChain(store, forged.cert.get(), {stolen.cert.get()}, VerifyOptions{}, now);
  EXPECT_FALSE(v.ok());
  EXPECT_THAT(v.explanation,
              HasSubstr("may only sign IDs matching spiffe://example.org/reports-1/*, "
                        "not spiffe://example.org/host/web-1/nginx"));
  EXPECT_EQ(ReasonCode(v.reason), "outside_issuer_scope");

  auto issued = node->IssueSvid(Id("spiffe://example.org/host/web-1/nginx"), absl::Hours(1), now);
  EXPECT_THAT(issued.status().message(),
              HasSubstr("may only sign IDs matching spiffe://example.org/reports-1/*"));
  // Its own space is fine, on both sides.
  auto own = node->IssueSvid(Id("spiffe://example.org/reports-1/cron"), absl::Hours(1), now);
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_TRUE(VerifySvid(*node, *own, now).ok());
}

TEST(CertificateAuthorityTest, SavesWithPrivateKeyModeAndLoadsBack) {
  TempDir tmp;
  absl::Time now = absl::Now();
  auto ca = CertificateAuthority::CreateRoot(Td("example.org"), kDefaultRootValidity, now);
  std::string dir = tmp / "ca";
  ASSERT_TRUE(ca->Save(dir, /*force=*/false).ok());
  struct stat st {};
  ASSERT_EQ(stat((dir + "/ca.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);

  auto loaded = CertificateAuthority::Load(dir, now);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->trust_domain().name(), "example.org");
  EXPECT_EQ(X509_cmp(loaded->certificate(), ca->certificate()), 0);
  // What the loaded CA issues verifies against the original's bundle.
  auto svid = loaded->IssueSvid(Id("spiffe://example.org/w"), absl::Hours(1), now);
  EXPECT_TRUE(VerifySvid(*ca, *svid, now).ok());
}

// Issue 10, finding 10: a CA key other users can read is refused, with the fix.
TEST(CertificateAuthorityTest, LoadRefusesAKeyOthersCanRead) {
  TempDir tmp;
  absl::Time now = absl::Now();
  auto ca = CertificateAuthority::CreateRoot(Td("example.org"), kDefaultRootValidity, now);
  ASSERT_TRUE(ca->Save(tmp / "ca", false).ok());
  std::string key = tmp / "ca/ca.key";
  ASSERT_EQ(chmod(key.c_str(), 0644), 0);
  auto loaded = CertificateAuthority::Load(tmp / "ca", now);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(loaded.status().message(), HasSubstr("mode 0644"));
  EXPECT_THAT(loaded.status().message(), HasSubstr("chmod 600 " + key));
  // Group access is refused too unless the group is root's.
  ASSERT_EQ(chmod(key.c_str(), 0640), 0);
  struct stat st {};
  ASSERT_EQ(stat(key.c_str(), &st), 0);
  EXPECT_EQ(CertificateAuthority::Load(tmp / "ca", now).ok(), st.st_gid == 0);
  ASSERT_EQ(chmod(key.c_str(), 0400), 0);
  EXPECT_TRUE(CertificateAuthority::Load(tmp / "ca", now).ok());
}

TEST(CertificateAuthorityTest, RevokeWritesAGrowingCrlSignedByTheCa) {
  absl::Time now = absl::Now();
  auto root = CertificateAuthority::CreateRoot(Td("example.org"), kDefaultRootValidity, now);
  auto node = root->CreateIntermediate("node-b", kDefaultIntermediateValidity, now);
  auto empty = root->EmptyCrl(now);
  ASSERT_TRUE(empty.ok()) << empty.status();
  auto one = root->Revoke(SerialHex(node->certificate()), *empty, now);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(root->Revoke(SerialHex(node->certificate()), *one, now).status().code(),
            absl::StatusCode::kAlreadyExists);
  auto two = root->Revoke("4a:0f", *one, now);
  ASSERT_TRUE(two.ok()) << two.status();
  auto crls = ParseCrls(*two, "crl");
  ASSERT_TRUE(crls.ok());
  X509_CRL* crl = crls->front().get();
  EXPECT_EQ(X509_CRL_verify(crl, X509_get0_pubkey(root->certificate())), 1);
  EXPECT_EQ(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)), 2);
  EXPECT_EQ(NotAfter(root->certificate()), [&] {
    struct tm tm {};
    ASN1_TIME_to_tm(X509_CRL_get0_nextUpdate(crl), &tm);
    return absl::FromTimeT(timegm(&tm));
  }());
  // Another CA's CRL is not extended, and garbage serials are refused.
  auto other = CertificateAuthority::CreateRoot(Td("example.org"), kDefaultRootValidity, now);
  EXPECT_THAT(other->Revoke("01", *two, now).status().message(),
              HasSubstr("not signed by this CA"));
  EXPECT_FALSE(root->Revoke("xyz", *two, now).ok());
  EXPECT_FALSE(root->Revoke("00", *two, now).ok());

  // The verifier: node-b's intermediate is revoked by the root's CRL alone;
  // node-b itself publishes no CRL.
  auto svid = node->IssueSvid(Id("spiffe://example.org/node-b/w"), absl::Hours(1), now);
  ASSERT_TRUE(svid.ok());
  TrustStore store;
  store.Put(*TrustBundle::FromPem(Td("example.org"), ToPem(root->roots()), *one));
  PeerVerdict v =
      VerifyPeerChain(store, svid->leaf(), {svid->chain()[1].get()}, VerifyOptions{}, now);
  EXPECT_EQ(v.reason, RejectReason::kRevoked);
  EXPECT_THAT(v.explanation, HasSubstr("CN = node-b"));
  auto other_node = root->CreateIntermediate("node-a", kDefaultIntermediateValidity, now);
  auto fine = other_node->IssueSvid(Id("spiffe://example.org/node-a/w"), absl::Hours(1), now);
  EXPECT_TRUE(
      VerifyPeerChain(store, fine->leaf(), {fine->chain()[1].get()}, VerifyOptions{}, now).ok());
}

TEST(CertificateAuthorityTest, RefusesToOverwriteWithoutForce) {
  TempDir tmp;
  absl::Time now = absl::Now();
  auto first = CertificateAuthority::CreateRoot(Td("example.org"), kDefaultRootValidity, now);
  auto second = CertificateAuthority::CreateRoot(Td("example.org"), kDefaultRootValidity, now);
  std::string dir = tmp / "ca";
  ASSERT_TRUE(first->Save(dir, false).ok());
  std::string key_before = *ReadFile(dir + "/ca.key");
  absl::Status st = second->Save(dir, false);
  EXPECT_EQ(st.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(st.message(), HasSubstr("--force"));
  EXPECT_EQ(*ReadFile(dir + "/ca.key"), key_before);
  ASSERT_TRUE(second->Save(dir, true).ok());
  EXPECT_NE(*ReadFile(dir + "/ca.key"), key_before);
}

TEST(CertificateAuthorityTest, LoadRefusesMismatchedOrDamagedFiles) {
  TempDir tmp;
  absl::Time now = absl::Now();
  auto a = CertificateAuthority::CreateRoot(Td("example.org"), kDefaultRootValidity, now);
  auto b = CertificateAuthority::CreateRoot(Td("example.org"), kDefaultRootValidity, now);
  ASSERT_TRUE(a->Save(tmp / "a", false).ok());
  ASSERT_TRUE(b->Save(tmp / "b", false).ok());

  // Key of another CA.
  std::filesystem::copy_file(tmp / "b/ca.key", tmp / "a/ca.key",
                             std::filesystem::copy_options::overwrite_existing);
  EXPECT_THAT(CertificateAuthority::Load(tmp / "a", now).status().message(),
              HasSubstr("does not match"));

  // Bundle that does not contain the CA's root.
  ASSERT_TRUE(a->Save(tmp / "c", false).ok());
  std::filesystem::copy_file(tmp / "b/bundle.crt", tmp / "c/bundle.crt",
                             std::filesystem::copy_options::overwrite_existing);
  EXPECT_THAT(CertificateAuthority::Load(tmp / "c", now).status().message(),
              HasSubstr("does not verify against bundle.crt"));

  // Garbage and missing files.
  ASSERT_TRUE(a->Save(tmp / "d", false).ok());
  ASSERT_TRUE(WriteFileAtomically(tmp / "d/ca.crt",
                                  "-----BEGIN CERTIFICATE-----\nnot base64!\n"
                                  "-----END CERTIFICATE-----\n",
                                  0644)
                  .ok());
  EXPECT_THAT(CertificateAuthority::Load(tmp / "d", now).status().message(),
              HasSubstr("malformed"));
  EXPECT_THAT(CertificateAuthority::Load(tmp / "missing", now).status().message(),
              HasSubstr("No such file"));

  // A leaf SVID is not a CA.
  ASSERT_TRUE(a->Save(tmp / "e", false).ok());
  auto svid = a->IssueSvid(Id("spiffe://example.org/w"), absl::Hours(1), now);
  ASSERT_TRUE(WriteFileAtomically(tmp / "e/ca.crt", svid->ChainPem(), 0644).ok());
  ASSERT_TRUE(WriteFileAtomically(tmp / "e/ca.key", svid->KeyPem()->view(), 0600).ok());
  EXPECT_THAT(CertificateAuthority::Load(tmp / "e", now).status().message(),
              HasSubstr("not a CA certificate"));
}

TEST(CertificateAuthorityTest, LoadRefusesAnExpiredCa) {
  TempDir tmp;
  absl::Time then = absl::Now() - absl::Hours(3);
  auto ca = CertificateAuthority::CreateRoot(Td("example.org"), absl::Hours(1), then);
  ASSERT_TRUE(ca->Save(tmp / "ca", false).ok());
  EXPECT_THAT(CertificateAuthority::Load(tmp / "ca", absl::Now()).status().message(),
              HasSubstr("expired"));
}

TEST(SvidTest, PemRoundTripKeepsIdentityAndKey) {
  absl::Time now = absl::Now();
  auto ca = CertificateAuthority::CreateRoot(Td("example.org"), kDefaultRootValidity, now);
  auto svid = ca->IssueSvid(Id("spiffe://example.org/w"), absl::Hours(1), now);
  auto key_pem = svid->KeyPem();
  ASSERT_TRUE(key_pem.ok());
  auto again = Svid::FromPem(svid->ChainPem(), *key_pem);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->id(), svid->id());
  EXPECT_EQ(EVP_PKEY_eq(again->key(), svid->key()), 1);
}

TEST(SvidTest, RefusesAKeyThatDoesNotMatch) {
  absl::Time now = absl::Now();
  auto ca = CertificateAuthority::CreateRoot(Td("example.org"), kDefaultRootValidity, now);
  auto a = ca->IssueSvid(Id("spiffe://example.org/a"), absl::Hours(1), now);
  auto b = ca->IssueSvid(Id("spiffe://example.org/b"), absl::Hours(1), now);
  auto mixed = Svid::FromPem(a->ChainPem(), *b->KeyPem());
  EXPECT_THAT(mixed.status().message(), HasSubstr("does not match"));
  EXPECT_FALSE(Svid::FromPem("", *b->KeyPem()).ok());
  EXPECT_FALSE(Svid::FromPem(a->ChainPem(), Secret("garbage")).ok());
}

}  // namespace
}  // namespace ktrust
