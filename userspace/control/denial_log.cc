#include "ktrust/control/denial_log.h"

#include <algorithm>

namespace ktrust::control {

DenialLog::DenialLog(size_t capacity) : capacity_(std::max<size_t>(capacity, 1)) {}

void DenialLog::Add(DenialView denial) {
  if (denial.time == 0) denial.time = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  absl::MutexLock lock(&mu_);
  ++counts_[denial.result];
  if (entries_.size() == capacity_) entries_.pop_front();
  entries_.push_back(std::move(denial));
}

std::vector<DenialView> DenialLog::Since(absl::Time since) const {
  const double since_seconds =
      since == absl::InfinitePast() ? -1 : absl::ToDoubleSeconds(since - absl::UnixEpoch());
  absl::MutexLock lock(&mu_);
  // Entries arrive in time order in practice, but times come from callers:
  // filter every entry rather than binary-search.
  std::vector<DenialView> found;
  for (const DenialView& d : entries_) {
    if (d.time >= since_seconds) found.push_back(d);
  }
  return found;
}

std::map<std::string, uint64_t> DenialLog::CountsByResult() const {
  absl::MutexLock lock(&mu_);
  return counts_;
}

size_t DenialLog::size() const {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

}  // namespace ktrust::control
