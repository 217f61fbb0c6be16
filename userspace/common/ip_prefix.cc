#include "ktrust/common/ip_prefix.h"

#include <arpa/inet.h>

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace ktrust {

absl::StatusOr<IpPrefix> IpPrefix::Parse(absl::string_view text) {
  auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid prefix \"", text, "\": ", why, " (expected 10.0.0.0/8 or fd00::/8)"));
  };
  absl::string_view host = text;
  absl::string_view length_text;
  if (size_t slash = text.find('/'); slash != absl::string_view::npos) {
    host = text.substr(0, slash);
    length_text = text.substr(slash + 1);
  }
  IpPrefix out;
  std::string h(host);
  uint32_t max_length = 0;
  in_addr v4{};
  if (inet_pton(AF_INET, h.c_str(), &v4) == 1) {
    out.v4_ = true;
    max_length = 32;
    out.address_[10] = 0xff;
    out.address_[11] = 0xff;
    std::memcpy(out.address_.data() + 12, &v4, 4);
  } else if (inet_pton(AF_INET6, h.c_str(), out.address_.data()) == 1) {
    max_length = 128;
  } else {
    return invalid("bad address");
  }
  uint32_t length = max_length;
  if (!length_text.empty() || host.size() != text.size()) {
    if (!absl::SimpleAtoi(length_text, &length) || length > max_length) {
      return invalid("bad prefix length");
    }
  }
  out.mapped_length_ = out.v4_ ? kV4MappedPrefixBits + length : length;

  // Every bit past the prefix must be zero.
  for (uint32_t bit = out.mapped_length_; bit < 128; ++bit) {
    if (out.address_[bit / 8] & (0x80u >> (bit % 8))) return invalid("host bits are set");
  }
  return out;
}

absl::StatusOr<IpPrefix> IpPrefix::HostOf(const SocketAddress& address) {
  IpPrefix out;
  if (address.family() == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(address.get());
    out.address_[10] = 0xff;
    out.address_[11] = 0xff;
    std::memcpy(out.address_.data() + 12, &in->sin_addr, 4);
    out.v4_ = true;
  } else if (address.family() == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(address.get());
    std::memcpy(out.address_.data(), &in6->sin6_addr, 16);
    out.v4_ = IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("not an IPv4 or IPv6 address (family ", address.family(), ")"));
  }
  out.mapped_length_ = 128;
  return out;
}

std::string IpPrefix::ToString() const {
  char text[INET6_ADDRSTRLEN] = {};
  if (v4_) {
    inet_ntop(AF_INET, address_.data() + 12, text, sizeof(text));
    return absl::StrCat(text, "/", mapped_length_ - kV4MappedPrefixBits);
  }
  inet_ntop(AF_INET6, address_.data(), text, sizeof(text));
  return absl::StrCat(text, "/", mapped_length_);
}

bool IpPrefix::Contains(const IpPrefix& inner) const {
  if (mapped_length_ > inner.mapped_length_) return false;
  for (uint32_t i = 0; i < mapped_length_; ++i) {
    uint8_t mask = static_cast<uint8_t>(0x80 >> (i % 8));
    if ((address_[i / 8] & mask) != (inner.address_[i / 8] & mask)) return false;
  }
  return true;
}

}  // namespace ktrust
