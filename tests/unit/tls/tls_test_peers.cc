#include "unit/tls/tls_test_peers.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

namespace ktrust::testing {
namespace {

bool Finished(HandshakeProgress p) {
  return p == HandshakeProgress::kDone || p == HandshakeProgress::kFailed;
}

void SetNonblocking(int fd, bool on) {
  int flags = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK);
}

}  // namespace

TlsTestPeers::TlsTestPeers(std::vector<std::string> suites)
    : ca_(*CertificateAuthority::CreateRoot(*TrustDomain::Parse("example.org"),
                                            kDefaultRootValidity, absl::Now())) {
  auto store = std::make_shared<TrustStore>();
  store->Put(*ca_.Bundle());
  for (TlsRole role : {TlsRole::kClient, TlsRole::kServer}) {
    TlsContextOptions options;
    options.role = role;
    options.cipher_suites = suites;
    auto ctx = TlsContext::Create(options, store);
    EXPECT_TRUE(ctx.ok()) << ctx.status();
    (role == TlsRole::kClient ? client_ctx_ : server_ctx_) = *std::move(ctx);
  }
}

std::unique_ptr<TlsSession> TlsTestPeers::NewClient() const {
  auto svid = std::make_shared<const Svid>(
      *ca_.IssueSvid(*SpiffeId::Parse("spiffe://example.org/client"), absl::Hours(1), absl::Now()));
  return *client_ctx_->NewSession(std::move(svid));
}

std::unique_ptr<TlsSession> TlsTestPeers::NewServer() const {
  auto svid = std::make_shared<const Svid>(
      *ca_.IssueSvid(*SpiffeId::Parse("spiffe://example.org/server"), absl::Hours(1), absl::Now()));
  return *server_ctx_->NewSession(std::move(svid));
}

bool TlsTestPeers::HandshakeOverBioPair(TlsSession& client, TlsSession& server) {
  BIO* client_end = nullptr;
  BIO* server_end = nullptr;
  BIO_new_bio_pair(&client_end, 0, &server_end, 0);
  client.SetBio(client_end);
  server.SetBio(server_end);
  HandshakeProgress c = HandshakeProgress::kWantRead, s = HandshakeProgress::kWantRead;
  for (int round = 0; round < 20 && !(Finished(c) && Finished(s)); ++round) {
    if (!Finished(c)) c = client.Handshake();
    if (!Finished(s)) s = server.Handshake();
  }
  EXPECT_EQ(c, HandshakeProgress::kDone) << client.failure().explanation;
  EXPECT_EQ(s, HandshakeProgress::kDone) << server.failure().explanation;
  return c == HandshakeProgress::kDone && s == HandshakeProgress::kDone;
}

bool TlsTestPeers::HandshakeOverSockets(TlsSession& client, int client_fd, TlsSession& server,
                                        int server_fd) {
  EXPECT_TRUE(client.SetFd(client_fd).ok());
  EXPECT_TRUE(server.SetFd(server_fd).ok());
  SetNonblocking(client_fd, true);
  SetNonblocking(server_fd, true);
  HandshakeProgress c = HandshakeProgress::kWantRead, s = HandshakeProgress::kWantRead;
  for (int round = 0; round < 1000 && !(Finished(c) && Finished(s)); ++round) {
    if (!Finished(c)) c = client.Handshake();
    if (!Finished(s)) s = server.Handshake();
    if (!(Finished(c) && Finished(s))) {
      pollfd fds[] = {{client_fd, POLLIN, 0}, {server_fd, POLLIN, 0}};
      poll(fds, 2, 100);
    }
  }
  SetNonblocking(client_fd, false);
  SetNonblocking(server_fd, false);
  EXPECT_EQ(c, HandshakeProgress::kDone) << client.failure().explanation;
  EXPECT_EQ(s, HandshakeProgress::kDone) << server.failure().explanation;
  return c == HandshakeProgress::kDone && s == HandshakeProgress::kDone;
}

UniqueFd ListenOnLoopback() {
  UniqueFd listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(listen(listener.get(), 8), 0);
  return listener;
}

TcpPair ConnectedTcpPair() {
  UniqueFd listener = ListenOnLoopback();
  sockaddr_in addr{};
  socklen_t len = sizeof(addr);
  EXPECT_EQ(getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);
  TcpPair pair;
  pair.client.Reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_EQ(connect(pair.client.get(), reinterpret_cast<sockaddr*>(&addr), len), 0);
  pair.server.Reset(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  EXPECT_TRUE(pair.server.valid());
  return pair;
}

}  // namespace ktrust::testing
