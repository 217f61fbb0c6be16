// The outcome of checking a peer's identity: the SPIFFE ID, or a reason code
// for logs and metrics plus a sentence for the person debugging it.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ktrust/identity/spiffe_id.h"

namespace ktrust {

enum class RejectReason {
  kNone,
  kNoCertificate,         // the peer sent no certificate
  kMalformedCertificate,  // unparsable, or not an X.509-SVID structurally
  kNoUriSan,
  kMultipleUriSans,
  kInvalidSpiffeId,       // the URI SAN is not a valid workload SPIFFE ID
  kUntrustedTrustDomain,  // no bundle for the peer's trust domain
  kUnknownAuthority,      // does not chain to the bundle of its trust domain
  kBadSignature,
  kExpired,
  kNotYetValid,  // includes clock skew beyond the allowance
  kLeafIsCa,
  kBadKeyUsage,  // key usage / extended key usage forbid this use
  kRevoked,
  kChainInvalid,    // any other chain-building failure, with OpenSSL's words
  kUnexpectedPeer,  // valid SVID, but not the identity this connection expects
  // a CA in the chain is bounded to other IDs (a node's intermediate
  // vouching for another node's workload)
  kOutsideIssuerScope,
};

// Stable snake_case code, e.g. "expired", "unknown_authority".
absl::string_view ReasonCode(RejectReason reason);

struct PeerVerdict {
  static PeerVerdict Accept(SpiffeId id, absl::Time not_after) {
    return PeerVerdict{std::move(id), RejectReason::kNone, "", not_after};
  }
  static PeerVerdict Reject(RejectReason reason, std::string explanation) {
    return PeerVerdict{std::nullopt, reason, std::move(explanation), absl::InfinitePast()};
  }

  bool ok() const { return reason == RejectReason::kNone; }

  std::optional<SpiffeId> peer_id;  // set iff ok()
  RejectReason reason = RejectReason::kNone;
  std::string explanation;  // empty iff ok()
  absl::Time not_after;     // the earliest notAfter in the verified chain
};

}  // namespace ktrust
