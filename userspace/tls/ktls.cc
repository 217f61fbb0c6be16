#include "ktrust/tls/ktls.h"

#include <arpa/inet.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "ktrust/common/unique_fd.h"

namespace ktrust {
namespace {

// The kernel's key material for one direction (linux/tls.h), wiped when
// dropped: getsockopt hands the key back too. Kept as bytes because the
// ChaCha20-Poly1305 struct ends in a zero-length array, which cannot sit in
// a union.
class CryptoInfo {
 public:
  CryptoInfo() = default;
  ~CryptoInfo() { OPENSSL_cleanse(bytes_, sizeof(bytes_)); }
  CryptoInfo(const CryptoInfo&) = delete;
  CryptoInfo& operator=(const CryptoInfo&) = delete;

  // `key` and `iv` as DeriveTrafficKeys makes them; `sequence`: the next
  // record's sequence number (the records OpenSSL already carried).
  absl::Status Fill(CipherSuite suite, absl::string_view key, absl::string_view iv,
                    uint64_t sequence = 0) {
    if (key.size() != KeyLength(suite) || iv.size() != kTrafficIvLength) {
      return absl::InternalError(absl::StrCat("kernel TLS key material for ",
                                              CipherSuiteName(suite), " has the wrong length"));
    }
    switch (suite) {
      case CipherSuite::kAes128GcmSha256:
        Build<tls12_crypto_info_aes_gcm_128>(TLS_CIPHER_AES_GCM_128, key, iv, sequence);
        break;
      case CipherSuite::kAes256GcmSha384:
        Build<tls12_crypto_info_aes_gcm_256>(TLS_CIPHER_AES_GCM_256, key, iv, sequence);
        break;
      case CipherSuite::kChaCha20Poly1305Sha256:
        Build<tls12_crypto_info_chacha20_poly1305>(TLS_CIPHER_CHACHA20_POLY1305, key, iv, sequence);
        break;
    }
    return absl::OkStatus();
  }

  // getsockopt(SOL_TLS, TLS_TX or TLS_RX). The kernel wants the exact struct
  // size of the cipher, so ask for the common header first.
  absl::Status Read(int fd, int optname) {
    tls_crypto_info header{};
    socklen_t len = sizeof(header);
    if (getsockopt(fd, SOL_TLS, optname, &header, &len) != 0) {
      return absl::ErrnoToStatus(errno, "getsockopt SOL_TLS");
    }
    cipher_type_ = header.cipher_type;
    switch (cipher_type_) {
      case TLS_CIPHER_AES_GCM_128:
        size_ = sizeof(tls12_crypto_info_aes_gcm_128);
        break;
      case TLS_CIPHER_AES_GCM_256:
        size_ = sizeof(tls12_crypto_info_aes_gcm_256);
        break;
      case TLS_CIPHER_CHACHA20_POLY1305:
        size_ = sizeof(tls12_crypto_info_chacha20_poly1305);
        break;
      default:
        return absl::InternalError(absl::StrCat("kernel TLS reports cipher type ", cipher_type_,
                                                ", which ktrust never installs"));
    }
    len = size_;
    if (getsockopt(fd, SOL_TLS, optname, bytes_, &len) != 0) {
      return absl::ErrnoToStatus(errno, "getsockopt SOL_TLS");
    }
    return absl::OkStatus();
  }

  // The next record sequence number, stored big-endian, after Read().
  uint64_t RecordSequence() const {
    size_t at = cipher_type_ == TLS_CIPHER_AES_GCM_128
                    ? offsetof(tls12_crypto_info_aes_gcm_128, rec_seq)
                : cipher_type_ == TLS_CIPHER_AES_GCM_256
                    ? offsetof(tls12_crypto_info_aes_gcm_256, rec_seq)
                    : offsetof(tls12_crypto_info_chacha20_poly1305, rec_seq);
    uint64_t value = 0;
    for (size_t i = 0; i < 8; ++i) value = (value << 8) | bytes_[at + i];
    return value;
  }

  const void* data() const { return bytes_; }
  socklen_t size() const { return size_; }

