// SPIFFE ID and pattern parsing on arbitrary bytes. Beyond "no crash, no
// sanitizer report", what parses must survive a round trip unchanged:
//   - Parse(x) ok  =>  ToString() == x, and Parse(ToString()) is an equal ID;
//   - ParseWorkload(x) ok  <=>  Parse(x) ok with a non-empty path;
//   - SpiffeIdPattern::Parse(x) ok  =>  ToString() == x, re-parses equal, and
//     an exact pattern matches its own ID while a prefix pattern does not;
//   - the input split at its first '\n' into a pattern and an ID: a match
//     means the same trust domain and an ID that extends the pattern's text.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "ktrust/identity/spiffe_id.h"

namespace {

[[noreturn]] void Fail(const char* what, absl::string_view input) {
  std::fprintf(stderr, "spiffe_id_fuzz: invariant broken: %s\n  input (%zu bytes): \"%.*s\"\n",
               what, input.size(), static_cast<int>(input.size()), input.data());
  std::abort();
}

#define FUZZ_CHECK(cond, input)      \
  do {                               \
    if (!(cond)) Fail(#cond, input); \
  } while (0)

void CheckId(absl::string_view text) {
  auto id = ktrust::SpiffeId::Parse(text);
  auto workload = ktrust::SpiffeId::ParseWorkload(text);
  FUZZ_CHECK(workload.ok() == (id.ok() && !id->path().empty()), text);
  if (!id.ok()) return;
  FUZZ_CHECK(text.size() <= ktrust::SpiffeId::kMaxLength, text);
  const std::string again_text = id->ToString();
  FUZZ_CHECK(again_text == text, text);
  auto again = ktrust::SpiffeId::Parse(again_text);
  FUZZ_CHECK(again.ok(), text);
  FUZZ_CHECK(*again == *id, text);
  auto td = ktrust::TrustDomain::Parse(id->trust_domain().IdString());
  FUZZ_CHECK(td.ok() && *td == id->trust_domain(), text);
}

void CheckPattern(absl::string_view text) {
  auto pattern = ktrust::SpiffeIdPattern::Parse(text);
  if (!pattern.ok()) return;
  FUZZ_CHECK(pattern->ToString() == text, text);
  auto again = ktrust::SpiffeIdPattern::Parse(pattern->ToString());
  FUZZ_CHECK(again.ok() && again->ToString() == pattern->ToString() &&
                 again->is_prefix() == pattern->is_prefix(),
             text);
  absl::string_view base = pattern->is_prefix() ? text.substr(0, text.size() - 2) : text;
  auto base_id = ktrust::SpiffeId::Parse(base);
  FUZZ_CHECK(base_id.ok(), text);
  FUZZ_CHECK(pattern->Matches(*base_id) == !pattern->is_prefix(), text);
}

void CheckMatch(absl::string_view pattern_text, absl::string_view id_text) {
  auto pattern = ktrust::SpiffeIdPattern::Parse(pattern_text);
  auto id = ktrust::SpiffeId::Parse(id_text);
  if (!pattern.ok() || !id.ok() || !pattern->Matches(*id)) return;
  std::string base = pattern->ToString();
  if (pattern->is_prefix()) {
    base.resize(base.size() - 1);  // keep the '/': a match extends by a whole segment
    FUZZ_CHECK(absl::StartsWith(id_text, base) && id_text.size() > base.size(), id_text);
  } else {
    FUZZ_CHECK(id_text == base, id_text);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view input(reinterpret_cast<const char*>(data), size);
  CheckId(input);
  CheckPattern(input);
  if (size_t nl = input.find('\n'); nl != absl::string_view::npos) {
    absl::string_view first = input.substr(0, nl);
    absl::string_view second = input.substr(nl + 1);
    CheckId(first);
    CheckId(second);
    CheckPattern(first);
    CheckMatch(first, second);
  }
  return 0;
}
