// kTLS against a real kernel (the vm tier; skips itself where TCP_ULP "tls"
// is missing). Real TLS 1.3 handshakes over loopback TCP, then the installer,
// for every suite, with kTLS on both ends and, because two kTLS ends would
// agree even on a wrong key split, against OpenSSL's own record layer on the
// other end. Data moves with plain send()/recv(); close_notify, alerts and a
// peer's KeyUpdate arrive as control records; /proc/net/tls_stat must count
// the software kTLS sockets.
//
//   tests/vm/run.sh /var/cache/ktrust-vm -- build/tests/ktls_kernel_test
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <thread>

#include "absl/strings/escaping.h"
#include "ktrust/tls/ktls.h"
#include "unit/test_pki.h"
#include "unit/tls/tls_test_peers.h"

namespace ktrust {
namespace {

using ::testing::HasSubstr;
using testing::TlsTestPeers;

constexpr size_t kPayload = 1 << 20;

std::map<std::string, long long> TlsStat() {
  std::map<std::string, long long> stat;
  std::ifstream in("/proc/net/tls_stat");
  std::string name;
  long long value;
  while (in >> name >> value) stat[name] = value;
  return stat;
}

std::string Sha256Hex(absl::string_view data) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
}

std::string RandomBytes(size_t n) {
  std::string out(n, '\0');
  RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n));
  return out;
}

std::string Ulp(int fd) {
  char name[16] = {};
  socklen_t len = sizeof(name);
  if (getsockopt(fd, IPPROTO_TCP, TCP_ULP, name, &len) != 0) return "";
  return name;
}

// One end of the connection after the handshake: kernel TLS, or OpenSSL's
// record layer on the same socket (the reference peer).
class End {
 public:
  End(TlsSession& session, int fd) : session_(session), fd_(fd) {}

  absl::Status InstallKernelTls() {
    absl::StatusOr<DataPath> path = InstallKtls(fd_, session_);
    if (!path.ok()) return path.status();
    path_ = *path;
    return absl::OkStatus();
  }
  bool ktls() const { return path_ != DataPath::kUserspace; }
  DataPath path() const { return path_; }
  int fd() const { return fd_; }

  // Writes everything, then ends this direction with close_notify.
  absl::Status SendAllAndClose(absl::string_view data) {
    for (size_t off = 0; off < data.size();) {
      size_t chunk = std::min<size_t>(data.size() - off, 100000);  // not record-aligned
      ssize_t n = ktls() ? send(fd_, data.data() + off, chunk, MSG_NOSIGNAL)
                         : SSL_write(session_.ssl(), data.data() + off, static_cast<int>(chunk));
      if (n <= 0) return absl::ErrnoToStatus(errno, "send");
      off += static_cast<size_t>(n);
    }
    if (ktls()) return SendCloseNotify(fd_);
    if (SSL_shutdown(session_.ssl()) < 0) return absl::InternalError("SSL_shutdown");
    return absl::OkStatus();
  }

  // Reads until the peer's close_notify; an error for anything else.
  absl::StatusOr<std::string> ReceiveUntilCloseNotify() {
    std::string got;
    char buf[65536];
    while (true) {
      if (!ktls()) {
        int n = SSL_read(session_.ssl(), buf, sizeof(buf));
        if (n > 0) {
          got.append(buf, static_cast<size_t>(n));
          continue;
        }
        int err = SSL_get_error(session_.ssl(), n);
        if (err == SSL_ERROR_ZERO_RETURN) return got;
        char why[256] = "no OpenSSL error";
        if (unsigned long e = ERR_get_error()) ERR_error_string_n(e, why, sizeof(why));
        return absl::InternalError(absl::StrCat("SSL_read: error ", err, ": ", why));
      }
      ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n > 0) {
        got.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n == 0) return absl::DataLossError("EOF without close_notify");
      // A non-data record: recv() reports EIO and leaves it for recvmsg.
      if (errno != EIO) return absl::ErrnoToStatus(errno, "recv");
      absl::StatusOr<bool> clean_end = ReadControlRecordIsCleanEnd(fd_);
      if (!clean_end.ok()) return clean_end.status();
      if (*clean_end) return got;
    }
  }

 private:
  TlsSession& session_;
  int fd_;
  DataPath path_ = DataPath::kUserspace;
};

enum class Mode { kBothKernel, kKernelClientOpenSslServer, kOpenSslClientKernelServer };

struct Case {
  std::string suite;
  Mode mode;
};

std::string ModeName(Mode mode) {
  return mode == Mode::kBothKernel                  ? "BothKernel"
         : mode == Mode::kKernelClientOpenSslServer ? "KernelClient"
                                                    : "KernelServer";
}

