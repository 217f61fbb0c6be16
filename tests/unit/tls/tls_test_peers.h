// Test helper: a CA, a client and a server TlsContext made from it, and ways
// to run a full TLS 1.3 handshake between their sessions, over an in-memory
// BIO pair or over a real loopback TCP connection.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ktrust/common/unique_fd.h"
#include "ktrust/identity/certificate_authority.h"
#include "ktrust/tls/tls_context.h"
#include "ktrust/tls/tls_session.h"

namespace ktrust::testing {

class TlsTestPeers {
 public:
  // Both sides offer exactly `suites`.
  explicit TlsTestPeers(std::vector<std::string> suites = {"TLS_AES_128_GCM_SHA256"});

  std::unique_ptr<TlsSession> NewClient() const;
  std::unique_ptr<TlsSession> NewServer() const;

  // Connects the sessions with a BIO pair and drives both handshakes; true
  // when both finished.
  static bool HandshakeOverBioPair(TlsSession& client, TlsSession& server);
  // Drives both handshakes over connected sockets (made nonblocking for the
  // handshake, blocking again after); true when both finished.
  static bool HandshakeOverSockets(TlsSession& client, int client_fd, TlsSession& server,
                                   int server_fd);

 private:
  CertificateAuthority ca_;
  std::unique_ptr<TlsContext> client_ctx_;
  std::unique_ptr<TlsContext> server_ctx_;
};

// A listening TCP socket on 127.0.0.1, on an ephemeral port (blocking).
UniqueFd ListenOnLoopback();

// The two ends of a connected TCP connection over 127.0.0.1 (blocking).
struct TcpPair {
  UniqueFd client;
  UniqueFd server;
};
TcpPair ConnectedTcpPair();

}  // namespace ktrust::testing
