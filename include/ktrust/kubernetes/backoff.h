// Exponential backoff with a cap and jitter, for reconnecting to the API
// server: agents on every node of a cluster fail together when it restarts,
// and must not come back in lockstep.
#pragma once

#include <functional>

#include "absl/time/time.h"

namespace ktrust {

class Backoff {
 public:
  // `random` returns a value in [0, 1); replaceable for tests.
  Backoff(absl::Duration initial, absl::Duration max, double jitter,
          std::function<double()> random = nullptr);

  // The wait before the next attempt: initial * 2^failures, at most max, less
  // a random fraction up to `jitter` of it. Counts one more failure.
  absl::Duration Next();
  // After a success: the next failure waits `initial` again.
  void Reset() { failures_ = 0; }
  int failures() const { return failures_; }

 private:
  absl::Duration initial_;
  absl::Duration max_;
  double jitter_;
  std::function<double()> random_;
  int failures_ = 0;
};

}  // namespace ktrust