void PrintTo(const Case& c, std::ostream* os) { *os << ModeName(c.mode) << " " << c.suite; }

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  return ModeName(info.param.mode) + "_" + info.param.suite.substr(4);  // drop "TLS_"
}

// Skips where the kernel has no kTLS (this host), but never in the vm tier,
// whose whole point is a kernel with kTLS.
void SkipWithoutKtls() {
  KtlsSupport support = ProbeKtls();
  if (support.available) return;
  if (getenv("KTRUST_VM")) FAIL() << "the vm tier has no kernel TLS: " << support.reason;
  GTEST_SKIP() << "kernel TLS unavailable: " << support.reason;
}

class KtlsKernelTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override { SkipWithoutKtls(); }
};

TEST_P(KtlsKernelTest, MovesAMebibyteEachWayAndClosesCleanly) {
  const Case& c = GetParam();
  TlsTestPeers peers({c.suite});
  auto client = peers.NewClient();
  auto server = peers.NewServer();
  testing::TcpPair pair = testing::ConnectedTcpPair();
  ASSERT_TRUE(
      TlsTestPeers::HandshakeOverSockets(*client, pair.client.get(), *server, pair.server.get()));
  ASSERT_EQ(client->cipher(), c.suite);

  auto before = TlsStat();
  End client_end(*client, pair.client.get());
  End server_end(*server, pair.server.get());
  int kernel_ends = 0;
  for (End* end : {&client_end, &server_end}) {
    bool kernel = c.mode == Mode::kBothKernel ||
                  (end == &client_end) == (c.mode == Mode::kKernelClientOpenSslServer);
    if (!kernel) continue;
    ASSERT_TRUE(end->InstallKernelTls().ok());
    ++kernel_ends;
    // Loopback never offloads; and kernels up to 6.1 offload only TLS 1.2.
    EXPECT_EQ(end->path(), DataPath::kKtlsSw);
    EXPECT_EQ(Ulp(end->fd()), "tls");
    EXPECT_EQ(*RecordSequence(end->fd(), KtlsDirection::kTx), 0u);
    EXPECT_EQ(*RecordSequence(end->fd(), KtlsDirection::kRx), 0u);
    // The kernel's own account, where sock_diag is available (inet_diag loaded).
    absl::StatusOr<KtlsState> state = QueryKtlsState(end->fd());
    if (state.ok()) {
      EXPECT_EQ(state->version, TLS_1_3_VERSION);
      EXPECT_EQ(state->cipher_type, c.suite == "TLS_AES_128_GCM_SHA256" ? TLS_CIPHER_AES_GCM_128
                                    : c.suite == "TLS_AES_256_GCM_SHA384"
                                        ? TLS_CIPHER_AES_GCM_256
                                        : TLS_CIPHER_CHACHA20_POLY1305);
      EXPECT_EQ(state->tx_conf, TLS_CONF_SW);
      EXPECT_EQ(state->rx_conf, TLS_CONF_SW);
      std::cout << "sock_diag: version 0x" << std::hex << state->version << std::dec << " cipher "
                << state->cipher_type << " tx_conf " << state->tx_conf << " rx_conf "
                << state->rx_conf << "\n";
    } else {
      std::cout << "sock_diag unavailable: " << state.status() << "\n";
    }
  }

  // Client to server, then server to client; each ends with close_notify.
  for (bool client_sends : {true, false}) {
    SCOPED_TRACE(client_sends ? "client -> server" : "server -> client");
    End& sender = client_sends ? client_end : server_end;
    End& receiver = client_sends ? server_end : client_end;
    std::string payload = RandomBytes(kPayload);
    absl::Status sent;
    std::thread writer([&] { sent = sender.SendAllAndClose(payload); });
    absl::StatusOr<std::string> got = receiver.ReceiveUntilCloseNotify();
    writer.join();
    ASSERT_TRUE(sent.ok()) << sent;
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->size(), payload.size());
    EXPECT_EQ(Sha256Hex(*got), Sha256Hex(payload));
    if (sender.ktls()) {
      // At least 64 full records and the alert, counted by the kernel.
      uint64_t sent_records = *RecordSequence(sender.fd(), KtlsDirection::kTx);
      EXPECT_GE(sent_records, kPayload / 16384 + 1);
      if (receiver.ktls()) {
        EXPECT_EQ(*RecordSequence(receiver.fd(), KtlsDirection::kRx), sent_records);
      }
    }
  }

  auto after = TlsStat();
  EXPECT_GE(after["TlsTxSw"] - before["TlsTxSw"], kernel_ends);
  EXPECT_GE(after["TlsRxSw"] - before["TlsRxSw"], kernel_ends);
  EXPECT_EQ(after["TlsDecryptError"], before["TlsDecryptError"]);
}

