// RAII owners for OpenSSL objects, and the one way ktrust turns an OpenSSL
// failure into an absl::Status.
#pragma once

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace ktrust {

template <auto FreeFn>
struct OpenSslDeleter {
  template <typename T>
  void operator()(T* p) const {
    FreeFn(p);
  }
};

using X509Ptr = std::unique_ptr<X509, OpenSslDeleter<X509_free>>;
using X509CrlPtr = std::unique_ptr<X509_CRL, OpenSslDeleter<X509_CRL_free>>;
using X509StorePtr = std::unique_ptr<X509_STORE, OpenSslDeleter<X509_STORE_free>>;
using X509StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, OpenSslDeleter<X509_STORE_CTX_free>>;
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, OpenSslDeleter<EVP_PKEY_free>>;
using EvpPkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, OpenSslDeleter<EVP_PKEY_CTX_free>>;
using BioPtr = std::unique_ptr<BIO, OpenSslDeleter<BIO_free_all>>;
using SslCtxPtr = std::unique_ptr<SSL_CTX, OpenSslDeleter<SSL_CTX_free>>;
using SslPtr = std::unique_ptr<SSL, OpenSslDeleter<SSL_free>>;
using SslSessionPtr = std::unique_ptr<SSL_SESSION, OpenSslDeleter<SSL_SESSION_free>>;
using BignumPtr = std::unique_ptr<BIGNUM, OpenSslDeleter<BN_free>>;
// sk_X509_free is a macro; the stack does not own its certificates.
inline void FreeX509Stack(STACK_OF(X509) * stack) { sk_X509_free(stack); }
using X509StackPtr = std::unique_ptr<STACK_OF(X509), OpenSslDeleter<FreeX509Stack>>;
using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, OpenSslDeleter<GENERAL_NAMES_free>>;

// Takes an extra reference: X509 objects are reference counted.
inline X509Ptr ShareX509(X509* cert) {
  X509_up_ref(cert);
  return X509Ptr(cert);
}
inline X509CrlPtr ShareCrl(X509_CRL* crl) {
  X509_CRL_up_ref(crl);
  return X509CrlPtr(crl);
}
inline EvpPkeyPtr ShareKey(EVP_PKEY* key) {
  EVP_PKEY_up_ref(key);
  return EvpPkeyPtr(key);
}

// A certificate chain, leaf (or the CA's own certificate) first.
using CertChain = std::vector<X509Ptr>;
CertChain ShareChain(const CertChain& chain);

// Builds a Status of `code` for the failed `operation`, appending (and
// draining) OpenSSL's error queue so the root cause is not lost. An
// internal error that OpenSSL reports as a failed allocation becomes
// ResourceExhausted.
absl::Status OpenSslError(absl::string_view operation,
                          absl::StatusCode code = absl::StatusCode::kInternal);

}  // namespace ktrust
