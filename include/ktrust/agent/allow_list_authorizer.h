// The tunnel's authorization: a client may connect if its SPIFFE ID matches
// one of the allowed patterns. Default deny: an empty list allows nobody.
#pragma once

#include <vector>

#include "ktrust/identity/authorizer.h"
#include "ktrust/identity/spiffe_id.h"

namespace ktrust {

class AllowListAuthorizer : public Authorizer {
 public:
  explicit AllowListAuthorizer(std::vector<SpiffeIdPattern> allowed)
      : allowed_(std::move(allowed)) {}
  AuthorizationDecision Authorize(const AuthorizationRequest& request) const override;

 private:
  std::vector<SpiffeIdPattern> allowed_;
};

}  // namespace ktrust
