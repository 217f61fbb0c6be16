#include "ktrust/identity/trust_bundle.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/pem.h>

#include "ktrust/identity/peer_verifier.h"
#include "ktrust/identity/x509.h"
#include "unit/test_pki.h"

namespace ktrust {
namespace {

using testing::CertSpec;
using ::testing::HasSubstr;
using testing::KeyAndCert;
using testing::Mint;
using testing::MintRoot;

TrustDomain Td(const char* name) { return *TrustDomain::Parse(name); }

CertSpec LeafSpec(const std::string& id = "spiffe://example.org/web") {
  CertSpec spec;
  spec.uri_sans = {id};
  return spec;
}

PeerVerdict Verify(const TrustStore& store, const KeyAndCert& leaf) {
  return VerifyPeerChain(store, leaf.cert.get(), {}, VerifyOptions{}, absl::Now());
}

// A CRL from `issuer` revoking `serials_of`.
X509CrlPtr MintCrl(const KeyAndCert& issuer, const std::vector<X509*>& serials_of) {
  X509CrlPtr crl(X509_CRL_new());
  X509_CRL_set_version(crl.get(), 1);
  X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(issuer.cert.get()));
  ASN1_TIME* now = ASN1_TIME_set(nullptr, absl::ToTimeT(absl::Now() - absl::Minutes(1)));
  ASN1_TIME* next = ASN1_TIME_set(nullptr, absl::ToTimeT(absl::Now() + absl::Hours(1)));
  X509_CRL_set1_lastUpdate(crl.get(), now);
  X509_CRL_set1_nextUpdate(crl.get(), next);
  for (X509* cert : serials_of) {
    X509_REVOKED* revoked = X509_REVOKED_new();
    X509_REVOKED_set_serialNumber(revoked, const_cast<ASN1_INTEGER*>(X509_get0_serialNumber(cert)));
    X509_REVOKED_set_revocationDate(revoked, now);
    X509_CRL_add0_revoked(crl.get(), revoked);
  }
  ASN1_TIME_free(now);
  ASN1_TIME_free(next);
  X509_CRL_sort(crl.get());
  EXPECT_GT(X509_CRL_sign(crl.get(), issuer.key.get(), EVP_sha256()), 0);
  return crl;
}

TEST(TrustBundleTest, SeveralRootsAllowCaRotationWithOverlap) {
  KeyAndCert old_root = MintRoot("example.org");
  KeyAndCert new_root = MintRoot("example.org");
  KeyAndCert old_leaf = Mint(LeafSpec(), &old_root);
  KeyAndCert new_leaf = Mint(LeafSpec(), &new_root);

  auto both = TrustBundle::FromPem(Td("example.org"),
                                   ToPem(old_root.cert.get()) + ToPem(new_root.cert.get()));
  ASSERT_TRUE(both.ok()) << both.status();
  EXPECT_EQ(both->roots().size(), 2u);
  TrustStore overlap;
  overlap.Put(*both);
  EXPECT_TRUE(Verify(overlap, old_leaf).ok());
  EXPECT_TRUE(Verify(overlap, new_leaf).ok());

  // After the old root is removed, its SVIDs are refused.
  TrustStore after;
  after.Put(*TrustBundle::FromPem(Td("example.org"), ToPem(new_root.cert.get())));
  EXPECT_TRUE(Verify(after, new_leaf).ok());
  EXPECT_EQ(Verify(after, old_leaf).reason, RejectReason::kUnknownAuthority);
}

TEST(TrustBundleTest, EachTrustDomainOnlyTrustsItsOwnBundle) {
  KeyAndCert a_root = MintRoot("a.org");
  KeyAndCert b_root = MintRoot("b.org");
  TrustStore store;
  store.Put(*TrustBundle::FromPem(Td("a.org"), ToPem(a_root.cert.get())));
  store.Put(*TrustBundle::FromPem(Td("b.org"), ToPem(b_root.cert.get())));
  EXPECT_TRUE(Verify(store, Mint(LeafSpec("spiffe://a.org/x"), &a_root)).ok());
  EXPECT_TRUE(Verify(store, Mint(LeafSpec("spiffe://b.org/x"), &b_root)).ok());
  // b.org's root signing an a.org identity: refused even though b.org is trusted.
  EXPECT_EQ(Verify(store, Mint(LeafSpec("spiffe://a.org/x"), &b_root)).reason,
            RejectReason::kUnknownAuthority);
  EXPECT_THAT(store.TrustDomainNames(), ::testing::ElementsAre("a.org", "b.org"));
}

TEST(TrustBundleTest, RefusesNonCaCertificatesAndGarbage) {
  KeyAndCert root = MintRoot("example.org");
  KeyAndCert leaf = Mint(LeafSpec(), &root);
  auto with_leaf = TrustBundle::FromPem(Td("example.org"), ToPem(leaf.cert.get()));
  EXPECT_THAT(with_leaf.status().message(), HasSubstr("is not a CA certificate"));

  EXPECT_THAT(TrustBundle::FromPem(Td("example.org"), "").status().message(), HasSubstr("empty"));
  EXPECT_THAT(TrustBundle::FromPem(Td("example.org"), "hello").status().message(),
              HasSubstr("no PEM CERTIFICATE"));
  std::string pem = ToPem(root.cert.get());
  std::string truncated = pem.substr(0, pem.size() / 2);
  EXPECT_THAT(TrustBundle::FromPem(Td("example.org"), truncated).status().message(),
              HasSubstr("malformed"));
  std::string corrupted = pem;
  corrupted[pem.size() / 2] = corrupted[pem.size() / 2] == 'A' ? 'B' : 'A';
  EXPECT_FALSE(TrustBundle::FromPem(Td("example.org"), corrupted).ok());
}

TEST(TrustBundleTest, RefusesARootOfAnotherTrustDomain) {
  KeyAndCert other = MintRoot("other.org");
  auto bundle = TrustBundle::FromPem(Td("example.org"), ToPem(other.cert.get()));
  EXPECT_THAT(std::string(bundle.status().message()),
              HasSubstr("belongs to trust domain other.org, not example.org"));
}

// Finding 9 of issue 10: a root that does not name the trust domain it
// serves (a partner's generic CA) cannot become a root of ours.
TEST(TrustBundleTest, RefusesARootThatNamesNoTrustDomain) {
  CertSpec spec;
  spec.ca = true;
  spec.key_usage = "critical,keyCertSign,cRLSign";
  spec.extended_key_usage = "";
  spec.common_name = "partner generic root";
  KeyAndCert unnamed = Mint(spec);
  auto bundle = TrustBundle::FromPem(Td("example.org"), ToPem(unnamed.cert.get()));
  EXPECT_THAT(std::string(bundle.status().message()),
              HasSubstr("does not say which trust domain it serves: a root must carry the URI "
                        "SAN spiffe://example.org"));
}

TEST(TrustBundleTest, RefusesADamagedRootCrl) {
  KeyAndCert root = MintRoot("example.org");
  KeyAndCert impostor = MintRoot("example.org");
  impostor.cert = ShareX509(impostor.cert.get());
  // Signed by another key, under the root's name.
  KeyAndCert forger{std::move(impostor.key), ShareX509(root.cert.get())};
  std::vector<X509CrlPtr> crls;
  crls.push_back(MintCrl(forger, {}));
  CertChain roots;
  roots.push_back(ShareX509(root.cert.get()));
  auto bundle = TrustBundle::Create(Td("example.org"), std::move(roots), crls);
  EXPECT_THAT(std::string(bundle.status().message()), HasSubstr("does not verify"));
}

TEST(TrustBundleTest, CrlRevokesListedCertificatesOnly) {
  KeyAndCert root = MintRoot("example.org");
  KeyAndCert revoked = Mint(LeafSpec("spiffe://example.org/stolen"), &root);
  KeyAndCert fine = Mint(LeafSpec("spiffe://example.org/fine"), &root);
  std::vector<X509CrlPtr> crls;
  crls.push_back(MintCrl(root, {revoked.cert.get()}));
  CertChain roots;
  roots.push_back(ShareX509(root.cert.get()));
  auto bundle = TrustBundle::Create(Td("example.org"), std::move(roots), std::move(crls));
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  EXPECT_TRUE(bundle->has_crls());
  TrustStore store;
  store.Put(*bundle);
  EXPECT_TRUE(Verify(store, fine).ok());
  PeerVerdict v = Verify(store, revoked);
  EXPECT_EQ(v.reason, RejectReason::kRevoked);
  EXPECT_THAT(v.explanation, HasSubstr("is revoked"));
}

TEST(TrustBundleTest, CrlPemIsParsedAndValidated) {
  KeyAndCert root = MintRoot("example.org");
  X509CrlPtr crl = MintCrl(root, {});
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509_CRL(bio.get(), crl.get());
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  std::string crl_pem(data, static_cast<size_t>(len));
  EXPECT_TRUE(TrustBundle::FromPem(Td("example.org"), ToPem(root.cert.get()), crl_pem).ok());
  EXPECT_THAT(
      TrustBundle::FromPem(Td("example.org"), ToPem(root.cert.get()), "junk").status().message(),
      HasSubstr("no X509 CRL"));
}

}  // namespace
}  // namespace ktrust
