#include "ktrust/bpf/abi_address.h"

#include <arpa/inet.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace ktrust {

absl::StatusOr<AbiAddress> ToAbiAddress(const SocketAddress& address) {
  AbiAddress out{};
  if (address.family() == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(address.get());
    out[10] = 0xff;
    out[11] = 0xff;
    std::memcpy(out.data() + 12, &sin->sin_addr, 4);
    return out;
  }
  if (address.family() == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(address.get());
    std::memcpy(out.data(), &sin6->sin6_addr, 16);
    return out;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("address family ", address.family(), " is neither IPv4 nor IPv6"));
}

SocketAddress FromAbiAddress(const uint8_t address[16], uint16_t port) {
  static constexpr uint8_t kMappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(address, kMappedPrefix, sizeof(kMappedPrefix)) == 0) {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    std::memcpy(&sin.sin_addr, address + 12, 4);
    return SocketAddress::FromSockaddr(reinterpret_cast<const sockaddr*>(&sin), sizeof(sin));
  }
  sockaddr_in6 sin6{};
  sin6.sin6_family = AF_INET6;
  sin6.sin6_port = htons(port);
  std::memcpy(&sin6.sin6_addr, address, 16);
  return SocketAddress::FromSockaddr(reinterpret_cast<const sockaddr*>(&sin6), sizeof(sin6));
}

}  // namespace ktrust