// No prefix, so --gtest_filter='KtlsKernel*' selects every kernel test.
INSTANTIATE_TEST_SUITE_P(
    , KtlsKernelTest,
    ::testing::Values(Case{"TLS_AES_128_GCM_SHA256", Mode::kBothKernel},
                      Case{"TLS_AES_256_GCM_SHA384", Mode::kBothKernel},
                      Case{"TLS_CHACHA20_POLY1305_SHA256", Mode::kBothKernel},
                      Case{"TLS_AES_128_GCM_SHA256", Mode::kKernelClientOpenSslServer},
                      Case{"TLS_AES_256_GCM_SHA384", Mode::kKernelClientOpenSslServer},
                      Case{"TLS_CHACHA20_POLY1305_SHA256", Mode::kKernelClientOpenSslServer},
                      Case{"TLS_AES_128_GCM_SHA256", Mode::kOpenSslClientKernelServer},
                      Case{"TLS_AES_256_GCM_SHA384", Mode::kOpenSslClientKernelServer},
                      Case{"TLS_CHACHA20_POLY1305_SHA256", Mode::kOpenSslClientKernelServer}),
    CaseName);

class KtlsKernelControlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SkipWithoutKtls();
    if (IsSkipped()) return;
    client_ = peers_.NewClient();
    server_ = peers_.NewServer();
    pair_ = testing::ConnectedTcpPair();
    ASSERT_TRUE(TlsTestPeers::HandshakeOverSockets(*client_, pair_.client.get(), *server_,
                                                   pair_.server.get()));
  }

  TlsTestPeers peers_;
  std::unique_ptr<TlsSession> client_, server_;
  testing::TcpPair pair_;
};

// A peer's KeyUpdate (which kernels before 6.14 cannot follow) surfaces as a
// named error, never as misread data.
TEST_F(KtlsKernelControlTest, PeerKeyUpdateIsReportedNotMisread) {
  ASSERT_TRUE(InstallKtls(pair_.client.get(), *client_).ok());
  ASSERT_EQ(SSL_write(server_->ssl(), "before", 6), 6);
  ASSERT_EQ(SSL_key_update(server_->ssl(), SSL_KEY_UPDATE_NOT_REQUESTED), 1);
  ASSERT_EQ(SSL_write(server_->ssl(), "after", 5), 5);

  char buf[16] = {};
  ASSERT_EQ(recv(pair_.client.get(), buf, sizeof(buf), 0), 6);
  EXPECT_STREQ(buf, "before");
  EXPECT_EQ(recv(pair_.client.get(), buf, sizeof(buf), 0), -1);
  EXPECT_EQ(errno, EIO);
  absl::StatusOr<bool> end = ReadControlRecordIsCleanEnd(pair_.client.get());
  ASSERT_FALSE(end.ok());
  EXPECT_THAT(end.status().message(),
              HasSubstr("post-handshake message (KeyUpdate) that kernel TLS cannot process here"));
}

// An alert other than close_notify is an error naming the alert, and splice()
// stops at a control record with EINVAL, as the pump expects.
TEST_F(KtlsKernelControlTest, AlertsAreNamedAndSpliceStopsAtControlRecords) {
  ASSERT_TRUE(InstallKtls(pair_.client.get(), *client_).ok());
  ASSERT_TRUE(InstallKtls(pair_.server.get(), *server_).ok());
  const char kHandshakeFailure[] = {2, 40};
  ASSERT_TRUE(
      SendControlRecord(pair_.client.get(), kRecordAlert, absl::string_view(kHandshakeFailure, 2))
          .ok());
  char buf[16];
  EXPECT_EQ(recv(pair_.server.get(), buf, sizeof(buf), 0), -1);
  EXPECT_EQ(errno, EIO);
  absl::StatusOr<TlsRecord> record = ReadControlRecord(pair_.server.get());
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(record->content_type, kRecordAlert);
  absl::StatusOr<bool> end = ClassifyControlRecord(*record);
  EXPECT_THAT(end.status().message(), HasSubstr("alert \"handshake failure\" (40)"));

  ASSERT_TRUE(SendCloseNotify(pair_.client.get()).ok());
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  EXPECT_EQ(splice(pair_.server.get(), nullptr, pipe_fds[1], nullptr, 4096, 0), -1);
  EXPECT_EQ(errno, EINVAL);
  close(pipe_fds[0]);
  close(pipe_fds[1]);
  EXPECT_EQ(*ReadControlRecordIsCleanEnd(pair_.server.get()), true);
}

}  // namespace
}  // namespace ktrust
