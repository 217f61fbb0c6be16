// The TLS 1.3 mutual-TLS configuration every ktrust connection uses, and the
// per-connection sessions made from it.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
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

// The TLS extension (private-use code point, RFC 8446 §4.2) by which two
// ktrust ends agree on session tickets that kernel TLS can live with. The
// client sends it (one byte, 1) when it wants a ticket; a server with
// resumption on answers in EncryptedExtensions with the exact number of
// NewSessionTicket messages it will send (one), all before any application
// data. The client reads exactly those in OpenSSL before it installs kernel
// TLS RX, so no ticket ever reaches the kernel. A server that does not
// answer (resumption off, an older ktrust, any other TLS stack) is sent
// nothing more and sends no ticket we wait for; a client that does not ask
// is sent no ticket at all.
inline constexpr unsigned int kTicketExtension = 0xFF6B;

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
  // TLS 1.3 session resumption (psk_dhe_ke only) between ktrust ends that
  // both have it on (docs/security.md, "Session resumption"). Off: no ticket
  // is sent, asked for or used, as before.
  bool resumption = false;
  // The longest a ticket lives; it also ends at the earlier notAfter of the
  // two SVIDs it was made from.
  absl::Duration ticket_lifetime = absl::Minutes(30);
  // Client: tickets kept at most, over all (workload, destination) keys, and
  // per key (one ticket is used once; several cover concurrent connects).
  // Server: the sessions kept behind issued tickets, at most.
  size_t ticket_cache_size = 4096;
  size_t tickets_per_destination = 8;
};

class TlsContext {
 public:
  static absl::StatusOr<std::unique_ptr<TlsContext>> Create(
      TlsContextOptions options, std::shared_ptr<const TrustStore> trust);

  // New sessions verify peers against `trust`; live sessions keep theirs.
  // Every ticket issued or kept so far is dropped (InvalidateTickets).
  void SetTrustStore(std::shared_ptr<const TrustStore> trust);

  // Drops every session ticket: the client forgets the ones it kept, and
  // the server refuses the ones it issued (a full handshake follows). For a
  // change of policy, CA, trust bundle or CRL; a renewed SVID drops the
  // tickets made with the old one by itself.
  void InvalidateTickets();

  // A session presenting `svid`. A client may name the server identity it
  // expects (exact or prefix pattern): a server with any other valid SVID of
  // the trust domain is then refused as an impostor. With resumption on, a
  // client names the destination in `resumption_key` (empty: no resumption
  // for this connection): it offers a ticket kept for exactly this SVID and
  // destination, and keeps the ticket it gets for the next one.
  absl::StatusOr<std::unique_ptr<TlsSession>> NewSession(
      std::shared_ptr<const Svid> svid, std::optional<SpiffeIdPattern> expected_peer = std::nullopt,
      std::string resumption_key = "") const;

  // Client: tickets kept for `local_id` and `resumption_key`, and over all.
  // Server: sessions kept behind the tickets it issued (the second form).
  size_t CachedTickets(const SpiffeId& local_id, absl::string_view resumption_key) const;
  size_t CachedTickets() const;

  // Checks a peer chain that a handshake of this context's role verified
  // at `verified_at` again, against the current trust store: as
  // TlsSession::ReverifyPeer, for a connection whose session is gone (one
  // moved in from another agent).
  PeerVerdict ReverifyPeer(const CertChain& chain, absl::Time verified_at) const;

  TlsRole role() const { return options_.role; }
  bool resumption() const { return options_.resumption; }
  SSL_CTX* ssl_ctx() const { return ctx_.get(); }

 private:
  // A ticket the client kept, or the session behind one the server issued,
  // with what it was issued for and what it vouches for: the peer's chain as
  // verified, checked again on use.
  struct CachedTicket {
    SslSessionPtr session;
    X509Ptr local_leaf;  // the SVID it was made with; a renewed one does not match
    CertChain peer_chain;
    uint64_t generation = 0;
    absl::Time expires;
  };
  // Client cache, keyed by local SPIFFE ID and destination.
  void KeepTicket(const std::string& key, CachedTicket ticket) const;
  std::optional<CachedTicket> TakeTicket(const std::string& key, X509* local_leaf) const;
  // Server cache, keyed by session ID (the ticket), each taken at most once.
  void KeepIssued(std::string id, CachedTicket issued) const;
  std::optional<CachedTicket> TakeIssued(const std::string& id) const;
  static std::string CacheKey(const SpiffeId& local_id, absl::string_view resumption_key);

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
  // Bumped by InvalidateTickets: a ticket from another generation is not used.
  std::atomic<uint64_t> ticket_generation_{1};
  mutable absl::Mutex cache_mu_;
  mutable std::map<std::string, std::deque<CachedTicket>> cache_ ABSL_GUARDED_BY(cache_mu_);
  mutable size_t cached_ ABSL_GUARDED_BY(cache_mu_) = 0;
  // Keys in the order their newest ticket came, for eviction (may repeat).
  mutable std::deque<std::string> cache_order_ ABSL_GUARDED_BY(cache_mu_);
  // Server: sessions behind the tickets issued, and their IDs oldest first
  // (may name taken ones).
  mutable std::map<std::string, CachedTicket> issued_ ABSL_GUARDED_BY(cache_mu_);
  mutable std::deque<std::string> issued_order_ ABSL_GUARDED_BY(cache_mu_);

  friend class TlsSession;
};

}  // namespace ktrust
