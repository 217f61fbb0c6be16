// TLS 1.3 session resumption between ktrust ends, made safe for kernel TLS
// (docs/security.md, "Session resumption"; docs/dataplane.md).
//
// What a ticket is trusted for: nothing by itself. A resumed connection's
// peer is verified again, with the same VerifyPeerChain as a certificate,
// from the chain kept with the ticket (the client keeps the server's in its
// cache; the server seals the client's into the ticket, its leaf in the
// session and its intermediates in the app data, which only its own ticket
// key opens), against the current trust store at the
// current time; the server then authorizes it as any client. A ticket is
// also bound to the SVID it was made with, to the context's generation (a
// change of policy or trust drops them all), and to the earlier notAfter of
// the two SVIDs.
//
// Facts about OpenSSL 3.0 this relies on, read in its source (ssl/statem,
// ssl/record) and checked by tls_session_test:
// - A TLS 1.3 server writes its NewSessionTickets inside SSL_do_handshake,
//   right after reading the client's Finished, under its application key:
//   each one record (a handshake message of at most 2^14 bytes goes into a
//   record of its own), so the server's TX sequence starts at the number of
//   tickets. After a resumption it sends at most one.
// - With SSL_VERIFY_PEER it issues no ticket unless a session ID context is
//   set.
// - Without read_ahead OpenSSL reads exactly one record from the socket at a
//   time (header, then that record's length), and with SSL_MODE_AUTO_RETRY
//   off SSL_read/SSL_peek return WANT_READ after processing a post-handshake
//   message when no further record is already buffered: reading tickets
//   never pulls application data off the socket.
// - The msg callback reports every record header read (SSL3_RT_HEADER) once.
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "ktrust/tls/tls_context.h"
#include "ktrust/tls/tls_session.h"

