#include "handshake_budget.h"

#include <arpa/inet.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace ktrust {

HandshakeSource HandshakeSourceOf(const SocketAddress& peer) {
  char text[INET6_ADDRSTRLEN] = {};
  if (peer.family() == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(peer.get());
    inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text));
    return {std::string(reinterpret_cast<const char*>(&sin->sin_addr), 4), text};
  }
  const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(peer.get());
  if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
    in_addr v4{};
    memcpy(&v4, &sin6->sin6_addr.s6_addr[12], 4);
    inet_ntop(AF_INET, &v4, text, sizeof(text));
    return {std::string(reinterpret_cast<const char*>(&v4), 4), text};
  }
  in6_addr prefix{};
  memcpy(prefix.s6_addr, sin6->sin6_addr.s6_addr, 8);
  inet_ntop(AF_INET6, &prefix, text, sizeof(text));
  // 8 bytes: never equal to an IPv4 key.
  return {std::string(reinterpret_cast<const char*>(prefix.s6_addr), 8), absl::StrCat(text, "/64")};
}

HandshakeSlot& HandshakeSlot::operator=(HandshakeSlot&& other) noexcept {
  if (this != &other) {
    Release();
    budget_ = other.budget_;
    direction_ = other.direction_;
    source_ = std::move(other.source_);
    other.budget_ = nullptr;
  }
  return *this;
}

void HandshakeSlot::Release() {
  if (budget_ == nullptr) return;
  budget_->Free(direction_, source_);
  budget_ = nullptr;
}

HandshakeBudget::HandshakeBudget(const EngineOptions& options, EngineCounters& counters)
    : max_inbound_(options.max_inbound_handshakes),
      max_outbound_(options.max_outbound_handshakes),
      max_per_source_(options.max_handshakes_per_source),
      counters_(counters) {}

std::variant<HandshakeSlot, HandshakeRefusal> HandshakeBudget::Acquire(Direction direction,
                                                                       const SocketAddress& peer,
                                                                       HandshakeSlot* evictable) {
  HandshakeSlot slot;
  slot.direction_ = direction;
  if (direction == Direction::kOutbound) {
    absl::MutexLock lock(&mu_);
    if (outbound_ >= max_outbound_) {
      counters_.refused_outbound_handshakes.fetch_add(1);
      return HandshakeRefusal{
          "outbound_handshake_limit",
          absl::StrCat("too many pending outbound handshakes (limit ", max_outbound_, ")"), "",
          max_outbound_};
    }
    ++outbound_;
    counters_.handshaking_outbound.fetch_add(1);
  } else {
    HandshakeSource source = HandshakeSourceOf(peer);
    absl::MutexLock lock(&mu_);
    // The cap first: a source at it is refused, full budget or not, and so
    // never takes another client's place.
    if (auto it = per_source_.find(source.key);
        it != per_source_.end() && it->second >= max_per_source_) {
      counters_.refused_source_handshakes.fetch_add(1);
      return HandshakeRefusal{"source_handshake_limit",
                              absl::StrCat("too many pending handshakes from ", source.display,
                                           " (limit ", max_per_source_, ")"),
                              source.display, max_per_source_};
    }
    if (inbound_ >= max_inbound_) {
      if (evictable == nullptr || evictable->budget_ != this ||
          evictable->direction_ != Direction::kInbound) {
        counters_.refused_inbound_handshakes.fetch_add(1);
        return HandshakeRefusal{
            "inbound_handshake_limit",
            absl::StrCat("too many pending inbound handshakes (limit ", max_inbound_, ")"),
            source.display, max_inbound_};
      }
      // Under the same lock as the new slot: no other loop can take the
      // freed one in between.
      FreeLocked(Direction::kInbound, evictable->source_);
      evictable->budget_ = nullptr;
      counters_.evicted_handshakes.fetch_add(1);
    }
    ++per_source_[source.key];
    ++inbound_;
    counters_.handshaking_inbound.fetch_add(1);
    slot.source_ = std::move(source.key);
  }
  counters_.handshaking.fetch_add(1);
  slot.budget_ = this;
  return slot;
}

void HandshakeBudget::Free(Direction direction, const std::string& source) {
  absl::MutexLock lock(&mu_);
  FreeLocked(direction, source);
}

void HandshakeBudget::FreeLocked(Direction direction, const std::string& source) {
  if (direction == Direction::kOutbound) {
    --outbound_;
    counters_.handshaking_outbound.fetch_sub(1);
  } else {
    --inbound_;
    counters_.handshaking_inbound.fetch_sub(1);
    auto it = per_source_.find(source);
    if (it != per_source_.end() && --it->second == 0) per_source_.erase(it);
  }
  counters_.handshaking.fetch_sub(1);
}

}  // namespace ktrust
