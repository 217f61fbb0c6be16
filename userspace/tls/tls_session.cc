#include "ktrust/tls/tls_session.h"

#include <openssl/err.h>
#include <openssl/x509.h>

#include <cerrno>

#include "absl/strings/str_cat.h"

namespace ktrust {
namespace {

int SessionIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes straight into the Secret's buffer, so no stray copy of the bytes is
// left behind; an empty Secret if `hex` is not well-formed.
Secret DecodeHexSecret(absl::string_view hex) {
  if (hex.empty() || hex.size() % 2 != 0) return Secret();
  std::string bytes(hex.size() / 2, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    int hi = HexDigit(hex[2 * i]);
    int lo = HexDigit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      Secret wipe(std::move(bytes));
      return Secret();
    }
    bytes[i] = static_cast<char>(hi * 16 + lo);
  }
  return Secret(std::move(bytes));
}

}  // namespace

TlsSession* SessionOf(const SSL* ssl) {
  return static_cast<TlsSession*>(SSL_get_ex_data(ssl, SessionIndex()));
}

absl::string_view HandshakeFailure::code() const {
  switch (error) {
    case HandshakeError::kNone:
      return "ok";
    case HandshakeError::kPeerRejected:
      return ReasonCode(peer_reason);
    case HandshakeError::kRejectedByPeer:
      return "rejected_by_peer";
    case HandshakeError::kPlaintextPeer:
      return "plaintext_refused";
    case HandshakeError::kProtocol:
      return "protocol_error";
    case HandshakeError::kConnectionClosed:
      return "connection_closed";
  }
  return "unknown";
}

TlsSession::TlsSession(const TlsContext& context, SslPtr ssl, std::shared_ptr<const Svid> svid,
                       std::shared_ptr<const TrustStore> trust,
                       std::optional<SpiffeIdPattern> expected_peer)
    : context_(context),
      ssl_(std::move(ssl)),
      svid_(std::move(svid)),
      trust_(std::move(trust)),
      expected_peer_(std::move(expected_peer)) {
  SSL_set_ex_data(ssl_.get(), SessionIndex(), this);
  SSL_set_info_callback(ssl_.get(), &TlsSession::InfoCallback);
}

TlsSession::~TlsSession() {
  if (ssl_) SSL_set_ex_data(ssl_.get(), SessionIndex(), nullptr);
}

void TlsSession::SetBio(BIO* bio) {
  if (!ssl_) {
    BIO_free_all(bio);  // ours to free, as SSL_set_bio would have taken it
    return;
  }
  SSL_set_bio(ssl_.get(), bio, bio);
}

absl::Status TlsSession::SetFd(int fd) {
  if (!ssl_) return absl::FailedPreconditionError("the TLS session was handed to kernel TLS");
  if (SSL_set_fd(ssl_.get(), fd) != 1) return OpenSslError("attach socket to TLS session");
  return absl::OkStatus();
}

absl::Status TlsSession::OfferZeroHop() {
  if (context_.role() != TlsRole::kClient) {
    return absl::FailedPreconditionError("only a client offers ALPN");
  }
  if (!ssl_) return absl::FailedPreconditionError("the TLS session was handed to kernel TLS");
  // The wire format: each protocol name prefixed by its length.
  std::string protos(1, static_cast<char>(kZeroHopAlpn.size()));
  protos.append(kZeroHopAlpn.data(), kZeroHopAlpn.size());
  // SSL_set_alpn_protos returns 0 on success, unlike the rest of OpenSSL.
  if (SSL_set_alpn_protos(ssl_.get(), reinterpret_cast<const unsigned char*>(protos.data()),
                          static_cast<unsigned>(protos.size())) != 0) {
    return OpenSslError("offer ALPN ktrust-zh/1");
  }
  return absl::OkStatus();
}

bool TlsSession::zero_hop() const {
  if (!ssl_) return released_zero_hop_;
  const unsigned char* selected = nullptr;
  unsigned int len = 0;
  SSL_get0_alpn_selected(ssl_.get(), &selected, &len);
  return selected != nullptr &&
         absl::string_view(reinterpret_cast<const char*>(selected), len) == kZeroHopAlpn;
}

void TlsSession::InfoCallback(const SSL* ssl, int where, int ret) {
  // SSL_CB_READ_ALERT shares its alert bit with SSL_CB_WRITE_ALERT: test both bits.
  if ((where & SSL_CB_ALERT) == 0 || (where & SSL_CB_READ) == 0) return;
  if (TlsSession* session = SessionOf(ssl)) {
    session->alert_received_ = SSL_alert_desc_string_long(ret);
  }
}

