// Test-only certificate minting: every shape the verifier must refuse
// (expired, no URI SAN, CA leaf, ...), which the real CA never produces.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ktrust/common/openssl_ptr.h"
#include "ktrust/identity/certificate_authority.h"
#include "ktrust/identity/svid.h"

// Debian's abseil has its own string_view; print it as text in failures.
namespace absl {
inline void PrintTo(string_view s, std::ostream* os) { *os << '"' << s << '"'; }
}  // namespace absl

namespace ktrust::testing {

struct CertSpec {
  std::vector<std::string> uri_sans;
  std::vector<std::string> ip_sans = {};  // for TLS servers on test addresses
  absl::Time not_before = absl::Now() - absl::Minutes(1);
  absl::Time not_after = absl::Now() + absl::Hours(1);
  bool ca = false;
  std::string key_usage = "critical,digitalSignature";  // empty: no extension
  std::string extended_key_usage = "serverAuth,clientAuth";
  std::string common_name = "test";
};

struct KeyAndCert {
  EvpPkeyPtr key;
  X509Ptr cert;
};

// Signs with `issuer`, or self-signs when issuer is null.
KeyAndCert Mint(const CertSpec& spec, const KeyAndCert* issuer = nullptr);

// A root CA for `trust_domain` ("example.org").
KeyAndCert MintRoot(const std::string& trust_domain,
                    absl::Time not_after = absl::Now() + absl::Hours(24));

// A leaf signed by `issuer`, wrapped as an Svid with `chain_extra` after it.
Svid MintSvid(const CertSpec& spec, const KeyAndCert& issuer,
              const std::vector<X509*>& chain_extra = {});

}  // namespace ktrust::testing
