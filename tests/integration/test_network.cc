#include "integration/test_network.h"

#include <openssl/evp.h>
#include <poll.h>

#include <cerrno>
#include <cstring>
#include <random>

namespace ktrust::testing {
namespace {

// Only a guard against a hung test: generous, because the vm tier runs on an
// emulated CPU shared with the rest of CI.
constexpr time_t kIoTimeoutSeconds = 120;

}  // namespace

UniqueFd ConnectTo(const SocketAddress& addr, const SocketAddress* source) {
  UniqueFd fd(socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (source && bind(fd.get(), source->get(), source->size()) != 0) return UniqueFd();
  timeval tv{kIoTimeoutSeconds, 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (connect(fd.get(), addr.get(), addr.size()) == 0) return fd;
  if (errno != EINTR) return UniqueFd();
  // Interrupted by a signal: the connect goes on in the background; wait for it.
  pollfd pfd{fd.get(), POLLOUT, 0};
  while (poll(&pfd, 1, kIoTimeoutSeconds * 1000) < 0 && errno == EINTR) {
  }
  int err = 0;
  socklen_t len = sizeof(err);
  getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0 || !(pfd.revents & POLLOUT)) {
    errno = err ? err : ETIMEDOUT;
    return UniqueFd();
  }
  return fd;
}

bool SendAll(int fd, const void* data, size_t len) {
  const char* p = static_cast<const char*>(data);
  while (len > 0) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

bool ReadToEof(int fd, std::string* out, int* err) {
  char buf[65536];
  while (true) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0) return true;
    if (n < 0) {
      if (errno == EINTR) continue;
      if (err) *err = errno;
      return false;
    }
    if (out) out->append(buf, static_cast<size_t>(n));
  }
}

bool ReadExactly(int fd, size_t len, std::string* out) {
  out->clear();
  char buf[65536];
  while (out->size() < len) {
    ssize_t n = recv(fd, buf, std::min(sizeof(buf), len - out->size()), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    out->append(buf, static_cast<size_t>(n));
  }
  return true;
}

void CloseWithReset(UniqueFd fd) {
  linger lg{1, 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

std::string RandomBytes(size_t len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(len, '\0');
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t v = rng();
    memcpy(&out[i], &v, 8);
  }
  for (; i < len; ++i) out[i] = static_cast<char>(rng());
  return out;
}

std::string Sha256Hex(const std::string& data) {
  unsigned char md[32];
  unsigned int md_len = 0;
  EVP_Digest(data.data(), data.size(), md, &md_len, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < md_len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

TestBackend::TestBackend(Handler handler) : handler_(std::move(handler)) {
  listener_.Reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  address_ = *SocketAddress::Parse("127.0.0.1:0");
  bind(listener_.get(), address_.get(), address_.size());
  listen(listener_.get(), 1024);
  address_ = *SocketAddress::LocalOf(listener_.get());
  acceptor_ = std::thread([this] {
    while (!stopping_.load()) {
      pollfd pfd{listener_.get(), POLLIN, 0};
      if (poll(&pfd, 1, 100) <= 0) continue;
      int fd = accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      accepted_.fetch_add(1);
      timeval tv{kIoTimeoutSeconds, 0};
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
      std::lock_guard<std::mutex> lock(mu_);
      workers_.emplace_back([this, fd] {
        handler_(fd, *this);
        close(fd);
      });
    }
  });
}

TestBackend::~TestBackend() {
  stopping_.store(true);
  acceptor_.join();
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& w : workers_) w.join();
}

void TestBackend::Echo(int fd, TestBackend& self) {
  char buf[65536];
  while (true) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    self.AddReceived(static_cast<uint64_t>(n));
    if (!SendAll(fd, buf, static_cast<size_t>(n))) return;
  }
  shutdown(fd, SHUT_WR);
}

}  // namespace ktrust::testing
