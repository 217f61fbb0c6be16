#include "ktrust/kubernetes/backoff.h"

#include <algorithm>
#include <memory>
#include <random>

namespace ktrust {

Backoff::Backoff(absl::Duration initial, absl::Duration max, double jitter,
                 std::function<double()> random)
    : initial_(initial), max_(max), jitter_(jitter), random_(std::move(random)) {
  if (!random_) {
    random_ = [engine = std::make_shared<std::minstd_rand>(std::random_device{}())]() {
      return std::uniform_real_distribution<double>(0, 1)(*engine);
    };
  }
}

absl::Duration Backoff::Next() {
  // Doubling stops at max long before the shift could overflow.
  absl::Duration delay = initial_;
  for (int i = 0; i < failures_ && delay < max_; ++i) delay *= 2;
  delay = std::min(delay, max_);
  ++failures_;
  // Jitter only shortens the wait, so max stays the longest.
  return delay - delay * (jitter_ * std::clamp(random_(), 0.0, 1.0));
}

}  // namespace ktrust