void TlsSession::KeylogCallback(const SSL* ssl, const char* line) {
  TlsSession* session = SessionOf(ssl);
  if (session == nullptr || line == nullptr) return;
  // "<LABEL> <client_random hex> <secret hex>" (the NSS key log format).
  absl::string_view rest(line);
  size_t label_end = rest.find(' ');
  if (label_end == absl::string_view::npos) return;
  absl::string_view label = rest.substr(0, label_end);
  Secret* slot = nullptr;
  if (label == "CLIENT_TRAFFIC_SECRET_0") {
    slot = &session->client_traffic_secret_;
  } else if (label == "SERVER_TRAFFIC_SECRET_0") {
    slot = &session->server_traffic_secret_;
  } else {
    return;  // handshake and exporter secrets are never kept
  }
  size_t secret_start = rest.rfind(' ');
  if (secret_start == label_end) return;
  *slot = DecodeHexSecret(rest.substr(secret_start + 1));
}

void TlsSession::MessageCallback(int write_p, int /*version*/, int content_type, const void* buf,
                                 size_t len, SSL* ssl, void* /*arg*/) {
  TlsSession* session = SessionOf(ssl);
  if (session == nullptr) return;
  if (write_p == 0) {
    // Every record read once the handshake finished is under the peer's
    // application key (TLS 1.3 switches read keys at the peer's Finished).
    // OpenSSL reports each record's header once, before decrypting it.
    if (content_type == SSL3_RT_HEADER && session->handshake_done_) ++session->records_received_;
    return;
  }
  // A server writes its tickets under its application key inside
  // SSL_do_handshake. OpenSSL puts each handshake message of at most a
  // record's plaintext in one record of its own.
  if (content_type == SSL3_RT_HANDSHAKE && len >= 1 &&
      static_cast<const unsigned char*>(buf)[0] == SSL3_MT_NEWSESSION_TICKET) {
    ++session->tickets_sent_;
    if (len > SSL3_RT_MAX_PLAIN_LENGTH) session->ticket_too_large_ = true;
  }
}

void TlsSession::ForgetTrafficSecrets() {
  client_traffic_secret_ = Secret();
  server_traffic_secret_ = Secret();
}

VerifyOptions TlsSession::PeerVerifyOptions() const { return context_.PeerVerifyOptions(); }

bool TlsSession::VerifyPeer(X509* leaf, const std::vector<X509*>& untrusted) {
  verified_at_ = context_.options_.clock();
  PeerVerdict verdict =
      VerifyPeerChain(*trust_, leaf, untrusted, PeerVerifyOptions(), verified_at_);
  peer_chain_.clear();
  peer_chain_.push_back(ShareX509(leaf));
  for (X509* cert : untrusted) peer_chain_.push_back(ShareX509(cert));
  if (verdict.ok() && expected_peer_ && !expected_peer_->Matches(*verdict.peer_id)) {
    verdict = PeerVerdict::Reject(
        RejectReason::kUnexpectedPeer,
        absl::StrCat("the server presented ", verdict.peer_id->ToString(), " but ",
                     expected_peer_->ToString(), " was expected for this destination"));
  }
  verdict_ = std::move(verdict);
  return verdict_->ok();
}

CertChain TlsSession::peer_chain() const {
  CertChain chain;
  for (const X509Ptr& cert : peer_chain_) chain.push_back(ShareX509(cert.get()));
  for (const std::string& der : peer_chain_der_) {
    const auto* p = reinterpret_cast<const unsigned char*>(der.data());
    X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
    if (!cert) {
      ERR_clear_error();
      return CertChain();
    }
    chain.push_back(std::move(cert));
  }
  return chain;
}

PeerVerdict TlsSession::ReverifyPeer() const {
  CertChain chain = peer_chain();
  if (!peer_id_ || chain.empty()) {
    return PeerVerdict::Reject(RejectReason::kNoCertificate, "no verified peer to check again");
  }
  return context_.ReverifyPeer(chain, verified_at_);
}

void TlsSession::Fail(HandshakeError error, std::string explanation) {
  failure_.error = error;
  failure_.explanation = std::move(explanation);
}

