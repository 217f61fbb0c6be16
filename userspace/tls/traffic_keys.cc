#include "ktrust/tls/traffic_keys.h"

#include <openssl/core_names.h>
#include <openssl/kdf.h>

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "ktrust/common/openssl_ptr.h"

namespace ktrust {
namespace {

using EvpKdfPtr = std::unique_ptr<EVP_KDF, OpenSslDeleter<EVP_KDF_free>>;
using EvpKdfCtxPtr = std::unique_ptr<EVP_KDF_CTX, OpenSslDeleter<EVP_KDF_CTX_free>>;

constexpr CipherSuite kSuites[] = {CipherSuite::kAes128GcmSha256, CipherSuite::kAes256GcmSha384,
                                   CipherSuite::kChaCha20Poly1305Sha256};

const char* DigestName(CipherSuite suite) {
  return suite == CipherSuite::kAes256GcmSha384 ? "SHA384" : "SHA256";
}

// HKDF-Expand-Label(secret, label, "", length) from RFC 8446 §7.1, by
// OpenSSL's own TLS 1.3 KDF: the traffic secret is already a PRK, so expand only.
absl::StatusOr<Secret> ExpandLabel(CipherSuite suite, const Secret& secret, absl::string_view label,
                                   size_t length) {
  EvpKdfPtr kdf(EVP_KDF_fetch(nullptr, "TLS13-KDF", nullptr));
  if (!kdf) return OpenSslError("fetch the TLS13-KDF");
  EvpKdfCtxPtr ctx(EVP_KDF_CTX_new(kdf.get()));
  if (!ctx) return OpenSslError("create a TLS13-KDF context");

  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  static constexpr char kPrefix[] = "tls13 ";
  // OSSL_PARAM wants non-const pointers; OpenSSL only reads these.
  auto bytes = [](absl::string_view s) { return const_cast<char*>(s.data()); };
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(DigestName(suite)),
                                       0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, bytes(secret.view()),
                                        secret.view().size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PREFIX, bytes(kPrefix), sizeof(kPrefix) - 1),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_LABEL, bytes(label), label.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_DATA, bytes(""), 0),
      OSSL_PARAM_construct_end(),
  };
  std::string out(length, '\0');
  if (EVP_KDF_derive(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), out.size(), params) !=
      1) {
    Secret wipe(std::move(out));
    return OpenSslError(absl::StrCat("derive the TLS 1.3 traffic ", label));
  }
  return Secret(std::move(out));
}

}  // namespace

absl::StatusOr<CipherSuite> CipherSuiteFromId(uint16_t iana_id) {
  for (CipherSuite suite : kSuites) {
    if (static_cast<uint16_t>(suite) == iana_id) return suite;
  }
  return absl::InvalidArgumentError(absl::StrCat("cipher suite 0x",
                                                 absl::Hex(iana_id, absl::kZeroPad4),
                                                 " is not one kernel TLS can carry for TLS 1.3"));
}

absl::StatusOr<CipherSuite> CipherSuiteFromName(absl::string_view name) {
  for (CipherSuite suite : kSuites) {
    if (CipherSuiteName(suite) == name) return suite;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("cipher suite \"", name, "\" is not one kernel TLS can carry for TLS 1.3"));
}

absl::string_view CipherSuiteName(CipherSuite suite) {
  switch (suite) {
    case CipherSuite::kAes128GcmSha256:
      return "TLS_AES_128_GCM_SHA256";
    case CipherSuite::kAes256GcmSha384:
      return "TLS_AES_256_GCM_SHA384";
    case CipherSuite::kChaCha20Poly1305Sha256:
      return "TLS_CHACHA20_POLY1305_SHA256";
  }
  return "unknown";
}

size_t KeyLength(CipherSuite suite) { return suite == CipherSuite::kAes128GcmSha256 ? 16 : 32; }

size_t SecretLength(CipherSuite suite) { return suite == CipherSuite::kAes256GcmSha384 ? 48 : 32; }

uint64_t RecordLimit(CipherSuite suite) {
  return suite == CipherSuite::kChaCha20Poly1305Sha256 ? kChaCha20Poly1305RecordLimit
                                                       : kAesGcmRecordLimit;
}

uint64_t RecordLimit(absl::string_view suite_name) {
  absl::StatusOr<CipherSuite> suite = CipherSuiteFromName(suite_name);
  return suite.ok() ? RecordLimit(*suite) : kAesGcmRecordLimit;
}

absl::StatusOr<TrafficKeys> DeriveTrafficKeys(CipherSuite suite, const Secret& traffic_secret) {
  // A secret of the wrong length means it came from another suite's schedule.
  if (traffic_secret.view().size() != SecretLength(suite)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "derive TLS 1.3 traffic keys: a ", CipherSuiteName(suite), " traffic secret has ",
        SecretLength(suite), " bytes, not ", traffic_secret.view().size()));
  }
  absl::StatusOr<Secret> key = ExpandLabel(suite, traffic_secret, "key", KeyLength(suite));
  if (!key.ok()) return key.status();
  absl::StatusOr<Secret> iv = ExpandLabel(suite, traffic_secret, "iv", kTrafficIvLength);
  if (!iv.ok()) return iv.status();
  return TrafficKeys{*std::move(key), *std::move(iv)};
}

}  // namespace ktrust
