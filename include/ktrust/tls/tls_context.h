// The TLS 1.3 mutual-TLS configuration every ktrust connection uses, and the
// per-connection sessions made from it.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ktrust/common/openssl_ptr.h"
#include "ktrust/identity/peer_verifier.h"
#include "ktrust/identity/spiffe_id.h"
#include "ktrust/identity/svid.h"
#include "ktrust/identity/trust_bundle.h"
#include "ktrust/identity/x509.h"

namespace ktrust {

class TlsSession;

enum class TlsRole { kClient, kServer };

// The ALPN token by which two ktrust ends agree on the zero-hop end rule
// (docs/dataplane.md, "Ends of streams"): on a connection where the server
// acked it, neither end sends a NewSessionTicket, a KeyUpdate or a
// close_notify, and a TCP FIN is the clean end of a direction. A kernel TLS
// socket that an unmodified application reads with plain recv() fails with
// EIO on any non-data record, so this is what lets the application's own
// socket carry kTLS. Every ktrust server acks it when offered; a client
// offers it only for a handshake on the application's socket.
inline constexpr absl::string_view kZeroHopAlpn = "ktrust-zh/1";

struct TlsContextOptions {
  TlsRole role = TlsRole::kClient;
  // TLS 1.3 suites in preference order; the server's order wins. Only these
  // three are allowed, because kTLS can carry exactly these.
  std::vector<std::string> cipher_suites = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                            "TLS_CHACHA20_POLY1305_SHA256"};
  // Key exchange groups in preference order.
  std::string groups = "X25519:P-256";
  // Clock skew allowance and chain limits for the peer's certificate.
  VerifyOptions verify;
  // Injected for tests; absl::Now in production.
  std::function<absl::Time()> clock = absl::Now;
};

class TlsContext {
 public:
  static absl::StatusOr<std::unique_ptr<TlsContext>> Create(
      TlsContextOptions options, std::shared_ptr<const TrustStore> trust);

  // New sessions verify peers against `trust`; live sessions keep theirs.
  void SetTrustStore(std::shared_ptr<const TrustStore> trust) { trust_.store(std::move(trust)); }

  // A session presenting `svid`. A client may name the server identity it
  // expects (exact or prefix pattern): a server with any other valid SVID of
  // the trust domain is then refused as an impostor.
  absl::StatusOr<std::unique_ptr<TlsSession>> NewSession(
      std::shared_ptr<const Svid> svid,
      std::optional<SpiffeIdPattern> expected_peer = std::nullopt) const;

  // Checks a peer chain that a handshake of this context's role verified
  // at `verified_at` again, against the current trust store: as
  // TlsSession::ReverifyPeer, for a connection whose session is gone (one
  // moved in from another agent).
  PeerVerdict ReverifyPeer(const CertChain& chain, absl::Time verified_at) const;

  TlsRole role() const { return options_.role; }
  SSL_CTX* ssl_ctx() const { return ctx_.get(); }

 private:
  TlsContext(TlsContextOptions options, SslCtxPtr ctx, std::shared_ptr<const TrustStore> trust)
      : options_(std::move(options)), ctx_(std::move(ctx)), trust_(std::move(trust)) {}

  // How a peer is verified: the configured limits, and the extended key
  // usage this context's role needs of its peer.
  VerifyOptions PeerVerifyOptions() const;

  // Replaces OpenSSL's chain verification with VerifyPeerChain.
  static int VerifyPeerCallback(X509_STORE_CTX* store_ctx, void* arg);

  const TlsContextOptions options_;
  SslCtxPtr ctx_;
  std::atomic<std::shared_ptr<const TrustStore>> trust_;

  friend class TlsSession;
};

}  // namespace ktrust
