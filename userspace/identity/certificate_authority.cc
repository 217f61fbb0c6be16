#include "ktrust/identity/certificate_authority.h"

#include <openssl/pem.h>
#include <openssl/rand.h>

#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "ktrust/common/files.h"
#include "ktrust/identity/svid_rules.h"
#include "ktrust/identity/x509.h"

namespace ktrust {
namespace {

constexpr char kCertFile[] = "ca.crt";
constexpr char kKeyFile[] = "ca.key";
constexpr char kBundleFile[] = "bundle.crt";
constexpr char kCrlFile[] = "crl.pem";

using X509NamePtr = std::unique_ptr<X509_NAME, OpenSslDeleter<X509_NAME_free>>;
using ExtensionPtr = std::unique_ptr<X509_EXTENSION, OpenSslDeleter<X509_EXTENSION_free>>;

struct CertSpec {
  // (attribute, value) pairs, e.g. {"O", "ktrust"}.
  std::vector<std::pair<std::string, std::string>> subject;
  absl::Time not_before;
  absl::Time not_after;
  std::string basic_constraints;  // e.g. "critical,CA:TRUE,pathlen:0"
  std::string key_usage;
  std::string extended_key_usage;  // empty: none
  std::string san_uri;
  std::string name_constraints = "";  // empty: none
  std::optional<std::vector<SpiffeIdPattern>> scope = std::nullopt;
};

std::string Truncate64(absl::string_view s) { return std::string(s.substr(0, 64)); }

absl::Status AddExtension(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  ExtensionPtr ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return OpenSslError(absl::StrCat("add extension ", OBJ_nid2sn(nid), "=", value));
  }
  return absl::OkStatus();
}

absl::Status SetRandomSerial(X509* cert) {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) return OpenSslError("random serial");
  bytes[0] &= 0x7f;  // positive
  bytes[0] |= 0x40;  // and never short or zero
  BignumPtr bn(BN_bin2bn(bytes, sizeof(bytes), nullptr));
  if (!bn || BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert)) == nullptr) {
    return OpenSslError("set serial");
  }
  return absl::OkStatus();
}

// Builds and signs a certificate for `subject_key`. With no issuer the
// certificate is self-signed.
absl::StatusOr<X509Ptr> SignCertificate(const CertSpec& spec, EVP_PKEY* subject_key, X509* issuer,
                                        EVP_PKEY* issuer_key) {
  X509Ptr cert(X509_new());
  if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1)
    return OpenSslError("new certificate");
  if (auto st = SetRandomSerial(cert.get()); !st.ok()) return st;
  X509_NAME* name = X509_get_subject_name(cert.get());
  for (const auto& [attr, value] : spec.subject) {
    if (X509_NAME_add_entry_by_txt(name, attr.c_str(), MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(value.data()),
                                   static_cast<int>(value.size()), -1, 0) != 1) {
      return OpenSslError(absl::StrCat("set subject ", attr));
    }
  }
  X509_set_issuer_name(cert.get(), issuer ? X509_get_subject_name(issuer) : name);
  if (!ASN1_TIME_set(X509_getm_notBefore(cert.get()), absl::ToTimeT(spec.not_before)) ||
      !ASN1_TIME_set(X509_getm_notAfter(cert.get()), absl::ToTimeT(spec.not_after))) {
    return OpenSslError("set validity");
  }
  if (X509_set_pubkey(cert.get(), subject_key) != 1) return OpenSslError("set public key");

  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer ? issuer : cert.get(), cert.get(), nullptr, nullptr, 0);
  // The subject key identifier comes first: a self-signed authority key
  // identifier is derived from it.
  for (const auto& [nid, value] :
       std::vector<std::pair<int, std::string>>{{NID_basic_constraints, spec.basic_constraints},
                                                {NID_key_usage, spec.key_usage},
                                                {NID_ext_key_usage, spec.extended_key_usage},
                                                {NID_subject_key_identifier, "hash"},
                                                {NID_authority_key_identifier, "keyid:always"},
                                                {NID_subject_alt_name, "URI:" + spec.san_uri},
                                                {NID_name_constraints, spec.name_constraints}}) {
    if (value.empty()) continue;
    if (auto st = AddExtension(cert.get(), &ctx, nid, value); !st.ok()) return st;
  }
  if (spec.scope) {
    if (auto st = AddIssuerScope(cert.get(), *spec.scope); !st.ok()) return st;
  }
  if (X509_sign(cert.get(), issuer_key, EVP_sha256()) <= 0) return OpenSslError("sign certificate");
  return cert;
}

