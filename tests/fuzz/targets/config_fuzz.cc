// ktrustd's YAML configuration parser on arbitrary text. yaml-cpp reports by
// exception and recurses on nesting; nothing may escape or crash, and:
//   - a refusal is InvalidArgument and names the source ("<name>:..."), as
//     the messages promise file:line:col;
//   - an accepted configuration holds what the rest of the agent relies on:
//     a valid trust domain, unique workload names, each policy rule aimed at
//     exactly one of a workload or an ID pattern, ordered port ranges, and
//     parsing the same text twice gives the same answer.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "ktrust/config/config.h"
#include "ktrust/identity/spiffe_id.h"

namespace {

constexpr absl::string_view kSource = "fuzz.yaml";

[[noreturn]] void Fail(const char* what, absl::string_view input, absl::string_view detail = "") {
  std::fprintf(stderr,
               "config_fuzz: invariant broken: %s\n  detail: %.*s\n  input (%zu bytes):\n%.*s\n",
               what, static_cast<int>(detail.size()), detail.data(), input.size(),
               static_cast<int>(input.size()), input.data());
  std::abort();
}

#define FUZZ_CHECK(cond, input)      \
  do {                               \
    if (!(cond)) Fail(#cond, input); \
  } while (0)

bool Ordered(const std::vector<ktrust::PortRange>& ranges) {
  for (const ktrust::PortRange& r : ranges) {
    if (r.first > r.last) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view yaml(reinterpret_cast<const char*>(data), size);
  auto config = ktrust::ParseConfig(yaml, kSource);
  if (!config.ok()) {
    const std::string message(config.status().message());
    if (!absl::IsInvalidArgument(config.status())) {
      Fail("a refusal is InvalidArgument", yaml, config.status().ToString());
    }
    if (!absl::StartsWith(message, "fuzz.yaml:")) {
      Fail("a refusal names the source", yaml, message);
    }
    return 0;
  }
  FUZZ_CHECK(ktrust::TrustDomain::Parse(config->trust_domain).ok(), yaml);
  std::set<std::string> names;
  for (const ktrust::WorkloadConfig& w : config->workloads) {
    FUZZ_CHECK(!w.name.empty() && names.insert(w.name).second, yaml);
  }
  for (const ktrust::MeshEntry& m : config->mesh) FUZZ_CHECK(Ordered(m.ports), yaml);
  for (const ktrust::MeshEntry& m : config->bypass) FUZZ_CHECK(Ordered(m.ports), yaml);
  for (const ktrust::ExpectedServerRule& e : config->expected_servers) {
    FUZZ_CHECK(Ordered(e.ports), yaml);
  }
  for (const ktrust::PolicyRule& rule : config->policy) {
    FUZZ_CHECK(rule.to_workload.empty() != !rule.to_id.has_value(), yaml);
    FUZZ_CHECK(Ordered(rule.ports), yaml);
  }
  auto again = ktrust::ParseConfig(yaml, kSource);
  FUZZ_CHECK(again.ok(), yaml);
  FUZZ_CHECK(again->workloads.size() == config->workloads.size() &&
                 again->policy.size() == config->policy.size() &&
                 again->trust_domain == config->trust_domain,
             yaml);
  return 0;
}
