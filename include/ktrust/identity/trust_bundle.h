// The roots a trust domain's SVIDs must chain to. A bundle may hold several
// roots at once, which is how a CA is rotated without breaking connections:
// add the new root everywhere, switch issuance, then drop the old root.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ktrust/common/openssl_ptr.h"
#include "ktrust/identity/spiffe_id.h"

namespace ktrust {

class TrustBundle {
 public:
  // Copyable: copies share the immutable roots and store.
  // Every root must be a self-signed CA certificate whose signature verifies
  // and whose URI SAN names `trust_domain` (spiffe://<trust domain>): a root
  // that does not say which domain it serves could be put to work for any.
  // CRLs are optional and per issuer: every certificate of a peer's chain is
  // looked up in the CRLs its issuer signed; an issuer without a CRL here
  // has revoked nothing (so one root CRL can revoke a node's intermediate
  // without every node's intermediate publishing one). A CRL that names a
  // root of this bundle as issuer must verify with that root's key.
  static absl::StatusOr<TrustBundle> Create(TrustDomain trust_domain, CertChain roots,
                                            const std::vector<X509CrlPtr>& crls = {});
  static absl::StatusOr<TrustBundle> FromPem(TrustDomain trust_domain, absl::string_view roots_pem,
                                             absl::string_view crls_pem = "");

  const TrustDomain& trust_domain() const { return trust_domain_; }
  const CertChain& roots() const { return *roots_; }
  bool has_crls() const { return !crls_->empty(); }
  const std::vector<X509CrlPtr>& crls() const { return *crls_; }
  // The store chain building uses; read-only once built, so shared by threads.
  X509_STORE* store() const { return store_.get(); }
  std::string RootsPem() const;

 private:
  TrustBundle(TrustDomain td, CertChain roots, X509StorePtr store, std::vector<X509CrlPtr> crls)
      : trust_domain_(std::move(td)),
        roots_(std::make_shared<const CertChain>(std::move(roots))),
        store_(std::move(store)),
        crls_(std::make_shared<const std::vector<X509CrlPtr>>(std::move(crls))) {}

  TrustDomain trust_domain_;
  // Shared and immutable, so copies of a bundle are cheap.
  std::shared_ptr<const CertChain> roots_;
  std::shared_ptr<X509_STORE> store_;
  std::shared_ptr<const std::vector<X509CrlPtr>> crls_;
};

// The bundles this node trusts, one per trust domain. A peer is verified only
// against the bundle of the trust domain in its own SPIFFE ID.
class TrustStore {
 public:
  // Adds or replaces the bundle of bundle.trust_domain().
  void Put(TrustBundle bundle);
  const TrustBundle* Find(const TrustDomain& td) const;
  bool empty() const { return bundles_.empty(); }
  std::vector<std::string> TrustDomainNames() const;

 private:
  std::map<std::string, TrustBundle> bundles_;
};

}  // namespace ktrust