 private:
  // The 12-byte nonce base splits into salt then iv: 4 + 8 for AES-GCM (as
  // for TLS 1.2's implicit and explicit parts), 0 + 12 for ChaCha20-Poly1305.
  template <typename T>
  void Build(uint16_t cipher_type, absl::string_view key, absl::string_view iv, uint64_t sequence) {
    static_assert(sizeof(T) <= sizeof(bytes_));
    T c{};
    static_assert(sizeof(c.salt) + sizeof(c.iv) == kTrafficIvLength);
    c.info.version = TLS_1_3_VERSION;
    c.info.cipher_type = cipher_type;
    std::memcpy(c.salt, iv.data(), sizeof(c.salt));
    std::memcpy(c.iv, iv.data() + sizeof(c.salt), sizeof(c.iv));
    std::memcpy(c.key, key.data(), sizeof(c.key));
    static_assert(sizeof(c.rec_seq) == 8);
    for (size_t i = 0; i < 8; ++i) {
      c.rec_seq[i] = static_cast<unsigned char>(sequence >> (8 * (7 - i)));  // big-endian
    }
    std::memcpy(bytes_, &c, sizeof(c));
    size_ = sizeof(c);
    cipher_type_ = cipher_type;
    OPENSSL_cleanse(&c, sizeof(c));
  }

  alignas(8) unsigned char bytes_[64] = {};
  socklen_t size_ = 0;
  uint16_t cipher_type_ = 0;
};

absl::Status SetCryptoInfo(int fd, int optname, const CryptoInfo& info) {
  if (setsockopt(fd, SOL_TLS, optname, info.data(), info.size()) != 0) {
    return absl::ErrnoToStatus(errno, "setsockopt SOL_TLS");
  }
  return absl::OkStatus();
}

struct LoopbackPair {
  UniqueFd client;
  UniqueFd server;
};

absl::StatusOr<LoopbackPair> ConnectLoopback() {
  UniqueFd listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener.valid()) return absl::ErrnoToStatus(errno, "socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    return absl::ErrnoToStatus(errno, "bind 127.0.0.1");
  }
  if (listen(listener.get(), 1) != 0) return absl::ErrnoToStatus(errno, "listen");
  if (getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return absl::ErrnoToStatus(errno, "getsockname");
  }
  LoopbackPair pair;
  pair.client.Reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!pair.client.valid()) return absl::ErrnoToStatus(errno, "socket");
  if (connect(pair.client.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    return absl::ErrnoToStatus(errno, "connect to 127.0.0.1");
  }
  pair.server.Reset(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!pair.server.valid()) return absl::ErrnoToStatus(errno, "accept");
  return pair;
}

// Without CAP_NET_ADMIN the kernel does not load a missing ULP module, and
// TCP_ULP answers ENOENT exactly as on a kernel built without CONFIG_TLS.
bool TlsModuleInstalled() {
  utsname host{};
  if (uname(&host) != 0) return false;
  std::ifstream dep(absl::StrCat("/lib/modules/", host.release, "/modules.dep"));
  std::string line;
  while (std::getline(dep, line)) {
    if (absl::StartsWith(line, "kernel/net/tls/tls.ko")) return true;
  }
  return false;
}

constexpr char kFallback[] = "; using the userspace record layer";

std::string UlpFailure(int error) {
  if (error == ENOENT) {
    if (TlsModuleInstalled()) {
      return absl::StrCat(
          "the kernel TLS module is not loaded: TCP_ULP \"tls\" gives ENOENT (load it with "
          "\"modprobe tls\", or give ktrustd CAP_NET_ADMIN to load it on demand)",
          kFallback);
    }
    return absl::StrCat("this kernel has no kernel TLS (CONFIG_TLS): TCP_ULP \"tls\" gives ENOENT",
                        kFallback);
  }
  return absl::StrCat(absl::ErrnoToStatus(error, "TCP_ULP \"tls\" failed").message(), kFallback);
}

// One suite, both directions, on a fresh loopback connection; empty if it works.
std::string ProbeSuite(CipherSuite suite) {
  absl::StatusOr<LoopbackPair> pair = ConnectLoopback();
  if (!pair.ok()) {
    return absl::StrCat("could not probe kernel TLS (", pair.status().message(), ")", kFallback);
  }
  int fd = pair->client.get();
  if (setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", 3) != 0) return UlpFailure(errno);
  // Zero keys: nothing is ever sent on this connection.
  CryptoInfo info;
  absl::Status st =
      info.Fill(suite, std::string(KeyLength(suite), '\0'), std::string(kTrafficIvLength, '\0'));
  if (!st.ok()) return std::string(st.message());
  for (int optname : {TLS_TX, TLS_RX}) {
    if (st = SetCryptoInfo(fd, optname, info); !st.ok()) {
      return absl::StrCat("kernel TLS cannot install TLS 1.3 ", CipherSuiteName(suite), " keys (",
                          optname == TLS_TX ? "TLS_TX" : "TLS_RX", ": ", st.message(), ")",
                          kFallback);
    }
  }
  return "";
}

absl::Status Refuse(absl::string_view why) {
  return absl::FailedPreconditionError(absl::StrCat("install kernel TLS: ", why));
}

bool Offloaded(uint16_t conf) { return conf == TLS_CONF_HW || conf == TLS_CONF_HW_RECORD; }

// --- sock_diag, parsed by hand: the NLMSG_*/RTA_* macros are C casts. ---

constexpr size_t Align4(size_t n) { return (n + 3) & ~size_t{3}; }

template <typename T>
T Load(const unsigned char* p) {
  T value;
  std::memcpy(&value, p, sizeof(value));
  return value;
}

// Calls f(type, payload, length) for each netlink attribute in [data, data+len).
template <typename F>
void ForEachAttribute(const unsigned char* data, size_t len, F&& f) {
  while (len >= sizeof(nlattr)) {
    auto attr = Load<nlattr>(data);
    if (attr.nla_len < sizeof(nlattr) || attr.nla_len > len) return;
    f(attr.nla_type & NLA_TYPE_MASK, data + sizeof(nlattr), attr.nla_len - sizeof(nlattr));
    size_t step = Align4(attr.nla_len);
    if (step >= len) return;
    data += step;
    len -= step;
  }
}

absl::Status FillSockId(int fd, inet_diag_req_v2& req) {
  sockaddr_storage local{}, peer{};
  socklen_t local_len = sizeof(local), peer_len = sizeof(peer);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0) {
    return absl::ErrnoToStatus(errno, "getsockname");
  }
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) {
    return absl::ErrnoToStatus(errno, "getpeername");
  }
  req.sdiag_family = static_cast<uint8_t>(local.ss_family);
  if (local.ss_family == AF_INET) {
    auto l = Load<sockaddr_in>(reinterpret_cast<const unsigned char*>(&local));
    auto p = Load<sockaddr_in>(reinterpret_cast<const unsigned char*>(&peer));
    req.id.idiag_sport = l.sin_port;
    req.id.idiag_dport = p.sin_port;
    std::memcpy(req.id.idiag_src, &l.sin_addr, sizeof(l.sin_addr));
    std::memcpy(req.id.idiag_dst, &p.sin_addr, sizeof(p.sin_addr));
  } else if (local.ss_family == AF_INET6) {
    auto l = Load<sockaddr_in6>(reinterpret_cast<const unsigned char*>(&local));
    auto p = Load<sockaddr_in6>(reinterpret_cast<const unsigned char*>(&peer));
    req.id.idiag_sport = l.sin6_port;
    req.id.idiag_dport = p.sin6_port;
    std::memcpy(req.id.idiag_src, &l.sin6_addr, sizeof(l.sin6_addr));
    std::memcpy(req.id.idiag_dst, &p.sin6_addr, sizeof(p.sin6_addr));
    req.id.idiag_if = l.sin6_scope_id;
  } else {
    return absl::InvalidArgumentError("not an IPv4 or IPv6 socket");
  }
  return absl::OkStatus();
}

}  // namespace

