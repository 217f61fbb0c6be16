// The control methods: their names, parameters and results
// (docs/control-api.md). The agent registers a ControlHandler per name; the
// CLI calls them. Parameters parse from the request's "params" object with
// words for the client when they are wrong.
//
//   method          params                      result
//   status          {}                          StatusView
//   connections     ConnectionsParams           ConnectionListView
//   workloads       {}                          WorkloadListView
//   policy.check    PolicyCheckParams           PolicyCheckView
//   denials         DenialsParams               DenialListView
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace ktrust::control {

inline constexpr char kMethodStatus[] = "status";
inline constexpr char kMethodConnections[] = "connections";
inline constexpr char kMethodWorkloads[] = "workloads";
inline constexpr char kMethodPolicyCheck[] = "policy.check";
inline constexpr char kMethodDenials[] = "denials";

// "connections": both filters optional; a connection matches when it
// belongs to `workload` (by name) and its verified peer is `peer` (exact
// SPIFFE ID).
struct ConnectionsParams {
  std::string workload;  // empty: any
  std::string peer;      // empty: any
};

// "policy.check": would a connection from SPIFFE ID `from` to workload `to`
// on `port` be allowed?
struct PolicyCheckParams {
  std::string from;
  std::string to;
  uint16_t port = 0;
};

// "denials": the entries of the last `since_seconds`; absent: all retained.
struct DenialsParams {
  std::optional<double> since_seconds;
};

// Parsing the params object; unknown fields and wrong types are
// InvalidArgument errors naming the field.
absl::StatusOr<ConnectionsParams> ParseConnectionsParams(const nlohmann::json& params);
absl::StatusOr<PolicyCheckParams> ParsePolicyCheckParams(const nlohmann::json& params);
absl::StatusOr<DenialsParams> ParseDenialsParams(const nlohmann::json& params);

// The params object the CLI sends.
nlohmann::json ToParams(const ConnectionsParams& p);
nlohmann::json ToParams(const PolicyCheckParams& p);
nlohmann::json ToParams(const DenialsParams& p);

// A ConnectionView (or its parts) matches the filters.
bool Matches(const ConnectionsParams& filter, const std::string& workload,
             const std::string& peer_id);

}  // namespace ktrust::control
