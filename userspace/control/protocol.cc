#include "ktrust/control/protocol.h"

#include "absl/strings/str_cat.h"

namespace ktrust::control {

namespace {

using nlohmann::json;

std::string Dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

// The JSON type of a value in words, for error messages.
absl::string_view TypeName(const json& value) {
  if (value.is_number_integer() || value.is_number_unsigned()) return "an integer";
  if (value.is_number_float()) return "a number with a fraction";
  if (value.is_string()) return "a string";
  if (value.is_boolean()) return "a boolean";
  if (value.is_null()) return "null";
  if (value.is_array()) return "an array";
  return "an object";
}

bool IsMethodName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxMethodBytes) return false;
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || c == '.' || c == '_')) return false;
  }
  return true;
}

absl::StatusOr<json> ParseObject(absl::string_view line, absl::string_view what) {
  json value = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(what, " is not JSON"));
  if (!value.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be a JSON object, not ", TypeName(value)));
  }
  return value;
}

absl::Status CheckVersion(const json& message, absl::string_view what, absl::string_view speaker) {
  auto it = message.find("version");
  if (it == message.end()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " has no \"version\""));
  }
  if (it->is_number_unsigned() || it->is_number_integer()) {
    // Compare as signed so a huge unsigned version is reported, not wrapped.
    if (it->is_number_unsigned() && it->get<uint64_t>() == kProtocolVersion)
      return absl::OkStatus();
    if (it->is_number_integer() && it->get<int64_t>() == kProtocolVersion) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("unsupported protocol version ", Dump(*it),
                                                   " (this ", speaker, " speaks ", kProtocolVersion,
                                                   ")"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("\"version\" must be an integer, not ", TypeName(*it)));
}

}  // namespace

absl::StatusOr<ControlRequest> ParseControlRequest(absl::string_view line) {
  auto message = ParseObject(line, "request");
  if (!message.ok()) return message.status();
  // Unknown fields are refused: a typo such as "parms" should not silently
  // run a method without its parameters.
  for (const auto& [key, value] : message->items()) {
    if (key != "version" && key != "method" && key != "params") {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown field \"", key, "\" (a request has version, method and params)"));
    }
  }
  if (auto st = CheckVersion(*message, "request", "agent"); !st.ok()) return st;

  ControlRequest request;
  auto method = message->find("method");
  if (method == message->end()) return absl::InvalidArgumentError("request has no \"method\"");
  if (!method->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"method\" must be a string, not ", TypeName(*method)));
  }
  const auto& name = method->get_ref<const std::string&>();
  if (!IsMethodName(name)) {
    return absl::InvalidArgumentError(absl::StrCat("\"method\" must be 1 to ", kMaxMethodBytes,
                                                   " characters of a-z, '.' and '_'"));
  }
  request.method = name;

  auto params = message->find("params");
  if (params != message->end()) {
    if (!params->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"params\" must be an object, not ", TypeName(*params)));
    }
    request.params = std::move(*params);
  }
  return request;
}

absl::StatusOr<ControlResponse> ParseControlResponse(absl::string_view line) {
  auto message = ParseObject(line, "response");
  if (!message.ok()) return message.status();
  if (auto st = CheckVersion(*message, "response", "client"); !st.ok()) return st;
  auto ok = message->find("ok");
  if (ok == message->end() || !ok->is_boolean()) {
    return absl::InvalidArgumentError("response has no boolean \"ok\"");
  }
  ControlResponse response;
  response.ok = ok->get<bool>();
  if (response.ok) {
    auto result = message->find("result");
    if (result == message->end()) return absl::InvalidArgumentError("response has no \"result\"");
    response.result = std::move(*result);
  } else {
    auto error = message->find("error");
    if (error == message->end() || !error->is_string()) {
      return absl::InvalidArgumentError("error response has no string \"error\"");
    }
    response.error = error->get<std::string>();
  }
  return response;
}

std::string FormatControlRequest(absl::string_view method, const nlohmann::json& params) {
  json request = {{"version", kProtocolVersion},
                  {"method", std::string(method)},
                  {"params", params.is_null() ? json::object() : params}};
  return Dump(request) + "\n";
}

std::string FormatOkResponse(const nlohmann::json& result) {
  return Dump({{"version", kProtocolVersion}, {"ok", true}, {"result", result}}) + "\n";
}

std::string FormatErrorResponse(absl::string_view error) {
  return Dump({{"version", kProtocolVersion}, {"ok", false}, {"error", std::string(error)}}) + "\n";
}

}  // namespace ktrust::control
