#include "ktrust/config/policy.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ktrust {
namespace {

// A denial lists the identities a port would accept; beyond this many the
// configuration is the better place to look.
constexpr size_t kMaxListedPatterns = 5;

bool AnyPortMatches(const std::vector<PortRange>& ports, uint16_t port) {
  if (ports.empty()) return true;
  for (const PortRange& range : ports) {
    if (range.Contains(port)) return true;
  }
  return false;
}

std::string DescribePortRange(const PortRange& range) {
  return range.first == range.last ? absl::StrCat(range.first)
                                   : absl::StrCat(range.first, "-", range.last);
}

std::string DescribeTarget(const PolicyRule& rule) {
  return rule.to_id ? rule.to_id->ToString() : rule.to_workload;
}

}  // namespace

std::string DescribePorts(const std::vector<PortRange>& ports) {
  if (ports.empty()) return "all ports";
  return absl::StrJoin(ports, ", ", [](std::string* out, const PortRange& range) {
    absl::StrAppend(out, DescribePortRange(range));
  });
}

PolicyAuthorizer::PolicyAuthorizer(const Config& config) : rules_(config.policy) {}

AuthorizationDecision PolicyAuthorizer::Authorize(const AuthorizationRequest& request) const {
  PolicyCheckResult result = Check(request.peer, request.workload, &request.local, request.port);
  return {result.allowed, std::move(result.reason)};
}

PolicyCheckResult PolicyAuthorizer::Check(const SpiffeId& from, absl::string_view to_workload,
                                          const SpiffeId* to_id, uint16_t port) const {
  // Rules for this workload, whichever way they name it, split by whether
  // they cover the port: what a denial explains.
  std::vector<const PolicyRule*> for_workload;
  std::vector<const PolicyRule*> for_port;
  for (const PolicyRule& rule : rules_) {
    const bool applies = rule.to_id ? to_id != nullptr && rule.to_id->Matches(*to_id)
                                    : !to_workload.empty() && rule.to_workload == to_workload;
    if (!applies) continue;
    for_workload.push_back(&rule);
    if (!AnyPortMatches(rule.ports, port)) continue;
    for_port.push_back(&rule);
    for (const SpiffeIdPattern& pattern : rule.from) {
      if (!pattern.Matches(from)) continue;
      return {true,
              absl::StrCat("allowed by policy rule ", rule.origin, " (to ", DescribeTarget(rule),
                           ", ", rule.ports.empty() ? "" : "ports ", DescribePorts(rule.ports),
                           ", from ", pattern.ToString(), ")"),
              rule.origin};
    }
  }

  std::string target = !to_workload.empty() ? std::string(to_workload)
                       : to_id != nullptr   ? to_id->ToString()
                                            : std::string("an unnamed workload");
  std::string reason = absl::StrCat("SPIFFE ID ", from.ToString(), " is not allowed for port ",
                                    port, " of workload ", target);
  if (for_workload.empty()) {
    absl::StrAppend(&reason, "; no policy rule applies to ", target);
  } else if (for_port.empty()) {
    std::vector<PortRange> allowed_ports;
    for (const PolicyRule* rule : for_workload) {
      allowed_ports.insert(allowed_ports.end(), rule->ports.begin(), rule->ports.end());
    }
    auto key = [](const PortRange& r) { return std::pair(r.first, r.last); };
    std::sort(allowed_ports.begin(), allowed_ports.end(),
              [&](const PortRange& a, const PortRange& b) { return key(a) < key(b); });
    allowed_ports.erase(
        std::unique(allowed_ports.begin(), allowed_ports.end(),
                    [&](const PortRange& a, const PortRange& b) { return key(a) == key(b); }),
        allowed_ports.end());
    absl::StrAppend(&reason, "; rules for ", target, " allow ports ", DescribePorts(allowed_ports));
  } else {
    std::vector<std::string> patterns;
    size_t total = 0;
    for (const PolicyRule* rule : for_port) {
      for (const SpiffeIdPattern& pattern : rule->from) {
        if (++total <= kMaxListedPatterns) patterns.push_back(pattern.ToString());
      }
    }
    absl::StrAppend(&reason, "; port ", port, " of ", target, " allows ",
                    absl::StrJoin(patterns, ", "));
    if (total > kMaxListedPatterns) {
      absl::StrAppend(&reason, " and ", total - kMaxListedPatterns, " more");
    }
  }
  return {false, std::move(reason), ""};
}

}  // namespace ktrust
