#include "ktrust/control/methods.h"

#include <cmath>
#include <initializer_list>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ktrust::control {

namespace {

using nlohmann::json;

absl::Status OnlyFields(const json& params, std::initializer_list<absl::string_view> known) {
  if (!params.is_object()) return absl::InvalidArgumentError("params must be an object");
  for (const auto& [key, unused] : params.items()) {
    bool found = false;
    for (absl::string_view name : known) found = found || name == key;
    if (!found) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown parameter \"", key, "\" (expected: ", absl::StrJoin(known, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

// A string parameter; missing or null leaves `out` as it is.
absl::Status GetString(const json& params, const char* key, bool required, std::string& out) {
  auto it = params.find(key);
  if (it == params.end() || it->is_null()) {
    if (required)
      return absl::InvalidArgumentError(absl::StrCat("missing parameter \"", key, "\""));
    return absl::OkStatus();
  }
  if (!it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat("parameter \"", key, "\" must be a string"));
  }
  out = it->get<std::string>();
  if (required && out.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("parameter \"", key, "\" must not be empty"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ConnectionsParams> ParseConnectionsParams(const json& params) {
  if (auto st = OnlyFields(params, {"workload", "peer"}); !st.ok()) return st;
  ConnectionsParams p;
  if (auto st = GetString(params, "workload", false, p.workload); !st.ok()) return st;
  if (auto st = GetString(params, "peer", false, p.peer); !st.ok()) return st;
  return p;
}

absl::StatusOr<PolicyCheckParams> ParsePolicyCheckParams(const json& params) {
  if (auto st = OnlyFields(params, {"from", "to", "port"}); !st.ok()) return st;
  PolicyCheckParams p;
  if (auto st = GetString(params, "from", true, p.from); !st.ok()) return st;
  if (auto st = GetString(params, "to", true, p.to); !st.ok()) return st;
  auto port = params.find("port");
  if (port == params.end()) return absl::InvalidArgumentError("missing parameter \"port\"");
  bool integer = port->is_number_integer() || port->is_number_unsigned();
  if (!integer || port->get<int64_t>() < 1 || port->get<int64_t>() > 65535) {
    return absl::InvalidArgumentError("parameter \"port\" must be an integer from 1 to 65535");
  }
  p.port = static_cast<uint16_t>(port->get<int64_t>());
  return p;
}

absl::StatusOr<DenialsParams> ParseDenialsParams(const json& params) {
  if (auto st = OnlyFields(params, {"since_seconds"}); !st.ok()) return st;
  DenialsParams p;
  auto since = params.find("since_seconds");
  if (since != params.end() && !since->is_null()) {
    if (!since->is_number() || !std::isfinite(since->get<double>()) || since->get<double>() < 0) {
      return absl::InvalidArgumentError(
          "parameter \"since_seconds\" must be a number of seconds, 0 or more");
    }
    p.since_seconds = since->get<double>();
  }
  return p;
}

json ToParams(const ConnectionsParams& p) {
  json params = json::object();
  if (!p.workload.empty()) params["workload"] = p.workload;
  if (!p.peer.empty()) params["peer"] = p.peer;
  return params;
}

json ToParams(const PolicyCheckParams& p) {
  return {{"from", p.from}, {"to", p.to}, {"port", p.port}};
}

json ToParams(const DenialsParams& p) {
  json params = json::object();
  if (p.since_seconds) params["since_seconds"] = *p.since_seconds;
  return params;
}

bool Matches(const ConnectionsParams& filter, const std::string& workload,
             const std::string& peer_id) {
  return (filter.workload.empty() || filter.workload == workload) &&
         (filter.peer.empty() || filter.peer == peer_id);
}

}  // namespace ktrust::control
