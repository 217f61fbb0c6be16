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
  SSL_CTX_set_options(c, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION);
  // No ticket unless both ends agreed on kTicketExtension (a server sets one
  // for that connection when the client asks): a ticket arriving on kTLS RX
  // breaks recv().
  SSL_CTX_set_num_tickets(c, 0);
  if (!options.resumption) {
    SSL_CTX_set_options(c, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
  } else if (server) {
    // Stateful tickets: a ticket is only a session ID, and the session stays
    // here, parsed, in TlsContext's own cache (memory only, so a restart
    // forgets them all). A stateless ticket costs OpenSSL 3.0 a decryption
    // and a decode of the whole session, the client's certificate included,
    // on every resumption: a third of the server's CPU per resumed connection.
    SSL_CTX_set_options(c, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(
        c, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL | SSL_SESS_CACHE_NO_AUTO_CLEAR);
    SSL_CTX_sess_set_new_cb(c, &TlsSession::KeepIssuedSession);
    SSL_CTX_sess_set_get_cb(c, &TlsSession::FindIssuedSession);
    // OpenSSL 3.0 issues no ticket when it verifies the client and no session
    // ID context is set; ktrust binds tickets itself (tls_resumption.cc).
    static constexpr unsigned char kSessionContext[] = "ktrust";
    if (SSL_CTX_set_session_id_context(c, kSessionContext, sizeof(kSessionContext) - 1) != 1) {
      return OpenSslError("set session ID context");
    }
  } else {
    // The client's tickets go to TlsContext's own cache (keyed by workload
    // and destination) through the new-session callback, never OpenSSL's.
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(c, &TlsSession::NewTicketCallback);
  }
  // Never psk_ke (resumption without a fresh key exchange): forward secrecy
  // stays. OpenSSL offers and accepts psk_dhe_ke only unless told otherwise;
  // make sure nothing told it otherwise.
  SSL_CTX_clear_options(c, SSL_OP_ALLOW_NO_DHE_KEX);
  if (options.resumption) {
    unsigned int contexts = SSL_EXT_CLIENT_HELLO | SSL_EXT_TLS1_3_ENCRYPTED_EXTENSIONS;
    if (SSL_CTX_add_custom_ext(c, kTicketExtension, contexts, &TlsSession::AddTicketExtension,
                               &TlsSession::FreeTicketExtension, nullptr,
                               &TlsSession::ParseTicketExtension, nullptr) != 1) {
      return OpenSslError("register the ktrust ticket extension");
    }
  }
  // Counts the records OpenSSL carries under the application keys, where
  // kernel TLS continues the sequence.
  SSL_CTX_set_msg_callback(c, &TlsSession::MessageCallback);
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
  if (context->options_.resumption && server &&
      SSL_CTX_set_session_ticket_cb(context->ctx_.get(), &TlsSession::GenerateTicketCallback,
                                    nullptr, context.get()) != 1) {
    return OpenSslError("set the session ticket callbacks");
  }
  return context;
}

void TlsContext::SetTrustStore(std::shared_ptr<const TrustStore> trust) {
  trust_.store(std::move(trust));
  InvalidateTickets();
}

void TlsContext::InvalidateTickets() {
  ticket_generation_.fetch_add(1);
  absl::MutexLock lock(&cache_mu_);
  cache_.clear();
  cache_order_.clear();
  cached_ = 0;
  // The server's issued sessions stay, bounded, so that a ticket still
  // offered is refused naming the change rather than as unknown.
}

std::string TlsContext::CacheKey(const SpiffeId& local_id, absl::string_view resumption_key) {
  // The SPIFFE ID cannot hold a space; the destination follows it.
  return absl::StrCat(local_id.ToString(), " ", resumption_key);
}

void TlsContext::KeepTicket(const std::string& key, CachedTicket ticket) const {
  absl::MutexLock lock(&cache_mu_);
  if (ticket.generation != ticket_generation_.load()) return;  // dropped while in flight
  std::deque<CachedTicket>& tickets = cache_[key];
  if (tickets.size() >= options_.tickets_per_destination) {
    tickets.pop_front();
    --cached_;
  }
  tickets.push_back(std::move(ticket));
  ++cached_;
  cache_order_.push_back(key);
  // Over the bound: drop the oldest keys' oldest tickets first.
  while (cached_ > options_.ticket_cache_size && !cache_order_.empty()) {
    auto it = cache_.find(cache_order_.front());
    cache_order_.pop_front();
    if (it == cache_.end() || it->second.empty()) continue;
    it->second.pop_front();
    --cached_;
    if (it->second.empty()) cache_.erase(it);
  }
  // cache_order_ may hold stale keys; keep it from growing without bound.
  if (cache_order_.size() > 4 * options_.ticket_cache_size + 16) {
    std::deque<std::string> order;
    for (const auto& [k, list] : cache_) {
      for (size_t i = 0; i < list.size(); ++i) order.push_back(k);
    }
    cache_order_ = std::move(order);
  }
}

std::optional<TlsContext::CachedTicket> TlsContext::TakeTicket(const std::string& key,
                                                               X509* local_leaf) const {
  absl::MutexLock lock(&cache_mu_);
  auto it = cache_.find(key);
  if (it == cache_.end()) return std::nullopt;
  std::optional<CachedTicket> found;
  absl::Time now = options_.clock();
  uint64_t generation = ticket_generation_.load();
  // Newest first; a ticket is used once (RFC 8446 §C.4), and stale ones go.
  while (!it->second.empty() && !found) {
    CachedTicket ticket = std::move(it->second.back());
    it->second.pop_back();
    --cached_;
    if (ticket.generation == generation && now < ticket.expires &&
        X509_cmp(ticket.local_leaf.get(), local_leaf) == 0) {
      found = std::move(ticket);
    }
  }
  if (it->second.empty()) cache_.erase(it);
  return found;
}

size_t TlsContext::CachedTickets(const SpiffeId& local_id, absl::string_view resumption_key) const {
  absl::MutexLock lock(&cache_mu_);
  auto it = cache_.find(CacheKey(local_id, resumption_key));
  return it == cache_.end() ? 0 : it->second.size();
}

size_t TlsContext::CachedTickets() const {
  absl::MutexLock lock(&cache_mu_);
  return options_.role == TlsRole::kServer ? issued_.size() : cached_;
}

void TlsContext::KeepIssued(std::string id, CachedTicket issued) const {
  absl::MutexLock lock(&cache_mu_);
  if (issued.generation != ticket_generation_.load()) return;  // dropped while in flight
  issued_order_.push_back(id);
  issued_[std::move(id)] = std::move(issued);
  // Over the bound: the oldest go first (IDs already taken are skipped).
  while (issued_.size() > options_.ticket_cache_size && !issued_order_.empty()) {
    issued_.erase(issued_order_.front());
    issued_order_.pop_front();
  }
  if (issued_order_.size() > 4 * options_.ticket_cache_size + 16) {
    std::deque<std::string> order;
    for (const std::string& kept : issued_order_) {
      if (issued_.contains(kept)) order.push_back(kept);
    }
    issued_order_ = std::move(order);
  }
}

std::optional<TlsContext::CachedTicket> TlsContext::TakeIssued(const std::string& id) const {
  absl::MutexLock lock(&cache_mu_);
  auto it = issued_.find(id);
  if (it == issued_.end()) return std::nullopt;
  CachedTicket issued = std::move(it->second);
  issued_.erase(it);  // a ticket is used once (RFC 8446 §C.4)
  return issued;
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
  session->verified_certificate_ = true;
  session->verified_from_ticket_ = false;
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
    std::shared_ptr<const Svid> svid, std::optional<SpiffeIdPattern> expected_peer,
    std::string resumption_key) const {
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
  // The generation first: a reload between the two loads then only drops
  // this session's ticket, never keeps one verified against the old store.
  uint64_t generation = ticket_generation_.load();
  std::unique_ptr<TlsSession> session(new TlsSession(*this, std::move(ssl), std::move(svid),
                                                     trust_.load(), std::move(expected_peer)));
  session->ticket_generation_ = generation;
  if (options_.resumption && options_.role == TlsRole::kClient && !resumption_key.empty()) {
    session->resumption_key_ = CacheKey(session->local_id(), resumption_key);
    session->OfferKeptTicket();
  }
  return session;
}

}  // namespace ktrust
