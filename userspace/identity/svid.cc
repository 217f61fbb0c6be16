#include "ktrust/identity/svid.h"

#include "absl/strings/str_cat.h"
#include "ktrust/identity/svid_rules.h"
#include "ktrust/identity/x509.h"

namespace ktrust {

Svid::Svid(SpiffeId id, CertChain chain, EvpPkeyPtr key)
    : id_(std::move(id)),
      chain_(std::move(chain)),
      key_(std::move(key)),
      not_before_(NotBefore(chain_.front().get())),
      not_after_(NotAfter(chain_.front().get())) {}

absl::StatusOr<Svid> Svid::Create(CertChain chain, EvpPkeyPtr key) {
  if (chain.empty()) return absl::InvalidArgumentError("SVID: no certificate");
  if (!key) return absl::InvalidArgumentError("SVID: no private key");
  X509* leaf = chain.front().get();
  PeerVerdict shape = CheckLeafSvidRules(leaf);
  if (!shape.ok()) return absl::InvalidArgumentError(absl::StrCat("SVID: ", shape.explanation));
  SpiffeId& id = *shape.peer_id;
  if (X509_check_private_key(leaf, key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(
        "SVID for ", id.ToString(), ": the private key does not match the certificate"));
  }
  return Svid(std::move(id), std::move(chain), std::move(key));
}

absl::StatusOr<Svid> Svid::FromPem(absl::string_view chain_pem, const Secret& key_pem) {
  auto chain = ParseCertificates(chain_pem, "SVID certificate chain");
  if (!chain.ok()) return chain.status();
  auto key = ParsePrivateKey(key_pem, "SVID private key");
  if (!key.ok()) return key.status();
  return Create(*std::move(chain), *std::move(key));
}

std::string Svid::ChainPem() const { return ToPem(chain_); }

absl::StatusOr<Secret> Svid::KeyPem() const { return ToPem(key_.get()); }

}  // namespace ktrust
