#include "ktrust/identity/peer_verifier.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "ktrust/identity/x509.h"
#include "unit/test_pki.h"

namespace ktrust {
namespace {

using testing::CertSpec;
using ::testing::HasSubstr;
using testing::KeyAndCert;
using testing::Mint;
using testing::MintRoot;

class PeerVerifierTest : public ::testing::Test {
 protected:
  PeerVerifierTest() : root_(MintRoot("example.org")) {
    CertChain roots;
    roots.push_back(ShareX509(root_.cert.get()));
    store_.Put(*TrustBundle::Create(*TrustDomain::Parse("example.org"), std::move(roots)));
  }

  CertSpec Leaf(const std::string& id = "spiffe://example.org/ns/prod/web") {
    CertSpec spec;
    spec.uri_sans = {id};
    spec.not_before = now_ - absl::Minutes(5);
    spec.not_after = now_ + absl::Hours(1);
    return spec;
  }

  PeerVerdict Verify(const KeyAndCert& leaf, std::vector<X509*> untrusted = {},
                     VerifyOptions options = {}) {
    return VerifyPeerChain(store_, leaf.cert.get(), untrusted, options, now_);
  }

  absl::Time now_ = absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()));
  KeyAndCert root_;
  TrustStore store_;
};

TEST_F(PeerVerifierTest, AcceptsAValidSvidAndExtractsItsId) {
  KeyAndCert leaf = Mint(Leaf(), &root_);
  PeerVerdict v = Verify(leaf);
  ASSERT_TRUE(v.ok()) << v.explanation;
  EXPECT_EQ(v.peer_id->ToString(), "spiffe://example.org/ns/prod/web");
  EXPECT_EQ(v.not_after, now_ + absl::Hours(1));
  EXPECT_TRUE(v.explanation.empty());
}

TEST_F(PeerVerifierTest, NoCertificate) {
  PeerVerdict v = VerifyPeerChain(store_, nullptr, {}, {}, now_);
  EXPECT_EQ(v.reason, RejectReason::kNoCertificate);
  EXPECT_EQ(ReasonCode(v.reason), "no_certificate");
}

TEST_F(PeerVerifierTest, ExpiredSaysHowLongAgoAndWhen) {
  CertSpec spec = Leaf();
  spec.not_before = now_ - absl::Hours(2);
  spec.not_after = now_ - absl::Minutes(3) - absl::Seconds(12);
  PeerVerdict v = Verify(Mint(spec, &root_));
  EXPECT_EQ(v.reason, RejectReason::kExpired);
  EXPECT_EQ(ReasonCode(v.reason), "expired");
  EXPECT_THAT(v.explanation, HasSubstr("certificate for spiffe://example.org/ns/prod/web expired "
                                       "3m12s ago (notAfter " +
                                       FormatTimestamp(spec.not_after) + ")"));
}

TEST_F(PeerVerifierTest, LongExpiredSaysDays) {
  CertSpec spec = Leaf();
  spec.not_before = now_ - absl::Hours(24 * 30);
  spec.not_after = now_ - absl::Hours(24 * 3 + 5);
  EXPECT_THAT(Verify(Mint(spec, &root_)).explanation, HasSubstr("expired 3d5h ago"));
}

TEST_F(PeerVerifierTest, NotYetValid) {
  CertSpec spec = Leaf();
  spec.not_before = now_ + absl::Hours(2);
  spec.not_after = now_ + absl::Hours(3);
  PeerVerdict v = Verify(Mint(spec, &root_));
  EXPECT_EQ(v.reason, RejectReason::kNotYetValid);
  EXPECT_THAT(v.explanation, HasSubstr("not valid until"));
  EXPECT_THAT(v.explanation, HasSubstr(", 2h from now"));
}

TEST_F(PeerVerifierTest, ClockSkewInsideTheAllowanceIsAccepted) {
  CertSpec early = Leaf();
  early.not_before = now_ + absl::Seconds(45);  // the issuer's clock runs ahead
  EXPECT_TRUE(Verify(Mint(early, &root_)).ok());
  CertSpec late = Leaf();
  late.not_after = now_ - absl::Seconds(45);  // our clock runs ahead
  EXPECT_TRUE(Verify(Mint(late, &root_)).ok());
}