absl::string_view DataPathName(DataPath path) {
  switch (path) {
    case DataPath::kUserspace:
      return "userspace";
    case DataPath::kKtlsSw:
      return "ktls-sw";
    case DataPath::kKtlsHw:
      return "ktls-hw";
  }
  return "unknown";
}

KtlsSupport ProbeKtls() {
  for (CipherSuite suite : {CipherSuite::kAes128GcmSha256, CipherSuite::kAes256GcmSha384,
                            CipherSuite::kChaCha20Poly1305Sha256}) {
    std::string failure = ProbeSuite(suite);
    if (!failure.empty()) return KtlsSupport{false, std::move(failure)};
  }
  return KtlsSupport{true,
                     "kernel TLS installs TLS 1.3 TX and RX for AES-128-GCM, AES-256-GCM and "
                     "ChaCha20-Poly1305"};
}

absl::StatusOr<DataPath> InstallKtls(int fd, TlsSession& session) {
  SSL* ssl = session.ssl();
  if (!SSL_is_init_finished(ssl)) return Refuse("the TLS handshake has not finished");
  if (SSL_version(ssl) != TLS1_3_VERSION) {
    return Refuse(absl::StrCat("the session negotiated ", SSL_get_version(ssl),
                               "; ktrust hands only TLS 1.3 to the kernel"));
  }
  const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl);
  if (cipher == nullptr) return Refuse("the session has no cipher suite");
  absl::StatusOr<CipherSuite> suite = CipherSuiteFromId(SSL_CIPHER_get_protocol_id(cipher));
  if (!suite.ok()) return Refuse(suite.status().message());
  // Bytes OpenSSL already pulled off the socket would never reach kernel RX.
  if (SSL_has_pending(ssl)) {
    return Refuse(
        "OpenSSL already holds bytes received after the handshake; installing RX would lose them");
  }
  // A ticket still on its way would reach kernel TLS RX, which cannot take it.
  if (session.tickets_pending()) {
    return Refuse(
        "the server promised a session ticket that has not been read yet "
        "(TlsSession::ReadTickets)");
  }
  int session_fd = SSL_get_fd(ssl);
  if (session_fd >= 0 && session_fd != fd) {
    return absl::InvalidArgumentError(
        absl::StrCat("install kernel TLS: the session runs on fd ", session_fd, ", not fd ", fd));
  }
  bool client = session.role() == TlsRole::kClient;
  const Secret& tx_secret =
      client ? session.client_traffic_secret() : session.server_traffic_secret();
  const Secret& rx_secret =
      client ? session.server_traffic_secret() : session.client_traffic_secret();
  if (tx_secret.empty() || rx_secret.empty()) {
    return Refuse("the session's traffic secrets were not captured (or were already used)");
  }

  // Everything fallible that does not touch the socket comes first, so a
  // failure up to here leaves the connection usable.
  CryptoInfo tx, rx;
  // The sequences continue after the records OpenSSL carried under the
  // application keys: a server's session tickets and zero-hop acceptance
  // record sent, a client's tickets and acceptance read; none otherwise.
  struct Direction {
    const Secret* secret;
    CryptoInfo* info;
    uint64_t sequence;
  };
  for (Direction d : {Direction{&tx_secret, &tx, session.records_sent()},
                      Direction{&rx_secret, &rx, session.records_received()}}) {
    absl::StatusOr<TrafficKeys> keys = DeriveTrafficKeys(*suite, *d.secret);
    if (!keys.ok()) return keys.status();
    if (absl::Status st = d.info->Fill(*suite, keys->key.view(), keys->iv.view(), d.sequence);
        !st.ok()) {
      return st;
    }
  }

  if (setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", 3) != 0) {
    int error = errno;
    return absl::ErrnoToStatus(
        error, absl::StrCat("install kernel TLS: setsockopt TCP_ULP \"tls\" (",
                            error == ENOENT ? "ENOENT: this kernel has no kernel TLS"
                                            : "the socket is unchanged",
                            ")"));
  }
  // From here the socket belongs to the kernel's record layer, whatever
  // happens next. Keep OpenSSL off it for good: a stray SSL_write would
  // corrupt the stream, and an SSL_shutdown in some error path would send a
  // close_notify the peer cannot decrypt.
  if (BIO* null_bio = BIO_new(BIO_s_null())) SSL_set_bio(ssl, null_bio, null_bio);
  SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
  session.ForgetTrafficSecrets();

  for (auto [optname, info] : {std::pair{TLS_TX, &tx}, std::pair{TLS_RX, &rx}}) {
    if (absl::Status st = SetCryptoInfo(fd, optname, *info); !st.ok()) {
      return absl::Status(
          st.code(), absl::StrCat("install kernel TLS: ", optname == TLS_TX ? "TLS_TX" : "TLS_RX",
                                  " for ", CipherSuiteName(*suite), ": ", st.message(),
                                  "; the socket is unusable and must be closed"));
    }
  }

  // Only the kernel knows whether a NIC took the records over. If it cannot
  // tell us (no CAP_NET_ADMIN, no inet_diag, another network namespace),
  // software is the safe answer, and the only one for TLS 1.3 as of Linux
  // 6.1: tls_set_device_offload refuses anything but TLS 1.2.
  absl::StatusOr<KtlsState> state = QueryKtlsState(fd);
  if (state.ok() && (Offloaded(state->tx_conf) || Offloaded(state->rx_conf))) {
    return DataPath::kKtlsHw;
  }
  return DataPath::kKtlsSw;
}

