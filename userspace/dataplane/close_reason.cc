#include "ktrust/dataplane/close_reason.h"

#include "ktrust/tls/tls_session.h"

namespace ktrust {
namespace {

struct ReasonEntry {
  absl::string_view name;
  bool refusal;
};

// The one table of close reasons.
ReasonEntry EntryOf(CloseReason reason) {
  switch (reason) {
    case CloseReason::kOk:
      return {"ok", false};
    case CloseReason::kPlaintextClient:
      return {"plaintext_client", false};
    case CloseReason::kIoError:
      return {"io_error", false};
    case CloseReason::kStreamError:
      return {"stream_error", false};
    case CloseReason::kIdleTimeout:
      return {"idle_timeout", false};
    case CloseReason::kRecordLimit:
      return {"record_limit", false};
    case CloseReason::kPumpSetup:
      return {"pump_setup", false};
    case CloseReason::kKtlsInstall:
      return {"ktls_install", false};
    case CloseReason::kTlsSetup:
      return {"tls_setup", false};
    case CloseReason::kConnectTimeout:
      return {"connect_timeout", false};
    case CloseReason::kAppUnreachable:
      return {"app_unreachable", false};
    case CloseReason::kConnectFailed:
      return {"connect_failed", false};
    case CloseReason::kNoDestination:
      return {"no_destination", true};
    case CloseReason::kNoIdentity:
      return {"no_identity", true};
    case CloseReason::kDenied:
      return {"denied", true};
    case CloseReason::kDeniedAfterReload:
      return {"denied_after_reload", true};
    case CloseReason::kFirstByteTimeout:
      return {"first_byte_timeout", true};
    case CloseReason::kHandshakeTimeout:
      return {"handshake_timeout", true};
    case CloseReason::kEvictedHandshake:
      return {"evicted_handshake", true};
    case CloseReason::kListenerRemoved:
      return {"listener_removed", true};
    case CloseReason::kRejectedByPeer:
      return {"rejected_by_peer", true};
    case CloseReason::kPlaintextRefused:
      return {"plaintext_refused", true};
    case CloseReason::kProtocolError:
      return {"protocol_error", true};
    case CloseReason::kConnectionClosed:
      return {"connection_closed", true};
    case CloseReason::kNotZeroHopCapable:
      return {"not_zero_hop_capable", false};
    case CloseReason::kNoKernelTls:
      return {"no_kernel_tls", false};
    case CloseReason::kOverLimit:
      return {"over_limit", true};
    case CloseReason::kFdLimit:
      return {"fd_limit", true};
    case CloseReason::kMemory:
      return {"memory", true};
    case CloseReason::kClientClosed:
      return {"client_closed", false};
    case CloseReason::kDrainTimeout:
      return {"drain_timeout", false};
    case CloseReason::kPeerRefused:
      return {"peer_refused", true};
  }
  return {"unknown", true};
}

}  // namespace

absl::string_view CloseReasonName(CloseReason reason) { return EntryOf(reason).name; }

bool IsRefusal(CloseReason reason) { return EntryOf(reason).refusal; }

absl::string_view CloseResult::code() const {
  return reason == CloseReason::kPeerRefused ? ReasonCode(peer_reason) : CloseReasonName(reason);
}

CloseResult CloseResultOf(const HandshakeFailure& failure) {
  switch (failure.error) {
    case HandshakeError::kNone:
      return {CloseReason::kOk};
    case HandshakeError::kPeerRejected:
      return {CloseReason::kPeerRefused, failure.peer_reason};
    case HandshakeError::kRejectedByPeer:
      return {CloseReason::kRejectedByPeer};
    case HandshakeError::kPlaintextPeer:
      return {CloseReason::kPlaintextRefused};
    case HandshakeError::kProtocol:
      return {CloseReason::kProtocolError};
    case HandshakeError::kConnectionClosed:
      return {CloseReason::kConnectionClosed};
  }
  return {CloseReason::kProtocolError};
}

}  // namespace ktrust
