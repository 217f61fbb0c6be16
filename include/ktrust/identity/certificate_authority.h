// ktrust's embedded CA: a root per trust domain, optional per-node
// intermediates so the root key can stay off the nodes, and X.509-SVID
// issuance in memory.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ktrust/common/openssl_ptr.h"
#include "ktrust/identity/spiffe_id.h"
#include "ktrust/identity/svid.h"
#include "ktrust/identity/trust_bundle.h"

namespace ktrust {

// Defaults, documented in docs/identity.md.
inline constexpr absl::Duration kDefaultRootValidity = absl::Hours(24 * 365);
// Short, so a node's authority lapses on its own unless renewed; the agent
// reloads a renewed intermediate without a restart.
inline constexpr absl::Duration kDefaultIntermediateValidity = absl::Hours(24 * 30);
inline constexpr absl::Duration kDefaultSvidTtl = absl::Hours(1);
// Issued certificates start slightly in the past so that a peer whose clock
// runs a little behind still accepts a certificate minted this second.
inline constexpr absl::Duration kBackdate = absl::Seconds(30);

// A CA directory holds:
//   ca.crt      this CA's certificate, then the intermediates up to (not
//               including) the root: the chain presented after a leaf
//   ca.key      its private key, mode 0600
//   bundle.crt  the root(s) peers verify against (the trust bundle)
//   crl.pem     the certificates this CA revoked, signed by it (`ktrust ca revoke`)
class CertificateAuthority {
 public:
  static absl::StatusOr<CertificateAuthority> CreateRoot(const TrustDomain& trust_domain,
                                                         absl::Duration validity, absl::Time now);
  // Loads and checks a CA directory: the key matches the certificate, the
  // certificate is a CA of a trust domain, is valid now, and chains to bundle.crt.
  static absl::StatusOr<CertificateAuthority> Load(const std::string& dir, absl::Time now);

  CertificateAuthority(CertificateAuthority&&) = default;
  CertificateAuthority& operator=(CertificateAuthority&&) = default;

  // Writes the directory (0700) and its files. Refuses to replace an existing
  // CA unless `force`.
  absl::Status Save(const std::string& dir, bool force) const;

  // An intermediate CA signed by this root, named `name` (e.g. the node name).
  // Intermediates sign workload SVIDs only, not further CAs, and only the IDs
  // in `scope` (issuer scope, svid_rules.h); an empty scope means the node's
  // own ID space, spiffe://<trust domain>/<name>/*.
  absl::StatusOr<CertificateAuthority> CreateIntermediate(
      absl::string_view name, absl::Duration validity, absl::Time now,
      const std::vector<SpiffeIdPattern>& scope = {}) const;

  // A fresh P-256 key and leaf certificate for `id`. The lifetime is `ttl`,
  // cut short at this CA's own notAfter. Refuses an ID outside the scope of
  // any CA in this CA's chain.
  absl::StatusOr<Svid> IssueSvid(const SpiffeId& id, absl::Duration ttl, absl::Time now) const;

  // This CA's CRL (PEM) with `serial` (hex) added to `current_crl_pem` (this
  // CA's previous CRL, or empty). thisUpdate is `now`, nextUpdate this CA's
  // notAfter: nothing it signed outlives that.
  absl::StatusOr<std::string> Revoke(absl::string_view serial_hex,
                                     absl::string_view current_crl_pem, absl::Time now) const;
  // An empty CRL, so crl.pem exists (and can be configured) from the start.
  absl::StatusOr<std::string> EmptyCrl(absl::Time now) const;

  const TrustDomain& trust_domain() const { return trust_domain_; }
  X509* certificate() const { return chain_.front().get(); }
  const CertChain& chain() const { return chain_; }
  const CertChain& roots() const { return roots_; }
  // A self-signed root, as opposed to an intermediate.
  bool is_root() const;
  absl::StatusOr<TrustBundle> Bundle() const;

 private:
  CertificateAuthority(TrustDomain td, CertChain chain, EvpPkeyPtr key, CertChain roots)
      : trust_domain_(std::move(td)),
        chain_(std::move(chain)),
        key_(std::move(key)),
        roots_(std::move(roots)) {}

  TrustDomain trust_domain_;
  CertChain chain_;
  EvpPkeyPtr key_;
  CertChain roots_;
};

}  // namespace ktrust