TEST_F(PeerVerifierTest, ClockSkewOutsideTheAllowanceIsRefusedWithAHint) {
  CertSpec early = Leaf();
  early.not_before = now_ + absl::Seconds(90);
  PeerVerdict v = Verify(Mint(early, &root_));
  EXPECT_EQ(v.reason, RejectReason::kNotYetValid);
  EXPECT_THAT(v.explanation, HasSubstr("allowed clock skew is 1m"));
  EXPECT_THAT(v.explanation, HasSubstr("clock"));
  // The allowance is configurable.
  VerifyOptions wide;
  wide.clock_skew = absl::Minutes(5);
  EXPECT_TRUE(Verify(Mint(early, &root_), {}, wide).ok());
  VerifyOptions none;
  none.clock_skew = absl::ZeroDuration();
  CertSpec late = Leaf();
  late.not_after = now_ - absl::Seconds(1);
  EXPECT_EQ(Verify(Mint(late, &root_), {}, none).reason, RejectReason::kExpired);
}

TEST_F(PeerVerifierTest, WrongCaIsUnknownAuthority) {
  KeyAndCert other_root = MintRoot("example.org");
  PeerVerdict v = Verify(Mint(Leaf(), &other_root));
  EXPECT_EQ(v.reason, RejectReason::kUnknownAuthority);
  EXPECT_THAT(v.explanation,
              HasSubstr("issued by an authority not in the trust bundle for example.org"));
}

TEST_F(PeerVerifierTest, SelfSignedLeafIsUnknownAuthority) {
  PeerVerdict v = Verify(Mint(Leaf()));
  EXPECT_EQ(v.reason, RejectReason::kUnknownAuthority);
}

TEST_F(PeerVerifierTest, UntrustedTrustDomainNamesIt) {
  KeyAndCert staging_root = MintRoot("staging.example.org");
  PeerVerdict v = Verify(Mint(Leaf("spiffe://staging.example.org/web"), &staging_root));
  EXPECT_EQ(v.reason, RejectReason::kUntrustedTrustDomain);
  EXPECT_THAT(v.explanation, HasSubstr("trust domain staging.example.org"));
  EXPECT_THAT(v.explanation, HasSubstr("is not trusted here; trusted: example.org"));
}

TEST_F(PeerVerifierTest, OurRootCannotVouchForAnotherTrustDomain) {
  // Signed by our own root, but claiming a domain we hold no bundle for.
  PeerVerdict v = Verify(Mint(Leaf("spiffe://evil.org/web"), &root_));
  EXPECT_EQ(v.reason, RejectReason::kUntrustedTrustDomain);
}

TEST_F(PeerVerifierTest, NoUriSan) {
  CertSpec spec = Leaf();
  spec.uri_sans = {};
  PeerVerdict v = Verify(Mint(spec, &root_));
  EXPECT_EQ(v.reason, RejectReason::kNoUriSan);
  EXPECT_THAT(v.explanation, HasSubstr("no URI SAN"));
}

TEST_F(PeerVerifierTest, TwoUriSans) {
  CertSpec spec = Leaf();
  spec.uri_sans = {"spiffe://example.org/a", "spiffe://example.org/b"};
  PeerVerdict v = Verify(Mint(spec, &root_));
  EXPECT_EQ(v.reason, RejectReason::kMultipleUriSans);
  EXPECT_THAT(v.explanation, HasSubstr("2 URI SANs"));
}

TEST_F(PeerVerifierTest, InvalidSpiffeIdInSan) {
  for (const char* bad :
       {"https://example.org/a", "spiffe://example.org", "spiffe://Example.org/a"}) {
    PeerVerdict v = Verify(Mint(Leaf(bad), &root_));
    EXPECT_EQ(v.reason, RejectReason::kInvalidSpiffeId) << bad;
  }
}

