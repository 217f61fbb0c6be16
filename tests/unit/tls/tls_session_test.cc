// Full TLS 1.3 handshakes between a client and a server TlsSession over an
// in-memory BIO pair: the negotiated parameters, the verified identities, and
// every way a handshake must fail.
#include "ktrust/tls/tls_session.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include <filesystem>
#include <functional>

#include "ktrust/identity/certificate_authority.h"
#include "ktrust/identity/x509.h"
#include "ktrust/tls/traffic_keys.h"
#include "unit/test_pki.h"

namespace ktrust {
namespace {

using testing::CertSpec;
using ::testing::HasSubstr;
using testing::KeyAndCert;
using testing::Mint;
using testing::MintRoot;

struct Outcome {
  HandshakeProgress client = HandshakeProgress::kWantRead;
  HandshakeProgress server = HandshakeProgress::kWantRead;
};

bool Finished(HandshakeProgress p) {
  return p == HandshakeProgress::kDone || p == HandshakeProgress::kFailed;
}

class TlsSessionTest : public ::testing::Test {
 protected:
  TlsSessionTest()
      : ca_(*CertificateAuthority::CreateRoot(*TrustDomain::Parse("example.org"),
                                              kDefaultRootValidity, absl::Now())) {
    auto store = std::make_shared<TrustStore>();
    store->Put(*ca_.Bundle());
    trust_ = store;
  }

  std::shared_ptr<const Svid> Issue(const char* id) {
    return std::make_shared<const Svid>(
        *ca_.IssueSvid(*SpiffeId::Parse(id), absl::Hours(1), absl::Now()));
  }

  std::unique_ptr<TlsContext> Context(TlsRole role, TlsContextOptions options = {}) {
    options.role = role;
    auto ctx = TlsContext::Create(std::move(options), trust_);
    EXPECT_TRUE(ctx.ok()) << ctx.status();
    return *std::move(ctx);
  }

  // Connects the two sessions with a BIO pair and runs both handshakes until
  // each has finished or neither can make progress.
  Outcome Run(TlsSession& client, TlsSession& server) {
    BIO* client_end = nullptr;
    BIO* server_end = nullptr;
    BIO_new_bio_pair(&client_end, 0, &server_end, 0);
    client.SetBio(client_end);
    server.SetBio(server_end);
    return Drive(client, server);
  }

  Outcome Drive(TlsSession& client, TlsSession& server) {
    Outcome out;
    for (int round = 0; round < 20 && !(Finished(out.client) && Finished(out.server)); ++round) {
      if (!Finished(out.client)) out.client = client.Handshake();
      if (!Finished(out.server)) out.server = server.Handshake();
    }
    return out;
  }

  // What the client learns once it reads: in TLS 1.3 the client finishes its
  // side before the server has judged the client certificate.
  void ExpectClientLearnsRejection(TlsSession& client) {
    char buf[16];
    ERR_clear_error();
    EXPECT_LE(SSL_read(client.ssl(), buf, sizeof(buf)), 0);
    EXPECT_EQ(SSL_get_error(client.ssl(), 0), SSL_ERROR_SSL);
    ERR_clear_error();
  }

  // Makes `session` present `cert` instead of its SVID: the real CA never
  // mints malformed certificates, a hostile peer does.
  static void Present(TlsSession& session, const KeyAndCert& kc, X509* extra = nullptr) {
    ASSERT_EQ(SSL_use_certificate(session.ssl(), kc.cert.get()), 1);
    ASSERT_EQ(SSL_use_PrivateKey(session.ssl(), kc.key.get()), 1);
    SSL_clear_chain_certs(session.ssl());
    if (extra) SSL_add1_chain_cert(session.ssl(), extra);
  }

  CertSpec Leaf(const std::string& id = "spiffe://example.org/ns/prod/client") {
    CertSpec spec;
    spec.uri_sans = {id};
    return spec;
  }

  // The root revokes `intermediate`; a reload gives `ctx` the CRL.
  void RevokeAndReload(X509* intermediate, TlsContext& ctx) {
    auto crl = ca_.Revoke(SerialHex(intermediate), "", absl::Now());
    ASSERT_TRUE(crl.ok()) << crl.status();
    auto bundle =
        TrustBundle::FromPem(*TrustDomain::Parse("example.org"), ToPem(ca_.roots()), *crl);
    ASSERT_TRUE(bundle.ok()) << bundle.status();
    auto store = std::make_shared<TrustStore>();
    store->Put(*bundle);
    ctx.SetTrustStore(store);
  }