absl::StatusOr<KtlsState> QueryKtlsState(int fd) {
  constexpr absl::string_view kWhat = "query kernel TLS state via sock_diag";
  struct {
    nlmsghdr header;
    inet_diag_req_v2 req;
  } request{};
  request.header.nlmsg_len = sizeof(request);
  request.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  request.header.nlmsg_flags = NLM_F_REQUEST;
  request.header.nlmsg_seq = 1;
  request.req.sdiag_protocol = IPPROTO_TCP;
  request.req.idiag_ext = 1 << (INET_DIAG_INFO - 1);  // makes tcp_diag add the ULP info
  request.req.idiag_states = ~0u;
  request.req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  request.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  if (absl::Status st = FillSockId(fd, request.req); !st.ok()) {
    return absl::Status(st.code(), absl::StrCat(kWhat, ": ", st.message()));
  }

  UniqueFd diag(socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!diag.valid()) return absl::ErrnoToStatus(errno, absl::StrCat(kWhat, ": socket"));
  if (send(diag.get(), &request, sizeof(request), 0) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat(kWhat, ": send"));
  }
  alignas(nlmsghdr) unsigned char buffer[16384];
  ssize_t n = recv(diag.get(), buffer, sizeof(buffer), 0);
  if (n < 0) return absl::ErrnoToStatus(errno, absl::StrCat(kWhat, ": recv"));
  if (static_cast<size_t>(n) < sizeof(nlmsghdr)) {
    return absl::InternalError(absl::StrCat(kWhat, ": short reply"));
  }
  auto header = Load<nlmsghdr>(buffer);
  if (header.nlmsg_len > static_cast<size_t>(n)) {
    return absl::InternalError(absl::StrCat(kWhat, ": truncated reply"));
  }
  if (header.nlmsg_type == NLMSG_ERROR) {
    auto error = Load<nlmsgerr>(buffer + Align4(sizeof(nlmsghdr)));
    return absl::ErrnoToStatus(-error.error, kWhat);
  }
  size_t attrs_at = Align4(sizeof(nlmsghdr)) + Align4(sizeof(inet_diag_msg));
  if (header.nlmsg_type != SOCK_DIAG_BY_FAMILY || header.nlmsg_len < attrs_at) {
    return absl::InternalError(absl::StrCat(kWhat, ": unexpected reply"));
  }

  KtlsState state;
  bool tls = false;
  ForEachAttribute(
      buffer + attrs_at, header.nlmsg_len - attrs_at,
      [&](int type, const unsigned char* data, size_t len) {
        if (type != INET_DIAG_ULP_INFO) return;
        ForEachAttribute(data, len, [&](int ulp_type, const unsigned char* ulp, size_t ulp_len) {
          if (ulp_type != INET_ULP_INFO_TLS) return;
          tls = true;
          ForEachAttribute(ulp, ulp_len,
                           [&](int key, const unsigned char* value, size_t value_len) {
                             if (value_len < sizeof(uint16_t)) return;
                             auto v = Load<uint16_t>(value);
                             if (key == TLS_INFO_VERSION) state.version = v;
                             if (key == TLS_INFO_CIPHER) state.cipher_type = v;
                             if (key == TLS_INFO_TXCONF) state.tx_conf = v;
                             if (key == TLS_INFO_RXCONF) state.rx_conf = v;
                           });
        });
      });
  if (!tls) {
    return absl::NotFoundError(
        absl::StrCat(kWhat,
                     ": the kernel reported no TLS ULP on this socket (it shows ULP "
                     "details only to CAP_NET_ADMIN)"));
  }
  return state;
}