TEST_F(PeerVerifierTest, CaFlagLeaf) {
  CertSpec spec = Leaf();
  spec.ca = true;
  spec.key_usage = "critical,digitalSignature,keyCertSign";
  PeerVerdict v = Verify(Mint(spec, &root_));
  EXPECT_EQ(v.reason, RejectReason::kLeafIsCa);
  EXPECT_THAT(v.explanation, HasSubstr("is a CA certificate"));
}

TEST_F(PeerVerifierTest, KeyUsageRules) {
  CertSpec missing = Leaf();
  missing.key_usage = "";
  EXPECT_EQ(Verify(Mint(missing, &root_)).reason, RejectReason::kBadKeyUsage);
  CertSpec no_sig = Leaf();
  no_sig.key_usage = "critical,keyAgreement";
  EXPECT_EQ(Verify(Mint(no_sig, &root_)).reason, RejectReason::kBadKeyUsage);
  CertSpec cert_sign = Leaf();
  cert_sign.key_usage = "critical,digitalSignature,cRLSign";
  EXPECT_EQ(Verify(Mint(cert_sign, &root_)).reason, RejectReason::kBadKeyUsage);
}

TEST_F(PeerVerifierTest, ExtendedKeyUsageMustFitTheTlsRole) {
  CertSpec server_only = Leaf();
  server_only.extended_key_usage = "serverAuth";
  KeyAndCert leaf = Mint(server_only, &root_);
  VerifyOptions as_client_cert;
  as_client_cert.purpose = X509_PURPOSE_SSL_CLIENT;
  PeerVerdict v = Verify(leaf, {}, as_client_cert);
  EXPECT_EQ(v.reason, RejectReason::kBadKeyUsage);
  VerifyOptions as_server_cert;
  as_server_cert.purpose = X509_PURPOSE_SSL_SERVER;
  EXPECT_TRUE(Verify(leaf, {}, as_server_cert).ok());
}

class IntermediateTest : public PeerVerifierTest {
 protected:
  KeyAndCert Intermediate(absl::Time not_after) {
    CertSpec spec;
    spec.ca = true;
    spec.key_usage = "critical,keyCertSign,cRLSign";
    spec.extended_key_usage = "";
    spec.uri_sans = {"spiffe://example.org"};
    spec.common_name = "node-a";
    spec.not_before = now_ - absl::Hours(1);
    spec.not_after = not_after;
    return Mint(spec, &root_);
  }
};

TEST_F(IntermediateTest, ChainThroughIntermediateIsAccepted) {
  KeyAndCert node = Intermediate(now_ + absl::Hours(24));
  KeyAndCert leaf = Mint(Leaf(), &node);
  PeerVerdict v = Verify(leaf, {node.cert.get()});
  ASSERT_TRUE(v.ok()) << v.explanation;
  EXPECT_EQ(v.peer_id->path(), "/ns/prod/web");
}

TEST_F(IntermediateTest, MissingIntermediateIsUnknownAuthority) {
  KeyAndCert node = Intermediate(now_ + absl::Hours(24));
  EXPECT_EQ(Verify(Mint(Leaf(), &node)).reason, RejectReason::kUnknownAuthority);
}

TEST_F(IntermediateTest, ExpiredIntermediateIsNamed) {
  KeyAndCert node = Intermediate(now_ - absl::Minutes(10));
  CertSpec spec = Leaf();
  PeerVerdict v = Verify(Mint(spec, &node), {node.cert.get()});
  EXPECT_EQ(v.reason, RejectReason::kExpired);
  EXPECT_THAT(v.explanation, HasSubstr("CA certificate"));
  EXPECT_THAT(v.explanation, HasSubstr("node-a"));
}

TEST_F(IntermediateTest, ChainLongerThanAllowedIsRefused) {
  KeyAndCert node = Intermediate(now_ + absl::Hours(24));
  VerifyOptions short_chains;
  short_chains.max_chain_length = 2;  // leaf and root only
  PeerVerdict v = Verify(Mint(Leaf(), &node), {node.cert.get()}, short_chains);
  EXPECT_EQ(v.reason, RejectReason::kChainInvalid);
}

}  // namespace
}  // namespace ktrust
