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

// What a connection learns about itself as it progresses, in one piece: its
// record holds it, and snapshots and ClosedConnection copy it whole.
struct ConnectionInfo {
  std::string app_address;  // the application's end
  std::string wire_local;   // our end of the TLS connection
  std::string wire_peer;    // the remote end of the TLS connection
  std::string local_id;     // our SPIFFE ID, after the handshake
  std::string peer_id;      // the peer's verified SPIFFE ID
  std::string tls_version;
  std::string cipher;
  // "ktls-sw", "userspace", "plaintext", or "zero-hop" (handed to the
  // workload with kernel TLS); empty until established
  std::string data_path;
  bool resumed = false;  // the handshake resumed a session (a TLS 1.3 ticket)
};

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
  ConnectionInfo info ABSL_GUARDED_BY(mu);
  // A copy of info, for readers on other threads.
  ConnectionInfo Info() const {
    absl::MutexLock lock(&mu);
    return info;
  }

  std::atomic<ConnectionState> state{ConnectionState::kConnecting};
  std::atomic<uint64_t> bytes_to_wire{0};    // application bytes sent encrypted
  std::atomic<uint64_t> bytes_from_wire{0};  // application bytes received and decrypted
};

// A copy for readers.
struct ConnectionSnapshot {
  uint64_t id;
  Direction direction;
  std::string workload;
  ConnectionInfo info;
  ConnectionState state;
  uint64_t bytes_to_wire, bytes_from_wire;
  absl::Time started;
};

class ConnectionTable {
 public:
  // `started`: when the connection was accepted; a moved-in connection
  // (an agent handover) keeps the time its first agent accepted it.
  std::shared_ptr<ConnectionRecord> Add(Direction direction, std::string workload,
                                        absl::Time started = absl::Now());
  void Remove(uint64_t id);
  std::vector<ConnectionSnapshot> Snapshot() const;
  size_t size() const;

 private:
  std::atomic<uint64_t> next_id_{1};
  mutable absl::Mutex mu_;
  std::map<uint64_t, std::shared_ptr<ConnectionRecord>> records_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ktrust
