// The kTLS installer against whatever kernel runs the test: on the CI and
// developer hosts (no CONFIG_TLS) it must refuse cleanly and say why, and
// where kernel TLS exists it must install. Also its refusals before touching
// the socket, and the classification of non-data records, which need no kernel.
#include "ktrust/tls/ktls.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cerrno>
#include <iostream>
#include <string>

#include "absl/strings/match.h"
#include "unit/test_pki.h"
#include "unit/tls/tls_test_peers.h"

namespace ktrust {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::TlsTestPeers;

TEST(KtlsTest, DataPathNames) {
  EXPECT_EQ(DataPathName(DataPath::kUserspace), "userspace");
  EXPECT_EQ(DataPathName(DataPath::kKtlsSw), "ktls-sw");
  EXPECT_EQ(DataPathName(DataPath::kKtlsHw), "ktls-hw");
}

// The probe agrees with a TCP_ULP attempt made here, and explains itself.
TEST(KtlsTest, ProbeReportsWhatThisKernelDoes) {
  testing::TcpPair pair = testing::ConnectedTcpPair();
  bool ulp_ok = setsockopt(pair.client.get(), IPPROTO_TCP, TCP_ULP, "tls", 3) == 0;
  int ulp_errno = ulp_ok ? 0 : errno;

  KtlsSupport support = ProbeKtls();
  if (ulp_ok) {
    EXPECT_TRUE(support.available) << support.reason;
    EXPECT_THAT(support.reason, HasSubstr("TLS 1.3 TX and RX"));
  } else {
    EXPECT_FALSE(support.available);
    EXPECT_THAT(support.reason,
                AllOf(HasSubstr("TCP_ULP \"tls\""), HasSubstr("userspace record layer")));
    if (ulp_errno == ENOENT) {
      EXPECT_THAT(support.reason, HasSubstr("ENOENT"));
    }
  }
  std::cout << "ProbeKtls: available=" << support.available << ": " << support.reason << "\n";
}

// A handshake over a BIO pair, then the install onto a separate connected
// socket: the kernel does not care where the keys came from.
TEST(KtlsTest, InstallDoesWhatTheProbeSays) {
  KtlsSupport support = ProbeKtls();
  TlsTestPeers peers;
  auto client = peers.NewClient();
  auto server = peers.NewServer();
  ASSERT_TRUE(TlsTestPeers::HandshakeOverBioPair(*client, *server));
  testing::TcpPair pair = testing::ConnectedTcpPair();

  absl::StatusOr<DataPath> installed = InstallKtls(pair.client.get(), *client);
  if (support.available) {
    ASSERT_TRUE(installed.ok()) << installed.status();
    EXPECT_NE(*installed, DataPath::kUserspace);
    EXPECT_EQ(*RecordSequence(pair.client.get(), KtlsDirection::kTx), 0u);
    EXPECT_EQ(*RecordSequence(pair.client.get(), KtlsDirection::kRx), 0u);
    // The secrets served their purpose and are gone; OpenSSL is off the socket.
    EXPECT_TRUE(client->client_traffic_secret().empty());
    EXPECT_LE(SSL_write(client->ssl(), "x", 1), 0);
    return;
  }
  ASSERT_FALSE(installed.ok());
  EXPECT_THAT(installed.status().message(),
              AllOf(HasSubstr("install kernel TLS"), HasSubstr("TCP_ULP \"tls\"")));
  if (absl::StrContains(support.reason, "ENOENT")) {
    EXPECT_EQ(installed.status().code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(installed.status().message(), HasSubstr("ENOENT: this kernel has no kernel TLS"));
  }
  // Refused at TCP_ULP: the socket still carries bytes, and nothing was wiped.
  ASSERT_EQ(send(pair.client.get(), "ok", 2, 0), 2);
  char buf[2];
  ASSERT_EQ(recv(pair.server.get(), buf, 2, MSG_WAITALL), 2);
  EXPECT_FALSE(client->client_traffic_secret().empty());
}

TEST(KtlsTest, RefusesBeforeTheHandshakeFinished) {
  TlsTestPeers peers;
  auto client = peers.NewClient();
  auto installed = InstallKtls(-1, *client);
  ASSERT_FALSE(installed.ok());
  EXPECT_EQ(installed.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(installed.status().message(), HasSubstr("handshake has not finished"));
}

// Bytes OpenSSL already decrypted would never reach kernel RX.
TEST(KtlsTest, RefusesWhenOpenSslHoldsUnreadBytes) {
  TlsTestPeers peers;
  auto client = peers.NewClient();
  auto server = peers.NewServer();
  ASSERT_TRUE(TlsTestPeers::HandshakeOverBioPair(*client, *server));
  ASSERT_EQ(SSL_write(server->ssl(), "early", 5), 5);
  char c;
  ASSERT_EQ(SSL_peek(client->ssl(), &c, 1), 1);
  auto installed = InstallKtls(-1, *client);
  ASSERT_FALSE(installed.ok());
  EXPECT_EQ(installed.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(installed.status().message(), HasSubstr("installing RX would lose them"));
}

TEST(KtlsTest, RefusesTls12) {
  TlsTestPeers peers;
  auto client = peers.NewClient();
  auto server = peers.NewServer();
  // ktrust's contexts allow only TLS 1.3; force 1.2 on these two sessions.
  for (TlsSession* s : {client.get(), server.get()}) {
    SSL_set_min_proto_version(s->ssl(), TLS1_2_VERSION);
    SSL_set_max_proto_version(s->ssl(), TLS1_2_VERSION);
  }
  ASSERT_TRUE(TlsTestPeers::HandshakeOverBioPair(*client, *server));
  ASSERT_EQ(client->version(), "TLSv1.2");
  auto installed = InstallKtls(-1, *client);
  ASSERT_FALSE(installed.ok());
  EXPECT_THAT(installed.status().message(), HasSubstr("negotiated TLSv1.2"));
}

TEST(KtlsTest, RefusesASecondInstall) {
  TlsTestPeers peers;
  auto client = peers.NewClient();
  auto server = peers.NewServer();
  ASSERT_TRUE(TlsTestPeers::HandshakeOverBioPair(*client, *server));
  client->ForgetTrafficSecrets();  // what a successful install leaves behind
  auto installed = InstallKtls(-1, *client);
  ASSERT_FALSE(installed.ok());
  EXPECT_THAT(installed.status().message(), HasSubstr("traffic secrets were not captured"));
}

// Without kTLS TX the alert would go out as two plaintext bytes.
TEST(KtlsTest, CloseNotifyRefusesAPlainSocket) {
  testing::TcpPair pair = testing::ConnectedTcpPair();
  absl::Status st = SendCloseNotify(pair.client.get());
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("no kernel TLS TX keys"));
  char buf[4];
  EXPECT_EQ(recv(pair.server.get(), buf, sizeof(buf), MSG_DONTWAIT), -1);
  EXPECT_EQ(errno, EAGAIN);
}

TEST(KtlsTest, SequenceAndControlRecordsFailCleanlyOnAPlainSocket) {
  testing::TcpPair pair = testing::ConnectedTcpPair();
  EXPECT_FALSE(RecordSequence(pair.client.get(), KtlsDirection::kTx).ok());
  EXPECT_FALSE(RecordSequence(pair.client.get(), KtlsDirection::kRx).ok());
  ASSERT_EQ(send(pair.server.get(), "data", 4, 0), 4);
  auto record = ReadControlRecord(pair.client.get());
  EXPECT_EQ(record.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(record.status().message(), HasSubstr("no record type"));
  pair.server.Reset();
  record = ReadControlRecord(pair.client.get());
  EXPECT_EQ(record.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(record.status().message(), HasSubstr("without close_notify"));
}

TlsRecord Record(uint8_t type, std::string payload) { return TlsRecord{type, std::move(payload)}; }

TEST(KtlsTest, ClassifiesControlRecords) {
  EXPECT_EQ(*ClassifyControlRecord(Record(kRecordAlert, {1, 0})), true);    // close_notify
  EXPECT_EQ(*ClassifyControlRecord(Record(kRecordAlert, {1, 90})), false);  // user_canceled

  auto alert = ClassifyControlRecord(Record(kRecordAlert, {2, 40}));
  EXPECT_EQ(alert.status().code(), absl::StatusCode::kAborted);
  EXPECT_THAT(alert.status().message(), HasSubstr("alert \"handshake failure\" (40)"));
  EXPECT_FALSE(ClassifyControlRecord(Record(kRecordAlert, {0})).ok());

  auto key_update = ClassifyControlRecord(Record(kRecordHandshake, {24, 0, 0, 1, 0}));
  EXPECT_EQ(key_update.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(key_update.status().message(),
              HasSubstr("the peer sent a post-handshake message (KeyUpdate) that kernel TLS "
                        "cannot process here"));
  auto ticket = ClassifyControlRecord(Record(kRecordHandshake, {4, 0, 0, 0}));
  EXPECT_THAT(ticket.status().message(), HasSubstr("(NewSessionTicket)"));

  EXPECT_FALSE(ClassifyControlRecord(Record(kRecordApplicationData, "data")).ok());
  EXPECT_FALSE(ClassifyControlRecord(Record(20, {1})).ok());
}

}  // namespace
}  // namespace ktrust
