// Why a proxied connection ended, as one type: the engine sets it, the log
// line, `ktrust conns`/`denials` and the metrics' `result` label print its
// code, and the agent's denial list keeps the refusals.
#pragma once

#include <string>

#include "absl/strings/string_view.h"
#include "ktrust/identity/verdict.h"

namespace ktrust {

struct HandshakeFailure;

enum class CloseReason {
  // Ended normally.
  kOk,
  kPlaintextClient,  // a permissive listener carried a non-TLS client, which ended normally
  // I/O and resources: the connection was allowed, then something broke.
  kIoError,
  kStreamError,
  kIdleTimeout,
  kRecordLimit,  // the TLS record limit of its cipher (no rekeying)
  kPumpSetup,
  kKtlsInstall,
  kTlsSetup,
  kConnectTimeout,
  kAppUnreachable,
  kConnectFailed,
  // Refusals: identity, policy, or a handshake that did not complete.
  kNoDestination,  // outbound: the route refused it (no original destination)
  kNoIdentity,     // no SVID for the workload
  kDenied,         // inbound: the policy refused the verified client
  kDeniedAfterReload,
  kFirstByteTimeout,
  kHandshakeTimeout,
  kEvictedHandshake,  // its handshake slot went to a newer client
  kListenerRemoved,
  kRejectedByPeer,  // the peer refused us (an alert, or a reset before any data)
  kPlaintextRefused,
  kProtocolError,
  kConnectionClosed,  // the transport ended mid-handshake
  // Zero-hop, outbound: the server verified but did not ack ALPN
  // "ktrust-zh/1" (not a zero-hop ktrust end): serve it through the proxy.
  kNotZeroHopCapable,
  kNoKernelTls,  // zero-hop needs kernel TLS, which this kernel lacks
  kOverLimit,    // zero-hop, outbound: refused at once, over a connection or handshake limit
  kFdLimit,      // the agent was out of file descriptors (EMFILE, ENFILE)
  kMemory,       // the kernel or the agent was out of memory (ENOMEM, ENOBUFS, a failed allocation)
  // The client went away before the agent could serve it (it closed or
  // reset its connection before its destination was looked up, or before
  // it sent a byte of its handshake): not a failure of the agent's.
  kClientClosed,
  // The agent was stopping (SIGTERM, or handed over to a successor) and the
  // connection was still open at agent.drain_timeout.
  kDrainTimeout,
  kPeerRefused,  // we refused the peer's certificate: CloseResult::peer_reason says why
};
// The last value, for code that walks them all (tests); new values go before it.
inline constexpr CloseReason kLastCloseReason = CloseReason::kPeerRefused;

// The name of a reason in the one table: "ok", "denied", ... (kPeerRefused:
// "peer_refused", which no connection reports: its code is the check's).
absl::string_view CloseReasonName(CloseReason reason);

// Refused for identity or policy, or a handshake that never completed (as
// opposed to "ok", "plaintext_client" and I/O failures): what `ktrust
// denials` lists and ktrust_denials_total counts.
bool IsRefusal(CloseReason reason);

// How a connection ended, with the certificate check that refused the peer.
struct CloseResult {
  CloseResult() = default;
  CloseResult(CloseReason r)
      : reason(r) {}  // NOLINT(google-explicit-constructor): a reason is a result
  CloseResult(CloseReason r, RejectReason peer) : reason(r), peer_reason(peer) {}

  CloseReason reason = CloseReason::kOk;
  RejectReason peer_reason = RejectReason::kNone;  // with kPeerRefused

  // The stable code for logs, the CLI and metrics labels: the reason's name,
  // or with kPeerRefused the check's ("expired", "unknown_authority", ...).
  absl::string_view code() const;
  bool refusal() const { return IsRefusal(reason); }
  bool operator==(const CloseResult&) const = default;
};

// The result of a failed TLS handshake; its code() is the failure's code().
CloseResult CloseResultOf(const HandshakeFailure& failure);

}  // namespace ktrust