absl::Status ValidateCaName(absl::string_view name) {
  if (name.empty() || name.size() > 64) {
    return absl::InvalidArgumentError("an intermediate name must be 1 to 64 characters long");
  }
  for (char c : name) {
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) {
      return absl::InvalidArgumentError(absl::StrCat(
          "intermediate name \"", name, "\": only letters, digits, '.', '-' and '_' are allowed"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TrustDomain> TrustDomainOfCa(X509* cert) {
  std::vector<std::string> uris = UriSans(cert);
  if (uris.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the CA certificate must carry exactly one URI SAN naming its trust domain; it has ",
        uris.size()));
  }
  return TrustDomain::Parse(uris[0]);
}

// The CA's own chain must verify to its bundle now, or everything it issues
// would be refused by peers.
absl::Status VerifyCaChain(const CertChain& chain, const CertChain& roots, absl::Time now) {
  X509StorePtr store(X509_STORE_new());
  for (const auto& root : roots) X509_STORE_add_cert(store.get(), root.get());
  X509StackPtr untrusted(sk_X509_new_null());
  for (size_t i = 1; i < chain.size(); ++i) sk_X509_push(untrusted.get(), chain[i].get());
  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx ||
      X509_STORE_CTX_init(ctx.get(), store.get(), chain.front().get(), untrusted.get()) != 1) {
    return OpenSslError("set up CA chain check");
  }
  X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(ctx.get()), absl::ToTimeT(now));
  if (X509_verify_cert(ctx.get()) != 1) {
    int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return absl::FailedPreconditionError(absl::StrCat("the CA certificate does not verify against ",
                                                      kBundleFile, ": ",
                                                      X509_verify_cert_error_string(err)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CertificateAuthority> CertificateAuthority::CreateRoot(
    const TrustDomain& trust_domain, absl::Duration validity, absl::Time now) {
  if (validity < absl::Seconds(1)) {
    return absl::InvalidArgumentError("CA validity must be at least 1s");
  }
  auto key = GenerateP256Key();
  if (!key.ok()) return key.status();
  // The creation time in the name tells this root from its predecessors in
  // messages and in `openssl x509 -text`.
  std::string name =
      absl::StrCat("ktrust root CA ", absl::FormatTime("%Y%m%dT%H%M%SZ", now, absl::UTCTimeZone()));
  CertSpec spec{
      .subject = {{"O", "ktrust"}, {"OU", Truncate64(trust_domain.name())}, {"CN", name}},
      .not_before = now - kBackdate,
      .not_after = now + validity,
      .basic_constraints = "critical,CA:TRUE",
      .key_usage = "critical,keyCertSign,cRLSign",
      .extended_key_usage = "",
      .san_uri = trust_domain.IdString(),
  };
  auto cert = SignCertificate(spec, key->get(), nullptr, key->get());
  if (!cert.ok()) return cert.status();
  CertChain chain;
  chain.push_back(std::move(*cert));
  CertChain roots = ShareChain(chain);
  return CertificateAuthority(trust_domain, std::move(chain), *std::move(key), std::move(roots));
}

absl::StatusOr<CertificateAuthority> CertificateAuthority::CreateIntermediate(
    absl::string_view name, absl::Duration validity, absl::Time now,
    const std::vector<SpiffeIdPattern>& scope) const {
  if (!is_root()) {
    return absl::FailedPreconditionError(
        "this CA is itself an intermediate; intermediates sign workload SVIDs only, so create "
        "node intermediates from the root CA directory");
  }
  if (auto st = ValidateCaName(name); !st.ok()) return st;
  if (validity < absl::Seconds(1)) {
    return absl::InvalidArgumentError("CA validity must be at least 1s");
  }
  std::vector<SpiffeIdPattern> bounded = scope;
  if (bounded.empty()) {
    auto own = SpiffeIdPattern::Parse(absl::StrCat(trust_domain_.IdString(), "/", name, "/*"));
    if (!own.ok()) return own.status();
    bounded.push_back(*std::move(own));
  }
  for (const SpiffeIdPattern& pattern : bounded) {
    if (pattern.base().trust_domain() != trust_domain_) {
      return absl::InvalidArgumentError(absl::StrCat("scope ", pattern.ToString(),
                                                     " is outside this CA's trust domain ",
                                                     trust_domain_.name()));
    }
  }
  auto key = GenerateP256Key();
  if (!key.ok()) return key.status();
  CertSpec spec{
      .subject = {{"O", "ktrust"},
                  {"OU", Truncate64(trust_domain_.name())},
                  {"CN", std::string(name)}},
      .not_before = now - kBackdate,
      .not_after = std::min(now + validity, NotAfter(certificate())),
      .basic_constraints = "critical,CA:TRUE,pathlen:0",
      .key_usage = "critical,keyCertSign,cRLSign",
      .extended_key_usage = "",
      .san_uri = trust_domain_.IdString(),
      // Every X.509 verifier enforces this much: the URI's host, i.e. the
      // trust domain. The path bound is the issuer scope.
      .name_constraints = absl::StrCat("critical,permitted;URI:", trust_domain_.name()),
      .scope = bounded,
  };
  auto cert = SignCertificate(spec, key->get(), certificate(), key_.get());
  if (!cert.ok()) return cert.status();
  CertChain chain;
  chain.push_back(std::move(*cert));
  return CertificateAuthority(trust_domain_, std::move(chain), *std::move(key), ShareChain(roots_));
}

absl::StatusOr<Svid> CertificateAuthority::IssueSvid(const SpiffeId& id, absl::Duration ttl,
                                                     absl::Time now) const {
  if (id.trust_domain() != trust_domain_) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot issue ", id.ToString(), ": this CA is for ", trust_domain_.name()));
  }
  if (id.path().empty()) {
    return absl::InvalidArgumentError("cannot issue an SVID for a bare trust domain ID");
  }
  // Fail here rather than mint what every peer refuses.
  for (const auto& ca : chain_) {
    auto scope = IssuerScope(ca.get());
    if (!scope.ok()) return scope.status();
    if (*scope && !InIssuerScope(**scope, id)) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot issue ", id.ToString(), ": issuer \"", SubjectString(ca.get()),
                       "\" may only sign IDs matching ", ScopeString(**scope),
                       " (its scope, set by `ktrust ca intermediate --scope`)"));
    }
  }
  // Certificate times have one-second resolution.
  if (ttl < absl::Seconds(1)) return absl::InvalidArgumentError("SVID TTL must be at least 1s");
  absl::Time ca_not_after = NotAfter(certificate());
  if (now >= ca_not_after) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot issue: the CA certificate expired at ", FormatTimestamp(ca_not_after)));
  }
  auto key = GenerateP256Key();
  if (!key.ok()) return key.status();
  CertSpec spec{
      .subject = {{"O", "ktrust"}},
      .not_before = now - kBackdate,
      .not_after = std::min(now + ttl, ca_not_after),
      .basic_constraints = "critical,CA:FALSE",
      .key_usage = "critical,digitalSignature",
      .extended_key_usage = "serverAuth,clientAuth",
      .san_uri = id.ToString(),
  };
  auto cert = SignCertificate(spec, key->get(), certificate(), key_.get());
  if (!cert.ok()) return cert.status();
  CertChain chain;
  chain.push_back(std::move(*cert));
  // Present the intermediates (never the root) after the leaf.
  if (!is_root()) {
    for (const auto& c : chain_) chain.push_back(ShareX509(c.get()));
  }
  return Svid::Create(std::move(chain), *std::move(key));
}

