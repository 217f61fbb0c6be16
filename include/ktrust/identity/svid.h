// An X.509-SVID: a workload's certificate chain and its private key.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ktrust/common/openssl_ptr.h"
#include "ktrust/common/secret.h"
#include "ktrust/identity/spiffe_id.h"

namespace ktrust {

class Svid {
 public:
  // Takes ownership of a chain (leaf first, then the intermediates to present)
  // and its key, after checking the X.509-SVID rules: exactly one URI SAN that
  // is a workload SPIFFE ID, leaf not a CA, digitalSignature key usage, no
  // certificate-signing usage, and a key that matches the leaf.
  static absl::StatusOr<Svid> Create(CertChain chain, EvpPkeyPtr key);
  // Same, from PEM: `chain_pem` is tls.crt in the cert-manager layout.
  static absl::StatusOr<Svid> FromPem(absl::string_view chain_pem, const Secret& key_pem);

  Svid(Svid&&) = default;
  Svid& operator=(Svid&&) = default;

  const SpiffeId& id() const { return id_; }
  X509* leaf() const { return chain_.front().get(); }
  const CertChain& chain() const { return chain_; }
  EVP_PKEY* key() const { return key_.get(); }
  absl::Time not_before() const { return not_before_; }
  absl::Time not_after() const { return not_after_; }

  std::string ChainPem() const;
  absl::StatusOr<Secret> KeyPem() const;

 private:
  Svid(SpiffeId id, CertChain chain, EvpPkeyPtr key);

  SpiffeId id_;
  CertChain chain_;
  EvpPkeyPtr key_;
  absl::Time not_before_;
  absl::Time not_after_;
};

}  // namespace ktrust
