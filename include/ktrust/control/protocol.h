// The control socket's wire protocol (docs/control-api.md): newline-delimited
// JSON over a SOCK_STREAM Unix socket, one request and one response per line.
//
//   -> {"version":1,"method":"status","params":{}}
//   <- {"version":1,"ok":true,"result":{...}}
//   <- {"version":1,"ok":false,"error":"unknown method \"stats\" (...)"}
//
// Everything here is pure (no I/O) and never throws, so it can be fuzzed.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ktrust::control {

inline constexpr int kProtocolVersion = 1;
// The longest request line the server reads, without its newline. Longer
// lines are answered with an error and the connection is closed.
inline constexpr size_t kMaxRequestBytes = 64 * 1024;
// The longest response line the client accepts (a long connection list).
inline constexpr size_t kMaxResponseBytes = 16 * 1024 * 1024;
// Method names are [a-z._]+ and at most this long.
inline constexpr size_t kMaxMethodBytes = 64;

struct ControlRequest {
  std::string method;
  nlohmann::json params = nlohmann::json::object();  // always an object
};

struct ControlResponse {
  bool ok = false;
  nlohmann::json result;  // when ok
  std::string error;      // when !ok: words for a person
};

// One request line (without its newline). "params" may be left out and then
// is {}; any other missing, mistyped or unknown field is an InvalidArgument
// error whose message is meant to be sent back to the client.
absl::StatusOr<ControlRequest> ParseControlRequest(absl::string_view line);

// One response line (without its newline), for the client.
absl::StatusOr<ControlResponse> ParseControlResponse(absl::string_view line);

// Wire lines, each ending in '\n'. Invalid UTF-8 in strings is replaced, not
// thrown about.
std::string FormatControlRequest(absl::string_view method, const nlohmann::json& params);
std::string FormatOkResponse(const nlohmann::json& result);
std::string FormatErrorResponse(absl::string_view error);

}  // namespace ktrust::control