  // A KeyAndCert view of the embedded CA, to mint odd certificates with it.
  KeyAndCert CaSigner() { return KeyAndCert{ShareKey(CaKey()), ShareX509(ca_.certificate())}; }
  EVP_PKEY* CaKey();

  CertificateAuthority ca_;
  std::shared_ptr<const TrustStore> trust_;
};

// The CA keeps its key private; tests that need to sign odd certificates with
// it load it back from the CA's saved files.
EVP_PKEY* TlsSessionTest::CaKey() {
  static thread_local EvpPkeyPtr key;
  std::string tmpl = ::testing::TempDir() + "ktrust-tls-XXXXXX";
  std::string dir = mkdtemp(tmpl.data());
  EXPECT_TRUE(ca_.Save(dir + "/ca", false).ok());
  FILE* f = fopen((dir + "/ca/ca.key").c_str(), "r");
  key.reset(PEM_read_PrivateKey(f, nullptr, nullptr, nullptr));
  fclose(f);
  std::filesystem::remove_all(dir);
  return key.get();
}

TEST_F(TlsSessionTest, MutualHandshakeEstablishesBothIdentities) {
  auto client_ctx = Context(TlsRole::kClient);
  auto server_ctx = Context(TlsRole::kServer);
  auto client = *client_ctx->NewSession(Issue("spiffe://example.org/ns/prod/client"));
  auto server = *server_ctx->NewSession(Issue("spiffe://example.org/ns/prod/server"));
  Outcome out = Run(*client, *server);
  ASSERT_EQ(out.client, HandshakeProgress::kDone) << client->failure().explanation;
  ASSERT_EQ(out.server, HandshakeProgress::kDone) << server->failure().explanation;
  EXPECT_EQ(client->peer_id()->ToString(), "spiffe://example.org/ns/prod/server");
  EXPECT_EQ(server->peer_id()->ToString(), "spiffe://example.org/ns/prod/client");
  EXPECT_EQ(client->local_id().ToString(), "spiffe://example.org/ns/prod/client");
  EXPECT_EQ(client->cipher(), "TLS_AES_128_GCM_SHA256");
  EXPECT_EQ(server->cipher(), "TLS_AES_128_GCM_SHA256");
  EXPECT_EQ(client->version(), "TLSv1.3");
  EXPECT_GT(server->peer_not_after(), absl::Now());

  // Application data flows, and no session ticket was issued (a ticket on a
  // kTLS socket breaks the receive path).
  ASSERT_EQ(SSL_write(server->ssl(), "ping", 4), 4);
  char buf[8] = {};
  ASSERT_EQ(SSL_read(client->ssl(), buf, sizeof(buf)), 4);
  EXPECT_STREQ(buf, "ping");
  EXPECT_EQ(SSL_SESSION_has_ticket(SSL_get0_session(client->ssl())), 0);
}

TEST_F(TlsSessionTest, NegotiatesEachAllowedSuite) {
  for (const char* suite : {"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}) {
    TlsContextOptions only;
    only.cipher_suites = {suite};
    auto client_ctx = Context(TlsRole::kClient, only);
    auto server_ctx = Context(TlsRole::kServer);
    auto client = *client_ctx->NewSession(Issue("spiffe://example.org/c"));
    auto server = *server_ctx->NewSession(Issue("spiffe://example.org/s"));
    Outcome out = Run(*client, *server);
    ASSERT_EQ(out.server, HandshakeProgress::kDone) << suite;
    EXPECT_EQ(server->cipher(), suite);
  }
}

// Decrypts one TLS 1.3 record (header, ciphertext, tag) protected with
// `keys` at sequence number 0, whose nonce is the iv itself (RFC 8446 §5.3).
// Returns the inner plaintext (content, then the real content type), or
// nullopt if it does not authenticate.
std::optional<std::string> OpenFirstRecord(CipherSuite suite, const TrafficKeys& keys,
                                           absl::string_view record) {
  constexpr size_t kHeader = 5, kTag = 16;
  if (record.size() < kHeader + kTag) return std::nullopt;
  const EVP_CIPHER* cipher = suite == CipherSuite::kAes128GcmSha256   ? EVP_aes_128_gcm()
                             : suite == CipherSuite::kAes256GcmSha384 ? EVP_aes_256_gcm()
                                                                      : EVP_chacha20_poly1305();
  std::unique_ptr<EVP_CIPHER_CTX, OpenSslDeleter<EVP_CIPHER_CTX_free>> ctx(EVP_CIPHER_CTX_new());
  auto bytes = [](absl::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); };
  absl::string_view body = record.substr(kHeader, record.size() - kHeader - kTag);
  std::string tag(record.substr(record.size() - kTag));
  std::string plain(body.size(), '\0');
  int len = 0;
  bool ok = EVP_DecryptInit_ex(ctx.get(), cipher, nullptr, bytes(keys.key.view()),
                               bytes(keys.iv.view())) == 1 &&
            EVP_DecryptUpdate(ctx.get(), nullptr, &len, bytes(record), kHeader) == 1 &&
            EVP_DecryptUpdate(ctx.get(), reinterpret_cast<unsigned char*>(plain.data()), &len,
                              bytes(body), static_cast<int>(body.size())) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_TAG, kTag, tag.data()) == 1 &&
            EVP_DecryptFinal_ex(ctx.get(), nullptr, &len) == 1;
  if (!ok) return std::nullopt;
  return plain;
}

// What one side wrote with SSL_write, as raw bytes off the BIO pair.
std::string TakeRecord(TlsSession& writer, TlsSession& reader, absl::string_view data) {
  EXPECT_EQ(SSL_write(writer.ssl(), data.data(), static_cast<int>(data.size())),
            static_cast<int>(data.size()));
  char buf[256];
  int n = BIO_read(SSL_get_rbio(reader.ssl()), buf, sizeof(buf));
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

TEST_F(TlsSessionTest, CapturesTheTrafficSecretsOpenSslProtectsRecordsWith) {
  for (CipherSuite suite : {CipherSuite::kAes128GcmSha256, CipherSuite::kAes256GcmSha384,
                            CipherSuite::kChaCha20Poly1305Sha256}) {
    SCOPED_TRACE(CipherSuiteName(suite));
    TlsContextOptions only;
    only.cipher_suites = {std::string(CipherSuiteName(suite))};
    auto client_ctx = Context(TlsRole::kClient, only);
    auto server_ctx = Context(TlsRole::kServer, only);
    auto client = *client_ctx->NewSession(Issue("spiffe://example.org/c"));
    auto server = *server_ctx->NewSession(Issue("spiffe://example.org/s"));
    EXPECT_TRUE(client->client_traffic_secret().empty());
    Outcome out = Run(*client, *server);
    ASSERT_EQ(out.client, HandshakeProgress::kDone);
    ASSERT_EQ(out.server, HandshakeProgress::kDone);

    // Both sides captured both secrets, of the suite's hash length, and agree.
    for (TlsSession* side : {client.get(), server.get()}) {
      EXPECT_EQ(side->client_traffic_secret().view().size(), SecretLength(suite));
      EXPECT_EQ(side->server_traffic_secret().view().size(), SecretLength(suite));
    }
    EXPECT_EQ(client->client_traffic_secret().view(), server->client_traffic_secret().view());
    EXPECT_EQ(client->server_traffic_secret().view(), server->server_traffic_secret().view());
    EXPECT_NE(client->client_traffic_secret().view(), client->server_traffic_secret().view());

    // Per direction, the sender's TX keys are the receiver's RX keys.
    auto client_tx = *DeriveTrafficKeys(suite, client->client_traffic_secret());
    auto server_rx = *DeriveTrafficKeys(suite, server->client_traffic_secret());
    auto server_tx = *DeriveTrafficKeys(suite, server->server_traffic_secret());
    auto client_rx = *DeriveTrafficKeys(suite, client->server_traffic_secret());
    EXPECT_EQ(client_tx.key.view(), server_rx.key.view());
    EXPECT_EQ(client_tx.iv.view(), server_rx.iv.view());
    EXPECT_EQ(server_tx.key.view(), client_rx.key.view());
    EXPECT_EQ(server_tx.iv.view(), client_rx.iv.view());
    EXPECT_NE(client_tx.key.view(), server_tx.key.view());

    // And they are the keys OpenSSL uses, starting at record sequence 0: the
    // values kernel TLS is given. The inner plaintext ends in type 23 (data).
    std::string to_server = TakeRecord(*client, *server, "hello server");
    EXPECT_EQ(OpenFirstRecord(suite, client_tx, to_server), std::string("hello server\x17"));
    std::string to_client = TakeRecord(*server, *client, "hello client");
    EXPECT_EQ(OpenFirstRecord(suite, server_tx, to_client), std::string("hello client\x17"));
    // A wrong key does not open it (the check above is not vacuous).
    EXPECT_EQ(OpenFirstRecord(suite, client_tx, to_client), std::nullopt);

    client->ForgetTrafficSecrets();
    EXPECT_TRUE(client->client_traffic_secret().empty());
    EXPECT_TRUE(client->server_traffic_secret().empty());
  }
}

TEST_F(TlsSessionTest, ServerPreferenceWinsAes128ByDefault) {
  TlsContextOptions chacha_first;
  chacha_first.cipher_suites = {"TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"};
  auto client_ctx = Context(TlsRole::kClient, chacha_first);
  auto server_ctx = Context(TlsRole::kServer);
  auto client = *client_ctx->NewSession(Issue("spiffe://example.org/c"));
  auto server = *server_ctx->NewSession(Issue("spiffe://example.org/s"));
  ASSERT_EQ(Run(*client, *server).server, HandshakeProgress::kDone);
  EXPECT_EQ(server->cipher(), "TLS_AES_128_GCM_SHA256");
}

TEST_F(TlsSessionTest, NoCommonSuiteIsAProtocolError) {
  TlsContextOptions chacha, aes;
  chacha.cipher_suites = {"TLS_CHACHA20_POLY1305_SHA256"};
  aes.cipher_suites = {"TLS_AES_128_GCM_SHA256"};
  auto client_ctx = Context(TlsRole::kClient, chacha);
  auto server_ctx = Context(TlsRole::kServer, aes);
  auto client = *client_ctx->NewSession(Issue("spiffe://example.org/c"));
  auto server = *server_ctx->NewSession(Issue("spiffe://example.org/s"));
  Outcome out = Run(*client, *server);
  EXPECT_EQ(out.server, HandshakeProgress::kFailed);
  EXPECT_EQ(server->failure().code(), "protocol_error");
  EXPECT_EQ(out.client, HandshakeProgress::kFailed);
  EXPECT_EQ(client->failure().code(), "rejected_by_peer");
}

TEST_F(TlsSessionTest, RefusesSuitesKtlsCannotCarry) {
  TlsContextOptions ccm;
  ccm.cipher_suites = {"TLS_AES_128_CCM_SHA256"};
  ccm.role = TlsRole::kServer;
  auto ctx = TlsContext::Create(ccm, trust_);
  EXPECT_THAT(std::string(ctx.status().message()), HasSubstr("is not allowed"));
  TlsContextOptions none;
  none.cipher_suites = {};
  EXPECT_FALSE(TlsContext::Create(none, trust_).ok());
  TlsContextOptions bad_group;
  bad_group.groups = "nonsense";
  EXPECT_FALSE(TlsContext::Create(bad_group, trust_).ok());
}

TEST_F(TlsSessionTest, ClientWithoutCertificateIsRefused) {
  auto client_ctx = Context(TlsRole::kClient);
  auto server_ctx = Context(TlsRole::kServer);
  auto client = *client_ctx->NewSession(Issue("spiffe://example.org/c"));
  auto server = *server_ctx->NewSession(Issue("spiffe://example.org/s"));
  SSL_certs_clear(client->ssl());
  Outcome out = Run(*client, *server);
  EXPECT_EQ(out.server, HandshakeProgress::kFailed);
  EXPECT_EQ(server->failure().code(), "no_certificate");
  EXPECT_FALSE(server->peer_id().has_value());
  ExpectClientLearnsRejection(*client);
}

// The server refuses the client's certificate for `reason`; the client is told.
struct BadClientCert {
  const char* name;
  std::function<CertSpec(CertSpec)> mutate;
  const char* code;
  const char* words;
};

class BadClientCertTest : public TlsSessionTest,
                          public ::testing::WithParamInterface<BadClientCert> {};

TEST_P(BadClientCertTest, ServerRefusesWithReason) {
  const BadClientCert& p = GetParam();
  KeyAndCert signer = CaSigner();
  KeyAndCert bad = Mint(p.mutate(Leaf()), &signer);
  auto client_ctx = Context(TlsRole::kClient);
  auto server_ctx = Context(TlsRole::kServer);
  auto client = *client_ctx->NewSession(Issue("spiffe://example.org/c"));
  auto server = *server_ctx->NewSession(Issue("spiffe://example.org/s"));
  Present(*client, bad);
  Outcome out = Run(*client, *server);
  ASSERT_EQ(out.server, HandshakeProgress::kFailed);
  EXPECT_EQ(server->failure().error, HandshakeError::kPeerRejected);
  EXPECT_EQ(server->failure().code(), p.code);
  EXPECT_THAT(server->failure().explanation, HasSubstr(p.words));
  EXPECT_FALSE(server->peer_id().has_value());
  ExpectClientLearnsRejection(*client);
}

INSTANTIATE_TEST_SUITE_P(
    Reasons, BadClientCertTest,
    ::testing::Values(
        BadClientCert{"Expired",
                      [](CertSpec s) {
                        s.not_before = absl::Now() - absl::Hours(2);
                        s.not_after = absl::Now() - absl::Hours(1);
                        return s;
                      },
                      "expired", "expired 1h"},
        BadClientCert{"NotYetValid",
                      [](CertSpec s) {
                        s.not_before = absl::Now() + absl::Hours(1);
                        s.not_after = absl::Now() + absl::Hours(2);
                        return s;
                      },
                      "not_yet_valid", "not valid until"},
        BadClientCert{"NoUriSan",
                      [](CertSpec s) {
                        s.uri_sans = {};
                        return s;
                      },
                      "no_uri_san", "no URI SAN"},
        BadClientCert{"TwoUriSans",
                      [](CertSpec s) {
                        s.uri_sans = {"spiffe://example.org/a", "spiffe://example.org/b"};
                        return s;
                      },
                      "multiple_uri_sans", "exactly one"},
        BadClientCert{"CaFlagLeaf",
                      [](CertSpec s) {
                        s.ca = true;
                        return s;
                      },
                      "leaf_is_ca", "CA certificate"},
        BadClientCert{"ServerOnlyUsage",
                      [](CertSpec s) {
                        s.extended_key_usage = "serverAuth";
                        return s;
                      },
                      "bad_key_usage", "extended key usage"},
        BadClientCert{"WrongTrustDomain",
                      [](CertSpec s) {
                        s.uri_sans = {"spiffe://staging.example.org/c"};
                        return s;
                      },
                      "untrusted_trust_domain",
                      "trust domain staging.example.org (of spiffe://staging.example.org/c) is "
                      "not trusted here"},
        BadClientCert{"ClockSkewOutsideAllowance",
                      [](CertSpec s) {
                        s.not_before = absl::Now() + absl::Minutes(3);
                        return s;
                      },
                      "not_yet_valid", "allowed clock skew is 1m"}),
    [](const auto& test_info) { return std::string(test_info.param.name); });

TEST_F(TlsSessionTest, ClockSkewInsideAllowanceIsAccepted) {
  KeyAndCert signer = CaSigner();
  CertSpec spec = Leaf();
  spec.not_before = absl::Now() + absl::Seconds(40);
  KeyAndCert early = Mint(spec, &signer);
  auto client_ctx = Context(TlsRole::kClient);
  auto server_ctx = Context(TlsRole::kServer);
  auto client = *client_ctx->NewSession(Issue("spiffe://example.org/c"));
  auto server = *server_ctx->NewSession(Issue("spiffe://example.org/s"));
  Present(*client, early);
  Outcome out = Run(*client, *server);
  ASSERT_EQ(out.server, HandshakeProgress::kDone) << server->failure().explanation;
  EXPECT_EQ(server->peer_id()->ToString(), "spiffe://example.org/ns/prod/client");
}

TEST_F(TlsSessionTest, ClientFromAnotherCaIsUnknownAuthority) {
  auto rogue = *CertificateAuthority::CreateRoot(*TrustDomain::Parse("example.org"),
                                                 kDefaultRootValidity, absl::Now());
  auto client_ctx = Context(TlsRole::kClient);
  auto server_ctx = Context(TlsRole::kServer);
  auto client = *client_ctx->NewSession(std::make_shared<const Svid>(*rogue.IssueSvid(
      *SpiffeId::Parse("spiffe://example.org/ns/prod/web"), absl::Hours(1), absl::Now())));
  auto server = *server_ctx->NewSession(Issue("spiffe://example.org/s"));
  Outcome out = Run(*client, *server);
  ASSERT_EQ(out.server, HandshakeProgress::kFailed);
  EXPECT_EQ(server->failure().code(), "unknown_authority");
  EXPECT_THAT(server->failure().explanation,
              HasSubstr("issued by an authority not in the trust bundle for example.org"));
  ExpectClientLearnsRejection(*client);
}

TEST_F(TlsSessionTest, ClientRefusesAnExpiredServerAndTheServerHearsWhy) {
  KeyAndCert signer = CaSigner();
  CertSpec spec = Leaf("spiffe://example.org/s");
  spec.not_before = absl::Now() - absl::Hours(3);
  spec.not_after = absl::Now() - absl::Hours(2);
  KeyAndCert expired = Mint(spec, &signer);
  auto client_ctx = Context(TlsRole::kClient);
  auto server_ctx = Context(TlsRole::kServer);
  auto client = *client_ctx->NewSession(Issue("spiffe://example.org/c"));
  auto server = *server_ctx->NewSession(Issue("spiffe://example.org/s"));
  Present(*server, expired);
  Outcome out = Run(*client, *server);
  ASSERT_EQ(out.client, HandshakeProgress::kFailed);
  EXPECT_EQ(client->failure().code(), "expired");
  ASSERT_EQ(out.server, HandshakeProgress::kFailed);
  EXPECT_EQ(server->failure().code(), "rejected_by_peer");
  EXPECT_THAT(server->failure().explanation, HasSubstr("certificate expired"));
}

TEST_F(TlsSessionTest, IntermediateChainIsAccepted) {
  auto node = *ca_.CreateIntermediate("node-a", kDefaultIntermediateValidity, absl::Now());
  auto client_svid = std::make_shared<const Svid>(*node.IssueSvid(
      *SpiffeId::Parse("spiffe://example.org/node-a/a"), absl::Hours(1), absl::Now()));
  ASSERT_EQ(client_svid->chain().size(), 2u);
  auto client_ctx = Context(TlsRole::kClient);
  auto server_ctx = Context(TlsRole::kServer);
  auto client = *client_ctx->NewSession(client_svid);
  auto server = *server_ctx->NewSession(Issue("spiffe://example.org/s"));
  Outcome out = Run(*client, *server);
  ASSERT_EQ(out.server, HandshakeProgress::kDone) << server->failure().explanation;
  EXPECT_EQ(server->peer_id()->ToString(), "spiffe://example.org/node-a/a");
}

// Finding 9 of issue 10: a partner's workload, with an SVID of the partner's
// own root, is verified against the partner's bundle only; the partner root
// vouches for nothing in example.org.
TEST_F(TlsSessionTest, PartnerDomainPeerIsVerifiedAgainstItsOwnBundle) {
  KeyAndCert partner = MintRoot("partner.example.com");
  auto store = std::make_shared<TrustStore>();
  store->Put(*ca_.Bundle());
  store->Put(
      *TrustBundle::FromPem(*TrustDomain::Parse("partner.example.com"), ToPem(partner.cert.get())));
  trust_ = store;
  auto server_ctx = Context(TlsRole::kServer);
  auto client_ctx = Context(TlsRole::kClient);
  CertSpec gateway;
  gateway.uri_sans = {"spiffe://partner.example.com/gateway"};
  {
    auto client =
        *client_ctx->NewSession(std::make_shared<const Svid>(testing::MintSvid(gateway, partner)));
    auto server = *server_ctx->NewSession(Issue("spiffe://example.org/web"));
    Outcome out = Run(*client, *server);
    ASSERT_EQ(out.server, HandshakeProgress::kDone) << server->failure().explanation;
    EXPECT_EQ(server->peer_id()->ToString(), "spiffe://partner.example.com/gateway");
  }
  // The partner's root minting a local identity: refused.
  CertSpec forged;
  forged.uri_sans = {"spiffe://example.org/admin"};
  auto client =
      *client_ctx->NewSession(std::make_shared<const Svid>(testing::MintSvid(forged, partner)));
  auto server = *server_ctx->NewSession(Issue("spiffe://example.org/web"));
  Outcome out = Run(*client, *server);
  EXPECT_EQ(out.server, HandshakeProgress::kFailed);
  EXPECT_EQ(server->failure().code(), "unknown_authority");
}

// Finding 4 of issue 10: a live session's peer, revoked by a CRL that a
// reload brings, fails the re-check; its other peers do not.
TEST_F(TlsSessionTest, ReverifyAfterReloadRefusesARevokedPeer) {
  auto node_a = *ca_.CreateIntermediate("node-a", kDefaultIntermediateValidity, absl::Now());
  auto node_b = *ca_.CreateIntermediate("node-b", kDefaultIntermediateValidity, absl::Now());
  auto server_ctx = Context(TlsRole::kServer);
  auto client_ctx = Context(TlsRole::kClient);
  auto from_b = std::make_shared<const Svid>(*node_b.IssueSvid(
      *SpiffeId::Parse("spiffe://example.org/node-b/c"), absl::Hours(1), absl::Now()));
  auto from_a = std::make_shared<const Svid>(*node_a.IssueSvid(
      *SpiffeId::Parse("spiffe://example.org/node-a/c"), absl::Hours(1), absl::Now()));
  auto client_b = *client_ctx->NewSession(from_b);
  auto server_b = *server_ctx->NewSession(Issue("spiffe://example.org/s"));
  ASSERT_EQ(Run(*client_b, *server_b).server, HandshakeProgress::kDone);
  auto client_a = *client_ctx->NewSession(from_a);
  auto server_a = *server_ctx->NewSession(Issue("spiffe://example.org/s"));
  ASSERT_EQ(Run(*client_a, *server_a).server, HandshakeProgress::kDone);
  EXPECT_TRUE(server_b->ReverifyPeer().ok());

  // The root revokes node-b's intermediate; the reload installs the CRL.
  RevokeAndReload(node_b.certificate(), *server_ctx);

  PeerVerdict again = server_b->ReverifyPeer();
  EXPECT_EQ(again.reason, RejectReason::kRevoked);
  EXPECT_THAT(again.explanation, HasSubstr("CN = node-b"));
  EXPECT_THAT(again.explanation, HasSubstr("is revoked"));
  EXPECT_TRUE(server_a->ReverifyPeer().ok()) << server_a->ReverifyPeer().explanation;
  // A new handshake from node b is refused the same way.
  auto client_b2 = *client_ctx->NewSession(from_b);
  auto server_b2 = *server_ctx->NewSession(Issue("spiffe://example.org/s"));
  Outcome out = Run(*client_b2, *server_b2);
  EXPECT_EQ(out.server, HandshakeProgress::kFailed);
  EXPECT_EQ(server_b2->failure().code(), "revoked");
}

// What InstallKtls leaves behind once the kernel owns the records: OpenSSL
// on a null BIO, both directions shut, the traffic secrets wiped.
void DetachAsKernelTlsDoes(TlsSession& session) {
  BIO* null_bio = BIO_new(BIO_s_null());
  ASSERT_NE(null_bio, nullptr);
  SSL_set_bio(session.ssl(), null_bio, null_bio);
  SSL_set_shutdown(session.ssl(), SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
  session.ForgetTrafficSecrets();
}

// Issue 13: once kernel TLS carries a connection its SSL is freed, and what
// the agent still asks of the session (identities, names for `ktrust
// conns`, the re-check after a reload) is answered without it.
TEST_F(TlsSessionTest, ReleasedSessionKeepsItsIdentitiesAndStillRefusesARevokedPeer) {
  auto node_b = *ca_.CreateIntermediate("node-b", kDefaultIntermediateValidity, absl::Now());
  auto server_ctx = Context(TlsRole::kServer);
  auto client_ctx = Context(TlsRole::kClient);
  auto client = *client_ctx->NewSession(std::make_shared<const Svid>(*node_b.IssueSvid(
      *SpiffeId::Parse("spiffe://example.org/node-b/c"), absl::Hours(1), absl::Now())));
  auto server = *server_ctx->NewSession(Issue("spiffe://example.org/s"));
  ASSERT_EQ(Run(*client, *server).server, HandshakeProgress::kDone);
  std::string chain_pem = ToPem(server->peer_chain());

  // OpenSSL still carries the connection (the userspace record layer):
  // refused, and the session goes on working.
  absl::Status refused = server->ReleaseSsl();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_THAT(refused.message(), HasSubstr("OpenSSL does"));
  ASSERT_NE(server->ssl(), nullptr);
  ASSERT_EQ(SSL_write(server->ssl(), "ping", 4), 4);
  char buf[8] = {};
  ASSERT_EQ(SSL_read(client->ssl(), buf, sizeof(buf)), 4);
  EXPECT_STREQ(buf, "ping");

  DetachAsKernelTlsDoes(*server);
  ASSERT_TRUE(server->ReleaseSsl().ok());
  EXPECT_TRUE(server->ssl_released());
  EXPECT_EQ(server->ssl(), nullptr);
  EXPECT_EQ(server->peer_id()->ToString(), "spiffe://example.org/node-b/c");
  EXPECT_EQ(server->local_id().ToString(), "spiffe://example.org/s");
  EXPECT_EQ(server->cipher(), "TLS_AES_128_GCM_SHA256");
  EXPECT_EQ(server->version(), "TLSv1.3");
  EXPECT_FALSE(server->zero_hop());
  EXPECT_EQ(ToPem(server->peer_chain()), chain_pem) << "the peer's leaf and node-b, as sent";
  EXPECT_TRUE(server->ReverifyPeer().ok()) << server->ReverifyPeer().explanation;
  // Nothing can drive OpenSSL any more.
  EXPECT_EQ(server->Handshake(), HandshakeProgress::kFailed);
  EXPECT_EQ(server->SetFd(0).code(), absl::StatusCode::kFailedPrecondition);

  // A reload that revokes node-b still ends it.
  RevokeAndReload(node_b.certificate(), *server_ctx);
  PeerVerdict again = server->ReverifyPeer();
  EXPECT_EQ(again.reason, RejectReason::kRevoked) << again.explanation;
  EXPECT_THAT(again.explanation, HasSubstr("CN = node-b"));
}

TEST_F(TlsSessionTest, ClientRefusesAnImpostorServer) {
  auto client_ctx = Context(TlsRole::kClient);
  auto server_ctx = Context(TlsRole::kServer);
  auto expected = *SpiffeIdPattern::Parse("spiffe://example.org/ns/db/*");
  {
    auto client = *client_ctx->NewSession(Issue("spiffe://example.org/c"), expected);
    auto server = *server_ctx->NewSession(Issue("spiffe://example.org/ns/db/postgres"));
    EXPECT_EQ(Run(*client, *server).client, HandshakeProgress::kDone);
  }
  auto client = *client_ctx->NewSession(Issue("spiffe://example.org/c"), expected);
  auto server = *server_ctx->NewSession(Issue("spiffe://example.org/ns/web/frontend"));
  Outcome out = Run(*client, *server);
  ASSERT_EQ(out.client, HandshakeProgress::kFailed);
  EXPECT_EQ(client->failure().code(), "unexpected_peer");
  EXPECT_THAT(client->failure().explanation,
              HasSubstr("presented spiffe://example.org/ns/web/frontend but "
                        "spiffe://example.org/ns/db/* was expected"));
}

TEST_F(TlsSessionTest, TrustStoreSwapAppliesToNewSessions) {
  auto client_ctx = Context(TlsRole::kClient);
  auto server_ctx = Context(TlsRole::kServer);
  server_ctx->SetTrustStore(std::make_shared<TrustStore>());  // trusts nobody
  auto client = *client_ctx->NewSession(Issue("spiffe://example.org/c"));
  auto server = *server_ctx->NewSession(Issue("spiffe://example.org/s"));
  Outcome out = Run(*client, *server);
  ASSERT_EQ(out.server, HandshakeProgress::kFailed);
  EXPECT_EQ(server->failure().code(), "untrusted_trust_domain");
}

TEST_F(TlsSessionTest, AnHttpRequestIsReportedAsAPlaintextClient) {
  auto server_ctx = Context(TlsRole::kServer);
  auto server = *server_ctx->NewSession(Issue("spiffe://example.org/s"));
  BIO* peer = nullptr;
  BIO* server_end = nullptr;
  BIO_new_bio_pair(&peer, 0, &server_end, 0);
  BioPtr peer_owner(peer);
  server->SetBio(server_end);
  const char request[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_GT(BIO_write(peer, request, sizeof(request) - 1), 0);
  EXPECT_EQ(server->Handshake(), HandshakeProgress::kFailed);
  EXPECT_EQ(server->failure().code(), "plaintext_refused");
  EXPECT_THAT(server->failure().explanation, ::testing::HasSubstr("plaintext client"));
}

TEST_F(TlsSessionTest, PeerClosingMidHandshakeIsReported) {
  auto server_ctx = Context(TlsRole::kServer);
  auto server = *server_ctx->NewSession(Issue("spiffe://example.org/s"));
  BIO* peer = nullptr;
  BIO* server_end = nullptr;
  BIO_new_bio_pair(&peer, 0, &server_end, 0);
  BioPtr peer_owner(peer);
  server->SetBio(server_end);
  EXPECT_EQ(server->Handshake(), HandshakeProgress::kWantRead);
  BIO_shutdown_wr(peer);
  EXPECT_EQ(server->Handshake(), HandshakeProgress::kFailed);
  EXPECT_EQ(server->failure().code(), "connection_closed");
}

TEST_F(TlsSessionTest, Tls12ClientIsRefused) {
  auto server_ctx = Context(TlsRole::kServer);
  auto server = *server_ctx->NewSession(Issue("spiffe://example.org/s"));
  SslCtxPtr old_ctx(SSL_CTX_new(TLS_client_method()));
  SSL_CTX_set_max_proto_version(old_ctx.get(), TLS1_2_VERSION);
  SslPtr old(SSL_new(old_ctx.get()));
  SSL_set_connect_state(old.get());
  BIO* client_end = nullptr;
  BIO* server_end = nullptr;
  BIO_new_bio_pair(&client_end, 0, &server_end, 0);
  SSL_set_bio(old.get(), client_end, client_end);
  server->SetBio(server_end);
  HandshakeProgress progress = HandshakeProgress::kWantRead;
  for (int i = 0; i < 5 && progress == HandshakeProgress::kWantRead; ++i) {
    SSL_do_handshake(old.get());
    progress = server->Handshake();
  }
  EXPECT_EQ(progress, HandshakeProgress::kFailed);
  EXPECT_EQ(server->failure().code(), "protocol_error");
  ERR_clear_error();
}

}  // namespace
}  // namespace ktrust
