// TLS 1.3 session resumption between ktrust ends: that a second connection
// resumes (with a fresh key exchange), that the record sequences kernel TLS
// would be given after a session ticket are the ones OpenSSL used (checked
// by decrypting the records by hand), that a resumed connection carries
// bytes both ways (through kernel TLS where the kernel has it), and every
// way a ticket must not be used: after a change of policy or trust, after an
// SVID expired or was renewed, for another workload or destination, or for
// a server the client no longer expects.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <poll.h>
#include <sys/socket.h>

#include <iostream>
#include <random>

#include "ktrust/identity/certificate_authority.h"
#include "ktrust/tls/ktls.h"
#include "ktrust/tls/tls_context.h"
#include "ktrust/tls/tls_session.h"
#include "ktrust/tls/traffic_keys.h"
#include "unit/tls/tls_test_peers.h"

namespace ktrust {
namespace {

using ::testing::HasSubstr;

constexpr char kClientId[] = "spiffe://example.org/ns/prod/client";
constexpr char kServerId[] = "spiffe://example.org/ns/prod/server";
constexpr char kDestination[] = "10.0.0.7:443";

bool Finished(HandshakeProgress p) {
  return p == HandshakeProgress::kDone || p == HandshakeProgress::kFailed;
}

struct Connection {
  std::unique_ptr<TlsSession> client;
  std::unique_ptr<TlsSession> server;
  HandshakeProgress client_result = HandshakeProgress::kWantRead;
  HandshakeProgress server_result = HandshakeProgress::kWantRead;
  bool ok() const {
    return client_result == HandshakeProgress::kDone && server_result == HandshakeProgress::kDone;
  }
};

class TlsResumptionTest : public ::testing::Test {
 protected:
  TlsResumptionTest()
      : now_(absl::Now()),
        ca_(*CertificateAuthority::CreateRoot(*TrustDomain::Parse("example.org"),
                                              kDefaultRootValidity, now_ - absl::Minutes(1))) {
    auto store = std::make_shared<TrustStore>();
    store->Put(*ca_.Bundle());
    trust_ = store;
    client_ctx_ = Context(TlsRole::kClient);
    server_ctx_ = Context(TlsRole::kServer);
    client_svid_ = Issue(kClientId);
    server_svid_ = Issue(kServerId);
  }

  std::shared_ptr<const Svid> Issue(const char* id, absl::Duration life = absl::Minutes(10)) {
    return std::make_shared<const Svid>(*ca_.IssueSvid(*SpiffeId::Parse(id), life, now_));
  }

  std::unique_ptr<TlsContext> Context(TlsRole role, bool resumption = true,
                                      size_t ticket_cache_size = 4096) {
    TlsContextOptions options;
    options.role = role;
    options.cipher_suites = {"TLS_AES_128_GCM_SHA256"};
    options.resumption = resumption;
    options.ticket_cache_size = ticket_cache_size;
    options.clock = [this] { return now_; };
    auto ctx = TlsContext::Create(std::move(options), trust_);
    EXPECT_TRUE(ctx.ok()) << ctx.status();
    return *std::move(ctx);
  }

  // Gives the two sessions a BIO pair; the client's end.
  static BIO* ConnectBioPair(TlsSession& client, TlsSession& server) {
    BIO* client_end = nullptr;
    BIO* server_end = nullptr;
    BIO_new_bio_pair(&client_end, 0, &server_end, 0);
    client.SetBio(client_end);
    server.SetBio(server_end);
    return client_end;
  }
  // Runs both handshakes until each finished or neither can go on.
  static void Drive(TlsSession& client, TlsSession& server, HandshakeProgress* c,
                    HandshakeProgress* s) {
    for (int round = 0; round < 20 && !(Finished(*c) && Finished(*s)); ++round) {
      if (!Finished(*c)) *c = client.Handshake();
      if (!Finished(*s)) *s = server.Handshake();
    }
  }