bool CertificateAuthority::is_root() const {
  return chain_.size() == 1 && X509_check_issued(certificate(), certificate()) == X509_V_OK;
}

absl::StatusOr<TrustBundle> CertificateAuthority::Bundle() const {
  return TrustBundle::Create(trust_domain_, ShareChain(roots_));
}

absl::Status CertificateAuthority::Save(const std::string& dir, bool force) const {
  std::string cert_path = absl::StrCat(dir, "/", kCertFile);
  std::string key_path = absl::StrCat(dir, "/", kKeyFile);
  std::string bundle_path = absl::StrCat(dir, "/", kBundleFile);
  if (!force && (PathExists(cert_path) || PathExists(key_path))) {
    return absl::AlreadyExistsError(
        absl::StrCat("a CA already exists in ", dir,
                     "; pass --force to replace it (peers that trust the old "
                     "root will refuse SVIDs from the new one)"));
  }
  if (auto st = EnsureDirectory(dir, 0700); !st.ok()) return st;
  auto key_pem = ToPem(key_.get());
  if (!key_pem.ok()) return key_pem.status();
  if (auto st = WriteFileAtomically(key_path, key_pem->view(), 0600); !st.ok()) return st;
  if (auto st = WriteFileAtomically(cert_path, ToPem(chain_), 0644); !st.ok()) return st;
  // A new key: an old crl.pem was signed by another one.
  auto crl = EmptyCrl(absl::Now());
  if (!crl.ok()) return crl.status();
  if (auto st = WriteFileAtomically(absl::StrCat(dir, "/", kCrlFile), *crl, 0644); !st.ok()) {
    return st;
  }
  return WriteFileAtomically(bundle_path, ToPem(roots_), 0644);
}

