#include "ktrust/identity/svid_rules.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "ktrust/identity/x509.h"

namespace ktrust {
namespace {

using Asn1ObjectPtr = std::unique_ptr<ASN1_OBJECT, OpenSslDeleter<ASN1_OBJECT_free>>;
using OctetStringPtr = std::unique_ptr<ASN1_OCTET_STRING, OpenSslDeleter<ASN1_OCTET_STRING_free>>;
using ExtensionPtr = std::unique_ptr<X509_EXTENSION, OpenSslDeleter<X509_EXTENSION_free>>;

Asn1ObjectPtr IssuerScopeObject() { return Asn1ObjectPtr(OBJ_txt2obj(kIssuerScopeOid, 1)); }

}  // namespace

absl::Status AddIssuerScope(X509* cert, const std::vector<SpiffeIdPattern>& scope) {
  GeneralNamesPtr names(sk_GENERAL_NAME_new_null());
  if (!names) return OpenSslError("issuer scope");
  for (const SpiffeIdPattern& pattern : scope) {
    std::string text = pattern.ToString();
    GENERAL_NAME* name = GENERAL_NAME_new();
    ASN1_IA5STRING* uri = ASN1_IA5STRING_new();
    if (name == nullptr || uri == nullptr ||
        ASN1_STRING_set(uri, text.data(), static_cast<int>(text.size())) != 1) {
      GENERAL_NAME_free(name);
      ASN1_IA5STRING_free(uri);
      return OpenSslError("issuer scope entry");
    }
    GENERAL_NAME_set0_value(name, GEN_URI, uri);
    if (sk_GENERAL_NAME_push(names.get(), name) <= 0) {
      GENERAL_NAME_free(name);
      return OpenSslError("issuer scope entry");
    }
  }
  unsigned char* der = nullptr;
  int len = i2d_GENERAL_NAMES(names.get(), &der);
  if (len <= 0) return OpenSslError("encode issuer scope");
  OctetStringPtr value(ASN1_OCTET_STRING_new());
  bool set = value && ASN1_OCTET_STRING_set(value.get(), der, len) == 1;
  OPENSSL_free(der);
  Asn1ObjectPtr oid = IssuerScopeObject();
  if (!set || !oid) return OpenSslError("encode issuer scope");
  // Non-critical: a critical unknown extension would make every other
  // verifier refuse the chain outright.
  ExtensionPtr ext(X509_EXTENSION_create_by_OBJ(nullptr, oid.get(), 0, value.get()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) return OpenSslError("add issuer scope");
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::vector<SpiffeIdPattern>>> IssuerScope(X509* cert) {
  Asn1ObjectPtr oid = IssuerScopeObject();
  if (!oid) return OpenSslError("issuer scope OID");
  int index = X509_get_ext_by_OBJ(cert, oid.get(), -1);
  if (index < 0) return std::optional<std::vector<SpiffeIdPattern>>();
  if (X509_get_ext_by_OBJ(cert, oid.get(), index) >= 0) {
    return absl::InvalidArgumentError("the issuer scope extension appears twice");
  }
  ASN1_OCTET_STRING* data = X509_EXTENSION_get_data(X509_get_ext(cert, index));
  const unsigned char* p = ASN1_STRING_get0_data(data);
  long len = ASN1_STRING_length(data);
  GeneralNamesPtr names(d2i_GENERAL_NAMES(nullptr, &p, len));
  if (!names || p != ASN1_STRING_get0_data(data) + len) {
    ERR_clear_error();
    return absl::InvalidArgumentError("the issuer scope extension is malformed");
  }
  std::vector<SpiffeIdPattern> scope;
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
    if (name->type != GEN_URI) {
      return absl::InvalidArgumentError("the issuer scope extension holds a non-URI name");
    }
    const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
    auto pattern = SpiffeIdPattern::Parse(
        absl::string_view(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                          static_cast<size_t>(ASN1_STRING_length(uri))));
    if (!pattern.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the issuer scope extension is malformed: ", pattern.status().message()));
    }
    scope.push_back(*std::move(pattern));
  }
  // An empty scope would read as "may sign nothing"; no CA is made that way.
  if (scope.empty()) return absl::InvalidArgumentError("the issuer scope extension is empty");
  return std::optional<std::vector<SpiffeIdPattern>>(std::move(scope));
}

bool InIssuerScope(const std::vector<SpiffeIdPattern>& scope, const SpiffeId& id) {
  for (const SpiffeIdPattern& pattern : scope) {
    if (pattern.Matches(id)) return true;
  }
  return false;
}

std::string ScopeString(const std::vector<SpiffeIdPattern>& scope) {
  std::vector<std::string> parts;
  for (const SpiffeIdPattern& pattern : scope) parts.push_back(pattern.ToString());
  return absl::StrJoin(parts, ", ");
}

PeerVerdict CheckIssuerScopes(STACK_OF(X509) * chain, const SpiffeId& id) {
  for (int i = 1; i < sk_X509_num(chain); ++i) {
    X509* ca = sk_X509_value(chain, i);
    auto scope = IssuerScope(ca);
    if (!scope.ok()) {
      return PeerVerdict::Reject(
          RejectReason::kMalformedCertificate,
          absl::StrCat("CA certificate \"", SubjectString(ca), "\": ", scope.status().message()));
    }
    if (*scope && !InIssuerScope(**scope, id)) {
      return PeerVerdict::Reject(
          RejectReason::kOutsideIssuerScope,
          absl::StrCat("issuer \"", SubjectString(ca), "\" may only sign IDs matching ",
                       ScopeString(**scope), ", not ", id.ToString()));
    }
  }
  return PeerVerdict::Accept(id, absl::InfinitePast());
}

PeerVerdict CheckLeafSvidRules(X509* leaf) {
  // Forces extension parsing; a certificate with broken extensions is refused here.
  if (X509_check_purpose(leaf, -1, 0) != 1 || (X509_get_extension_flags(leaf) & EXFLAG_INVALID)) {
    return PeerVerdict::Reject(RejectReason::kMalformedCertificate,
                               "the certificate has malformed extensions");
  }
  std::vector<std::string> uris = UriSans(leaf);
  if (uris.empty()) {
    return PeerVerdict::Reject(RejectReason::kNoUriSan,
                               "the certificate has no URI SAN, so it carries no SPIFFE ID");
  }
  if (uris.size() > 1) {
    return PeerVerdict::Reject(
        RejectReason::kMultipleUriSans,
        absl::StrCat("the certificate has ", uris.size(),
                     " URI SANs; an X.509-SVID must have exactly one (", uris[0], ", ", uris[1],
                     uris.size() > 2 ? ", ..." : "", ")"));
  }
  auto id = SpiffeId::ParseWorkload(uris[0]);
  if (!id.ok()) {
    return PeerVerdict::Reject(RejectReason::kInvalidSpiffeId, std::string(id.status().message()));
  }
  if (IsCa(leaf)) {
    return PeerVerdict::Reject(
        RejectReason::kLeafIsCa,
        absl::StrCat(
            "the certificate for ", id->ToString(),
            " is a CA certificate (basicConstraints CA:TRUE); a workload SVID must not be"));
  }
  uint32_t usage = X509_get_key_usage(leaf);
  if (usage == UINT32_MAX) {
    return PeerVerdict::Reject(
        RejectReason::kBadKeyUsage,
        absl::StrCat("the certificate for ", id->ToString(), " has no key usage extension"));
  }
  if ((usage & KU_DIGITAL_SIGNATURE) == 0) {
    return PeerVerdict::Reject(RejectReason::kBadKeyUsage,
                               absl::StrCat("the certificate for ", id->ToString(),
                                            " lacks the digitalSignature key usage"));
  }
  if (usage & (KU_KEY_CERT_SIGN | KU_CRL_SIGN)) {
    return PeerVerdict::Reject(
        RejectReason::kBadKeyUsage,
        absl::StrCat("the certificate for ", id->ToString(),
                     " may sign certificates or CRLs; a leaf SVID must not"));
  }
  return PeerVerdict::Accept(*std::move(id), absl::InfinitePast());
}

absl::Status CheckSigningCertificate(X509* cert, absl::string_view what) {
  if (X509_check_purpose(cert, -1, 0) != 1 || !IsCa(cert)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is not a CA certificate (basicConstraints CA:TRUE missing)"));
  }
  uint32_t usage = X509_get_key_usage(cert);
  if (usage != UINT32_MAX && (usage & KU_KEY_CERT_SIGN) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, " lacks the keyCertSign key usage"));
  }
  return absl::OkStatus();
}

}  // namespace ktrust