  // One connection over a BIO pair: both handshakes, then the client reads
  // the ticket the server promised, as the agent does before kernel TLS.
  Connection Connect(std::shared_ptr<const Svid> client_svid = nullptr,
                     std::string destination = kDestination,
                     std::optional<SpiffeIdPattern> expected = std::nullopt,
                     TlsContext* client_ctx = nullptr, TlsContext* server_ctx = nullptr) {
    Connection c;
    c.client = *(client_ctx ? client_ctx : client_ctx_.get())
                    ->NewSession(client_svid ? client_svid : client_svid_, expected, destination);
    c.server = *(server_ctx ? server_ctx : server_ctx_.get())->NewSession(server_svid_);
    ConnectBioPair(*c.client, *c.server);
    Drive(*c.client, *c.server, &c.client_result, &c.server_result);
    if (c.ok()) {
      HandshakeProgress tickets = c.client->ReadTickets();
      EXPECT_EQ(tickets, HandshakeProgress::kDone) << c.client->failure().explanation;
    }
    std::cout << "connection: client " << Name(c.client_result) << " resumed=" << Resumed(c) << " ("
              << c.client->failure().explanation << "), server " << Name(c.server_result)
              << " ticket_offered=" << c.server->ticket_offered() << " refusal=\""
              << c.server->ticket_refusal() << "\" (" << c.server->failure().explanation << ")\n";
    return c;
  }

  static bool Resumed(const Connection& c) {
    return c.client->ssl() != nullptr && SSL_session_reused(c.client->ssl()) == 1;
  }
  static const char* Name(HandshakeProgress p) {
    return p == HandshakeProgress::kDone     ? "done"
           : p == HandshakeProgress::kFailed ? "failed"
                                             : "stuck";
  }

  absl::Time now_;
  CertificateAuthority ca_;
  std::shared_ptr<const TrustStore> trust_;
  std::unique_ptr<TlsContext> client_ctx_;
  std::unique_ptr<TlsContext> server_ctx_;
  std::shared_ptr<const Svid> client_svid_;
  std::shared_ptr<const Svid> server_svid_;
};

TEST_F(TlsResumptionTest, SecondConnectionResumesWithAFreshKeyExchange) {
  Connection first = Connect();
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(Resumed(first));
  EXPECT_FALSE(first.server->resumed());
  // Exactly the one promised ticket, read and kept for this workload and destination.
  EXPECT_EQ(first.server->records_sent(), 1u);
  EXPECT_EQ(first.client->records_received(), 1u);
  EXPECT_EQ(client_ctx_->CachedTickets(*SpiffeId::Parse(kClientId), kDestination), 1u);

  Connection second = Connect();
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(Resumed(second));
  EXPECT_TRUE(second.client->resumed());
  EXPECT_TRUE(second.server->resumed());
  EXPECT_EQ(SSL_session_reused(second.server->ssl()), 1);
  // Both identities established as by a full handshake, from the kept chains.
  EXPECT_EQ(second.client->peer_id()->ToString(), kServerId);
  EXPECT_EQ(second.server->peer_id()->ToString(), kClientId);
  EXPECT_FALSE(second.client->peer_chain().empty());
  EXPECT_FALSE(second.server->peer_chain().empty());
  // psk_dhe_ke: the resumption ran a key exchange (forward secrecy), never psk_ke.
  int group = SSL_get_negotiated_group(second.client->ssl());
  std::cout << "resumed with key exchange group " << OBJ_nid2sn(group) << "\n";
  EXPECT_NE(group, 0);
  // The used ticket is gone; the resumed connection's new one replaces it.
  EXPECT_EQ(second.server->records_sent(), 1u);
  EXPECT_EQ(client_ctx_->CachedTickets(*SpiffeId::Parse(kClientId), kDestination), 1u);

  Connection third = Connect();
  ASSERT_TRUE(third.ok());
  EXPECT_TRUE(Resumed(third));
}

// AES-128-GCM-decrypts one TLS 1.3 record the way kernel TLS would with
// the given traffic secret and record sequence number: the content
// (without the inner type) if it authenticates, nullopt otherwise.
std::optional<std::string> OpenRecord(const Secret& secret, uint64_t sequence,
                                      const std::string& record, uint8_t* inner_type) {
  auto keys = DeriveTrafficKeys(CipherSuite::kAes128GcmSha256, secret);
  if (!keys.ok() || record.size() < 5 + 16 + 1) return std::nullopt;
  unsigned char nonce[kTrafficIvLength];
  std::memcpy(nonce, keys->iv.view().data(), sizeof(nonce));
  for (int i = 0; i < 8; ++i) nonce[kTrafficIvLength - 1 - i] ^= (sequence >> (8 * i)) & 0xff;
  const auto* in = reinterpret_cast<const unsigned char*>(record.data());
  size_t body = record.size() - 5 - 16;
  std::string out(body, '\0');
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  int len = 0;
  bool ok = EVP_DecryptInit_ex(ctx, EVP_aes_128_gcm(), nullptr, nullptr, nullptr) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, sizeof(nonce), nullptr) == 1 &&
            EVP_DecryptInit_ex(ctx, nullptr, nullptr,
                               reinterpret_cast<const unsigned char*>(keys->key.view().data()),
                               nonce) == 1 &&
            EVP_DecryptUpdate(ctx, nullptr, &len, in, 5) == 1 &&
            EVP_DecryptUpdate(ctx, reinterpret_cast<unsigned char*>(out.data()), &len, in + 5,
                              static_cast<int>(body)) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16,
                                const_cast<unsigned char*>(in + 5 + body)) == 1 &&
            EVP_DecryptFinal_ex(ctx, nullptr, &len) == 1;
  EVP_CIPHER_CTX_free(ctx);
  ERR_clear_error();
  if (!ok) return std::nullopt;
  while (!out.empty() && out.back() == '\0') out.pop_back();  // padding
  if (out.empty()) return std::nullopt;
  *inner_type = static_cast<uint8_t>(out.back());
  out.pop_back();
  return out;
}

