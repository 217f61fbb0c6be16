// Record keys from traffic secrets: the published RFC 8448 vectors, and for
// the suites RFC 8448 does not cover, an independent HKDF-Expand-Label built
// here from RFC 8446 §7.1 by hand.
#include "ktrust/tls/traffic_keys.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_replace.h"
#include "ktrust/common/openssl_ptr.h"
#include "unit/test_pki.h"

namespace ktrust {
namespace {

using ::testing::HasSubstr;

// "9f 02 28 ..." as printed in RFC 8448 -> bytes.
std::string Hex(absl::string_view spaced) {
  return absl::HexStringToBytes(absl::StrReplaceAll(spaced, {{" ", ""}}));
}
std::string ToHex(absl::string_view bytes) { return absl::BytesToHexString(bytes); }

struct Rfc8448Vector {
  const char* name;
  const char* secret;
  const char* key;
  const char* iv;
};

// RFC 8448 §3 "Simple 1-RTT Handshake" (TLS_AES_128_GCM_SHA256): the four
// "derive ... traffic keys" steps, PRK -> "key expanded" / "iv expanded".
constexpr Rfc8448Vector kRfc8448[] = {
    {"server application write",
     "a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 "
     "43",
     "9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56", "cf 78 2b 88 dd 83 54 9a ad f1 e9 84"},
    {"client application write",
     "9e 40 64 6c e7 9a 7f 9d c0 5a f8 88 9b ce 65 52 87 5a fa 0b 06 df 00 87 f7 92 eb b7 c1 75 04 "
     "a5",
     "17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51", "5b 78 92 3d ee 08 57 90 33 e5 23 d9"},
    {"server handshake write",
     "b6 7b 7d 69 0c c1 6c 4e 75 e5 42 13 cb 2d 37 b4 e9 c9 12 bc de d9 10 5d 42 be fd 59 d3 91 ad "
     "38",
     "3f ce 51 60 09 c2 17 27 d0 f2 e4 e8 6e e4 03 bc", "5d 31 3e b2 67 12 76 ee 13 00 0b 30"},
    {"client handshake write",
     "b3 ed db 12 6e 06 7f 35 a7 80 b3 ab f4 5e 2d 8f 3b 1a 95 07 38 f5 2e 96 00 74 6a 0e 27 a5 5a "
     "21",
     "db fa a6 93 d1 76 2c 5b 66 6a f5 d9 50 25 8d 01", "5b d3 c7 1b 83 6e 0b 76 bb 73 26 5f"},
};

TEST(TrafficKeysTest, MatchesRfc8448SimpleOneRttVectors) {
  for (const Rfc8448Vector& v : kRfc8448) {
    SCOPED_TRACE(v.name);
    auto keys = DeriveTrafficKeys(CipherSuite::kAes128GcmSha256, Secret(Hex(v.secret)));
    ASSERT_TRUE(keys.ok()) << keys.status();
    EXPECT_EQ(ToHex(keys->key.view()), ToHex(Hex(v.key)));
    EXPECT_EQ(ToHex(keys->iv.view()), ToHex(Hex(v.iv)));
  }
}

// HkdfLabel (RFC 8446 §7.1): uint16 length, opaque label<7..255> =
// "tls13 " + label, opaque context<0..255> (empty here).
std::string HkdfLabel(absl::string_view label, size_t length) {
  std::string full = absl::StrCat("tls13 ", label);
  std::string out;
  out.push_back(static_cast<char>(length >> 8));
  out.push_back(static_cast<char>(length & 0xff));
  out.push_back(static_cast<char>(full.size()));
  out += full;
  out.push_back('\0');
  return out;
}

// HKDF-Expand (RFC 5869) with that label as info, through OpenSSL's plain
// HKDF rather than the TLS13-KDF the code under test uses.
std::string ExpandByHand(const char* digest, absl::string_view secret, absl::string_view label,
                         size_t length) {
  std::unique_ptr<EVP_KDF, OpenSslDeleter<EVP_KDF_free>> kdf(
      EVP_KDF_fetch(nullptr, "HKDF", nullptr));
  std::unique_ptr<EVP_KDF_CTX, OpenSslDeleter<EVP_KDF_CTX_free>> ctx(EVP_KDF_CTX_new(kdf.get()));
  std::string info = HkdfLabel(label, length);
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(digest), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<char*>(secret.data()),
                                        secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
      OSSL_PARAM_construct_end(),
  };
  std::string out(length, '\0');
  EXPECT_EQ(
      EVP_KDF_derive(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), out.size(), params),
      1);
  return out;
}

