#include "ktrust/tls/tls_context.h"

#include <openssl/err.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "ktrust/tls/tls_session.h"

namespace ktrust {
namespace {

constexpr absl::string_view kAllowedSuites[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                                "TLS_CHACHA20_POLY1305_SHA256"};

absl::Status ValidateSuites(const std::vector<std::string>& suites) {
  if (suites.empty()) return absl::InvalidArgumentError("no TLS 1.3 cipher suite configured");
  for (const auto& suite : suites) {
    if (std::find(std::begin(kAllowedSuites), std::end(kAllowedSuites), suite) ==
        std::end(kAllowedSuites)) {
      return absl::InvalidArgumentError(absl::StrCat("cipher suite ", suite,
                                                     " is not allowed; choose from ",
                                                     absl::StrJoin(kAllowedSuites, ", ")));
    }
  }
  return absl::OkStatus();
}

// Server: acks kZeroHopAlpn when the client offers it, whatever else it
// offers, and otherwise acks nothing, so a standard TLS client's own ALPN
// list never makes the handshake fail (RFC 7301 would allow refusing it).
int SelectAlpn(SSL* /*ssl*/, const unsigned char** out, unsigned char* outlen,
               const unsigned char* in, unsigned int inlen, void* /*arg*/) {
  unsigned int i = 0;
  while (i < inlen) {
    unsigned int len = in[i];
    if (len == 0 || i + 1 + len > inlen) return SSL_TLSEXT_ERR_NOACK;  // malformed: ack nothing
    absl::string_view proto(reinterpret_cast<const char*>(in + i + 1), len);
    if (proto == kZeroHopAlpn) {
      *out = in + i + 1;
      *outlen = static_cast<unsigned char>(len);
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TlsContext>> TlsContext::Create(
    TlsContextOptions options, std::shared_ptr<const TrustStore> trust) {
  if (!trust) return absl::InvalidArgumentError("TLS context needs a trust store");
  if (auto st = ValidateSuites(options.cipher_suites); !st.ok()) return st;

  bool server = options.role == TlsRole::kServer;
  SslCtxPtr ctx(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()));
  if (!ctx) return OpenSslError("create SSL_CTX");
  SSL_CTX* c = ctx.get();
  if (SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION) != 1) {
    return OpenSslError("restrict to TLS 1.3");
  }
  std::string suites = absl::StrJoin(options.cipher_suites, ":");
  if (SSL_CTX_set_ciphersuites(c, suites.c_str()) != 1) return OpenSslError("set cipher suites");
  if (SSL_CTX_set1_groups_list(c, options.groups.c_str()) != 1) {
    return OpenSslError(absl::StrCat("set key exchange groups \"", options.groups, "\""),
                        absl::StatusCode::kInvalidArgument);
  }
  // No session tickets or resumption: a ticket arriving on kTLS RX breaks
  // recv(), and every connection must present a fresh certificate anyway.
  SSL_CTX_set_options(c,
                      SSL_OP_NO_TICKET | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_num_tickets(c, 0);
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
  // OpenSSL keeps a read and a write buffer of a full record (about 17 KiB
  // each) per session for its life; with this it frees each as soon as it
  // is empty, so an idle connection holds neither.
  SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
  // Both sides must present a certificate, and every certificate goes
  // through VerifyPeerChain; there is no path that skips it.
  SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  // The kernel TLS installer needs the application traffic secrets, and the
  // keylog hook is OpenSSL 3.0's only way to get them. Nothing is logged:
  // the session keeps those two secrets and drops every other line.
  SSL_CTX_set_keylog_callback(c, &TlsSession::KeylogCallback);
  if (server) SSL_CTX_set_alpn_select_cb(c, &SelectAlpn, nullptr);

  std::unique_ptr<TlsContext> context(
      new TlsContext(std::move(options), std::move(ctx), std::move(trust)));
  SSL_CTX_set_cert_verify_callback(context->ctx_.get(), &TlsContext::VerifyPeerCallback,
                                   context.get());
  return context;
}

int TlsContext::VerifyPeerCallback(X509_STORE_CTX* store_ctx, void* /*arg*/) {
  auto* ssl = static_cast<SSL*>(
      X509_STORE_CTX_get_ex_data(store_ctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
  TlsSession* session = ssl ? SessionOf(ssl) : nullptr;
  X509* leaf = X509_STORE_CTX_get0_cert(store_ctx);
  if (session == nullptr || leaf == nullptr) {
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  }
  std::vector<X509*> untrusted;
  if (STACK_OF(X509)* chain = X509_STORE_CTX_get0_untrusted(store_ctx)) {
    for (int i = 0; i < sk_X509_num(chain); ++i) {
      X509* cert = sk_X509_value(chain, i);
      if (cert != leaf) untrusted.push_back(cert);
    }
  }
  if (session->VerifyPeer(leaf, untrusted)) {
    X509_STORE_CTX_set_error(store_ctx, X509_V_OK);
    return 1;
  }
  // The X509 error picks the TLS alert the peer receives, so it learns why too.
  int error;
  switch (session->verdict_->reason) {
    case RejectReason::kExpired:
      error = X509_V_ERR_CERT_HAS_EXPIRED;
      break;
    case RejectReason::kNotYetValid:
      error = X509_V_ERR_CERT_NOT_YET_VALID;
      break;
    case RejectReason::kUnknownAuthority:
    case RejectReason::kUntrustedTrustDomain:
      error = X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY;
      break;
    case RejectReason::kRevoked:
      error = X509_V_ERR_CERT_REVOKED;
      break;
    case RejectReason::kBadSignature:
      error = X509_V_ERR_CERT_SIGNATURE_FAILURE;
      break;
    case RejectReason::kBadKeyUsage:
      error = X509_V_ERR_INVALID_PURPOSE;
      break;
    case RejectReason::kOutsideIssuerScope:
      error = X509_V_ERR_PERMITTED_VIOLATION;
      break;
    default:
      error = X509_V_ERR_APPLICATION_VERIFICATION;
      break;
  }
  X509_STORE_CTX_set_error(store_ctx, error);
  return 0;
}

VerifyOptions TlsContext::PeerVerifyOptions() const {
  VerifyOptions options = options_.verify;
  // Our role decides which extended key usage the peer needs.
  options.purpose = role() == TlsRole::kServer ? X509_PURPOSE_SSL_CLIENT : X509_PURPOSE_SSL_SERVER;
  return options;
}

PeerVerdict TlsContext::ReverifyPeer(const CertChain& chain, absl::Time verified_at) const {
  if (chain.empty()) {
    return PeerVerdict::Reject(RejectReason::kNoCertificate, "no verified peer to check again");
  }
  std::shared_ptr<const TrustStore> trust = trust_.load();
  std::vector<X509*> untrusted;
  for (size_t i = 1; i < chain.size(); ++i) untrusted.push_back(chain[i].get());
  // At the handshake's time: an SVID that expired since does not end a live
  // connection (renewal never does), a changed trust store does.
  return VerifyPeerChain(*trust, chain.front().get(), untrusted, PeerVerifyOptions(), verified_at);
}

absl::StatusOr<std::unique_ptr<TlsSession>> TlsContext::NewSession(
    std::shared_ptr<const Svid> svid, std::optional<SpiffeIdPattern> expected_peer) const {
  if (!svid) return absl::InvalidArgumentError("TLS session needs an SVID");
  SslPtr ssl(SSL_new(ctx_.get()));
  if (!ssl) return OpenSslError("create SSL");
  if (SSL_use_certificate(ssl.get(), svid->leaf()) != 1 ||
      SSL_use_PrivateKey(ssl.get(), svid->key()) != 1) {
    return OpenSslError("use SVID");
  }
  for (size_t i = 1; i < svid->chain().size(); ++i) {
    if (SSL_add1_chain_cert(ssl.get(), svid->chain()[i].get()) != 1) {
      return OpenSslError("add SVID intermediate");
    }
  }
  if (options_.role == TlsRole::kServer) {
    SSL_set_accept_state(ssl.get());
  } else {
    SSL_set_connect_state(ssl.get());
  }
  return std::unique_ptr<TlsSession>(new TlsSession(*this, std::move(ssl), std::move(svid),
                                                    trust_.load(), std::move(expected_peer)));
}

}  // namespace ktrust