// The next whole record waiting in `bio`.
std::string TakeRecord(BIO* bio) {
  std::string header(5, '\0');
  if (BIO_read(bio, header.data(), 5) != 5) return "";
  size_t len = (static_cast<uint8_t>(header[3]) << 8) | static_cast<uint8_t>(header[4]);
  std::string body(len, '\0');
  if (BIO_read(bio, body.data(), static_cast<int>(len)) != static_cast<int>(len)) return "";
  return header + body;
}

// What InstallKtls gives the kernel after a ticket, checked on the host
// (no kernel TLS needed): the server's application record after its ticket
// opens at the sequence the client counted, and the client's first record
// at the one the server counted. A sequence off by one fails the AEAD.
TEST_F(TlsResumptionTest, RecordSequencesAfterTheTicketAreTheOnesOpenSslUsed) {
  ASSERT_TRUE(Connect().ok());  // keeps a ticket
  for (bool resumed : {false, true}) {
    SCOPED_TRACE(resumed ? "resumed connection" : "full handshake");
    if (!resumed) client_ctx_->InvalidateTickets();
    Connection c = Connect();
    ASSERT_TRUE(c.ok());
    ASSERT_EQ(Resumed(c), resumed);
    // The ticket was read, and nothing after it: the server's data written
    // now stays on the wire for kernel TLS.
    ASSERT_EQ(SSL_write(c.server->ssl(), "pong", 4), 4);
    ASSERT_EQ(SSL_write(c.client->ssl(), "ping", 4), 4);
    EXPECT_FALSE(c.client->tickets_pending());
    EXPECT_EQ(SSL_has_pending(c.client->ssl()), 0);
    std::cout << "sequences: server sent " << c.server->records_sent() << ", client received "
              << c.client->records_received() << "; client sent " << c.client->records_sent()
              << ", server received " << c.server->records_received() << "\n";
    EXPECT_EQ(c.server->records_sent(), 1u);  // the ticket
    EXPECT_EQ(c.client->records_received(), c.server->records_sent());
    EXPECT_EQ(c.client->records_sent(), 0u);
    EXPECT_EQ(c.server->records_received(), c.client->records_sent());

    uint8_t type = 0;
    std::string to_client = TakeRecord(SSL_get_rbio(c.client->ssl()));
    auto pong = OpenRecord(c.client->server_traffic_secret(), c.client->records_received(),
                           to_client, &type);
    ASSERT_TRUE(pong.has_value()) << "the server's record does not open at sequence "
                                  << c.client->records_received();
    EXPECT_EQ(*pong, "pong");
    EXPECT_EQ(type, kRecordApplicationData);
    // One off is refused: the count is what makes it work.
    EXPECT_FALSE(OpenRecord(c.client->server_traffic_secret(), c.client->records_received() - 1,
                            to_client, &type));

    std::string to_server = TakeRecord(SSL_get_rbio(c.server->ssl()));
    auto ping = OpenRecord(c.server->client_traffic_secret(), c.server->records_received(),
                           to_server, &type);
    ASSERT_TRUE(ping.has_value());
    EXPECT_EQ(*ping, "ping");
  }
}

