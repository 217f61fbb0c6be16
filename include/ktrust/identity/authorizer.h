// Who may connect to what: asked once per inbound connection, after the peer
// proved its SPIFFE ID and before the application sees anything.
// The engine asks; the configuration's policy and the tunnel's allow list
// answer. It lives with the identities it decides on, so that neither side
// depends on the other.
#pragma once

#include <cstdint>
#include <string>

#include "ktrust/identity/spiffe_id.h"

namespace ktrust {

struct AuthorizationRequest {
  const SpiffeId& peer;         // the verified client identity
  const std::string& workload;  // the local workload the connection is for
  const SpiffeId& local;        // the SVID the local workload presented
  uint16_t port;                // the destination port the client dialled
};

struct AuthorizationDecision {
  bool allowed = false;
  // The rule that decided, or why nothing allowed it, in words: it goes into
  // the log line and the CLI's denial list.
  std::string reason;
};

class Authorizer {
 public:
  virtual ~Authorizer() = default;
  // Must be fast and thread-safe: every event loop calls it.
  virtual AuthorizationDecision Authorize(const AuthorizationRequest& request) const = 0;
};

}  // namespace ktrust
