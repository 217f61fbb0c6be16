// TLS 1.3 session resumption between ktrust ends, made safe for kernel TLS
// (docs/security.md, "Session resumption"; docs/dataplane.md).
//
// What a ticket is trusted for: nothing by itself. A resumed connection's
// peer is verified again, with the same VerifyPeerChain as a certificate,
// from the chain kept with the ticket (the client keeps the server's in its
// cache; the server keeps the client's with the session behind the ticket,
// in memory: a ticket is only a session ID), against the current trust
// store at the current time; the server then authorizes it as any client.
// A ticket is also bound to the SVID it was made with, to the context's
// generation (a change of policy or trust drops them all), and to the
// earlier notAfter of the two SVIDs, and is used once.
//
// Facts about OpenSSL 3.0 this relies on, read in its source (ssl/statem,
// ssl/record) and checked by tls_session_test:
// - A TLS 1.3 server writes its NewSessionTickets inside SSL_do_handshake,
//   right after reading the client's Finished, under its application key:
//   each one record (a handshake message of at most 2^14 bytes goes into a
//   record of its own), so the server's TX sequence starts at the number of
//   tickets. After a resumption it sends at most one.
// - With SSL_VERIFY_PEER it issues no ticket unless a session ID context is
//   set. With SSL_OP_NO_TICKET a TLS 1.3 server's ticket is the session ID
//   (a stateful ticket): the new-session callback gets each session, and the
//   get-session callback is asked for the one a client offers.
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

// The number of tickets a ktrust server promises and sends per handshake.
constexpr unsigned char kTicketsPerHandshake = 1;
constexpr unsigned char kAskForTickets = 1;

CertChain CopyChain(const CertChain& chain) {
  CertChain copy;
  for (const X509Ptr& cert : chain) copy.push_back(ShareX509(cert.get()));
  return copy;
}

}  // namespace

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
  SSL_SESSION* issued = SSL_get_session(ssl);
  // Never a ticket for a peer that is not verified (0 fails the handshake).
  if (session == nullptr || issued == nullptr || !session->verdict_ || !session->verdict_->ok()) {
    return 0;
  }
  // The lifetime the client is told, and OpenSSL's own bound on the session.
  absl::Time now = context->options_.clock();
  absl::Time expires = std::min({now + context->options_.ticket_lifetime,
                                 session->svid_->not_after(), session->verdict_->not_after});
  int64_t seconds = std::max<int64_t>(absl::ToInt64Seconds(expires - now), 1);
  SSL_SESSION_set_timeout(issued, static_cast<long>(seconds));
  return 1;
}

int TlsSession::KeepIssuedSession(SSL* ssl, SSL_SESSION* issued) {
  TlsSession* session = SessionOf(ssl);
  // 0: OpenSSL drops its reference to `issued`; a ticket whose session is
  // not kept only ever leads to a full handshake.
  if (session == nullptr || !session->verdict_ || !session->verdict_->ok()) return 0;
  const TlsContext& context = session->context_;
  unsigned int id_len = 0;
  const unsigned char* id = SSL_SESSION_get_id(issued, &id_len);
  if (id == nullptr || id_len == 0) return 0;
  TlsContext::CachedTicket kept;
  kept.local_leaf = ShareX509(session->svid_->leaf());
  kept.peer_chain = session->peer_chain();
  if (kept.peer_chain.empty()) return 0;
  kept.generation = session->ticket_generation_;
  absl::Time now = context.options_.clock();
  kept.expires = std::min({now + context.options_.ticket_lifetime, session->svid_->not_after(),
                           session->verdict_->not_after});
  // A copy of our own: OpenSSL marks the SSL's session not resumable when
  // that SSL is freed without a clean shutdown (kernel TLS frees it early),
  // and the cache must not share an object others write.
  kept.session.reset(SSL_SESSION_dup(issued));
  if (!kept.session) {
    ERR_clear_error();
    return 0;
  }
  context.KeepIssued(std::string(reinterpret_cast<const char*>(id), id_len), std::move(kept));
  return 0;
}

SSL_SESSION* TlsSession::FindIssuedSession(SSL* ssl, const unsigned char* id, int id_len,
                                           int* copy) {
  *copy = 0;  // the session returned is OpenSSL's to free
  TlsSession* session = SessionOf(ssl);
  // Nothing returned: a full handshake, with a new ticket.
  if (session == nullptr || id == nullptr || id_len <= 0) return nullptr;
  session->ticket_offered_ = true;
  auto refuse = [&](std::string why) -> SSL_SESSION* {
    session->ticket_refusal_ = std::move(why);
    session->verdict_.reset();
    session->peer_chain_.clear();
    session->verified_from_ticket_ = false;
    return nullptr;
  };
  const TlsContext& context = session->context_;
  std::optional<TlsContext::CachedTicket> kept =
      context.TakeIssued(std::string(reinterpret_cast<const char*>(id), id_len));
  if (!kept) {
    return refuse(
        "not a ticket of this agent's (issued before a restart, by another agent, or used "
        "already)");
  }
  // Cheap checks first.
  if (kept->generation != context.ticket_generation_.load() ||
      kept->generation != session->ticket_generation_) {
    return refuse("issued before the last change of policy, trust bundle, CA or CRL");
  }
  if (kept->expires <= context.options_.clock()) {
    return refuse("expired (a ticket lives no longer than either SVID)");
  }
  if (X509_cmp(kept->local_leaf.get(), session->svid_->leaf()) != 0) {
    return refuse("issued for another SVID of this agent (another workload, or before a renewal)");
  }
  // The kept chain goes through the same verification as a presented one,
  // against the current trust store and clock.
  std::vector<X509*> untrusted;
  for (size_t i = 1; i < kept->peer_chain.size(); ++i)
    untrusted.push_back(kept->peer_chain[i].get());
  if (!session->VerifyPeer(kept->peer_chain.front().get(), untrusted)) {
    return refuse(absl::StrCat("the client's kept chain: ", session->verdict_->explanation));
  }
  session->verified_from_ticket_ = true;
  session->verified_certificate_ = false;
  return kept->session.release();
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
