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
  // `fin_only`: the zero-hop end rule (kZeroHopAlpn was negotiated): the end
  // of a direction is a bare FIN, sent without close_notify, and a FIN
  // without close_notify is a clean end rather than a truncation.
  SslEnd(SSL* ssl, int fd, bool fin_only = false) : ssl_(ssl), fd_(fd), fin_only_(fin_only) {
    // Otherwise OpenSSL answers the peer's bare FIN with a fatal
    // decode_error alert, which a kTLS peer's recv() reports as EIO.
    if (fin_only_) SSL_set_options(ssl_, SSL_OP_IGNORE_UNEXPECTED_EOF);
    // One read(2) per record and often fewer, instead of two (header, then
    // body). Only here: the record layer stays OpenSSL's for good, so no
    // kernel TLS install can find records already pulled off the socket.
    SSL_set_read_ahead(ssl_, 1);
  }
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
  bool fin_only_;
  bool close_notify_sent_ = false;
};

}  // namespace ktrust
