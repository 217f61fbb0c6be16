// One TLS connection's handshake, driven step by step over any transport
// (a socket, or an in-memory BIO pair in tests), and what it established.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/string_view.h"
#include "ktrust/common/openssl_ptr.h"
#include "ktrust/common/secret.h"
#include "ktrust/identity/spiffe_id.h"
#include "ktrust/identity/svid.h"
#include "ktrust/identity/trust_bundle.h"
#include "ktrust/identity/verdict.h"
#include "ktrust/tls/tls_context.h"

namespace ktrust {

enum class HandshakeProgress {
  kWantRead,   // feed it more bytes from the peer, then call Handshake() again
  kWantWrite,  // the transport is full; call again when it drains
  kDone,       // established and the peer verified
  kFailed,     // see failure()
};

enum class HandshakeError {
  kNone,
  kPeerRejected,      // we refused the peer's certificate (see peer_reason)
  kRejectedByPeer,    // the peer sent an alert: it refused us
  kPlaintextPeer,     // the peer spoke plaintext (HTTP, or bytes that are no TLS record)
  kProtocol,          // no common version / suite / group, bad record
  kConnectionClosed,  // the transport ended mid-handshake
};

struct HandshakeFailure {
  HandshakeError error = HandshakeError::kNone;
  RejectReason peer_reason = RejectReason::kNone;  // with kPeerRejected
  std::string explanation;
  // Stable code for logs and metrics: the RejectReason code ("expired", ...)
  // when we refused the peer, else "rejected_by_peer", "protocol_error",
  // "connection_closed".
  absl::string_view code() const;
};

class TlsSession {
 public:
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // Transport: a BIO (the session takes ownership) or a connected socket.
  void SetBio(BIO* bio);
  absl::Status SetFd(int fd);

  // Client, before the first Handshake(): offer kZeroHopAlpn (and nothing
  // else). Whether the server acked it is zero_hop() afterwards.
  absl::Status OfferZeroHop();
  // After kDone: the server acked kZeroHopAlpn, so both ends follow the
  // zero-hop end rule (FIN-only, no alert, no post-handshake message).
  bool zero_hop() const;

  // Advances the handshake as far as the transport allows.
  HandshakeProgress Handshake();

  // Zero-hop acceptance, on a connection where kZeroHopAlpn was negotiated.
  // In TLS 1.3 the client's handshake completes before the server has even
  // seen the client's certificate, so the client cannot tell "accepted"
  // from "denied" by the handshake. The server therefore sends one
  // application data record holding the single byte 0x01 once it verified
  // and authorized the client, and the client waits for it before it
  // reports success. Both go through OpenSSL before kernel TLS is
  // installed; InstallKtls continues the record sequences after them.
  // Server: kDone once sent, kWantWrite, or kFailed.
  HandshakeProgress SendZeroHopAccept();
  // Client: kDone once received, kWantRead, or kFailed (failure(): the
  // server closed or reset without accepting us: kRejectedByPeer; anything
  // but the one byte: kProtocol).
  HandshakeProgress ReadZeroHopAccept();
  // Records OpenSSL sent / received under the application traffic keys:
  // the record sequence numbers kernel TLS continues from. Sent: the
  // server's NewSessionTickets (each one record) and application data;
  // received: every record read after the handshake finished.
  uint64_t records_sent() const { return records_sent_ + tickets_sent_; }
  uint64_t records_received() const { return records_received_; }

  // Session resumption (TlsContextOptions::resumption).
  // Client, after kDone: the server promised NewSessionTickets that have not
  // been read yet. Read them with ReadTickets before installing kernel TLS,
  // or a ticket would reach kernel TLS RX (EIO) and the RX record sequence
  // would be off.
  bool tickets_pending() const { return tickets_received_ < tickets_promised_; }
  // Client: reads the promised tickets through OpenSSL, one record at a time
  // and nothing beyond them: kDone once all were read, kWantRead, or
  // kFailed (application data came first: kProtocol; the server closed:
  // kRejectedByPeer).
  HandshakeProgress ReadTickets();
  // After kDone: this connection resumed an earlier session. Its peer was
  // verified again from the chain kept with the ticket, as a certificate is.
  bool resumed() const { return resumed_; }
  // Server: the client offered a ticket (used or not).
  bool ticket_offered() const { return ticket_offered_; }
  // Why an offered ticket was not used ("" if none was refused by ktrust).
  const std::string& ticket_refusal() const { return ticket_refusal_; }

  const HandshakeFailure& failure() const { return failure_; }
  // The verified peer, after kDone.
  const std::optional<SpiffeId>& peer_id() const { return peer_id_; }
  const SpiffeId& local_id() const { return svid_->id(); }
  // The earliest notAfter in the peer's verified chain.
  absl::Time peer_not_after() const { return peer_not_after_; }
  // What ReverifyPeer checks: the peer's chain as it sent it (leaf first),
  // and when it was verified. Empty before the peer's certificate was seen.
  // After ReleaseSsl() parsed again from the DER kept (a parsed certificate
  // costs ten times its encoding): empty if that fails.
  CertChain peer_chain() const;
  absl::Time verified_at() const { return verified_at_; }
  // The peer's chain checked again, against the trust store its context has
  // now (a reload may have revoked it or dropped its root), at the time of
  // the handshake. Refused when there is no verified peer.
  PeerVerdict ReverifyPeer() const;
  absl::string_view cipher() const;
  absl::string_view version() const;
  TlsRole role() const { return context_.role(); }
  // nullptr after ReleaseSsl().
  SSL* ssl() const { return ssl_.get(); }

