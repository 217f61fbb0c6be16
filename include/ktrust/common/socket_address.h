// An IPv4 or IPv6 socket address, parsed from and printed as "1.2.3.4:80" or
// "[::1]:80".
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ktrust {

class SocketAddress {
 public:
  SocketAddress() = default;
  static absl::StatusOr<SocketAddress> Parse(absl::string_view text);
  static SocketAddress FromSockaddr(const sockaddr* sa, socklen_t len);
  // The local or peer address of a socket.
  static absl::StatusOr<SocketAddress> LocalOf(int fd);
  static absl::StatusOr<SocketAddress> PeerOf(int fd);

  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage_); }
  socklen_t size() const { return len_; }
  int family() const { return storage_.ss_family; }
  uint16_t port() const;
  void set_port(uint16_t port);
  std::string ToString() const;

 private:
  sockaddr_storage storage_{};
  socklen_t len_ = 0;
};

}  // namespace ktrust