TEST(TrafficKeysTest, HandBuiltLabelMatchesRfc8448InfoBytes) {
  // RFC 8448 §3 prints the HkdfLabel too: "key info (13 octets)", "iv info (12 octets)".
  EXPECT_EQ(ToHex(HkdfLabel("key", 16)), ToHex(Hex("00 10 09 74 6c 73 31 33 20 6b 65 79 00")));
  EXPECT_EQ(ToHex(HkdfLabel("iv", 12)), ToHex(Hex("00 0c 08 74 6c 73 31 33 20 69 76 00")));
  // And the hand-built expansion reproduces the published key.
  EXPECT_EQ(ToHex(ExpandByHand("SHA256", Hex(kRfc8448[0].secret), "key", 16)),
            ToHex(Hex(kRfc8448[0].key)));
}

struct SuiteCase {
  CipherSuite suite;
  const char* digest;
  size_t secret_length;
  size_t key_length;
};

class TrafficKeysSuiteTest : public ::testing::TestWithParam<SuiteCase> {};

TEST_P(TrafficKeysSuiteTest, DerivesKeysOfTheRightLengthMatchingAnIndependentDerivation) {
  const SuiteCase& c = GetParam();
  EXPECT_EQ(SecretLength(c.suite), c.secret_length);
  EXPECT_EQ(KeyLength(c.suite), c.key_length);
  std::string secret(c.secret_length, '\0');
  ASSERT_EQ(
      RAND_bytes(reinterpret_cast<unsigned char*>(secret.data()), static_cast<int>(secret.size())),
      1);
  auto keys = DeriveTrafficKeys(c.suite, Secret(secret));
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(keys->key.view().size(), c.key_length);
  EXPECT_EQ(keys->iv.view().size(), kTrafficIvLength);
  EXPECT_EQ(ToHex(keys->key.view()), ToHex(ExpandByHand(c.digest, secret, "key", c.key_length)));
  EXPECT_EQ(ToHex(keys->iv.view()), ToHex(ExpandByHand(c.digest, secret, "iv", 12)));
}

TEST_P(TrafficKeysSuiteTest, RefusesASecretFromAnotherHash) {
  const SuiteCase& c = GetParam();
  size_t wrong = c.secret_length == 32 ? 48 : 32;
  auto keys = DeriveTrafficKeys(c.suite, Secret(std::string(wrong, 'x')));
  ASSERT_FALSE(keys.ok());
  EXPECT_EQ(keys.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(keys.status().message(), HasSubstr("traffic secret has"));
}

TEST_P(TrafficKeysSuiteTest, NameAndIdRoundTrip) {
  const SuiteCase& c = GetParam();
  EXPECT_EQ(*CipherSuiteFromName(CipherSuiteName(c.suite)), c.suite);
  EXPECT_EQ(*CipherSuiteFromId(static_cast<uint16_t>(c.suite)), c.suite);
}

INSTANTIATE_TEST_SUITE_P(
    AllSuites, TrafficKeysSuiteTest,
    ::testing::Values(SuiteCase{CipherSuite::kAes128GcmSha256, "SHA256", 32, 16},
                      SuiteCase{CipherSuite::kAes256GcmSha384, "SHA384", 48, 32},
                      SuiteCase{CipherSuite::kChaCha20Poly1305Sha256, "SHA256", 32, 32}),
    [](const auto& param) { return std::string(CipherSuiteName(param.param.suite)); });

TEST(TrafficKeysTest, RejectsSuitesKernelTlsCannotCarry) {
  EXPECT_FALSE(CipherSuiteFromName("TLS_AES_128_CCM_SHA256").ok());
  EXPECT_FALSE(CipherSuiteFromId(0x1304).ok());
  EXPECT_THAT(CipherSuiteFromId(0xc02f).status().message(), HasSubstr("0xc02f"));
}

TEST(TrafficKeysTest, RecordLimitsFollowRfc8446) {
  EXPECT_EQ(RecordLimit("TLS_AES_128_GCM_SHA256"), uint64_t{1} << 24);
  EXPECT_EQ(RecordLimit("TLS_AES_256_GCM_SHA384"), uint64_t{1} << 24);
  EXPECT_EQ(RecordLimit("TLS_CHACHA20_POLY1305_SHA256"), uint64_t{1} << 62);
  // Unknown: the strictest limit, never "unlimited".
  EXPECT_EQ(RecordLimit("TLS_SOMETHING_ELSE"), uint64_t{1} << 24);
}

}  // namespace
}  // namespace ktrust