// The client never reads past the ticket, even when the server's first
// application data arrives with it: it stays for kernel TLS.
TEST_F(TlsResumptionTest, ReadingTheTicketLeavesApplicationDataThatCameWithIt) {
  auto client = *client_ctx_->NewSession(client_svid_, std::nullopt, kDestination);
  auto server = *server_ctx_->NewSession(server_svid_);
  BIO* client_end = ConnectBioPair(*client, *server);
  HandshakeProgress c = HandshakeProgress::kWantRead, s = HandshakeProgress::kWantRead;
  Drive(*client, *server, &c, &s);
  ASSERT_EQ(c, HandshakeProgress::kDone);
  ASSERT_EQ(s, HandshakeProgress::kDone);
  ASSERT_TRUE(client->tickets_pending());
  ASSERT_EQ(SSL_write(server->ssl(), "hello", 5), 5);  // ticket and data both waiting
  size_t waiting = BIO_ctrl_pending(client_end);
  EXPECT_EQ(client->ReadTickets(), HandshakeProgress::kDone);
  EXPECT_FALSE(client->tickets_pending());
  EXPECT_EQ(SSL_has_pending(client->ssl()), 0);
  size_t left = BIO_ctrl_pending(client_end);
  std::cout << "bytes waiting for the client: " << waiting << " before, " << left
            << " after reading the ticket\n";
  EXPECT_EQ(left, 5u + 5 + 1 + 16);  // exactly the one data record: header, "hello", type, tag
  uint8_t type = 0;
  auto hello = OpenRecord(client->server_traffic_secret(), client->records_received(),
                          TakeRecord(client_end), &type);
  ASSERT_TRUE(hello.has_value());
  EXPECT_EQ(*hello, "hello");
}

// A promise broken either way is refused: the server checks it sent what it
// promised, and a client that gets data where a ticket was promised fails
// (the data would otherwise sit in OpenSSL, out of kernel TLS's reach).
TEST_F(TlsResumptionTest, DataInPlaceOfThePromisedTicketFailsBothEnds) {
  auto client = *client_ctx_->NewSession(client_svid_, std::nullopt, kDestination);
  auto server = *server_ctx_->NewSession(server_svid_);
  ConnectBioPair(*client, *server);
  ASSERT_EQ(client->Handshake(), HandshakeProgress::kWantRead);  // ClientHello out
  ASSERT_EQ(server->Handshake(), HandshakeProgress::kWantRead);  // promised in its first flight
  SSL_set_num_tickets(server->ssl(), 0);                         // and then OpenSSL sends none
  HandshakeProgress c = HandshakeProgress::kWantRead, s = HandshakeProgress::kWantRead;
  Drive(*client, *server, &c, &s);
  ASSERT_EQ(c, HandshakeProgress::kDone);
  ASSERT_EQ(s, HandshakeProgress::kFailed);
  EXPECT_EQ(server->failure().error, HandshakeError::kProtocol);
  EXPECT_THAT(server->failure().explanation, HasSubstr("promised the client 1 session ticket"));
  std::cout << "server: " << server->failure().explanation << "\n";
  ASSERT_TRUE(client->tickets_pending());
  ASSERT_EQ(SSL_write(server->ssl(), "x", 1), 1);
  EXPECT_EQ(client->ReadTickets(), HandshakeProgress::kFailed);
  EXPECT_EQ(client->failure().error, HandshakeError::kProtocol);
  EXPECT_THAT(client->failure().explanation, HasSubstr("before the session ticket it promised"));
  std::cout << "client: " << client->failure().explanation << "\n";
}

TEST_F(TlsResumptionTest, APolicyChangeDropsTheTickets) {
  ASSERT_TRUE(Connect().ok());
  ASSERT_EQ(client_ctx_->CachedTickets(), 1u);
  // What the engine does on a new policy: both ends drop their tickets.
  client_ctx_->InvalidateTickets();
  server_ctx_->InvalidateTickets();
  EXPECT_EQ(client_ctx_->CachedTickets(), 0u);
  Connection next = Connect();
  ASSERT_TRUE(next.ok());
  EXPECT_FALSE(Resumed(next));
  EXPECT_FALSE(next.server->ticket_offered());
}

