// The TLS 1.3 cipher suites ktrust negotiates (exactly those kernel TLS can
// carry), their record limits, and the record-protection key and IV derived
// from a traffic secret (RFC 8446 §7.3).
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ktrust/common/secret.h"

namespace ktrust {

// Values are the IANA code points (SSL_CIPHER_get_protocol_id).
enum class CipherSuite : uint16_t {
  kAes128GcmSha256 = 0x1301,
  kAes256GcmSha384 = 0x1302,
  kChaCha20Poly1305Sha256 = 0x1303,
};

absl::StatusOr<CipherSuite> CipherSuiteFromId(uint16_t iana_id);
// The RFC 8446 name, as OpenSSL reports it: "TLS_AES_128_GCM_SHA256".
absl::StatusOr<CipherSuite> CipherSuiteFromName(absl::string_view name);
absl::string_view CipherSuiteName(CipherSuite suite);

// AEAD key length in bytes: 16 for AES-128-GCM, 32 for the other two.
size_t KeyLength(CipherSuite suite);
// Every TLS 1.3 suite uses a 12-byte per-record nonce base (RFC 8446 §5.3).
inline constexpr size_t kTrafficIvLength = 12;
// Length of the suite's hash, which is also the length of its traffic secrets.
size_t SecretLength(CipherSuite suite);

// RFC 8446 §5.5: at most 2^24.5 full-size records per AES-GCM key; we stop at 2^24.
inline constexpr uint64_t kAesGcmRecordLimit = uint64_t{1} << 24;
// RFC 8446 §5.5: ChaCha20-Poly1305's sequence number wraps before its limit.
inline constexpr uint64_t kChaCha20Poly1305RecordLimit = uint64_t{1} << 62;

// Records one key may protect in one direction before the connection must end
// (kernel TLS before 6.14 cannot rekey).
uint64_t RecordLimit(CipherSuite suite);
// By suite name; an unknown name gets the strictest limit.
uint64_t RecordLimit(absl::string_view suite_name);

struct TrafficKeys {
  Secret key;  // KeyLength(suite) bytes
  Secret iv;   // kTrafficIvLength bytes
};

// key = HKDF-Expand-Label(secret, "key", "", key_length) and
// iv = HKDF-Expand-Label(secret, "iv", "", 12) with the suite's hash.
absl::StatusOr<TrafficKeys> DeriveTrafficKeys(CipherSuite suite, const Secret& traffic_secret);

}  // namespace ktrust
