#include "ktrust/dataplane/connection_table.h"

namespace ktrust {

absl::string_view DirectionName(Direction d) {
  return d == Direction::kOutbound ? "outbound" : "inbound";
}

absl::string_view StateName(ConnectionState s) {
  switch (s) {
    case ConnectionState::kConnecting:
      return "connecting";
    case ConnectionState::kHandshaking:
      return "handshaking";
    case ConnectionState::kConnectingApp:
      return "connecting-app";
    case ConnectionState::kEstablished:
      return "established";
    case ConnectionState::kClosing:
      return "closing";
  }
  return "unknown";
}

std::shared_ptr<ConnectionRecord> ConnectionTable::Add(Direction direction, std::string workload,
                                                       absl::Time started) {
  auto record = std::make_shared<ConnectionRecord>();
  record->id = next_id_.fetch_add(1);
  record->direction = direction;
  record->workload = std::move(workload);
  record->started = started;
  absl::MutexLock lock(&mu_);
  records_.emplace(record->id, record);
  return record;
}

void ConnectionTable::Remove(uint64_t id) {
  absl::MutexLock lock(&mu_);
  records_.erase(id);
}

size_t ConnectionTable::size() const {
  absl::MutexLock lock(&mu_);
  return records_.size();
}

std::vector<ConnectionSnapshot> ConnectionTable::Snapshot() const {
  std::vector<std::shared_ptr<ConnectionRecord>> records;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, r] : records_) records.push_back(r);
  }
  std::vector<ConnectionSnapshot> out;
  out.reserve(records.size());
  for (const auto& r : records) {
    out.push_back({r->id, r->direction, r->workload, r->Info(), r->state.load(),
                   r->bytes_to_wire.load(), r->bytes_from_wire.load(), r->started});
  }
  return out;
}

}  // namespace ktrust
