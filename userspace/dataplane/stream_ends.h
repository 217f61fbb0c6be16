// The two kinds of StreamEnd the copy pump moves bytes between: a plain
// socket (the application's side) and an OpenSSL session (the wire, when the
// kernel cannot do the crypto).
#pragma once

#include <openssl/ssl.h>

#include "pump.h"

namespace ktrust {

class SocketEnd : public StreamEnd {
 public:
  explicit SocketEnd(int fd) : fd_(fd) {}
  int fd() const override { return fd_; }
  Io Read(char* buf, size_t len) override;
  Io Write(const char* buf, size_t len) override;
  Io ShutdownWrite() override;

 private:
  int fd_;
};

class SslEnd : public StreamEnd {
 public:
  SslEnd(SSL* ssl, int fd) : ssl_(ssl), fd_(fd) {}
  int fd() const override { return fd_; }
  Io Read(char* buf, size_t len) override;
  Io Write(const char* buf, size_t len) override;
  Io ShutdownWrite() override;

  // TLS records written and read so far: the AEAD limits count records.
  uint64_t records_written() const { return records_written_; }
  uint64_t records_read() const { return records_read_; }

 private:
  Io Error(int ret, const char* operation);

  SSL* ssl_;
  int fd_;
  uint64_t records_written_ = 0;
  uint64_t records_read_ = 0;
  bool close_notify_sent_ = false;
};

}  // namespace ktrust