absl::Status SendControlRecord(int fd, uint8_t content_type, absl::string_view payload) {
  std::string what =
      absl::StrCat("send a TLS record of type ", int{content_type}, " through kernel TLS");
  // On a socket without kTLS TX the cmsg is ignored and the bytes would go
  // out as they are: check first.
  tls_crypto_info tx{};
  socklen_t tx_len = sizeof(tx);
  if (getsockopt(fd, SOL_TLS, TLS_TX, &tx, &tx_len) != 0) {
    absl::Status why = absl::ErrnoToStatus(errno, "getsockopt TLS_TX");
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": the socket has no kernel TLS TX keys (", why.message(), ")"));
  }
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(content_type))] = {};
  iovec iov{const_cast<char*>(payload.data()), payload.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_TLS;
  cmsg->cmsg_type = TLS_SET_RECORD_TYPE;
  cmsg->cmsg_len = CMSG_LEN(sizeof(content_type));
  std::memcpy(CMSG_DATA(cmsg), &content_type, sizeof(content_type));
  ssize_t n;
  do {
    n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return absl::ErrnoToStatus(errno, what);
  if (static_cast<size_t>(n) != payload.size()) {
    return absl::InternalError(
        absl::StrCat(what, ": the kernel took ", n, " of ", payload.size(), " bytes"));
  }
  return absl::OkStatus();
}

absl::Status SendCloseNotify(int fd) {
  // AlertLevel warning (1), AlertDescription close_notify (0): RFC 8446 §6.
  static constexpr char kCloseNotify[] = {1, 0};
  return SendControlRecord(fd, kRecordAlert, absl::string_view(kCloseNotify, 2));
}

absl::StatusOr<TlsRecord> ReadControlRecord(int fd) {
  // A record carries at most 2^14 bytes of plaintext (RFC 8446 §5.1).
  std::string buffer(16384 + 1, '\0');
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(uint8_t))] = {};
  iovec iov{buffer.data(), buffer.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = recvmsg(fd, &msg, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return absl::ErrnoToStatus(errno, "read a TLS record from kernel TLS");
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_TLS && c->cmsg_type == TLS_GET_RECORD_TYPE) {
      TlsRecord record;
      std::memcpy(&record.content_type, CMSG_DATA(c), sizeof(record.content_type));
      buffer.resize(static_cast<size_t>(n));
      record.payload = std::move(buffer);
      return record;
    }
  }
  if (n == 0) {
    return absl::DataLossError("the peer closed the connection without close_notify (truncated)");
  }
  return absl::FailedPreconditionError(
      "read a TLS record from kernel TLS: no record type came with it (not a kernel TLS RX "
      "socket?)");
}

