#include "ktrust/identity/trust_bundle.h"

#include "absl/strings/str_cat.h"
#include "ktrust/identity/svid_rules.h"
#include "ktrust/identity/x509.h"

namespace ktrust {

absl::StatusOr<TrustBundle> TrustBundle::Create(TrustDomain trust_domain, CertChain roots,
                                                const std::vector<X509CrlPtr>& crls) {
  if (roots.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("trust bundle for ", trust_domain.name(), " has no root certificate"));
  }
  X509StorePtr store(X509_STORE_new());
  if (!store) return OpenSslError("create X509 store");
  for (size_t i = 0; i < roots.size(); ++i) {
    std::string what = absl::StrCat("trust bundle for ", trust_domain.name(), ": certificate #",
                                    i + 1, " (", SubjectString(roots[i].get()), ")");
    if (auto st = CheckSigningCertificate(roots[i].get(), what); !st.ok()) return st;
    // A root that names its trust domain must name this one: another
    // domain's root in this bundle would let it vouch for our IDs.
    for (const auto& uri : UriSans(roots[i].get())) {
      auto id = SpiffeId::Parse(uri);
      if (id.ok() && id->trust_domain() != trust_domain) {
        return absl::InvalidArgumentError(absl::StrCat(what, " belongs to trust domain ",
                                                       id->trust_domain().name(), ", not ",
                                                       trust_domain.name()));
      }
    }
    // Chains must end at a self-signed root (no partial chains). OpenSSL
    // never checks an anchor's own signature, so a damaged root file would
    // otherwise surface only later, as baffling handshake failures.
    if (X509_check_issued(roots[i].get(), roots[i].get()) != X509_V_OK) {
      return absl::InvalidArgumentError(absl::StrCat(what, " is not a self-signed root"));
    }
    if (X509_verify(roots[i].get(), X509_get0_pubkey(roots[i].get())) != 1) {
      ERR_clear_error();
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": its self-signature does not verify (damaged file?)"));
    }
    if (X509_STORE_add_cert(store.get(), roots[i].get()) != 1) {
      // A duplicate root is harmless; anything else is not.
      unsigned long err = ERR_peek_last_error();
      if (ERR_GET_REASON(err) != X509_R_CERT_ALREADY_IN_HASH_TABLE) {
        return OpenSslError(absl::StrCat(what, ": add to store"));
      }
      ERR_clear_error();
    }
  }
  for (const auto& crl : crls) {
    if (X509_STORE_add_crl(store.get(), crl.get()) != 1) return OpenSslError("add CRL to store");
  }
  bool has_crls = !crls.empty();
  return TrustBundle(std::move(trust_domain), std::move(roots), std::move(store), has_crls);
}

absl::StatusOr<TrustBundle> TrustBundle::FromPem(TrustDomain trust_domain,
                                                 absl::string_view roots_pem,
                                                 absl::string_view crls_pem) {
  auto roots = ParseCertificates(roots_pem, absl::StrCat("trust bundle for ", trust_domain.name()));
  if (!roots.ok()) return roots.status();
  std::vector<X509CrlPtr> crls;
  if (!crls_pem.empty()) {
    auto parsed = ParseCrls(crls_pem, absl::StrCat("CRLs for ", trust_domain.name()));
    if (!parsed.ok()) return parsed.status();
    crls = *std::move(parsed);
  }
  return Create(std::move(trust_domain), *std::move(roots), crls);
}

std::string TrustBundle::RootsPem() const { return ToPem(*roots_); }

void TrustStore::Put(TrustBundle bundle) {
  std::string name = bundle.trust_domain().name();
  bundles_.insert_or_assign(std::move(name), std::move(bundle));
}

const TrustBundle* TrustStore::Find(const TrustDomain& td) const {
  auto it = bundles_.find(td.name());
  return it == bundles_.end() ? nullptr : &it->second;
}

std::vector<std::string> TrustStore::TrustDomainNames() const {
  std::vector<std::string> names;
  for (const auto& [name, bundle] : bundles_) names.push_back(name);
  return names;
}

}  // namespace ktrust
