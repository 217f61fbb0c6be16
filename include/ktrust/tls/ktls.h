// Kernel TLS (kTLS): hands an established TLS 1.3 session's record layer to
// the kernel, and the few calls a pump needs on a kTLS socket afterwards.
//
// ktrust installs both directions itself rather than setting
// SSL_OP_ENABLE_KTLS: Debian 12's OpenSSL 3.0 installs only TX for TLS 1.3.
// The keys come from the traffic secrets TlsSession captured during the
// handshake; each record sequence continues after the records OpenSSL
// carried under the application keys (TlsSession::records_sent/received:
// a resuming server's session ticket, zero-hop's acceptance record), 0 when
// there were none. A client reads a promised ticket in OpenSSL first
// (TlsSession::ReadTickets), so no ticket ever reaches kernel TLS RX. From then on the kernel owns
// the records: a plain send()/recv() or splice() carries application data, and a non-data record
// (an alert, a post-handshake message) makes recv() fail with EIO and splice() with EINVAL until it
// is read with ReadControlRecord.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ktrust/tls/tls_session.h"
#include "ktrust/tls/traffic_keys.h"

namespace ktrust {

// Where a connection's records are encrypted.
enum class DataPath {
  kUserspace,  // OpenSSL in the agent
  kKtlsSw,     // the kernel, in software
  kKtlsHw,     // the kernel, offloaded to the NIC
};
// "userspace", "ktls-sw", "ktls-hw".
absl::string_view DataPathName(DataPath path);

struct KtlsSupport {
  bool available = false;
  // Why, in words, for logs and status output.
  std::string reason;
};

// Attaches TCP_ULP "tls" and installs TLS 1.3 TX and RX keys for each of the
// three suites on throwaway loopback connections. Available only if all of
// that works, so a kernel that lacks a suite's crypto is caught here rather
// than on a live connection. Costs a few loopback connections; call it once.
KtlsSupport ProbeKtls();

// Moves `session`'s record layer onto the kernel for the connected TCP socket
// `fd`, both directions, and reports whether the NIC took it over.
// Call right after the handshake finished, before any SSL_read/SSL_write.
// Refuses, leaving socket and session as they were, unless the session
// negotiated TLS 1.3 with one of the three suites and OpenSSL holds no unread
// bytes; also when TCP_ULP "tls" fails (ENOENT: no kernel TLS). Past that
// point the SSL never does I/O again (it is detached from the socket) and the
// session's traffic secrets are wiped; a later failure leaves the socket
// unusable (the message says so) and the caller must close it.
absl::StatusOr<DataPath> InstallKtls(int fd, TlsSession& session);

enum class KtlsDirection { kTx, kRx };

// The kernel's own view of a kTLS socket (sock_diag INET_DIAG_ULP_INFO).
struct KtlsState {
  uint16_t version = 0;      // TLS_1_3_VERSION
  uint16_t cipher_type = 0;  // TLS_CIPHER_*
  uint16_t tx_conf = 0;      // TLS_CONF_BASE (none), _SW, _HW, _HW_RECORD
  uint16_t rx_conf = 0;
};
// Needs CAP_NET_ADMIN (the kernel hides ULP details otherwise) and the
// inet_diag/tcp_diag modules; NotFound if the socket has no kTLS.
absl::StatusOr<KtlsState> QueryKtlsState(int fd);

// TLS record content types (RFC 8446 §5.1).
inline constexpr uint8_t kRecordAlert = 21;
inline constexpr uint8_t kRecordHandshake = 22;
inline constexpr uint8_t kRecordApplicationData = 23;

// Sends one record of `content_type` through kTLS TX. Refuses a socket
// without kTLS TX, where the bytes would go out in plaintext. On a
// nonblocking socket with a full buffer: Unavailable (EAGAIN), retry on POLLOUT.
absl::Status SendControlRecord(int fd, uint8_t content_type, absl::string_view payload);
// A warning-level close_notify alert: the clean end of our direction. A
// shutdown(SHUT_WR) may follow.
absl::Status SendCloseNotify(int fd);

struct TlsRecord {
  uint8_t content_type = 0;
  std::string payload;
};
// Reads the next record with its type (recvmsg + TLS_GET_RECORD_TYPE). Call
// it when recv() failed with EIO or splice() with EINVAL on a kTLS RX socket:
// the next record is then a non-data one. (Called at any other time it may
// return application data, which the caller would have to deliver.)
absl::StatusOr<TlsRecord> ReadControlRecord(int fd);
// What a non-data record means for the stream: true for close_notify (a clean
// end), false for a user_canceled warning (close_notify follows; keep
// reading), and an error naming anything else, which ends the connection:
// other alerts, post-handshake messages (KeyUpdate, NewSessionTicket) that
// kernel TLS cannot process here, stray application data.
absl::StatusOr<bool> ClassifyControlRecord(const TlsRecord& record);
// ReadControlRecord, then ClassifyControlRecord: the pump's EINVAL/EIO handler.
absl::StatusOr<bool> ReadControlRecordIsCleanEnd(int fd);

// Records sent (kTx) or received (kRx) so far with the current key: the
// kernel's next record sequence number. Compare with RecordLimit().
absl::StatusOr<uint64_t> RecordSequence(int fd, KtlsDirection direction);

}  // namespace ktrust
