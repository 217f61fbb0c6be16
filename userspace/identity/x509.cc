#include "ktrust/identity/x509.h"

#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include <ctime>

#include "absl/strings/str_cat.h"

namespace ktrust {
namespace {

BioPtr ReadOnlyBio(absl::string_view data) {
  return BioPtr(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

std::string BioContents(BIO* bio) {
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<size_t>(len));
}

std::string NameString(const X509_NAME* name) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB);
  return BioContents(bio.get());
}

absl::Time AsnTime(const ASN1_TIME* t) {
  struct tm tm {};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) return absl::InfinitePast();
  return absl::FromTimeT(timegm(&tm));
}

// PEM input is bounded by callers; this keeps a single bad block from being
// reported as "no certificates".
bool OnlyWhitespace(absl::string_view s) {
  return s.find_first_not_of(" \t\r\n") == absl::string_view::npos;
}

}  // namespace

absl::StatusOr<CertChain> ParseCertificates(absl::string_view pem, absl::string_view what) {
  if (pem.size() > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": input too large"));
  }
  BioPtr bio = ReadOnlyBio(pem);
  CertChain chain;
  ERR_clear_error();
  while (true) {
    X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
    if (cert == nullptr) break;
    chain.emplace_back(cert);
  }
  // PEM_read_bio_X509 ends with "no start line" at a clean end of input;
  // anything else means a damaged block.
  unsigned long err = ERR_peek_last_error();
  if (err != 0 &&
      !(ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE)) {
    return OpenSslError(absl::StrCat(what, ": malformed certificate PEM"),
                        absl::StatusCode::kInvalidArgument);
  }
  ERR_clear_error();
  if (chain.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, OnlyWhitespace(pem) ? ": empty input" : ": no PEM CERTIFICATE block found"));
  }
  return chain;
}

absl::StatusOr<std::vector<X509CrlPtr>> ParseCrls(absl::string_view pem, absl::string_view what) {
  BioPtr bio = ReadOnlyBio(pem);
  std::vector<X509CrlPtr> crls;
  ERR_clear_error();
  while (X509_CRL* crl = PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr)) {
    crls.emplace_back(crl);
  }
  unsigned long err = ERR_peek_last_error();
  if (err != 0 &&
      !(ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE)) {
    return OpenSslError(absl::StrCat(what, ": malformed CRL PEM"),
                        absl::StatusCode::kInvalidArgument);
  }
  ERR_clear_error();
  if (crls.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": no X509 CRL found"));
  return crls;
}

absl::StatusOr<EvpPkeyPtr> ParsePrivateKey(const Secret& pem, absl::string_view what) {
  BioPtr bio = ReadOnlyBio(pem.view());
  ERR_clear_error();
  // A null passphrase callback: an encrypted key fails instead of prompting.
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, const_cast<char*>(""));
  if (key == nullptr) {
    ERR_clear_error();  // OpenSSL's text may quote key material positions; keep it out of logs.
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": no readable unencrypted PEM private key"));
  }
  return EvpPkeyPtr(key);
}

std::string ToPem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), cert);
  return BioContents(bio.get());
}

std::string ToPem(const CertChain& chain) {
  std::string out;
  for (const auto& cert : chain) out += ToPem(cert.get());
  return out;
}

absl::StatusOr<Secret> ToPem(EVP_PKEY* key) {
  // The secure-memory BIO cleanses its buffer when freed.
  BioPtr bio(BIO_new(BIO_s_secmem()));
  if (!bio ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return OpenSslError("encode private key");
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return Secret(std::string(data, static_cast<size_t>(len)));
}

absl::StatusOr<EvpPkeyPtr> GenerateP256Key() {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  if (key == nullptr) return OpenSslError("generate P-256 key");
  return EvpPkeyPtr(key);
}

absl::Time NotBefore(const X509* cert) { return AsnTime(X509_get0_notBefore(cert)); }
absl::Time NotAfter(const X509* cert) { return AsnTime(X509_get0_notAfter(cert)); }

std::vector<std::string> UriSans(X509* cert) {
  std::vector<std::string> uris;
  GeneralNamesPtr names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  if (!names) return uris;
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
    if (name->type != GEN_URI) continue;
    const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
    uris.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                      static_cast<size_t>(ASN1_STRING_length(uri)));
  }
  return uris;
}

bool IsCa(X509* cert) { return (X509_get_extension_flags(cert) & EXFLAG_CA) != 0; }

std::string SubjectString(const X509* cert) { return NameString(X509_get_subject_name(cert)); }
std::string IssuerString(const X509* cert) { return NameString(X509_get_issuer_name(cert)); }
std::string CrlIssuerString(const X509_CRL* crl) { return NameString(X509_CRL_get_issuer(crl)); }

std::string SerialHex(const X509* cert) {
  BignumPtr bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
  if (!bn) return "?";
  char* hex = BN_bn2hex(bn.get());
  std::string out(hex);
  OPENSSL_free(hex);
  return out;
}

std::string FormatTimestamp(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

std::string FormatAge(absl::Duration d) {
  // Days read better than "60416h3m59s" for long-expired certificates.
  if (d >= absl::Hours(48)) {
    int64_t hours = absl::ToInt64Hours(d);
    return absl::StrCat(hours / 24, "d", hours % 24, "h");
  }
  return absl::FormatDuration(absl::Trunc(d, absl::Seconds(1)));
}

}  // namespace ktrust
