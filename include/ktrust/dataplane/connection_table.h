// Every live connection the engine carries, queryable while it runs.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace ktrust {

enum class Direction { kOutbound, kInbound };

enum class ConnectionState {
  kConnecting,  // outbound: dialling the destination
  kHandshaking,
  kConnectingApp,  // inbound: authorized, dialling the application
  kEstablished,
  kClosing,
};

absl::string_view DirectionName(Direction d);
absl::string_view StateName(ConnectionState s);

// One connection's record. The owning event loop writes it; anyone may read
// it through ConnectionTable::Snapshot. id, direction, workload and started
// never change after the record is added.
struct ConnectionRecord {
  uint64_t id = 0;
  Direction direction = Direction::kOutbound;
  std::string workload;
  absl::Time started;

  // Filled in as the connection progresses.
  mutable absl::Mutex mu;
  std::string app_address ABSL_GUARDED_BY(mu);  // the application's end
  std::string wire_local ABSL_GUARDED_BY(mu);   // our end of the TLS connection
  std::string wire_peer ABSL_GUARDED_BY(mu);    // the remote end of the TLS connection
  std::string local_id ABSL_GUARDED_BY(mu);
  std::string peer_id ABSL_GUARDED_BY(mu);
  std::string tls_version ABSL_GUARDED_BY(mu);
  std::string cipher ABSL_GUARDED_BY(mu);
  std::string data_path ABSL_GUARDED_BY(mu);

  std::atomic<ConnectionState> state{ConnectionState::kConnecting};
  std::atomic<uint64_t> bytes_to_wire{0};    // application bytes sent encrypted
  std::atomic<uint64_t> bytes_from_wire{0};  // application bytes received and decrypted
};

// A copy for readers.
struct ConnectionSnapshot {
  uint64_t id;
  Direction direction;
  std::string workload, app_address, wire_local, wire_peer;
  std::string local_id, peer_id, tls_version, cipher, data_path;
  ConnectionState state;
  uint64_t bytes_to_wire, bytes_from_wire;
  absl::Time started;
};

class ConnectionTable {
 public:
  std::shared_ptr<ConnectionRecord> Add(Direction direction, std::string workload);
  void Remove(uint64_t id);
  std::vector<ConnectionSnapshot> Snapshot() const;
  size_t size() const;

 private:
  std::atomic<uint64_t> next_id_{1};
  mutable absl::Mutex mu_;
  std::map<uint64_t, std::shared_ptr<ConnectionRecord>> records_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ktrust
