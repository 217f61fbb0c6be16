#include "ktrust/common/socket_address.h"

#include <arpa/inet.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace ktrust {

absl::StatusOr<SocketAddress> SocketAddress::Parse(absl::string_view text) {
  auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("invalid address \"", text, "\": ", why,
                                                   " (expected 1.2.3.4:80 or [::1]:80)"));
  };
  size_t colon = text.rfind(':');
  if (colon == absl::string_view::npos) return invalid("no port");
  absl::string_view host = text.substr(0, colon);
  uint32_t port = 0;
  if (!absl::SimpleAtoi(text.substr(colon + 1), &port) || port > 65535) {
    return invalid("bad port");
  }
  SocketAddress out;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    std::string h(host.substr(1, host.size() - 2));
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&out.storage_);
    if (inet_pton(AF_INET6, h.c_str(), &sin6->sin6_addr) != 1) return invalid("bad IPv6 address");
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(static_cast<uint16_t>(port));
    out.len_ = sizeof(sockaddr_in6);
    return out;
  }
  std::string h(host);
  auto* sin = reinterpret_cast<sockaddr_in*>(&out.storage_);
  if (inet_pton(AF_INET, h.c_str(), &sin->sin_addr) != 1) return invalid("bad IPv4 address");
  sin->sin_family = AF_INET;
  sin->sin_port = htons(static_cast<uint16_t>(port));
  out.len_ = sizeof(sockaddr_in);
  return out;
}

SocketAddress SocketAddress::FromSockaddr(const sockaddr* sa, socklen_t len) {
  SocketAddress out;
  len = std::min<socklen_t>(len, sizeof(out.storage_));
  memcpy(&out.storage_, sa, len);
  out.len_ = len;
  return out;
}

absl::StatusOr<SocketAddress> SocketAddress::LocalOf(int fd) {
  SocketAddress out;
  out.len_ = sizeof(out.storage_);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&out.storage_), &out.len_) != 0) {
    return absl::ErrnoToStatus(errno, "getsockname");
  }
  return out;
}

absl::StatusOr<SocketAddress> SocketAddress::PeerOf(int fd) {
  SocketAddress out;
  out.len_ = sizeof(out.storage_);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&out.storage_), &out.len_) != 0) {
    return absl::ErrnoToStatus(errno, "getpeername");
  }
  return out;
}

uint16_t SocketAddress::port() const {
  if (family() == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&storage_)->sin_port);
  if (family() == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_port);
  }
  return 0;
}

void SocketAddress::set_port(uint16_t port) {
  if (family() == AF_INET) reinterpret_cast<sockaddr_in*>(&storage_)->sin_port = htons(port);
  if (family() == AF_INET6) reinterpret_cast<sockaddr_in6*>(&storage_)->sin6_port = htons(port);
}

std::string SocketAddress::ToString() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (family() == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage_)->sin_addr, buf,
              sizeof(buf));
    return absl::StrCat(buf, ":", port());
  }
  if (family() == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_addr, buf,
              sizeof(buf));
    return absl::StrCat("[", buf, "]:", port());
  }
  return "?";
}

}  // namespace ktrust