HandshakeProgress TlsSession::Handshake() {
  if (failure_.error != HandshakeError::kNone || FailIfReleased()) {
    return HandshakeProgress::kFailed;
  }
  ERR_clear_error();
  int rc = SSL_do_handshake(ssl_.get());
  if (rc == 1) {
    handshake_done_ = true;
    if (!CheckResumption()) return HandshakeProgress::kFailed;
    // The verify callback ran and accepted (or, resumed, the kept chain was
    // verified the same way); never report success without it.
    if (!verdict_ || !verdict_->ok()) {
      Fail(HandshakeError::kPeerRejected, "the peer's certificate was not verified");
      failure_.peer_reason = RejectReason::kNoCertificate;
      return HandshakeProgress::kFailed;
    }
    peer_id_ = verdict_->peer_id;
    peer_not_after_ = verdict_->not_after;
    return HandshakeProgress::kDone;
  }
  int err = SSL_get_error(ssl_.get(), rc);
  if (err == SSL_ERROR_WANT_READ) return HandshakeProgress::kWantRead;
  if (err == SSL_ERROR_WANT_WRITE) return HandshakeProgress::kWantWrite;

  unsigned long lib_err = ERR_peek_error();
  int reason = ERR_GET_REASON(lib_err);
  if (verdict_ && !verdict_->ok()) {
    failure_.peer_reason = verdict_->reason;
    Fail(HandshakeError::kPeerRejected, verdict_->explanation);
  } else if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
    failure_.peer_reason = RejectReason::kNoCertificate;
    Fail(HandshakeError::kPeerRejected, "the client presented no certificate");
  } else if (!alert_received_.empty()) {
    Fail(HandshakeError::kRejectedByPeer,
         absl::StrCat("the peer ended the handshake with alert \"", alert_received_, "\""));
  } else if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && lib_err == 0) ||
             reason == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
    Fail(HandshakeError::kConnectionClosed, "the connection closed during the handshake");
  } else if (ERR_GET_LIB(lib_err) == ERR_LIB_SSL &&
             (reason == SSL_R_HTTP_REQUEST || reason == SSL_R_HTTPS_PROXY_REQUEST ||
              reason == SSL_R_WRONG_VERSION_NUMBER)) {
    // What a client that bypasses the mesh looks like from here: an HTTP
    // request, or bytes whose record header is no TLS version.
    const char* why = ERR_reason_error_string(lib_err);
    Fail(HandshakeError::kPlaintextPeer,
         absl::StrCat("plaintext client: the peer sent no TLS ClientHello (", why ? why : "not TLS",
                      "); it is not using ktrust or any mutual-TLS client"));
  } else {
    const char* why = lib_err ? ERR_reason_error_string(lib_err) : nullptr;
    Fail(HandshakeError::kProtocol,
         absl::StrCat("TLS handshake failed: ", why ? why : "unspecified protocol error"));
  }
  ERR_clear_error();
  return HandshakeProgress::kFailed;
}

namespace {
constexpr char kZeroHopAccepted = 0x01;
}  // namespace

HandshakeProgress TlsSession::SendZeroHopAccept() {
  if (failure_.error != HandshakeError::kNone || FailIfReleased()) {
    return HandshakeProgress::kFailed;
  }
  ERR_clear_error();
  size_t written = 0;
  int rc = SSL_write_ex(ssl_.get(), &kZeroHopAccepted, 1, &written);
  if (rc == 1) {
    ++records_sent_;
    return HandshakeProgress::kDone;
  }
  int err = SSL_get_error(ssl_.get(), rc);
  if (err == SSL_ERROR_WANT_WRITE) return HandshakeProgress::kWantWrite;
  unsigned long lib_err = ERR_peek_error();
  const char* why = lib_err ? ERR_reason_error_string(lib_err) : nullptr;
  Fail(HandshakeError::kConnectionClosed,
       absl::StrCat("send the zero-hop acceptance: ", why ? why : "the connection closed"));
  ERR_clear_error();
  return HandshakeProgress::kFailed;
}

