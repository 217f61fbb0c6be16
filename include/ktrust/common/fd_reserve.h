// One file descriptor held in reserve for a listener at the process's fd
// limit. There accept fails with EMFILE and leaves the connection queued:
// the client waits for nothing, and a listener polled for readability is
// ready again at once (a spin). With the reserve the owner takes the
// connection off the queue and refuses it, then takes the reserve back.
//
// Not thread-safe: one per thread that accepts. Another thread may take the
// descriptor the reserve freed; then AcceptWithReserve fails with EMFILE
// and the owner waits before trying again.
#pragma once

#include "absl/status/statusor.h"
#include "ktrust/common/unique_fd.h"

namespace ktrust {

class FdReserve {
 public:
  FdReserve() { Refill(); }

  // Frees the reserve and accepts one connection from listen_fd without
  // blocking (even on a blocking listener). The connection (SOCK_NONBLOCK |
  // SOCK_CLOEXEC), which holds the reserve's descriptor: the next call
  // takes the reserve back once the caller has closed it. Or the errno's
  // status: Unavailable (EAGAIN) when none is pending, ResourceExhausted
  // when still out of descriptors.
  absl::StatusOr<UniqueFd> AcceptWithReserve(int listen_fd);

  bool held() const { return spare_.valid(); }

 private:
  void Refill();

  UniqueFd spare_;
};

// EMFILE or ENFILE when absl::ErrnoToStatus made `status` from one of
// them (socket(), accept()), else 0.
int DescriptorErrorOf(const absl::Status& status);

// Why a connection was refused for want of descriptors, in words: which
// limit (the process's RLIMIT_NOFILE for EMFILE, the system's for ENFILE).
std::string OutOfDescriptorsReason(int error);

// ENOMEM or ENOBUFS when absl::ErrnoToStatus made `status` from one of
// them, or OpenSSL reported a failed allocation (OpenSslError), else 0
// (ENOMEM for OpenSSL's).
int MemoryErrorOf(const absl::Status& status);

// Why a connection was refused under memory pressure, in words.
std::string OutOfMemoryReason(int error);

}  // namespace ktrust
