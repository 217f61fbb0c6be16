// An IPv4 or IPv6 CIDR prefix in one 16-byte form, IPv4 mapped to
// ::ffff:a.b.c.d so that an IPv4 /8 is a /104: the form the BPF maps take
// (interception_maps.cc checks that the two agree).
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ktrust/common/socket_address.h"

namespace ktrust {

class IpPrefix {
 public:
  // Bits before the IPv4 part of an IPv4-mapped address (::ffff:0:0/96).
  static constexpr uint32_t kV4MappedPrefixBits = 96;

  // "10.0.0.0/8", "fd00::/8"; a bare address is a host prefix (/32, /128).
  // Host bits past the length are refused: they usually mean a typo.
  static absl::StatusOr<IpPrefix> Parse(absl::string_view text);
  // The host prefix (/32, /128) of an AF_INET or AF_INET6 address; an
  // IPv4-mapped IPv6 address is its IPv4 address, as for the kernel's trie.
  // InvalidArgument for any other family.
  static absl::StatusOr<IpPrefix> HostOf(const SocketAddress& address);

  const std::array<uint8_t, 16>& address() const { return address_; }
  // Bits of address(), in the mapped space for IPv4.
  uint32_t mapped_length() const { return mapped_length_; }
  bool is_v4() const { return v4_; }
  // Whether every address of `inner` is in this prefix. Compared in the
  // mapped form: an IPv6 prefix covering ::ffff:0:0/96 (::/0, say) contains
  // IPv4 prefixes too.
  bool Contains(const IpPrefix& inner) const;
  // As parsed: "10.0.0.0/8".
  std::string ToString() const;

 private:
  IpPrefix() = default;

  std::array<uint8_t, 16> address_{};
  uint32_t mapped_length_ = 0;
  bool v4_ = false;
};

}  // namespace ktrust
