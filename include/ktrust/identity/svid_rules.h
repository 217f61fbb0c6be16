// The X.509-SVID structural rules (SPIFFE X509-SVID specification, section
// 4), checked the same way for certificates ktrust issues, loads and receives.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "ktrust/common/openssl_ptr.h"
#include "ktrust/identity/verdict.h"

namespace ktrust {

// A leaf SVID: exactly one URI SAN holding a workload SPIFFE ID, basic
// constraints not CA, key usage present with digitalSignature and without
// keyCertSign/cRLSign. Accepts with the SPIFFE ID (not_after unset).
PeerVerdict CheckLeafSvidRules(X509* leaf);

// A signing certificate: CA flag and keyCertSign.
absl::Status CheckSigningCertificate(X509* cert, absl::string_view what);

}  // namespace ktrust
