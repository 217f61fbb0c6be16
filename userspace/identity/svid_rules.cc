#include "ktrust/identity/svid_rules.h"

#include "absl/strings/str_cat.h"
#include "ktrust/identity/x509.h"

namespace ktrust {

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