absl::StatusOr<CertificateAuthority> CertificateAuthority::Load(const std::string& dir,
                                                                absl::Time now) {
  auto prefix = [&](absl::string_view file) { return absl::StrCat(dir, "/", file); };
  auto cert_pem = ReadFile(prefix(kCertFile));
  if (!cert_pem.ok()) return cert_pem.status();
  auto key_pem = ReadPrivateKeyFile(prefix(kKeyFile));
  if (!key_pem.ok()) return key_pem.status();
  auto bundle_pem = ReadFile(prefix(kBundleFile));
  if (!bundle_pem.ok()) return bundle_pem.status();

  auto chain = ParseCertificates(*cert_pem, prefix(kCertFile));
  if (!chain.ok()) return chain.status();
  auto key = ParsePrivateKey(*key_pem, prefix(kKeyFile));
  if (!key.ok()) return key.status();
  auto roots = ParseCertificates(*bundle_pem, prefix(kBundleFile));
  if (!roots.ok()) return roots.status();

  X509* cert = chain->front().get();
  if (X509_check_private_key(cert, key->get()) != 1) {
    ERR_clear_error();
    return absl::FailedPreconditionError(
        absl::StrCat(prefix(kKeyFile), " does not match the certificate in ", prefix(kCertFile)));
  }
  if (auto st = CheckSigningCertificate(cert, prefix(kCertFile)); !st.ok()) return st;
  auto td = TrustDomainOfCa(cert);
  if (!td.ok())
    return absl::InvalidArgumentError(absl::StrCat(prefix(kCertFile), ": ", td.status().message()));
  if (auto st = VerifyCaChain(*chain, *roots, now); !st.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(dir, ": ", st.message()));
  }
  return CertificateAuthority(*std::move(td), *std::move(chain), *std::move(key),
                              *std::move(roots));
}

namespace {

using X509CrlRevokedPtr = std::unique_ptr<X509_REVOKED, OpenSslDeleter<X509_REVOKED_free>>;
using Asn1IntegerPtr = std::unique_ptr<ASN1_INTEGER, OpenSslDeleter<ASN1_INTEGER_free>>;
using Asn1TimePtr = std::unique_ptr<ASN1_TIME, OpenSslDeleter<ASN1_TIME_free>>;

// "4A:0F:..", "0x4a0f..", "4a0f..": what `openssl x509 -serial` and
// `ktrust cert inspect` print.
absl::StatusOr<Asn1IntegerPtr> ParseSerial(absl::string_view text) {
  absl::string_view rest = text;
  if (absl::StartsWith(rest, "0x") || absl::StartsWith(rest, "0X")) rest.remove_prefix(2);
  std::string hex;
  for (char c : rest) {
    if (c != ':') hex.push_back(c);
  }
  BIGNUM* raw = nullptr;
  if (hex.empty() || hex.size() > 40 ||
      hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos ||
      BN_hex2bn(&raw, hex.c_str()) == 0) {
    BN_free(raw);
    return absl::InvalidArgumentError(absl::StrCat(
        "serial \"", text, "\" is not a hexadecimal certificate serial (up to 20 bytes)"));
  }
  BignumPtr bn(raw);
  if (BN_is_zero(bn.get()))
    return absl::InvalidArgumentError("serial 0 is not a certificate serial");
  Asn1IntegerPtr serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
  if (!serial) return OpenSslError("serial");
  return serial;
}

}  // namespace

absl::StatusOr<std::string> CertificateAuthority::EmptyCrl(absl::Time now) const {
  return Revoke("", "", now);
}

