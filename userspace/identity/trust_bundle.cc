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
    // A root must say which trust domain it serves, and it must be this
    // one: another domain's root, or one that names none (a partner's
    // generic CA), in this bundle would vouch for our IDs.
    bool names_this_domain = false;
    for (const auto& uri : UriSans(roots[i].get())) {
      auto id = SpiffeId::Parse(uri);
      if (!id.ok()) continue;
      if (id->trust_domain() != trust_domain) {
        return absl::InvalidArgumentError(absl::StrCat(what, " belongs to trust domain ",
                                                       id->trust_domain().name(), ", not ",
                                                       trust_domain.name()));
      }
      names_this_domain = true;
    }
    if (!names_this_domain) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " does not say which trust domain it serves: a root must carry the URI SAN ",
          trust_domain.IdString(), " to be trusted for ", trust_domain.name()));
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
  std::vector<X509CrlPtr> kept;
  for (const auto& crl : crls) {
    std::string what = absl::StrCat("CRL of \"", CrlIssuerString(crl.get()), "\"");
    // ktrust signs no CRL extension a reader must understand (delta CRLs,
    // distribution points); one it cannot honour is refused, not half-used.
    for (int e = 0; e < X509_CRL_get_ext_count(crl.get()); ++e) {
      if (X509_EXTENSION_get_critical(X509_CRL_get_ext(crl.get(), e))) {
        return absl::InvalidArgumentError(absl::StrCat(what, " has a critical extension"));
      }
    }
    bool names_a_root = false, signed_by_root = false;
    for (const auto& root : roots) {
      if (X509_NAME_cmp(X509_CRL_get_issuer(crl.get()), X509_get_subject_name(root.get())) != 0) {
        continue;
      }
      names_a_root = true;
      if (X509_CRL_verify(crl.get(), X509_get0_pubkey(root.get())) == 1) signed_by_root = true;
    }
    ERR_clear_error();
    if (names_a_root && !signed_by_root) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": its signature does not verify with that root's key"));
    }
    kept.push_back(ShareCrl(crl.get()));
  }
  return TrustBundle(std::move(trust_domain), std::move(roots), std::move(store), std::move(kept));
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
