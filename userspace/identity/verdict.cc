#include "ktrust/identity/verdict.h"

namespace ktrust {

absl::string_view ReasonCode(RejectReason reason) {
  switch (reason) {
    case RejectReason::kNone:
      return "ok";
    case RejectReason::kNoCertificate:
      return "no_certificate";
    case RejectReason::kMalformedCertificate:
      return "malformed_certificate";
    case RejectReason::kNoUriSan:
      return "no_uri_san";
    case RejectReason::kMultipleUriSans:
      return "multiple_uri_sans";
    case RejectReason::kInvalidSpiffeId:
      return "invalid_spiffe_id";
    case RejectReason::kUntrustedTrustDomain:
      return "untrusted_trust_domain";
    case RejectReason::kUnknownAuthority:
      return "unknown_authority";
    case RejectReason::kBadSignature:
      return "bad_signature";
    case RejectReason::kExpired:
      return "expired";
    case RejectReason::kNotYetValid:
      return "not_yet_valid";
    case RejectReason::kLeafIsCa:
      return "leaf_is_ca";
    case RejectReason::kBadKeyUsage:
      return "bad_key_usage";
    case RejectReason::kRevoked:
      return "revoked";
    case RejectReason::kChainInvalid:
      return "chain_invalid";
    case RejectReason::kUnexpectedPeer:
      return "unexpected_peer";
    case RejectReason::kOutsideIssuerScope:
      return "outside_issuer_scope";
  }
  return "unknown";
}

}  // namespace ktrust
