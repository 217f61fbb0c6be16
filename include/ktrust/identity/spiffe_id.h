// SPIFFE identifiers, parsed and validated exactly as the SPIFFE ID
// specification says, and the explicit patterns policies match them with.
#pragma once

#include <compare>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ktrust {

// A trust domain name such as "example.org": lowercase letters, digits, '.',
// '-' and '_' only, at most 255 bytes.
class TrustDomain {
 public:
  // Accepts a bare name ("example.org") or its ID form ("spiffe://example.org").
  static absl::StatusOr<TrustDomain> Parse(absl::string_view text);

  const std::string& name() const { return name_; }
  // "spiffe://example.org": the URI SAN a CA certificate carries.
  std::string IdString() const { return "spiffe://" + name_; }

  auto operator<=>(const TrustDomain&) const = default;

 private:
  explicit TrustDomain(std::string name) : name_(std::move(name)) {}
  friend class SpiffeId;
  std::string name_;
};

// spiffe://<trust-domain>/<path>. Workload IDs always have a non-empty path;
// the bare trust-domain ID names the domain itself, not a workload.
class SpiffeId {
 public:
  static constexpr size_t kMaxLength = 2048;

  static absl::StatusOr<SpiffeId> Parse(absl::string_view text);
  // Like Parse, but also refuses an empty path: an X.509-SVID must name a workload.
  static absl::StatusOr<SpiffeId> ParseWorkload(absl::string_view text);

  const TrustDomain& trust_domain() const { return trust_domain_; }
  // "" or "/seg/seg".
  const std::string& path() const { return path_; }
  std::string ToString() const { return trust_domain_.IdString() + path_; }

  auto operator<=>(const SpiffeId&) const = default;

 private:
  SpiffeId(TrustDomain td, std::string path)
      : trust_domain_(std::move(td)), path_(std::move(path)) {}
  TrustDomain trust_domain_;
  std::string path_;
};

// What a policy names: one exact SPIFFE ID, or an explicit prefix written with
// a trailing "/*" ("spiffe://td/ns/prod/*" matches spiffe://td/ns/prod/a and
// spiffe://td/ns/prod/a/b, never spiffe://td/ns/prod itself nor
// spiffe://td/ns/production). Hierarchical matching is never implicit.
class SpiffeIdPattern {
 public:
  static absl::StatusOr<SpiffeIdPattern> Parse(absl::string_view text);

  bool Matches(const SpiffeId& id) const;
  bool is_prefix() const { return is_prefix_; }
  // The ID the pattern is, or extends.
  const SpiffeId& base() const { return base_; }
  std::string ToString() const;

 private:
  SpiffeIdPattern(SpiffeId base, bool is_prefix) : base_(std::move(base)), is_prefix_(is_prefix) {}
  SpiffeId base_;
  bool is_prefix_;
};

}  // namespace ktrust