TEST_F(TlsResumptionTest, AServerSideChangeRefusesTicketsTheClientStillOffers) {
  ASSERT_TRUE(Connect().ok());
  server_ctx_->InvalidateTickets();  // only the server's side changed
  Connection next = Connect();
  ASSERT_TRUE(next.ok());  // a full handshake instead
  EXPECT_FALSE(Resumed(next));
  EXPECT_TRUE(next.server->ticket_offered());
  EXPECT_THAT(next.server->ticket_refusal(), HasSubstr("change of policy"));
}

TEST_F(TlsResumptionTest, ANewTrustBundleDropsTheTicketsAndIsAppliedInFull) {
  ASSERT_TRUE(Connect().ok());
  // The client's CA is no longer trusted: a bundle with another root only.
  CertificateAuthority other = *CertificateAuthority::CreateRoot(
      *TrustDomain::Parse("example.org"), kDefaultRootValidity, now_ - absl::Minutes(1));
  auto store = std::make_shared<TrustStore>();
  store->Put(*other.Bundle());
  server_ctx_->SetTrustStore(store);
  client_ctx_->SetTrustStore(trust_);  // the client's own reload (same roots) drops its tickets too
  EXPECT_EQ(client_ctx_->CachedTickets(), 0u);
  Connection next = Connect();
  EXPECT_FALSE(Resumed(next));
  EXPECT_EQ(next.server_result, HandshakeProgress::kFailed);
  EXPECT_EQ(next.server->failure().code(), "unknown_authority");
}

TEST_F(TlsResumptionTest, NoTicketOutlivesTheSvidsItWasMadeWith) {
  ASSERT_TRUE(Connect().ok());
  ASSERT_EQ(client_ctx_->CachedTickets(), 1u);
  now_ += absl::Minutes(11);  // past both SVIDs' notAfter (10 minutes)
  Connection next = Connect();
  EXPECT_FALSE(Resumed(next));
  EXPECT_FALSE(next.server->ticket_offered());  // the client dropped it
  // The full handshake refuses the expired SVID, as without resumption.
  EXPECT_FALSE(next.ok());
}

TEST_F(TlsResumptionTest, ARenewedServerSvidRefusesTicketsMadeWithTheOldOne) {
  ASSERT_TRUE(Connect().ok());
  server_svid_ = Issue(kServerId);  // renewal: same ID, new certificate
  Connection next = Connect();
  ASSERT_TRUE(next.ok());
  EXPECT_FALSE(Resumed(next));
  EXPECT_TRUE(next.server->ticket_offered());
  EXPECT_THAT(next.server->ticket_refusal(), HasSubstr("another SVID"));
}

TEST_F(TlsResumptionTest, ARenewedClientSvidDoesNotOfferTicketsOfTheOldOne) {
  ASSERT_TRUE(Connect().ok());
  Connection next = Connect(Issue(kClientId));
  ASSERT_TRUE(next.ok());
  EXPECT_FALSE(Resumed(next));
  EXPECT_FALSE(next.server->ticket_offered());
}

TEST_F(TlsResumptionTest, WorkloadAsTicketIsNeverOfferedOnWorkloadBsConnection) {
  ASSERT_TRUE(Connect().ok());  // workload A (kClientId) keeps a ticket for the destination
  auto b = Issue("spiffe://example.org/ns/prod/other");
  Connection other_workload = Connect(b);
  ASSERT_TRUE(other_workload.ok());
  EXPECT_FALSE(other_workload.server->ticket_offered());
  EXPECT_FALSE(Resumed(other_workload));
  // Nor on A's connection to another destination.
  Connection other_destination = Connect(nullptr, "10.0.0.8:443");
  ASSERT_TRUE(other_destination.ok());
  EXPECT_FALSE(other_destination.server->ticket_offered());
  // A's ticket for the destination is still there, and still A's.
  EXPECT_EQ(client_ctx_->CachedTickets(*SpiffeId::Parse(kClientId), kDestination), 1u);
  EXPECT_TRUE(Resumed(Connect()));
}

