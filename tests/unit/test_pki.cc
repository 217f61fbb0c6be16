#include "unit/test_pki.h"

#include <gtest/gtest.h>
#include <openssl/rand.h>

#include "ktrust/identity/x509.h"

namespace ktrust::testing {
namespace {

void AddExt(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  if (value.empty()) return;
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str());
  ASSERT_NE(ext, nullptr) << value;
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

}  // namespace

KeyAndCert Mint(const CertSpec& spec, const KeyAndCert* issuer) {
  KeyAndCert out;
  out.key = *GenerateP256Key();
  out.cert.reset(X509_new());
  X509* c = out.cert.get();
  X509_set_version(c, X509_VERSION_3);
  unsigned char serial[12];
  RAND_bytes(serial, sizeof(serial));
  serial[0] = (serial[0] & 0x7f) | 0x40;
  BIGNUM* bn = BN_bin2bn(serial, sizeof(serial), nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(c));
  BN_free(bn);
  X509_NAME* name = X509_get_subject_name(c);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(spec.common_name.c_str()), -1,
                             -1, 0);
  X509_set_issuer_name(c, issuer ? X509_get_subject_name(issuer->cert.get()) : name);
  ASN1_TIME_set(X509_getm_notBefore(c), absl::ToTimeT(spec.not_before));
  ASN1_TIME_set(X509_getm_notAfter(c), absl::ToTimeT(spec.not_after));
  X509_set_pubkey(c, out.key.get());
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer ? issuer->cert.get() : c, c, nullptr, nullptr, 0);
  AddExt(c, &ctx, NID_basic_constraints, spec.ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
  AddExt(c, &ctx, NID_key_usage, spec.key_usage);
  AddExt(c, &ctx, NID_ext_key_usage, spec.extended_key_usage);
  AddExt(c, &ctx, NID_subject_key_identifier, "hash");
  AddExt(c, &ctx, NID_authority_key_identifier, "keyid:always");
  std::string sans;
  for (const auto& uri : spec.uri_sans) sans += (sans.empty() ? "URI:" : ",URI:") + uri;
  for (const auto& ip : spec.ip_sans) sans += (sans.empty() ? "IP:" : ",IP:") + ip;
  AddExt(c, &ctx, NID_subject_alt_name, sans);
  EXPECT_GT(X509_sign(c, issuer ? issuer->key.get() : out.key.get(), EVP_sha256()), 0);
  return out;
}

KeyAndCert MintRoot(const std::string& trust_domain, absl::Time not_after) {
  CertSpec spec;
  spec.ca = true;
  spec.key_usage = "critical,keyCertSign,cRLSign";
  spec.extended_key_usage = "";
  spec.uri_sans = {"spiffe://" + trust_domain};
  spec.common_name = "test root " + trust_domain;
  spec.not_before = absl::Now() - absl::Hours(1);
  spec.not_after = not_after;
  return Mint(spec);
}

Svid MintSvid(const CertSpec& spec, const KeyAndCert& issuer,
              const std::vector<X509*>& chain_extra) {
  KeyAndCert leaf = Mint(spec, &issuer);
  CertChain chain;
  chain.push_back(std::move(leaf.cert));
  for (X509* extra : chain_extra) chain.push_back(ShareX509(extra));
  auto svid = Svid::Create(std::move(chain), std::move(leaf.key));
  EXPECT_TRUE(svid.ok()) << svid.status();
  return *std::move(svid);
}

}  // namespace ktrust::testing
