#include "ktrust/identity/spiffe_id.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace ktrust {
namespace {

constexpr absl::string_view kScheme = "spiffe://";
constexpr size_t kMaxTrustDomainLength = 255;

bool IsTrustDomainChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
}
bool IsPathChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '-' || c == '_';
}

absl::Status Invalid(absl::string_view text, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("invalid SPIFFE ID \"", text, "\": ", why));
}

absl::Status ValidateTrustDomainName(absl::string_view text, absl::string_view name) {
  if (name.empty()) return Invalid(text, "the trust domain is missing");
  if (name.size() > kMaxTrustDomainLength) {
    return Invalid(
        text, absl::StrCat("the trust domain is longer than ", kMaxTrustDomainLength, " bytes"));
  }
  for (char c : name) {
    if (IsTrustDomainChar(c)) continue;
    if (c >= 'A' && c <= 'Z') {
      return Invalid(text, "the trust domain must be lowercase");
    }
    if (c == ':') return Invalid(text, "a port is not allowed in the trust domain");
    if (c == '@') return Invalid(text, "user info is not allowed in the trust domain");
    return Invalid(text, absl::StrCat("character '", std::string(1, c),
                                      "' is not allowed in the trust domain (only lowercase "
                                      "letters, digits, '.', '-' and '_')"));
  }
  return absl::OkStatus();
}

absl::Status ValidatePath(absl::string_view text, absl::string_view path) {
  if (path.empty()) return absl::OkStatus();
  if (path.front() != '/') return Invalid(text, "the path must start with '/'");
  if (path.back() == '/') return Invalid(text, "the path must not end with '/'");
  size_t start = 1;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == absl::string_view::npos) end = path.size();
    absl::string_view segment = path.substr(start, end - start);
    if (segment.empty()) return Invalid(text, "the path must not contain empty segments ('//')");
    if (segment == "." || segment == "..") {
      return Invalid(text, "the path must not contain '.' or '..' segments");
    }
    for (char c : segment) {
      if (IsPathChar(c)) continue;
      if (c == '?') return Invalid(text, "a query is not allowed");
      if (c == '#') return Invalid(text, "a fragment is not allowed");
      if (c == '%') return Invalid(text, "percent-encoding is not allowed in the path");
      return Invalid(text, absl::StrCat("character '", std::string(1, c),
                                        "' is not allowed in the path (only letters, digits, "
                                        "'.', '-' and '_')"));
    }
    start = end + 1;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TrustDomain> TrustDomain::Parse(absl::string_view text) {
  absl::string_view name = text;
  if (absl::StartsWith(text, kScheme)) {
    name.remove_prefix(kScheme.size());
    if (name.find('/') != absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("invalid trust domain \"", text,
                                                     "\": a trust domain ID must not have a path"));
    }
  } else if (text.find("://") != absl::string_view::npos) {
    return Invalid(text, "the scheme must be \"spiffe://\" (lowercase)");
  }
  if (auto st = ValidateTrustDomainName(text, name); !st.ok()) return st;
  return TrustDomain(std::string(name));
}

absl::StatusOr<SpiffeId> SpiffeId::Parse(absl::string_view text) {
  if (text.empty()) return absl::InvalidArgumentError("invalid SPIFFE ID: it is empty");
  if (text.size() > kMaxLength) {
    return Invalid(text.substr(0, 64),
                   absl::StrCat("it is ", text.size(), " bytes long; the limit is ", kMaxLength));
  }
  if (!absl::StartsWith(text, kScheme)) {
    return Invalid(text, "the scheme must be \"spiffe://\" (lowercase)");
  }
  absl::string_view rest = text.substr(kScheme.size());
  size_t slash = rest.find('/');
  absl::string_view td = rest.substr(0, slash);
  absl::string_view path = slash == absl::string_view::npos ? "" : rest.substr(slash);
  // Report a query or fragment as such rather than as a bad character.
  if (size_t q = td.find_first_of("?#"); q != absl::string_view::npos) {
    return Invalid(text, td[q] == '?' ? "a query is not allowed" : "a fragment is not allowed");
  }
  if (auto st = ValidateTrustDomainName(text, td); !st.ok()) return st;
  if (auto st = ValidatePath(text, path); !st.ok()) return st;
  return SpiffeId(TrustDomain(std::string(td)), std::string(path));
}

absl::StatusOr<SpiffeId> SpiffeId::ParseWorkload(absl::string_view text) {
  auto id = Parse(text);
  if (id.ok() && id->path().empty()) {
    return Invalid(text, "a workload SPIFFE ID needs a path after the trust domain");
  }
  return id;
}

absl::StatusOr<SpiffeIdPattern> SpiffeIdPattern::Parse(absl::string_view text) {
  bool prefix = absl::EndsWith(text, "/*");
  absl::string_view base = prefix ? text.substr(0, text.size() - 2) : text;
  if (base.find('*') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid SPIFFE ID pattern \"", text,
                     "\": '*' is only allowed as a whole last segment (\"spiffe://td/ns/*\")"));
  }
  auto id = SpiffeId::Parse(base);
  if (!id.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid SPIFFE ID pattern \"", text, "\": ", id.status().message()));
  }
  return SpiffeIdPattern(*std::move(id), prefix);
}

bool SpiffeIdPattern::Matches(const SpiffeId& id) const {
  if (id.trust_domain() != base_.trust_domain()) return false;
  if (!is_prefix_) return id.path() == base_.path();
  // Segment-wise: the ID must extend the base by at least one whole segment.
  const std::string& p = id.path();
  const std::string& b = base_.path();
  return p.size() > b.size() + 1 && absl::StartsWith(p, b) && p[b.size()] == '/';
}

std::string SpiffeIdPattern::ToString() const {
  return is_prefix_ ? base_.ToString() + "/*" : base_.ToString();
}

}  // namespace ktrust