HandshakeProgress TlsSession::ReadZeroHopAccept() {
  if (failure_.error != HandshakeError::kNone || FailIfReleased()) {
    return HandshakeProgress::kFailed;
  }
  ERR_clear_error();
  char byte = 0;
  size_t n = 0;
  errno = 0;
  int rc = SSL_read_ex(ssl_.get(), &byte, 1, &n);
  if (rc == 1) {
    // Exactly one record of exactly this byte: anything more would be
    // data OpenSSL holds that kernel TLS would never see. (OpenSSL read the
    // server's tickets on the way, and MessageCallback counted every record.)
    if (n != 1 || byte != kZeroHopAccepted || SSL_pending(ssl_.get()) > 0) {
      Fail(HandshakeError::kProtocol,
           "the server's first record is not the zero-hop acceptance (one byte 0x01)");
      return HandshakeProgress::kFailed;
    }
    if (tickets_pending()) {
      Fail(HandshakeError::kProtocol,
           "the server accepted this client before sending the session ticket it promised");
      return HandshakeProgress::kFailed;
    }
    return HandshakeProgress::kDone;
  }
  int err = SSL_get_error(ssl_.get(), rc);
  if (err == SSL_ERROR_WANT_READ) return HandshakeProgress::kWantRead;
  return FailServerEnded("after the handshake instead of accepting this client");
}

HandshakeProgress TlsSession::FailServerEnded(absl::string_view instead) {
  std::string how = !alert_received_.empty() ? absl::StrCat("with alert \"", alert_received_, "\"")
                    : errno == ECONNRESET    ? std::string("with a reset")
                                             : std::string("without a word");
  Fail(HandshakeError::kRejectedByPeer,
       absl::StrCat("the server ended the connection ", how, " ", instead,
                    ": its policy may not allow ", svid_->id().ToString(),
                    " (check the denials on the server's node)"));
  ERR_clear_error();
  return HandshakeProgress::kFailed;
}

absl::string_view TlsSession::cipher() const {
  if (!ssl_) return released_cipher_;
  const char* name = SSL_get_cipher_name(ssl_.get());
  return name ? name : "";
}

absl::string_view TlsSession::version() const {
  return ssl_ ? SSL_get_version(ssl_.get()) : released_version_;
}

bool TlsSession::FailIfReleased() {
  if (ssl_) return false;
  Fail(HandshakeError::kProtocol, "the TLS session was handed to kernel TLS");
  return true;
}

absl::Status TlsSession::ReleaseSsl() {
  if (!ssl_) return absl::OkStatus();
  // InstallKtls leaves OpenSSL on a null BIO with both directions shut; on
  // any other transport OpenSSL may still be reading or writing the
  // connection (the userspace record layer), and freeing it there would
  // leave a dangling SSL* behind.
  BIO* rbio = SSL_get_rbio(ssl_.get());
  BIO* wbio = SSL_get_wbio(ssl_.get());
  if (!SSL_is_init_finished(ssl_.get()) || rbio == nullptr || wbio == nullptr ||
      BIO_method_type(rbio) != BIO_TYPE_NULL || BIO_method_type(wbio) != BIO_TYPE_NULL ||
      SSL_get_shutdown(ssl_.get()) != (SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN) ||
      !client_traffic_secret_.empty() || !server_traffic_secret_.empty()) {
    return absl::FailedPreconditionError(
        "free the TLS session: kernel TLS does not carry this connection, OpenSSL does");
  }
  // The peer's chain as DER, a tenth of what OpenSSL's parsed form costs
  // (its only use from here is ReverifyPeer, after a reload).
  std::vector<std::string> der_chain;
  for (const X509Ptr& cert : peer_chain_) {
    int len = i2d_X509(cert.get(), nullptr);
    std::string der(len > 0 ? static_cast<size_t>(len) : 0, '\0');
    auto* p = reinterpret_cast<unsigned char*>(der.data());
    if (len <= 0 || i2d_X509(cert.get(), &p) != len) {
      ERR_clear_error();
      return absl::InternalError("free the TLS session: cannot encode the peer's certificate");
    }
    der_chain.push_back(std::move(der));
  }
  // Static names: SSL_CIPHER and version strings are OpenSSL's constants.
  const char* cipher = SSL_get_cipher_name(ssl_.get());
  released_cipher_ = cipher ? cipher : "";
  released_version_ = SSL_get_version(ssl_.get());
  released_zero_hop_ = zero_hop();
  SSL_set_ex_data(ssl_.get(), SessionIndex(), nullptr);
  ssl_.reset();
  peer_chain_.clear();
  peer_chain_der_ = std::move(der_chain);
  // Only the handshake needed these; the peer's identity and chain stay.
  verdict_.reset();
  expected_peer_.reset();
  alert_received_ = std::string();
  return absl::OkStatus();
}

}  // namespace ktrust
