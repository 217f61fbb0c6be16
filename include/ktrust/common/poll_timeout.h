// poll(2)'s timeout argument for an absl::Duration.
#pragma once

#include <climits>
#include <cstdint>

#include "absl/time/time.h"

namespace ktrust {

// -1 (no limit) for InfiniteDuration; otherwise whole milliseconds, rounded
// up so that a short wait is not turned into a busy loop, at most INT_MAX.
inline int PollMilliseconds(absl::Duration timeout) {
  if (timeout == absl::InfiniteDuration()) return -1;
  int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(timeout, absl::Milliseconds(1)));
  if (ms < 0) return 0;
  return ms > INT_MAX ? INT_MAX : static_cast<int>(ms);
}

}  // namespace ktrust