  // Once kernel TLS carries both directions (InstallKtls succeeded): frees
  // OpenSSL's SSL with its session, cipher contexts and the peer's
  // certificate as OpenSSL parsed it, most of what an idle connection
  // costs. What the connection still needs is kept: both identities, the
  // names cipher() and version() return, zero_hop(), and the peer's chain
  // for ReverifyPeer (as DER). From here a handshake step fails and ssl() is
  // nullptr. Refused (FailedPrecondition), the session unchanged, while
  // OpenSSL could still read or write the connection: before InstallKtls
  // detached it, or on the userspace record layer.
  absl::Status ReleaseSsl();
  bool ssl_released() const { return !ssl_; }

  // The TLS 1.3 application traffic secrets (client_/server_application_
  // traffic_secret_0, RFC 8446 §7.1), kept only so the kernel TLS installer
  // can derive the record keys OpenSSL 3.0 will not hand to the kernel for RX.
  // Empty until the handshake derived them, and after ForgetTrafficSecrets().
  const Secret& client_traffic_secret() const { return client_traffic_secret_; }
  const Secret& server_traffic_secret() const { return server_traffic_secret_; }
  void ForgetTrafficSecrets();

 private:
  TlsSession(const TlsContext& context, SslPtr ssl, std::shared_ptr<const Svid> svid,
             std::shared_ptr<const TrustStore> trust, std::optional<SpiffeIdPattern> expected_peer);

  // Called from TlsContext::VerifyPeerCallback with the peer's certificates.
  bool VerifyPeer(X509* leaf, const std::vector<X509*>& untrusted);
  VerifyOptions PeerVerifyOptions() const;
  void Fail(HandshakeError error, std::string explanation);
  // Client, reading after the handshake: the server closed, reset or sent an
  // alert `instead` of what was due (its policy likely refused us). kFailed.
  HandshakeProgress FailServerEnded(absl::string_view instead);
  // After ReleaseSsl(): fails the step that asked (true).
  bool FailIfReleased();
  static void InfoCallback(const SSL* ssl, int where, int ret);
  // SSL_CTX_set_keylog_callback: keeps the two application traffic secrets.
  static void KeylogCallback(const SSL* ssl, const char* line);
  // SSL_CTX_set_msg_callback: counts the records under the application keys.
  static void MessageCallback(int write_p, int version, int content_type, const void* buf,
                              size_t len, SSL* ssl, void* arg);
  // Resumption (tls_resumption.cc).
  static int NewTicketCallback(SSL* ssl, SSL_SESSION* ticket);
  static int GenerateTicketCallback(SSL* ssl, void* arg);
  // Server: keeps the session behind a ticket it issued; gives it back,
  // checked again, for the ticket a client offers.
  static int KeepIssuedSession(SSL* ssl, SSL_SESSION* issued);
  static SSL_SESSION* FindIssuedSession(SSL* ssl, const unsigned char* id, int id_len, int* copy);
  static int AddTicketExtension(SSL* ssl, unsigned int ext_type, unsigned int context,
                                const unsigned char** out, size_t* outlen, X509* x, size_t chainidx,
                                int* al, void* add_arg);
  static void FreeTicketExtension(SSL* ssl, unsigned int ext_type, unsigned int context,
                                  const unsigned char* out, void* add_arg);
  static int ParseTicketExtension(SSL* ssl, unsigned int ext_type, unsigned int context,
                                  const unsigned char* in, size_t inlen, X509* x, size_t chainidx,
                                  int* al, void* parse_arg);
  // Client: offers the ticket kept for this SVID and destination, if any.
  void OfferKeptTicket();
  // After SSL_do_handshake succeeded: a resumed session's peer verified from
  // its kept chain, the ticket promise kept; false (failed) otherwise.
  bool CheckResumption();

  const TlsContext& context_;
  SslPtr ssl_;
  std::shared_ptr<const Svid> svid_;  // kept alive: the SSL references its key
  std::shared_ptr<const TrustStore> trust_;
  std::optional<SpiffeIdPattern> expected_peer_;

  std::optional<PeerVerdict> verdict_;  // set once the peer's chain was checked
  CertChain peer_chain_;                // what was checked: leaf, then the peer's intermediates
  std::vector<std::string> peer_chain_der_;  // peer_chain_ after ReleaseSsl()
  absl::Time verified_at_;
  std::optional<SpiffeId> peer_id_;
  absl::Time peer_not_after_;
  std::string alert_received_;
  HandshakeFailure failure_;
  Secret client_traffic_secret_;
  Secret server_traffic_secret_;
  uint64_t records_sent_ = 0;
  uint64_t records_received_ = 0;
  // Resumption state.
  bool handshake_done_ = false;
  std::string resumption_key_;              // client: the cache key; empty: no resumption
  uint64_t ticket_generation_ = 0;          // the context's, when this session started
  std::optional<CertChain> offered_chain_;  // client: what the offered ticket vouches for
  bool resumed_ = false;
  bool ticket_offered_ = false;
  bool verified_from_ticket_ = false;  // verdict_ came from a ticket's chain
  bool verified_certificate_ = false;  // verdict_ came from the peer's Certificate
  std::string ticket_refusal_;
  unsigned char ticket_extension_reply_ = 0;  // server: what EncryptedExtensions says
  uint64_t tickets_promised_ = 0;             // client: NewSessionTickets the server said it sends
  uint64_t tickets_received_ = 0;
  uint64_t tickets_sent_ = 0;      // server
  bool ticket_too_large_ = false;  // a ticket that might span records: sequence unknown
  // What the accessors answer once ReleaseSsl() freed the SSL: OpenSSL's
  // own static names, which outlive any SSL.
  const char* released_cipher_ = "";
  const char* released_version_ = "";
  bool released_zero_hop_ = false;

  friend class TlsContext;
};

// The TlsSession an SSL belongs to (nullptr if none).
TlsSession* SessionOf(const SSL* ssl);

}  // namespace ktrust
