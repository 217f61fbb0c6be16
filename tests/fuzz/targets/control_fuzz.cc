// The control socket's request (and response) parser on arbitrary lines: it
// must never throw (nlohmann::json can) or crash, refuse with
// InvalidArgument, and what it accepts must format back to a line that
// parses to the same request:
//   - method is [a-z._]+, at most kMaxMethodBytes; params is an object;
//   - Format(Parse(x)) re-parses, and formatting that again gives the same
//     line (a fixpoint after one normalisation);
//   - the same for ParseControlResponse and the two response formatters.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"
#include "ktrust/control/protocol.h"

namespace {

[[noreturn]] void Fail(const char* what, absl::string_view input) {
  std::fprintf(stderr, "control_fuzz: invariant broken: %s\n  input (%zu bytes): \"%.*s\"\n", what,
               input.size(), static_cast<int>(input.size()), input.data());
  std::abort();
}

#define FUZZ_CHECK(cond, input)      \
  do {                               \
    if (!(cond)) Fail(#cond, input); \
  } while (0)

absl::string_view WithoutNewline(const std::string& line) {
  absl::string_view v = line;
  if (!v.empty() && v.back() == '\n') v.remove_suffix(1);
  return v;
}

bool IsMethodName(const std::string& name) {
  if (name.empty() || name.size() > ktrust::control::kMaxMethodBytes) return false;
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || c == '.' || c == '_')) return false;
  }
  return true;
}

void CheckRequest(absl::string_view line) {
  auto request = ktrust::control::ParseControlRequest(line);
  if (!request.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(request.status()), line);
    return;
  }
  FUZZ_CHECK(IsMethodName(request->method), line);
  FUZZ_CHECK(request->params.is_object(), line);
  const std::string once = ktrust::control::FormatControlRequest(request->method, request->params);
  FUZZ_CHECK(!once.empty() && once.back() == '\n', line);
  FUZZ_CHECK(WithoutNewline(once).find('\n') == absl::string_view::npos, line);
  auto again = ktrust::control::ParseControlRequest(WithoutNewline(once));
  FUZZ_CHECK(again.ok(), line);
  FUZZ_CHECK(again->method == request->method, line);
  FUZZ_CHECK(ktrust::control::FormatControlRequest(again->method, again->params) == once, line);
}

void CheckResponse(absl::string_view line) {
  auto response = ktrust::control::ParseControlResponse(line);
  if (!response.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(response.status()), line);
    return;
  }
  const std::string once = response->ok ? ktrust::control::FormatOkResponse(response->result)
                                        : ktrust::control::FormatErrorResponse(response->error);
  FUZZ_CHECK(!once.empty() && once.back() == '\n', line);
  FUZZ_CHECK(WithoutNewline(once).find('\n') == absl::string_view::npos, line);
  auto again = ktrust::control::ParseControlResponse(WithoutNewline(once));
  FUZZ_CHECK(again.ok(), line);
  FUZZ_CHECK(again->ok == response->ok, line);
  const std::string twice = again->ok ? ktrust::control::FormatOkResponse(again->result)
                                      : ktrust::control::FormatErrorResponse(again->error);
  FUZZ_CHECK(twice == once, line);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view line(reinterpret_cast<const char*>(data), size);
  CheckRequest(line);
  CheckResponse(line);
  return 0;
}
