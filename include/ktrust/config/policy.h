// Who may connect to which workload on which port: the configuration's
// policy rules, matched explicitly. Nothing is allowed unless a rule says so.
//
// A rule applies to a connection when its `to` names the local workload (or
// matches the local workload's SPIFFE ID), its ports include the dialled port
// and one of its `from` patterns matches the verified peer ID. The workload's
// mode does not change this: permissive and off only decide what happens to
// plaintext, never who an authenticated peer may reach.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "ktrust/config/config.h"
#include "ktrust/identity/authorizer.h"
#include "ktrust/identity/spiffe_id.h"

namespace ktrust {

struct PolicyCheckResult {
  bool allowed = false;
  std::string reason;  // in words, as AuthorizationDecision::reason
  std::string origin;  // the deciding rule ("ktrustd.yaml:42"); empty on default deny
};

// Immutable once built, so any number of event loops may ask at once.
class PolicyAuthorizer : public Authorizer {
 public:
  explicit PolicyAuthorizer(const Config& config);

  AuthorizationDecision Authorize(const AuthorizationRequest& request) const override;

  // What `ktrust policy check` asks. to_id may be null when the local ID is
  // not known; rules written against IDs then cannot apply.
  PolicyCheckResult Check(const SpiffeId& from, absl::string_view to_workload,
                          const SpiffeId* to_id, uint16_t port) const;

  size_t rule_count() const { return rules_.size(); }

 private:
  std::vector<PolicyRule> rules_;
};

// "8080", "8000-8999, 9090" or "all ports".
std::string DescribePorts(const std::vector<PortRange>& ports);

}  // namespace ktrust
