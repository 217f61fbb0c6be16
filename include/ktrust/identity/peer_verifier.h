// Verifies a peer's X.509-SVID chain against the trust bundle of the peer's
// own trust domain and says, in words, why it was refused.
#pragma once

#include <vector>

#include "absl/time/time.h"
#include "ktrust/common/openssl_ptr.h"
#include "ktrust/identity/trust_bundle.h"
#include "ktrust/identity/verdict.h"

namespace ktrust {

struct VerifyOptions {
  // Certificates are accepted this long before notBefore and after notAfter,
  // because node clocks drift. 60 s by default.
  absl::Duration clock_skew = absl::Seconds(60);
  // The role the peer's certificate is used for: X509_PURPOSE_SSL_CLIENT when
  // we are the server, X509_PURPOSE_SSL_SERVER when we are the client, or 0
  // for no extended-key-usage check.
  int purpose = 0;
  // Longest chain accepted, leaf and root included.
  int max_chain_length = 5;
};

// `leaf` is the peer's certificate; `untrusted` the intermediates it sent.
PeerVerdict VerifyPeerChain(const TrustStore& trust, X509* leaf,
                            const std::vector<X509*>& untrusted, const VerifyOptions& options,
                            absl::Time now);

}  // namespace ktrust
