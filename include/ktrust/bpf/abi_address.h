// Conversions between SocketAddress and the BPF ABI's address form
// (16 bytes, network order, IPv4 mapped; ports in host order).
#pragma once

#include <array>
#include <cstdint>

#include "absl/status/statusor.h"
#include "ktrust/common/socket_address.h"

namespace ktrust {

using AbiAddress = std::array<uint8_t, 16>;

// AF_INET becomes ::ffff:a.b.c.d; AF_INET6 is copied. Other families fail.
absl::StatusOr<AbiAddress> ToAbiAddress(const SocketAddress& address);

// A mapped address becomes AF_INET, anything else AF_INET6.
SocketAddress FromAbiAddress(const uint8_t address[16], uint16_t port);

}  // namespace ktrust
