// Certificate and key plumbing shared by the CA, SVIDs, bundles and the
// verifier: PEM in and out, times, URI SANs, key generation.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ktrust/common/openssl_ptr.h"
#include "ktrust/common/secret.h"

namespace ktrust {

// Every certificate in `pem`, in order. Fails on anything that is not a
// well-formed CERTIFICATE block, and on input with no certificate at all.
absl::StatusOr<CertChain> ParseCertificates(absl::string_view pem, absl::string_view what);
absl::StatusOr<std::vector<X509CrlPtr>> ParseCrls(absl::string_view pem, absl::string_view what);
absl::StatusOr<EvpPkeyPtr> ParsePrivateKey(const Secret& pem, absl::string_view what);

std::string ToPem(X509* cert);
std::string ToPem(const CertChain& chain);
// The key as unencrypted PKCS#8 PEM, produced through OpenSSL's secure heap.
absl::StatusOr<Secret> ToPem(EVP_PKEY* key);

// A fresh ECDSA P-256 key, generated in memory.
absl::StatusOr<EvpPkeyPtr> GenerateP256Key();

absl::Time NotBefore(const X509* cert);
absl::Time NotAfter(const X509* cert);
// The URI entries of the subjectAltName extension.
std::vector<std::string> UriSans(X509* cert);
bool IsCa(X509* cert);
// One-line subject, e.g. "O=ktrust, CN=node-a".
std::string SubjectString(const X509* cert);
std::string IssuerString(const X509* cert);
std::string CrlIssuerString(const X509_CRL* crl);
std::string SerialHex(const X509* cert);

// "2026-11-22T06:00:00Z" and "3m12s": the forms every human-facing message uses.
std::string FormatTimestamp(absl::Time t);
std::string FormatAge(absl::Duration d);

}  // namespace ktrust