// The kept chain is verified again on every resumption, with what the
// client expects now: a server the client no longer expects is refused
// even though OpenSSL resumed, before any application byte.
TEST_F(TlsResumptionTest, AResumedServerIsHeldToWhatTheClientExpectsNow) {
  ASSERT_TRUE(Connect().ok());
  Connection next = Connect(nullptr, kDestination,
                            SpiffeIdPattern::Parse("spiffe://example.org/ns/prod/api").value());
  EXPECT_TRUE(Resumed(next));
  EXPECT_EQ(next.client_result, HandshakeProgress::kFailed);
  EXPECT_EQ(next.client->failure().peer_reason, RejectReason::kUnexpectedPeer);
  EXPECT_THAT(next.client->failure().explanation, HasSubstr("resumed session"));
}

TEST_F(TlsResumptionTest, PeersWithoutResumptionNeitherSendNorWaitForTickets) {
  auto plain_server = Context(TlsRole::kServer, false);
  Connection to_plain = Connect(nullptr, kDestination, std::nullopt, nullptr, plain_server.get());
  ASSERT_TRUE(to_plain.ok());
  EXPECT_FALSE(to_plain.client->tickets_pending());
  EXPECT_EQ(to_plain.server->records_sent(), 0u);
  EXPECT_EQ(client_ctx_->CachedTickets(), 0u);

  auto plain_client = Context(TlsRole::kClient, false);
  Connection from_plain = Connect(nullptr, kDestination, std::nullopt, plain_client.get());
  ASSERT_TRUE(from_plain.ok());
  EXPECT_EQ(from_plain.server->records_sent(), 0u);  // no ticket for a client that did not ask
  EXPECT_EQ(from_plain.client->records_received(), 0u);

  // A client of ours without a destination key asks for no ticket either.
  Connection unkeyed = Connect(nullptr, "");
  ASSERT_TRUE(unkeyed.ok());
  EXPECT_EQ(unkeyed.server->records_sent(), 0u);
}

TEST_F(TlsResumptionTest, TheClientCacheIsBounded) {
  auto small = Context(TlsRole::kClient, true, 2);
  for (const char* destination : {"10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"}) {
    ASSERT_TRUE(Connect(nullptr, destination, std::nullopt, small.get()).ok());
  }
  EXPECT_EQ(small->CachedTickets(), 2u);
  EXPECT_EQ(small->CachedTickets(*SpiffeId::Parse(kClientId), "10.0.0.1:1"),
            0u);  // the oldest went
  EXPECT_EQ(small->CachedTickets(*SpiffeId::Parse(kClientId), "10.0.0.3:1"), 1u);
}

// A ticket is a session ID on the server, whose session is taken on use: the
// same ticket offered again (a replay, or a client that kept a copy) gets a
// full handshake.
TEST_F(TlsResumptionTest, ATicketOfferedAgainIsRefusedAsUsed) {
  Connection first = Connect();
  ASSERT_TRUE(first.ok());
  SslSessionPtr copy(SSL_get1_session(first.client->ssl()));
  ASSERT_NE(copy, nullptr);
  ASSERT_EQ(server_ctx_->CachedTickets(), 1u);
  Connection second = Connect();  // uses the ticket
  ASSERT_TRUE(second.ok());
  ASSERT_TRUE(Resumed(second));

  Connection replay;
  replay.client = *client_ctx_->NewSession(client_svid_, std::nullopt, "");
  replay.server = *server_ctx_->NewSession(server_svid_);
  ASSERT_EQ(SSL_set_session(replay.client->ssl(), copy.get()), 1);
  ConnectBioPair(*replay.client, *replay.server);
  Drive(*replay.client, *replay.server, &replay.client_result, &replay.server_result);
  ASSERT_TRUE(replay.ok()) << replay.server->failure().explanation;
  EXPECT_FALSE(Resumed(replay));
  EXPECT_TRUE(replay.server->ticket_offered());
  EXPECT_THAT(replay.server->ticket_refusal(), HasSubstr("used already"));
  std::cout << "replay: " << replay.server->ticket_refusal() << "\n";
}

TEST_F(TlsResumptionTest, TheServerKeepsAtMostItsBoundOfSessions) {
  auto small = Context(TlsRole::kServer, true, 2);
  for (const char* destination : {"10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"}) {
    ASSERT_TRUE(Connect(nullptr, destination, std::nullopt, nullptr, small.get()).ok());
  }
  EXPECT_EQ(small->CachedTickets(), 2u);
  // The newest ticket still resumes.
  Connection again = Connect(nullptr, "10.0.0.3:1", std::nullopt, nullptr, small.get());
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(Resumed(again));
}

