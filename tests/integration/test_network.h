// Loopback helpers for the engine's integration tests: a backend
// "application" that counts what reaches it, and blocking client sockets
// that never hang a test (every socket has a receive/send timeout).
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ktrust/common/socket_address.h"
#include "ktrust/common/unique_fd.h"

namespace ktrust::testing {

// Opens a blocking TCP connection with I/O timeouts; invalid on failure.
// `source`: the local address to bind first (port 0), e.g. 127.0.0.2 to
// stand for another host.
UniqueFd ConnectTo(const SocketAddress& addr, const SocketAddress* source = nullptr);
// Writes everything; false on error.
bool SendAll(int fd, const void* data, size_t len);
// Reads until EOF (true) or error/timeout (false, with errno kept in *err).
bool ReadToEof(int fd, std::string* out, int* err = nullptr);
// Reads exactly len bytes.
bool ReadExactly(int fd, size_t len, std::string* out);
// close() with RST.
void CloseWithReset(UniqueFd fd);

// Deterministic pseudo-random bytes, so both ends can hash what they expect.
std::string RandomBytes(size_t len, uint64_t seed);
std::string Sha256Hex(const std::string& data);

// A TCP server on 127.0.0.1 whose handler runs on its own thread per connection.
class TestBackend {
 public:
  using Handler = std::function<void(int fd, TestBackend& self)>;
  explicit TestBackend(Handler handler);
  ~TestBackend();

  SocketAddress address() const { return address_; }
  int accepted() const { return accepted_.load(); }
  uint64_t bytes_received() const { return bytes_received_.load(); }
  void AddReceived(uint64_t n) { bytes_received_.fetch_add(n); }

  // Echoes until EOF, then half-closes.
  static void Echo(int fd, TestBackend& self);

 private:
  Handler handler_;
  UniqueFd listener_;
  SocketAddress address_;
  std::atomic<int> accepted_{0};
  std::atomic<uint64_t> bytes_received_{0};
  std::atomic<bool> stopping_{false};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<std::thread> workers_;
};

}  // namespace ktrust::testing
