// Keeps one workload's SVID fresh: renews it at half-life and hands out the
// current one atomically, so a handshake never sees a half-swapped identity.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ktrust/identity/svid.h"

namespace ktrust {

class SvidRotator {
 public:
  // Mints a new SVID for the workload at the given time.
  using Issuer = std::function<absl::StatusOr<Svid>(absl::Time now)>;

  // Issues the first SVID right away; fails if that fails.
  static absl::StatusOr<std::unique_ptr<SvidRotator>> Create(Issuer issuer, absl::Time now);

  // The SVID to use for a new handshake. Lock-free for readers.
  std::shared_ptr<const Svid> Current() const { return current_.load(); }

  // When the current SVID should be replaced: half its lifetime.
  absl::Time RenewAt() const;

  // Renews if `now` is past RenewAt(). On failure the current SVID stays in
  // place (it is still valid until notAfter) and the error is returned and
  // kept for status reports; the next call tries again.
  absl::Status RotateIfDue(absl::Time now);

  // Renews now whatever RenewAt() says, for an SVID issued at `now` (the
  // issuing CA changed). Failure is handled as in RotateIfDue.
  absl::Status RotateNow(absl::Time now);

  // The last renewal error, empty after a success.
  std::string last_error() const;

 private:
  SvidRotator(Issuer issuer, Svid first)
      : issuer_(std::move(issuer)), current_(std::make_shared<const Svid>(std::move(first))) {}

  absl::Status Rotate(absl::Time now, bool force);

  Issuer issuer_;
  std::atomic<std::shared_ptr<const Svid>> current_;
  mutable absl::Mutex mu_;
  std::string last_error_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ktrust