// Over real sockets: a resumed connection, then kernel TLS both ways where
// the kernel has it (the VM tier), else OpenSSL's record layer; either way
// the bytes arrive as sent, in both directions.
TEST_F(TlsResumptionTest, AResumedConnectionCarriesBytesBothWays) {
  KtlsSupport support = ProbeKtls();
  std::cout << "kernel TLS: " << support.reason << "\n";
  auto connect = [&](bool expect_resumed) {
    testing::TcpPair pair = testing::ConnectedTcpPair();
    auto client = *client_ctx_->NewSession(client_svid_, std::nullopt, kDestination);
    auto server = *server_ctx_->NewSession(server_svid_);
    EXPECT_TRUE(testing::TlsTestPeers::HandshakeOverSockets(*client, pair.client.get(), *server,
                                                            pair.server.get()));
    EXPECT_EQ(client->resumed(), expect_resumed);
    EXPECT_EQ(server->resumed(), expect_resumed);
    // The ticket came right behind the server's handshake; read it
    // (blocking socket: ReadTickets returns once it is in).
    for (int i = 0; i < 100 && client->tickets_pending(); ++i) {
      pollfd pfd{pair.client.get(), POLLIN, 0};
      poll(&pfd, 1, 1000);
      int fl = fcntl(pair.client.get(), F_GETFL);
      fcntl(pair.client.get(), F_SETFL, fl | O_NONBLOCK);
      HandshakeProgress p = client->ReadTickets();
      fcntl(pair.client.get(), F_SETFL, fl);
      EXPECT_NE(p, HandshakeProgress::kFailed) << client->failure().explanation;
    }
    EXPECT_FALSE(client->tickets_pending());
    std::string up(100000, '\0'), down(70000, '\0');
    std::mt19937 rng(expect_resumed ? 2 : 1);
    for (char& ch : up) ch = static_cast<char>(rng());
    for (char& ch : down) ch = static_cast<char>(rng());
    std::string got_up(up.size(), '\0'), got_down(down.size(), '\0');
    if (support.available) {
      ASSERT_TRUE(InstallKtls(pair.client.get(), *client).ok());
      ASSERT_TRUE(InstallKtls(pair.server.get(), *server).ok());
      std::cout << "kTLS sequences: client tx "
                << *RecordSequence(pair.client.get(), KtlsDirection::kTx) << " rx "
                << *RecordSequence(pair.client.get(), KtlsDirection::kRx) << ", server tx "
                << *RecordSequence(pair.server.get(), KtlsDirection::kTx) << " rx "
                << *RecordSequence(pair.server.get(), KtlsDirection::kRx) << "\n";
      ASSERT_EQ(send(pair.client.get(), up.data(), up.size(), 0), static_cast<ssize_t>(up.size()));
      ASSERT_EQ(recv(pair.server.get(), got_up.data(), got_up.size(), MSG_WAITALL),
                static_cast<ssize_t>(up.size()));
      ASSERT_EQ(send(pair.server.get(), down.data(), down.size(), 0),
                static_cast<ssize_t>(down.size()));
      ASSERT_EQ(recv(pair.client.get(), got_down.data(), got_down.size(), MSG_WAITALL),
                static_cast<ssize_t>(down.size()));
    } else {
      size_t n = 0;
      ASSERT_EQ(SSL_write_ex(client->ssl(), up.data(), up.size(), &n), 1);
      for (size_t at = 0; at < got_up.size(); at += n) {
        ASSERT_EQ(SSL_read_ex(server->ssl(), got_up.data() + at, got_up.size() - at, &n), 1);
      }
      ASSERT_EQ(SSL_write_ex(server->ssl(), down.data(), down.size(), &n), 1);
      for (size_t at = 0; at < got_down.size(); at += n) {
        ASSERT_EQ(SSL_read_ex(client->ssl(), got_down.data() + at, got_down.size() - at, &n), 1);
      }
    }
    EXPECT_TRUE(got_up == up);
    EXPECT_TRUE(got_down == down);
    std::cout << (expect_resumed ? "resumed" : "full") << " connection over "
              << (support.available ? "kernel TLS" : "OpenSSL's record layer") << ": " << up.size()
              << " bytes up, " << down.size() << " down, "
              << (got_up == up && got_down == down ? "identical" : "DIFFERENT") << "\n";
  };
  connect(false);
  connect(true);
}

}  // namespace
}  // namespace ktrust