namespace ktrust {
namespace {

constexpr unsigned char kTicketDataVersion = 1;
constexpr size_t kDigestLength = 32;  // SHA-256
// The number of tickets a ktrust server promises and sends per handshake.
constexpr unsigned char kTicketsPerHandshake = 1;
constexpr unsigned char kAskForTickets = 1;

void PutU64(std::string& out, uint64_t v) {
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void PutBytes(std::string& out, absl::string_view bytes) {
  out.push_back(static_cast<char>((bytes.size() >> 8) & 0xff));
  out.push_back(static_cast<char>(bytes.size() & 0xff));
  out.append(bytes.data(), bytes.size());
}

// Reads what PutU64 / PutBytes wrote; any short or odd input fails.
class Reader {
 public:
  explicit Reader(absl::string_view in) : in_(in) {}
  bool U8(unsigned char* v) {
    if (in_.empty()) return false;
    *v = static_cast<unsigned char>(in_[0]);
    in_.remove_prefix(1);
    return true;
  }
  bool U64(uint64_t* v) {
    if (in_.size() < 8) return false;
    *v = 0;
    for (int i = 0; i < 8; ++i) *v = (*v << 8) | static_cast<unsigned char>(in_[i]);
    in_.remove_prefix(8);
    return true;
  }
  bool Bytes(absl::string_view* v) {
    if (in_.size() < 2) return false;
    size_t len = (static_cast<unsigned char>(in_[0]) << 8) | static_cast<unsigned char>(in_[1]);
    if (in_.size() < 2 + len) return false;
    *v = in_.substr(2, len);
    in_.remove_prefix(2 + len);
    return true;
  }
  bool AtEnd() const { return in_.empty(); }

 private:
  absl::string_view in_;
};

std::string Der(X509* cert) {
  int len = i2d_X509(cert, nullptr);
  if (len <= 0 || len > 0xffff) return "";
  std::string der(static_cast<size_t>(len), '\0');
  auto* p = reinterpret_cast<unsigned char*>(der.data());
  if (i2d_X509(cert, &p) != len) return "";
  return der;
}

CertChain CopyChain(const CertChain& chain) {
  CertChain copy;
  for (const X509Ptr& cert : chain) copy.push_back(ShareX509(cert.get()));
  return copy;
}

}  // namespace

std::string TlsSession::LocalLeafDigest() const {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(svid_->leaf(), EVP_sha256(), md, &len) != 1 || len != kDigestLength) {
    ERR_clear_error();
    return "";
  }
  return std::string(reinterpret_cast<char*>(md), len);
}

void TlsSession::OfferKeptTicket() {
  std::optional<TlsContext::CachedTicket> ticket =
      context_.TakeTicket(resumption_key_, svid_->leaf());
  if (!ticket) return;
  if (SSL_set_session(ssl_.get(), ticket->session.get()) != 1) {
    ERR_clear_error();
    return;
  }
  offered_chain_ = std::move(ticket->peer_chain);
}

bool TlsSession::CheckResumption() {
  resumed_ = SSL_session_reused(ssl_.get()) == 1;
  if (role() == TlsRole::kClient && resumed_) {
    // OpenSSL resumed without a Certificate: verify the server from the
    // chain kept with the ticket, now, as if it had just sent it.
    if (!offered_chain_ || offered_chain_->empty()) {
      failure_.peer_reason = RejectReason::kNoCertificate;
      Fail(HandshakeError::kPeerRejected, "the server resumed a session ktrust did not offer");
      return false;
    }
    std::vector<X509*> untrusted;
    for (size_t i = 1; i < offered_chain_->size(); ++i)
      untrusted.push_back((*offered_chain_)[i].get());
    bool ok = VerifyPeer(offered_chain_->front().get(), untrusted);
    verified_from_ticket_ = true;
    verified_certificate_ = false;
    if (!ok) {
      failure_.peer_reason = verdict_->reason;
      Fail(HandshakeError::kPeerRejected, absl::StrCat("resumed session: ", verdict_->explanation));
      return false;
    }
  }
  if (role() == TlsRole::kServer &&
      (tickets_sent_ != ticket_extension_reply_ || ticket_too_large_)) {
    // The client counts on exactly the promised tickets, one record each,
    // before any application data; anything else would desynchronise its
    // kernel TLS RX.
    Fail(HandshakeError::kProtocol,
         absl::StrCat("promised the client ", int{ticket_extension_reply_},
                      " session ticket(s) in one record each but sent ", tickets_sent_,
                      ticket_too_large_ ? " (one too large for a record)" : ""));
    return false;
  }
  if (resumed_ ? !verified_from_ticket_ : !verified_certificate_) {
    failure_.peer_reason = RejectReason::kNoCertificate;
    Fail(HandshakeError::kPeerRejected, "the peer was not verified in this handshake");
    return false;
  }
  return true;
}

HandshakeProgress TlsSession::ReadTickets() {
  if (failure_.error != HandshakeError::kNone || FailIfReleased()) {
    return HandshakeProgress::kFailed;
  }
  if (!tickets_pending()) return HandshakeProgress::kDone;
  ERR_clear_error();
  // Without auto-retry OpenSSL returns after each post-handshake message
  // instead of reading on into application data; a peek would leave such
  // data in OpenSSL, where kernel TLS would never see it (checked below).
  SSL_clear_mode(ssl_.get(), SSL_MODE_AUTO_RETRY);
  unsigned char byte = 0;
  size_t n = 0;
  errno = 0;
  int rc = SSL_peek_ex(ssl_.get(), &byte, 1, &n);
  int err = SSL_get_error(ssl_.get(), rc);
  SSL_set_mode(ssl_.get(), SSL_MODE_AUTO_RETRY);
  if (rc == 1) {
    Fail(HandshakeError::kProtocol,
         "the server sent application data before the session ticket it promised");
    return HandshakeProgress::kFailed;
  }
  if (err == SSL_ERROR_WANT_READ) {
    ERR_clear_error();
    return tickets_pending() ? HandshakeProgress::kWantRead : HandshakeProgress::kDone;
  }
  if (err == SSL_ERROR_WANT_WRITE) return HandshakeProgress::kWantWrite;
  return FailServerEnded("before sending the session ticket it promised");
}

int TlsSession::AddTicketExtension(SSL* ssl, unsigned int /*ext_type*/, unsigned int context,
                                   const unsigned char** out, size_t* outlen, X509* /*x*/,
                                   size_t /*chainidx*/, int* /*al*/, void* /*add_arg*/) {
  TlsSession* session = SessionOf(ssl);
  if (session == nullptr) return 0;  // 0: leave the extension out
  if ((context & SSL_EXT_CLIENT_HELLO) != 0) {
    if (session->resumption_key_.empty()) return 0;
    *out = &kAskForTickets;
    *outlen = 1;
    return 1;
  }
  // EncryptedExtensions: OpenSSL asks only when the client sent it.
  if (session->ticket_extension_reply_ == 0) return 0;
  *out = &session->ticket_extension_reply_;
  *outlen = 1;
  return 1;
}

void TlsSession::FreeTicketExtension(SSL* /*ssl*/, unsigned int /*ext_type*/,
                                     unsigned int /*context*/, const unsigned char* /*out*/,
                                     void* /*add_arg*/) {
  // Both answers point at storage that outlives the handshake.
}

int TlsSession::ParseTicketExtension(SSL* ssl, unsigned int /*ext_type*/, unsigned int context,
                                     const unsigned char* in, size_t inlen, X509* /*x*/,
                                     size_t /*chainidx*/, int* al, void* /*parse_arg*/) {
  TlsSession* session = SessionOf(ssl);
  if (session == nullptr) {
    *al = SSL_AD_INTERNAL_ERROR;
    return 0;
  }
  if ((context & SSL_EXT_CLIENT_HELLO) != 0) {
    // A request we do not understand gets no answer, and so no ticket.
    if (inlen != 1 || in[0] != kAskForTickets) return 1;
    session->ticket_extension_reply_ = kTicketsPerHandshake;
    SSL_set_num_tickets(ssl, kTicketsPerHandshake);
    return 1;
  }
  // The server's promise: how many tickets come before any application data.
  if (inlen != 1 || in[0] > 4) {
    *al = SSL_AD_DECODE_ERROR;
    return 0;
  }
  session->tickets_promised_ = in[0];
  return 1;
}

int TlsSession::GenerateTicketCallback(SSL* ssl, void* arg) {
  TlsSession* session = SessionOf(ssl);
  auto* context = static_cast<const TlsContext*>(arg);
  SSL_SESSION* sealed = SSL_get_session(ssl);
  // Never a ticket for a peer that is not verified (0 fails the handshake).
  if (session == nullptr || sealed == nullptr || !session->verdict_ || !session->verdict_->ok()) {
    return 0;
  }
  absl::Time now = context->options_.clock();
  absl::Time expires = std::min({now + context->options_.ticket_lifetime,
                                 session->svid_->not_after(), session->verdict_->not_after});
  std::string digest = session->LocalLeafDigest();
  if (digest.size() != kDigestLength) return 0;
  std::string data;
  data.push_back(static_cast<char>(kTicketDataVersion));
  PutU64(data, session->ticket_generation_);
  PutU64(data, static_cast<uint64_t>(std::max<int64_t>(absl::ToUnixSeconds(expires), 0)));
  PutBytes(data, digest);
  // The leaf travels in the sealed session itself (OpenSSL keeps the peer's
  // certificate there); only the intermediates go into the app data, so no
  // certificate is encoded or parsed twice.
  X509* sealed_leaf = SSL_SESSION_get0_peer(sealed);
  if (session->peer_chain_.empty() || session->peer_chain_.size() > 256 || sealed_leaf == nullptr ||
      X509_cmp(sealed_leaf, session->peer_chain_.front().get()) != 0) {
    return 0;
  }
  data.push_back(static_cast<char>(session->peer_chain_.size() - 1));
  for (size_t i = 1; i < session->peer_chain_.size(); ++i) {
    std::string der = Der(session->peer_chain_[i].get());
    if (der.empty()) return 0;
    PutBytes(data, der);
  }
  if (SSL_SESSION_set1_ticket_appdata(sealed, data.data(), data.size()) != 1) return 0;
  // The lifetime the client is told (and OpenSSL's own bound on the session).
  int64_t seconds = std::max<int64_t>(absl::ToInt64Seconds(expires - now), 1);
  SSL_SESSION_set_timeout(sealed, static_cast<long>(seconds));
  return 1;
}

SSL_TICKET_RETURN TlsSession::DecryptTicketCallback(SSL* ssl, SSL_SESSION* ticket,
                                                    const unsigned char* /*key_name*/,
                                                    size_t /*key_name_len*/,
                                                    SSL_TICKET_STATUS status, void* arg) {
  TlsSession* session = SessionOf(ssl);
  auto* context = static_cast<const TlsContext*>(arg);
  // Anything but a usable ticket: a full handshake, with a new ticket.
  if (session == nullptr) return SSL_TICKET_RETURN_IGNORE_RENEW;
  session->ticket_offered_ = true;
  auto refuse = [&](std::string why) {
    session->ticket_refusal_ = std::move(why);
    session->verdict_.reset();
    session->peer_chain_.clear();
    session->verified_from_ticket_ = false;
    return SSL_TICKET_RETURN_IGNORE_RENEW;
  };
  if ((status != SSL_TICKET_SUCCESS && status != SSL_TICKET_SUCCESS_RENEW) || ticket == nullptr) {
    return refuse("not a ticket of this agent's (issued before a restart, or by another agent)");
  }
  void* raw = nullptr;
  size_t raw_len = 0;
  if (SSL_SESSION_get0_ticket_appdata(ticket, &raw, &raw_len) != 1 || raw == nullptr) {
    return refuse("the ticket carries no peer chain");
  }
  Reader in(absl::string_view(static_cast<const char*>(raw), raw_len));
  unsigned char version = 0;
  uint64_t generation = 0;
  uint64_t expires = 0;
  absl::string_view digest;
  unsigned char count = 0;
  if (!in.U8(&version) || version != kTicketDataVersion || !in.U64(&generation) ||
      !in.U64(&expires) || !in.Bytes(&digest) || !in.U8(&count)) {
    return refuse("the ticket's data is malformed");
  }
  // Cheap checks first: a ticket refused for them costs no certificate parse.
  if (generation != context->ticket_generation_.load() ||
      generation != session->ticket_generation_) {
    return refuse("issued before the last change of policy, trust bundle, CA or CRL");
  }
  if (absl::FromUnixSeconds(static_cast<int64_t>(expires)) <= context->options_.clock()) {
    return refuse("expired (a ticket lives no longer than either SVID)");
  }
  if (digest != session->LocalLeafDigest()) {
    return refuse("issued for another SVID of this agent (another workload, or before a renewal)");
  }
  X509* leaf = SSL_SESSION_get0_peer(ticket);
  if (leaf == nullptr) return refuse("the ticket carries no client certificate");
  CertChain chain;
  chain.push_back(ShareX509(leaf));
  for (unsigned i = 0; i < count; ++i) {
    absl::string_view der;
    if (!in.Bytes(&der)) return refuse("the ticket's data is malformed");
    const auto* p = reinterpret_cast<const unsigned char*>(der.data());
    X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
    if (!cert) {
      ERR_clear_error();
      return refuse("the ticket's peer chain does not parse");
    }
    chain.push_back(std::move(cert));
  }
  if (!in.AtEnd()) return refuse("the ticket's data is malformed");
  std::vector<X509*> untrusted;
  for (size_t i = 1; i < chain.size(); ++i) untrusted.push_back(chain[i].get());
  if (!session->VerifyPeer(chain.front().get(), untrusted)) {
    return refuse(absl::StrCat("the client's kept chain: ", session->verdict_->explanation));
  }
  session->verified_from_ticket_ = true;
  session->verified_certificate_ = false;
  return SSL_TICKET_RETURN_USE_RENEW;
}

int TlsSession::NewTicketCallback(SSL* ssl, SSL_SESSION* ticket) {
  TlsSession* session = SessionOf(ssl);
  if (session == nullptr) return 0;  // 0: OpenSSL keeps its reference
  ++session->tickets_received_;
  if (session->resumption_key_.empty() || !session->verdict_ || !session->verdict_->ok() ||
      SSL_SESSION_is_resumable(ticket) != 1) {
    return 0;
  }
  const TlsContext& context = session->context_;
  TlsContext::CachedTicket kept;
  kept.local_leaf = ShareX509(session->svid_->leaf());
  kept.peer_chain = session->verified_from_ticket_ && session->offered_chain_
                        ? CopyChain(*session->offered_chain_)
                        : session->peer_chain();
  if (kept.peer_chain.empty()) return 0;
  kept.generation = session->ticket_generation_;
  absl::Time now = context.options_.clock();
  absl::Duration hint = absl::Seconds(SSL_SESSION_get_ticket_lifetime_hint(ticket));
  kept.expires = std::min({now + hint, now + context.options_.ticket_lifetime,
                           session->svid_->not_after(), session->verdict_->not_after});
  // A copy of our own: OpenSSL marks the SSL's session not resumable when
  // that SSL is freed without a clean shutdown (from whichever thread), and
  // the cache must not share an object others write.
  kept.session.reset(SSL_SESSION_dup(ticket));
  if (!kept.session) {
    ERR_clear_error();
    return 0;
  }
  context.KeepTicket(session->resumption_key_, std::move(kept));
  return 0;  // OpenSSL keeps and frees its own
}

}  // namespace ktrust
