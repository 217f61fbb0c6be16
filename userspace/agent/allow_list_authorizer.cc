#include "ktrust/agent/allow_list_authorizer.h"

#include "absl/strings/str_cat.h"

namespace ktrust {

AuthorizationDecision AllowListAuthorizer::Authorize(const AuthorizationRequest& request) const {
  for (const auto& pattern : allowed_) {
    if (pattern.Matches(request.peer)) {
      return {true, absl::StrCat("allowed by ", pattern.ToString())};
    }
  }
  return {false, absl::StrCat("SPIFFE ID ", request.peer.ToString(), " is not allowed for ",
                              request.workload.empty() ? "this workload" : request.workload,
                              " on port ", request.port)};
}

}  // namespace ktrust
