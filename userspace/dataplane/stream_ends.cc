#include "stream_ends.h"

#include <openssl/err.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "ktrust/common/error_text.h"

namespace ktrust {
namespace {

StreamEnd::Io Ok(size_t n, bool drained = false) {
  StreamEnd::Io io{StreamEnd::Io::kOk, n, 0, ""};
  io.drained = drained;
  return io;
}
StreamEnd::Io Block(short events) { return {StreamEnd::Io::kWouldBlock, 0, events, ""}; }
StreamEnd::Io Fail(std::string why) { return {StreamEnd::Io::kError, 0, 0, std::move(why)}; }

constexpr size_t kMaxRecord = 16384;

}  // namespace

StreamEnd::Io SocketEnd::Read(char* buf, size_t len) {
  while (true) {
    ssize_t n = recv(fd_, buf, len, MSG_DONTWAIT);
    if (n > 0) return Ok(static_cast<size_t>(n), static_cast<size_t>(n) < len);
    if (n == 0) return {Io::kEof, 0, 0, ""};
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return Block(POLLIN);
    return Fail(absl::StrCat("read from the application: ", ErrnoText(errno)));
  }
}

StreamEnd::Io SocketEnd::Write(const char* buf, size_t len) {
  while (true) {
    ssize_t n = send(fd_, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n >= 0) return Ok(static_cast<size_t>(n));
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return Block(POLLOUT);
    return Fail(absl::StrCat("write to the application: ", ErrnoText(errno)));
  }
}

StreamEnd::Io SocketEnd::ShutdownWrite() {
  if (shutdown(fd_, SHUT_WR) != 0 && errno != ENOTCONN) {
    return Fail(absl::StrCat("shutdown: ", ErrnoText(errno)));
  }
  return Ok(0);
}

StreamEnd::Io SslEnd::Error(int ret, const char* operation) {
  int err = SSL_get_error(ssl_, ret);
  if (err == SSL_ERROR_WANT_READ) return Block(POLLIN);
  if (err == SSL_ERROR_WANT_WRITE) return Block(POLLOUT);
  unsigned long lib = ERR_peek_error();
  std::string why;
  if (err == SSL_ERROR_SYSCALL && lib == 0) {
    why = errno != 0 ? absl::StrCat("TLS ", operation, ": ", ErrnoText(errno))
                     : absl::StrCat("TLS ", operation,
                                    ": the peer closed without close_notify (truncated)");
  } else if (ERR_GET_REASON(lib) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
    why = absl::StrCat("TLS ", operation, ": the peer closed without close_notify (truncated)");
  } else {
    const char* reason = ERR_reason_error_string(lib);
    why = absl::StrCat("TLS ", operation, ": ", reason ? reason : "protocol error");
  }
  ERR_clear_error();
  return Fail(std::move(why));
}

StreamEnd::Io SslEnd::Read(char* buf, size_t len) {
  ERR_clear_error();
  errno = 0;
  size_t n = 0;
  int ret = SSL_read_ex(ssl_, buf, len, &n);
  if (ret == 1) {
    ++records_read_;  // SSL_read returns at most one record's data
    // Nothing buffered (read-ahead keeps what came after the record): the
    // socket was drained by the last read, as far as anyone can tell.
    return Ok(n, SSL_has_pending(ssl_) == 0);
  }
  int err = SSL_get_error(ssl_, ret);
  if (err == SSL_ERROR_ZERO_RETURN) return {Io::kEof, 0, 0, ""};
  // A FIN with no close_notify before it: the clean end under the zero-hop
  // rule (an error that is not the end of the transport stays an error).
  if (fin_only_ && ((err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && errno == 0) ||
                    (err == SSL_ERROR_SSL &&
                     ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING))) {
    ERR_clear_error();
    return {Io::kEof, 0, 0, ""};
  }
  return Error(ret, "read");
}

StreamEnd::Io SslEnd::Write(const char* buf, size_t len) {
  ERR_clear_error();
  errno = 0;
  size_t n = 0;
  int ret = SSL_write_ex(ssl_, buf, len, &n);
  if (ret == 1) {
    records_written_ += (n + kMaxRecord - 1) / kMaxRecord;
    return Ok(n);
  }
  return Error(ret, "write");
}

StreamEnd::Io SslEnd::ShutdownWrite() {
  if (!close_notify_sent_ && !fin_only_) {
    ERR_clear_error();
    int ret = SSL_shutdown(ssl_);
    if (ret < 0) return Error(ret, "close_notify");
    close_notify_sent_ = true;
  }
  if (shutdown(fd_, SHUT_WR) != 0 && errno != ENOTCONN) {
    return Fail(absl::StrCat("shutdown: ", ErrnoText(errno)));
  }
  return Ok(0);
}

}  // namespace ktrust
