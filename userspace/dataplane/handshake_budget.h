// Admission of pending handshakes: a connection holds a slot from accept
// until its peer proved an identity (or it ends). Inbound and outbound have
// budgets of their own, so a flood of one direction cannot starve the other,
// and inbound slots are capped per source address, so one host cannot take
// the whole inbound budget. Shared by every loop of an engine. When the
// inbound budget is full, a new client takes the place of a loop's
// longest-pending one (PendingHandshakes), so that many sources together
// cannot lock clients out either.
#pragma once

#include <cstdint>
#include <map>
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
  bool held() const { return budget_ != nullptr; }

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

  // `peer`: the inbound client's address; ignored for outbound. Inbound,
  // when the budget is full and `evictable` holds a slot of this budget, the
  // new client takes that slot's place (`evictable` then holds nothing, and
  // its connection must be reset) instead of being refused. A source at its
  // cap is refused all the same: it never takes another's place.
  std::variant<HandshakeSlot, HandshakeRefusal> Acquire(Direction direction,
                                                        const SocketAddress& peer,
                                                        HandshakeSlot* evictable = nullptr);

 private:
  friend class HandshakeSlot;
  void Free(Direction direction, const std::string& source);
  void FreeLocked(Direction direction, const std::string& source)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int max_inbound_, max_outbound_, max_per_source_;
  EngineCounters& counters_;
  absl::Mutex mu_;
  int inbound_ ABSL_GUARDED_BY(mu_) = 0;
  int outbound_ ABSL_GUARDED_BY(mu_) = 0;
  // Pending inbound handshakes by source key; a key leaves at zero.
  absl::flat_hash_map<std::string, int> per_source_ ABSL_GUARDED_BY(mu_);
};

// One loop's pending inbound handshakes, in accept order, split by whether
// the client has sent a byte yet: which one gives its slot up when the
// inbound budget is full. Silent ones go first (a real client sends its
// ClientHello right after connecting), then the longest-pending one (a
// handshake that moves takes milliseconds; one still pending after its
// newer peers is a slow drip). O(log n) each. One per loop, not shared.
template <typename T>
class PendingHandshakes {
 public:
  // 0 is never a ticket: callers may use it for "not listed".
  uint64_t Add(T* item) {
    silent_.emplace(++last_, item);
    return last_;
  }
  // The client has sent its first byte; it keeps its place in accept order.
  void Spoke(uint64_t ticket) {
    auto node = silent_.extract(ticket);
    if (!node.empty()) spoken_.insert(std::move(node));
  }
  void Remove(uint64_t ticket) {
    if (silent_.erase(ticket) == 0) spoken_.erase(ticket);
  }
  struct Candidate {
    T* item = nullptr;  // null: none pending
    bool silent = false;
  };
  // The longest-pending silent one, else the longest-pending one.
  Candidate Evictable() const {
    if (!silent_.empty()) return {silent_.begin()->second, true};
    if (!spoken_.empty()) return {spoken_.begin()->second, false};
    return {};
  }
  size_t size() const { return silent_.size() + spoken_.size(); }

 private:
  uint64_t last_ = 0;
  std::map<uint64_t, T*> silent_;
  std::map<uint64_t, T*> spoken_;
};

}  // namespace ktrust
