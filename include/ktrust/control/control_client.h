// The client side of the control socket, for the `ktrust` CLI.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ktrust::control {

inline constexpr char kDefaultControlSocket[] = "/run/ktrust/control.sock";

// Sends one request and waits at most `timeout` for its response. Returns the
// result of an ok response. Errors, in words for an operator:
//   kUnavailable       the agent cannot be reached ("... (is ktrustd running?)",
//                      or a hint to use root or the control group)
//   kDeadlineExceeded  no answer within `timeout`
//   kDataLoss          the agent closed the connection or sent a broken response
//   kUnknown           the agent answered ok:false; the message is its error
absl::StatusOr<nlohmann::json> CallControl(const std::string& socket_path,
                                           const std::string& method, const nlohmann::json& params,
                                           absl::Duration timeout);

}  // namespace ktrust::control