absl::StatusOr<std::string> CertificateAuthority::Revoke(absl::string_view serial_hex,
                                                         absl::string_view current_crl_pem,
                                                         absl::Time now) const {
  X509CrlPtr crl;
  std::string crl_name = absl::StrCat("the CRL of \"", SubjectString(certificate()), "\"");
  if (!current_crl_pem.empty()) {
    auto parsed = ParseCrls(current_crl_pem, crl_name);
    if (!parsed.ok()) return parsed.status();
    if (parsed->size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(crl_name, " holds ", parsed->size(), " CRLs; expected exactly one"));
    }
    crl = std::move(parsed->front());
    if (X509_NAME_cmp(X509_CRL_get_issuer(crl.get()), X509_get_subject_name(certificate())) != 0 ||
        X509_CRL_verify(crl.get(), key_.get()) != 1) {
      ERR_clear_error();
      return absl::FailedPreconditionError(
          absl::StrCat(crl_name, " on disk is not signed by this CA; refusing to replace it"));
    }
  } else {
    crl.reset(X509_CRL_new());
    if (!crl || X509_CRL_set_version(crl.get(), X509_CRL_VERSION_2) != 1 ||
        X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(certificate())) != 1) {
      return OpenSslError("new CRL");
    }
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, certificate(), nullptr, nullptr, crl.get(), 0);
    ExtensionPtr aki(
        X509V3_EXT_conf_nid(nullptr, &ctx, NID_authority_key_identifier, "keyid:always"));
    if (!aki || X509_CRL_add_ext(crl.get(), aki.get(), -1) != 1) return OpenSslError("CRL AKI");
  }
  if (!serial_hex.empty()) {
    auto serial = ParseSerial(serial_hex);
    if (!serial.ok()) return serial.status();
    X509_REVOKED* existing = nullptr;
    if (X509_CRL_get0_by_serial(crl.get(), &existing, serial->get()) == 1) {
      return absl::AlreadyExistsError(absl::StrCat("serial ", serial_hex, " is already revoked"));
    }
    X509CrlRevokedPtr revoked(X509_REVOKED_new());
    Asn1TimePtr when(ASN1_TIME_set(nullptr, absl::ToTimeT(now)));
    if (!revoked || !when || X509_REVOKED_set_serialNumber(revoked.get(), serial->get()) != 1 ||
        X509_REVOKED_set_revocationDate(revoked.get(), when.get()) != 1 ||
        X509_CRL_add0_revoked(crl.get(), revoked.get()) != 1) {
      return OpenSslError("add CRL entry");
    }
    revoked.release();  // the CRL owns it now
  }
  // The CRL number only grows (RFC 5280 5.2.3), so a reader can tell newer from older.
  BignumPtr number(BN_new());
  using CrlNumberPtr = std::unique_ptr<ASN1_INTEGER, OpenSslDeleter<ASN1_INTEGER_free>>;
  CrlNumberPtr old_number(static_cast<ASN1_INTEGER*>(
      X509_CRL_get_ext_d2i(crl.get(), NID_crl_number, nullptr, nullptr)));
  if (!number || (old_number && !ASN1_INTEGER_to_BN(old_number.get(), number.get())) ||
      !BN_add_word(number.get(), 1)) {
    return OpenSslError("CRL number");
  }
  CrlNumberPtr new_number(BN_to_ASN1_INTEGER(number.get(), nullptr));
  Asn1TimePtr this_update(ASN1_TIME_set(nullptr, absl::ToTimeT(now)));
  Asn1TimePtr next_update(ASN1_TIME_set(nullptr, absl::ToTimeT(NotAfter(certificate()))));
  if (!new_number ||
      X509_CRL_add1_ext_i2d(crl.get(), NID_crl_number, new_number.get(), 0, X509V3_ADD_REPLACE) !=
          1 ||
      !this_update || !next_update || X509_CRL_set1_lastUpdate(crl.get(), this_update.get()) != 1 ||
      X509_CRL_set1_nextUpdate(crl.get(), next_update.get()) != 1 ||
      X509_CRL_sort(crl.get()) != 1 || X509_CRL_sign(crl.get(), key_.get(), EVP_sha256()) <= 0) {
    return OpenSslError("sign CRL");
  }
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509_CRL(bio.get(), crl.get()) != 1) return OpenSslError("encode CRL");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

}  // namespace ktrust