absl::StatusOr<bool> ClassifyControlRecord(const TlsRecord& record) {
  const std::string& p = record.payload;
  switch (record.content_type) {
    case kRecordAlert: {
      if (p.size() != 2) {
        return absl::DataLossError(
            absl::StrCat("the peer sent a malformed TLS alert (", p.size(), " bytes)"));
      }
      int description = static_cast<uint8_t>(p[1]);
      if (description == SSL_AD_CLOSE_NOTIFY) return true;
      // RFC 8446 §6.1: user_canceled is followed by close_notify.
      if (description == SSL_AD_USER_CANCELLED) return false;
      return absl::AbortedError(absl::StrCat("the peer sent TLS alert \"",
                                             SSL_alert_desc_string_long(description), "\" (",
                                             description, ")"));
    }
    case kRecordHandshake: {
      int type = p.empty() ? -1 : static_cast<uint8_t>(p[0]);
      std::string name = type == SSL3_MT_KEY_UPDATE            ? "KeyUpdate"
                         : type == SSL3_MT_NEWSESSION_TICKET   ? "NewSessionTicket"
                         : type == SSL3_MT_CERTIFICATE_REQUEST ? "CertificateRequest"
                                                               : absl::StrCat("type ", type);
      return absl::UnimplementedError(absl::StrCat("the peer sent a post-handshake message (", name,
                                                   ") that kernel TLS cannot process here"));
    }
    case kRecordApplicationData:
      return absl::InternalError(
          "read application data where a non-data TLS record was expected; it cannot be "
          "delivered");
    default:
      return absl::DataLossError(
          absl::StrCat("the peer sent a TLS record of unexpected type ", int{record.content_type}));
  }
}

absl::StatusOr<bool> ReadControlRecordIsCleanEnd(int fd) {
  absl::StatusOr<TlsRecord> record = ReadControlRecord(fd);
  if (!record.ok()) return record.status();
  return ClassifyControlRecord(*record);
}

absl::StatusOr<uint64_t> RecordSequence(int fd, KtlsDirection direction) {
  bool tx = direction == KtlsDirection::kTx;
  CryptoInfo info;
  if (absl::Status st = info.Read(fd, tx ? TLS_TX : TLS_RX); !st.ok()) {
    return absl::Status(st.code(), absl::StrCat("read the kernel TLS ", tx ? "TX" : "RX",
                                                " record sequence: ", st.message()));
  }
  return info.RecordSequence();
}

}  // namespace ktrust
