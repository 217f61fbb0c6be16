// Admission of pending handshakes: a connection holds a slot from accept
// until its peer proved an identity (or it ends). Inbound and outbound have
// budgets of their own, so a flood of one direction cannot starve the other,
// and inbound slots are capped per source address, so one host cannot take
// the whole inbound budget. Shared by every loop of an engine.
#pragma once

#include <string>
#include <variant>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "ktrust/common/socket_address.h"
#include "ktrust/dataplane/engine.h"

namespace ktrust {

class HandshakeBudget;

// What the per-source cap counts by: an IPv4 address, or an IPv6 /64 (what
// one host is usually given, and can pick addresses from at will). An
// IPv4-mapped IPv6 address counts as its IPv4 address.
struct HandshakeSource {
  std::string key;      // the address bytes that count
  std::string display;  // "10.0.0.5", "2001:db8:1:2::/64"
};
HandshakeSource HandshakeSourceOf(const SocketAddress& peer);

// One pending handshake's place in its budget. Freed by Release() (the
// handshake is over) or with the connection, whichever comes first.
class HandshakeSlot {
 public:
  HandshakeSlot() = default;
  HandshakeSlot(HandshakeSlot&& other) noexcept { *this = std::move(other); }
  HandshakeSlot& operator=(HandshakeSlot&& other) noexcept;
  ~HandshakeSlot() { Release(); }
  void Release();

 private:
  friend class HandshakeBudget;
  HandshakeBudget* budget_ = nullptr;  // null: holds nothing
  Direction direction_ = Direction::kOutbound;
  std::string source_;  // inbound: the per-source key
};

// Why a connection was refused a slot, for its log line.
struct HandshakeRefusal {
  std::string result;  // stable code: inbound_handshake_limit, ...
  std::string reason;  // in words, with the limit
  std::string source;  // inbound: the address (or IPv6 /64) the cap counts by
  int limit = 0;
};

class HandshakeBudget {
 public:
  // `counters` must outlive the budget; it keeps the handshaking gauges and
  // the refused_*_handshakes counters.
  HandshakeBudget(const EngineOptions& options, EngineCounters& counters);

  // `peer`: the inbound client's address; ignored for outbound.
  std::variant<HandshakeSlot, HandshakeRefusal> Acquire(Direction direction,
                                                        const SocketAddress& peer);

 private:
  friend class HandshakeSlot;
  void Free(Direction direction, const std::string& source);

  const int max_inbound_, max_outbound_, max_per_source_;
  EngineCounters& counters_;
  absl::Mutex mu_;
  int inbound_ ABSL_GUARDED_BY(mu_) = 0;
  int outbound_ ABSL_GUARDED_BY(mu_) = 0;
  // Pending inbound handshakes by source key; a key leaves at zero.
  absl::flat_hash_map<std::string, int> per_source_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ktrust
