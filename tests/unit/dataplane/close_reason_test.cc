#include "ktrust/dataplane/close_reason.h"

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>

#include "ktrust/tls/tls_session.h"

namespace ktrust {
namespace {

std::vector<CloseReason> AllReasons() {
  std::vector<CloseReason> all;
  for (int i = 0; i <= static_cast<int>(kLastCloseReason); ++i) {
    all.push_back(static_cast<CloseReason>(i));
  }
  return all;
}

std::vector<RejectReason> AllRejections() {
  std::vector<RejectReason> all;
  for (int i = static_cast<int>(RejectReason::kNoCertificate);
       i <= static_cast<int>(RejectReason::kOutsideIssuerScope); ++i) {
    all.push_back(static_cast<RejectReason>(i));
  }
  return all;
}

// The codes logs, `ktrust denials`, metrics labels and scripts rely on, and
// which of them are refusals: a rename here is a change users notice.
TEST(CloseReasonTest, CodesAndRefusalsAreTheDocumentedOnes) {
  const std::map<CloseReason, std::pair<std::string, bool>> expected = {
      {CloseReason::kOk, {"ok", false}},
      {CloseReason::kPlaintextClient, {"plaintext_client", false}},
      {CloseReason::kIoError, {"io_error", false}},
      {CloseReason::kStreamError, {"stream_error", false}},
      {CloseReason::kIdleTimeout, {"idle_timeout", false}},
      {CloseReason::kRecordLimit, {"record_limit", false}},
      {CloseReason::kPumpSetup, {"pump_setup", false}},
      {CloseReason::kKtlsInstall, {"ktls_install", false}},
      {CloseReason::kTlsSetup, {"tls_setup", false}},
      {CloseReason::kConnectTimeout, {"connect_timeout", false}},
      {CloseReason::kAppUnreachable, {"app_unreachable", false}},
      {CloseReason::kConnectFailed, {"connect_failed", false}},
      {CloseReason::kNoDestination, {"no_destination", true}},
      {CloseReason::kNoIdentity, {"no_identity", true}},
      {CloseReason::kDenied, {"denied", true}},
      {CloseReason::kDeniedAfterReload, {"denied_after_reload", true}},
      {CloseReason::kFirstByteTimeout, {"first_byte_timeout", true}},
      {CloseReason::kHandshakeTimeout, {"handshake_timeout", true}},
      {CloseReason::kEvictedHandshake, {"evicted_handshake", true}},
      {CloseReason::kListenerRemoved, {"listener_removed", true}},
      {CloseReason::kRejectedByPeer, {"rejected_by_peer", true}},
      {CloseReason::kPlaintextRefused, {"plaintext_refused", true}},
      {CloseReason::kProtocolError, {"protocol_error", true}},
      {CloseReason::kConnectionClosed, {"connection_closed", true}},
      {CloseReason::kNotZeroHopCapable, {"not_zero_hop_capable", false}},
      {CloseReason::kNoKernelTls, {"no_kernel_tls", false}},
      {CloseReason::kOverLimit, {"over_limit", true}},
      {CloseReason::kFdLimit, {"fd_limit", true}},
      {CloseReason::kMemory, {"memory", true}},
      {CloseReason::kClientClosed, {"client_closed", false}},
      {CloseReason::kDrainTimeout, {"drain_timeout", false}},
      {CloseReason::kPeerRefused, {"peer_refused", true}},
  };
  ASSERT_EQ(expected.size(), AllReasons().size());
  for (CloseReason r : AllReasons()) {
    SCOPED_TRACE(static_cast<int>(r));
    ASSERT_TRUE(expected.count(r));
    EXPECT_EQ(CloseReasonName(r), expected.at(r).first);
    EXPECT_EQ(IsRefusal(r), expected.at(r).second);
    EXPECT_EQ(CloseResult(r).refusal(), expected.at(r).second);
  }
}

// One code names one reason: a denial's result must say which it was.
TEST(CloseReasonTest, EveryCodeIsNonEmptyAndUnique) {
  std::set<std::string> seen;
  for (CloseReason r : AllReasons()) {
    std::string name(CloseReasonName(r));
    EXPECT_FALSE(name.empty()) << static_cast<int>(r);
    EXPECT_NE(name, "unknown") << static_cast<int>(r);
    EXPECT_TRUE(seen.insert(name).second) << "twice: " << name;
  }
  // A refused certificate reports the check's code, which must not read as
  // one of the engine's own reasons.
  for (RejectReason r : AllRejections()) {
    std::string code(CloseResult(CloseReason::kPeerRefused, r).code());
    EXPECT_EQ(code, ReasonCode(r));
    EXPECT_NE(code, "unknown");
    EXPECT_TRUE(seen.insert(code).second) << "twice: " << code;
  }
}

TEST(CloseReasonTest, AHandshakeFailureKeepsItsCodeAndIsARefusal) {
  std::vector<HandshakeFailure> failures;
  for (HandshakeError e : {HandshakeError::kRejectedByPeer, HandshakeError::kPlaintextPeer,
                           HandshakeError::kProtocol, HandshakeError::kConnectionClosed}) {
    failures.push_back({e, RejectReason::kNone, "x"});
  }
  for (RejectReason r : AllRejections()) {
    failures.push_back({HandshakeError::kPeerRejected, r, "x"});
  }
  for (const HandshakeFailure& f : failures) {
    CloseResult result = CloseResultOf(f);
    EXPECT_EQ(result.code(), f.code());
    EXPECT_TRUE(result.refusal()) << f.code();
  }
  EXPECT_EQ(CloseResultOf({HandshakeError::kPeerRejected, RejectReason::kRevoked, "x"}),
            CloseResult(CloseReason::kPeerRefused, RejectReason::kRevoked));
}

}  // namespace
}  // namespace ktrust
