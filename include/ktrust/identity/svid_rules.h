// The X.509-SVID structural rules (SPIFFE X509-SVID specification, section
// 4), checked the same way for certificates ktrust issues, loads and receives.
#pragma once

#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ktrust/common/openssl_ptr.h"
#include "ktrust/identity/spiffe_id.h"
#include "ktrust/identity/verdict.h"

namespace ktrust {

// A leaf SVID: exactly one URI SAN holding a workload SPIFFE ID, basic
// constraints not CA, key usage present with digitalSignature and without
// keyCertSign/cRLSign. Accepts with the SPIFFE ID (not_after unset).
PeerVerdict CheckLeafSvidRules(X509* leaf);

// A signing certificate: CA flag and keyCertSign.
absl::Status CheckSigningCertificate(X509* cert, absl::string_view what);

// Issuer scope: the SPIFFE IDs a CA may sign, as policy-style patterns
// (exact, or a "/*" prefix). X.509 name constraints on URIs bound only the
// host (RFC 5280 4.2.1.10), so cannot bound a path; ktrust carries the scope
// in a non-critical private extension (OID kIssuerScopeOid, the DER of a
// GeneralNames whose URIs are the patterns) that every ktrust verifier and
// the CA itself enforce. Other verifiers ignore it; for them the critical
// nameConstraints (permitted URI host = the trust domain) still binds the
// CA to its trust domain.
inline constexpr char kIssuerScopeOid[] = "2.25.119322301670534950020872975384248857166";

// Adds the scope extension to a certificate being built.
absl::Status AddIssuerScope(X509* cert, const std::vector<SpiffeIdPattern>& scope);
// The certificate's scope; nullopt when it has none (unbounded, e.g. a root).
// A damaged or repeated extension is an error: a bound must never be lost.
absl::StatusOr<std::optional<std::vector<SpiffeIdPattern>>> IssuerScope(X509* cert);
// Whether `id` is inside `scope`.
bool InIssuerScope(const std::vector<SpiffeIdPattern>& scope, const SpiffeId& id);
// "spiffe://td/a/*, spiffe://td/b": for messages.
std::string ScopeString(const std::vector<SpiffeIdPattern>& scope);
// Every CA of a verified chain (leaf first) that carries a scope must cover
// the leaf's ID; refused with kOutsideIssuerScope otherwise.
PeerVerdict CheckIssuerScopes(STACK_OF(X509) * chain, const SpiffeId& id);

}  // namespace ktrust
