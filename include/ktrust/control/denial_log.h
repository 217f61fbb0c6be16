// The most recent refused connections, for `ktrust denials` and the metrics.
// Safe to use from any thread: the data path adds, the control server reads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ktrust/control/views.h"

namespace ktrust::control {

class DenialLog {
 public:
  static constexpr size_t kDefaultCapacity = 1024;
  explicit DenialLog(size_t capacity = kDefaultCapacity);

  // Records one denial; the oldest entry goes when the log is full. An entry
  // with time 0 gets the current time.
  void Add(DenialView denial);

  // The retained entries with time >= `since`, oldest first, newest last.
  // absl::InfinitePast() for all of them.
  std::vector<DenialView> Since(absl::Time since) const;

  // Every denial ever added (not only the retained ones), by result code,
  // for counters such as ktrust_denials_total{result="denied"}.
  std::map<std::string, uint64_t> CountsByResult() const;

  size_t size() const;
  size_t capacity() const { return capacity_; }

 private:
  const size_t capacity_;
  mutable absl::Mutex mu_;
  std::deque<DenialView> entries_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> counts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ktrust::control
