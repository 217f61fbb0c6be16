#include "ktrust/identity/svid_rotator.h"

#include "absl/strings/str_cat.h"

namespace ktrust {

absl::StatusOr<std::unique_ptr<SvidRotator>> SvidRotator::Create(Issuer issuer, absl::Time now) {
  auto first = issuer(now);
  if (!first.ok()) return first.status();
  return std::unique_ptr<SvidRotator>(new SvidRotator(std::move(issuer), *std::move(first)));
}

absl::Time SvidRotator::RenewAt() const {
  auto svid = Current();
  return svid->not_before() + (svid->not_after() - svid->not_before()) / 2;
}

absl::Status SvidRotator::RotateIfDue(absl::Time now) { return Rotate(now, /*force=*/false); }

absl::Status SvidRotator::RotateNow(absl::Time now) { return Rotate(now, /*force=*/true); }

absl::Status SvidRotator::Rotate(absl::Time now, bool force) {
  // One renewal at a time; readers keep using Current() meanwhile.
  absl::MutexLock lock(&mu_);
  if (!force && now < RenewAt()) return absl::OkStatus();
  auto next = issuer_(now);
  if (!next.ok()) {
    last_error_ = std::string(next.status().message());
    return next.status();
  }
  last_error_.clear();
  current_.store(std::make_shared<const Svid>(*std::move(next)));
  return absl::OkStatus();
}

std::string SvidRotator::last_error() const {
  absl::MutexLock lock(&mu_);
  return last_error_;
}

}  // namespace ktrust
