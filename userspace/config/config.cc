#include "ktrust/config/config.h"

#include <arpa/inet.h>
#include <limits.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <initializer_list>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "ktrust/common/error_text.h"
#include "ktrust/common/files.h"
#include "ktrust/config/registry.h"
#include "spiffe_template.h"

namespace ktrust {
namespace {

constexpr absl::Duration kMinSvidTtl = absl::Minutes(1);
constexpr absl::Duration kMaxSvidTtl = absl::Hours(24);

std::string Child(absl::string_view path, absl::string_view key) {
  return path.empty() ? std::string(key) : absl::StrCat(path, ".", key);
}
std::string Item(absl::string_view path, size_t index) {
  return absl::StrCat(path, "[", index, "]");
}

// What a node holds, as an error message's "got ...".
std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return absl::StrCat("\"", absl::CHexEscape(node.Scalar()), "\"");
    case YAML::NodeType::Sequence:
      return node.size() == 0 ? "an empty list" : "a list";
    case YAML::NodeType::Map:
      return node.size() == 0 ? "an empty mapping" : "a mapping";
    default:
      return "nothing";
  }
}

bool IsWorkloadNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
}

// Kubernetes' qualified names (label and annotation keys): an optional DNS
// subdomain prefix and '/', then 1-63 alphanumerics, '-', '_', '.' that
// begin and end alphanumeric. Label values are the name part, 0-63 long.
bool IsLabelName(absl::string_view text) {
  if (text.empty() || text.size() > 63) return false;
  if (!absl::ascii_isalnum(text.front()) || !absl::ascii_isalnum(text.back())) return false;
  return std::all_of(text.begin(), text.end(), [](char c) {
    return absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.';
  });
}

bool IsDnsSubdomain(absl::string_view text) {
  if (text.empty() || text.size() > 253) return false;
  for (absl::string_view label : absl::StrSplit(text, '.')) {
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
      return false;
    }
    for (char c : label) {
      if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
    }
  }
  return true;
}

bool IsQualifiedName(absl::string_view text) {
  size_t slash = text.find('/');
  if (slash == absl::string_view::npos) return IsLabelName(text);
  return IsDnsSubdomain(text.substr(0, slash)) && IsLabelName(text.substr(slash + 1));
}

// https://host[:port][/]: the token goes nowhere in plaintext, and a path
// would be silently ignored by whoever reads this.
bool IsApiServerUrl(absl::string_view url) {
  if (!absl::ConsumePrefix(&url, "https://")) return false;
  absl::ConsumeSuffix(&url, "/");
  absl::string_view port;
  if (absl::ConsumePrefix(&url, "[")) {
    size_t close = url.find(']');
    if (close == absl::string_view::npos) return false;
    std::string host(url.substr(0, close));
    in6_addr scratch{};
    if (inet_pton(AF_INET6, host.c_str(), &scratch) != 1) return false;
    url.remove_prefix(close + 1);
    if (url.empty()) return true;
    if (!absl::ConsumePrefix(&url, ":")) return false;
    port = url;
  } else {
    size_t colon = url.find(':');
    absl::string_view host = url.substr(0, colon);
    if (host.empty() || !std::all_of(host.begin(), host.end(), [](char c) {
          return absl::ascii_isalnum(c) || c == '-' || c == '.';
        })) {
      return false;
    }
    if (colon == absl::string_view::npos) return true;
    port = url.substr(colon + 1);
  }
  uint32_t number = 0;
  return !port.empty() && std::all_of(port.begin(), port.end(), absl::ascii_isdigit) &&
         absl::SimpleAtoi(port, &number) && number >= 1 && number <= 65535;
}

bool IsIpAddress(int family, const std::string& text) {
  in6_addr scratch{};
  return inet_pton(family, text.c_str(), &scratch) == 1;
}

struct Field {
  std::string key;
  YAML::Node key_node;
  YAML::Node value;
};

struct Mapping {
  YAML::Node node;
  std::string path;
  std::vector<Field> fields;

  const Field* Find(absl::string_view key) const {
    for (const Field& field : fields) {
      if (field.key == key) return &field;
    }
    return nullptr;
  }
};

// One parse: knows the file name for messages, and the first error ends it.
class Parser {
 public:
  explicit Parser(absl::string_view source) : source_(source) {}

  absl::Status Fail(const YAML::Mark& mark, absl::string_view path, absl::string_view what) const {
    // yaml-cpp counts from 0; editors count from 1.
    int line = mark.is_null() ? 1 : mark.line + 1;
    int column = mark.is_null() ? 1 : mark.column + 1;
    return absl::InvalidArgumentError(absl::StrCat(source_, ":", line, ":", column, ": ",
                                                   path.empty() ? "document" : path, ": ", what));
  }

  absl::Status Expected(const YAML::Node& node, absl::string_view path,
                        absl::string_view expected) const {
    return Fail(node.Mark(), path, absl::StrCat("expected ", expected, ", got ", Describe(node)));
  }

  // For a field's value: an empty value's mark is wherever the parser noticed
  // it was empty (often the next line), so point at the key instead.
  absl::Status Expected(const Field& field, absl::string_view path,
                        absl::string_view expected) const {
    if (field.value.IsNull()) {
      return Fail(field.key_node.Mark(), path,
                  absl::StrCat("expected ", expected, ", got nothing"));
    }
    return Expected(field.value, path, expected);
  }

  // As Expected, with the reason a value that looks right is not.
  absl::Status ExpectedBecause(const Field& field, absl::string_view path,
                               absl::string_view expected, absl::string_view why) const {
    return ExpectedBecause(field.value, path, expected, why);
  }
  absl::Status ExpectedBecause(const YAML::Node& node, absl::string_view path,
                               absl::string_view expected, absl::string_view why) const {
    return Fail(node.Mark(), path,
                absl::StrCat("expected ", expected, ", got ", Describe(node), " (", why, ")"));
  }

  absl::Status Missing(const Mapping& map, absl::string_view key,
                       absl::string_view expected) const {
    return Fail(map.node.Mark(), Child(map.path, key),
                absl::StrCat("expected ", expected, ", got nothing (the key is required)"));
  }

  absl::Status OpenMapping(const YAML::Node& node, absl::string_view path,
                           std::initializer_list<absl::string_view> allowed, Mapping* out) const {
    if (!node.IsMap()) {
      return Expected(node, path,
                      absl::StrCat("a mapping with the keys ", absl::StrJoin(allowed, ", ")));
    }
    out->node = node;
    out->path = std::string(path);
    for (auto it = node.begin(); it != node.end(); ++it) {
      YAML::Node key = it->first;  // a copy: the iterator hands out a temporary
      if (!key.IsScalar()) return Expected(key, path, "a key name");
      std::string name = key.Scalar();
      if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
        return Fail(key.Mark(), Child(path, name),
                    absl::StrCat("unknown key; expected one of ", absl::StrJoin(allowed, ", "),
                                 ", got \"", absl::CHexEscape(name), "\""));
      }
      if (const Field* first = out->Find(name); first != nullptr) {
        // yaml-cpp keeps both; which one would win is nobody's intent.
        return Fail(
            key.Mark(), Child(path, name),
            absl::StrCat("expected each key once, got a second \"", name,
                         "\" (the first is on line ", first->key_node.Mark().line + 1, ")"));
      }
      out->fields.push_back(Field{name, key, it->second});
    }
    return absl::OkStatus();
  }

  absl::Status String(const Field& field, absl::string_view path, std::string* out,
                      absl::string_view expected = "a string") const {
    if (!field.value.IsScalar()) return Expected(field, path, expected);
    *out = field.value.Scalar();
    return absl::OkStatus();
  }

  absl::Status NonEmptyString(const Field& field, absl::string_view path, std::string* out,
                              absl::string_view expected = "a non-empty string") const {
    if (!field.value.IsScalar() || field.value.Scalar().empty()) {
      return Expected(field, path, expected);
    }
    *out = field.value.Scalar();
    return absl::OkStatus();
  }

  // Relative paths in a daemon's configuration depend on its working
  // directory, which is almost never what was meant.
  absl::Status AbsolutePath(const Field& field, absl::string_view path, std::string* out) const {
    if (!field.value.IsScalar() || field.value.Scalar().empty() ||
        field.value.Scalar().front() != '/') {
      return Expected(field, path, "an absolute path");
    }
    *out = field.value.Scalar();
    return absl::OkStatus();
  }

  absl::Status OneOf(const Field& field, absl::string_view path,
                     std::initializer_list<absl::string_view> choices, std::string* out) const {
    if (field.value.IsScalar() &&
        std::find(choices.begin(), choices.end(), field.value.Scalar()) != choices.end()) {
      *out = field.value.Scalar();
      return absl::OkStatus();
    }
    return Expected(field, path, absl::StrCat("one of ", absl::StrJoin(choices, ", ")));
  }

  absl::Status Bool(const Field& field, absl::string_view path, bool* out) const {
    const std::string value = field.value.IsScalar() ? field.value.Scalar() : "";
    if (value != "true" && value != "false") return Expected(field, path, "true or false");
    *out = value == "true";
    return absl::OkStatus();
  }

  absl::Status Port(const YAML::Node& node, absl::string_view path, uint16_t* out) const {
    uint32_t value = 0;
    if (!node.IsScalar() || !absl::SimpleAtoi(node.Scalar(), &value) || value < 1 ||
        value > 65535 || !absl::ascii_isdigit(node.Scalar().front())) {
      return Expected(node, path, "a port number 1-65535");
    }
    *out = static_cast<uint16_t>(value);
    return absl::OkStatus();
  }

  absl::Status Port(const Field& field, absl::string_view path, uint16_t* out) const {
    if (field.value.IsNull()) return Expected(field, path, "a port number 1-65535");
    return Port(field.value, path, out);
  }

  // An item of a `ports` list: 8080 or "8000-8999".
  absl::Status PortRangeItem(const YAML::Node& node, absl::string_view path, PortRange* out) const {
    constexpr absl::string_view kExpected = "a port 1-65535 or a range \"first-last\"";
    if (!node.IsScalar()) return Expected(node, path, kExpected);
    std::vector<absl::string_view> parts = absl::StrSplit(node.Scalar(), '-');
    if (parts.size() > 2) return Expected(node, path, kExpected);
    uint32_t bounds[2] = {0, 0};
    for (size_t i = 0; i < parts.size(); ++i) {
      absl::string_view part = absl::StripAsciiWhitespace(parts[i]);
      if (part.empty() || !absl::ascii_isdigit(part.front()) ||
          !absl::SimpleAtoi(part, &bounds[i]) || bounds[i] < 1 || bounds[i] > 65535) {
        return Expected(node, path, kExpected);
      }
    }
    if (parts.size() == 1) bounds[1] = bounds[0];
    if (bounds[0] > bounds[1]) {
      return Expected(node, path, "a range whose first port is not above its last");
    }
    *out = PortRange{static_cast<uint16_t>(bounds[0]), static_cast<uint16_t>(bounds[1])};
    return absl::OkStatus();
  }

  // A `ports` list; absent means every port, so an empty list is refused
  // rather than read as either.
  absl::Status PortRanges(const Mapping& map, std::vector<PortRange>* out) const {
    const Field* field = map.Find("ports");
    if (field == nullptr) return absl::OkStatus();
    std::string path = Child(map.path, "ports");
    if (!field->value.IsSequence() || field->value.size() == 0) {
      return Expected(*field, path,
                      "a non-empty list of ports and \"first-last\" ranges (leave `ports` out "
                      "for every port)");
    }
    for (size_t i = 0; i < field->value.size(); ++i) {
      PortRange range;
      if (auto st = PortRangeItem(field->value[i], Item(path, i), &range); !st.ok()) return st;
      out->push_back(range);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<IpPrefix> Prefix(const Mapping& map) const {
    const Field* field = map.Find("cidr");
    constexpr absl::string_view kExpected = "a CIDR prefix such as 10.0.0.0/8 or fd00::/8";
    if (field == nullptr) return Missing(map, "cidr", kExpected);
    std::string path = Child(map.path, "cidr");
    if (!field->value.IsScalar()) return Expected(*field, path, kExpected);
    auto prefix = IpPrefix::Parse(field->value.Scalar());
    if (!prefix.ok()) {
      return ExpectedBecause(*field, path, kExpected, prefix.status().message());
    }
    return prefix;
  }

  absl::Status Pattern(const YAML::Node& node, absl::string_view path,
                       std::optional<SpiffeIdPattern>* out) const {
    constexpr absl::string_view kExpected =
        "a SPIFFE ID or a prefix pattern ending in \"/*\" (spiffe://example.org/ns/prod/*)";
    if (!node.IsScalar()) return Expected(node, path, kExpected);
    auto pattern = SpiffeIdPattern::Parse(node.Scalar());
    if (!pattern.ok()) {
      return ExpectedBecause(node, path, kExpected, pattern.status().message());
    }
    out->emplace(*std::move(pattern));
    return absl::OkStatus();
  }

  absl::Status StringList(const Field& field, absl::string_view path,
                          std::vector<std::string>* out) const {
    if (!field.value.IsSequence()) return Expected(field, path, "a list of absolute paths");
    for (size_t i = 0; i < field.value.size(); ++i) {
      const YAML::Node& item = field.value[i];
      if (!item.IsScalar() || item.Scalar().empty() || item.Scalar().front() != '/') {
        return Expected(item, Item(path, i), "an absolute path");
      }
      out->push_back(item.Scalar());
    }
    return absl::OkStatus();
  }

  const std::string& source() const { return source_; }

 private:
  std::string source_;
};

class ConfigReader {
 public:
  ConfigReader(absl::string_view source, const ConfigEnvironment& environment)
      : p_(source), env_(environment) {}

  absl::StatusOr<Config> Read(const YAML::Node& root) {
    Config config;
    config.source_path = p_.source();
    Mapping top;
    if (auto st = p_.OpenMapping(
            root, "",
            {"version", "trust_domain", "identity", "trust_bundles", "crls", "workloads", "mesh",
             "expected_servers", "policy", "agent", "kubernetes"},
            &top);
        !st.ok()) {
      return st;
    }
    // Read in dependency order, not file order: templates need the trust
    // domain and node name, policy needs the workloads.
    if (auto st = Version(top); !st.ok()) return st;
    if (auto st = TrustDomainField(top, &config); !st.ok()) return st;
    if (const Field* f = top.Find("identity")) {
      if (auto st = Identity(*f, &config.identity); !st.ok()) return st;
    }
    if (const Field* f = top.Find("trust_bundles")) {
      if (auto st = TrustBundles(*f, &config); !st.ok()) return st;
    }
    if (const Field* f = top.Find("crls")) {
      if (auto st = p_.StringList(*f, "crls", &config.crls); !st.ok()) return st;
    }
    if (const Field* f = top.Find("agent")) {
      if (auto st = Agent(*f, &config.agent); !st.ok()) return st;
    }
    if (const Field* f = top.Find("kubernetes")) {
      if (auto st = Kubernetes(*f, &config); !st.ok()) return st;
    }
    // In a cluster the node's name is the Node object's, which {node} then
    // agrees with.
    if (config.agent.node_name.empty() && config.kubernetes.enabled) {
      config.agent.node_name = config.kubernetes.node_name;
    }
    if (config.agent.node_name.empty()) {
      char host[HOST_NAME_MAX + 1] = {};
      if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') {
        return absl::FailedPreconditionError(
            absl::StrCat(p_.source(), ": agent.node_name is not set and the host name is unknown (",
                         ErrnoText(errno), ")"));
      }
      config.agent.node_name = host;
    }
    if (const Field* f = top.Find("workloads")) {
      if (auto st = Workloads(*f, &config); !st.ok()) return st;
    }
    if (const Field* f = top.Find("mesh")) {
      if (auto st = Mesh(*f, &config); !st.ok()) return st;
    }
    if (const Field* f = top.Find("expected_servers")) {
      if (auto st = ExpectedServers(*f, &config); !st.ok()) return st;
    }
    if (const Field* f = top.Find("policy")) {
      if (auto st = Policy(*f, &config); !st.ok()) return st;
    }
    return config;
  }

 private:
  absl::Status Version(const Mapping& top) const {
    const Field* version = top.Find("version");
    if (version == nullptr) return p_.Missing(top, "version", "1");
    if (!version->value.IsScalar() || version->value.Scalar() != "1") {
      return p_.Expected(*version, "version", "1 (the only version this agent reads)");
    }
    return absl::OkStatus();
  }

  absl::Status TrustDomainField(const Mapping& top, Config* config) const {
    constexpr absl::string_view kExpected = "a trust domain name such as example.org";
    const Field* field = top.Find("trust_domain");
    if (field == nullptr) return p_.Missing(top, "trust_domain", kExpected);
    if (!field->value.IsScalar()) return p_.Expected(*field, "trust_domain", kExpected);
    auto td = TrustDomain::Parse(field->value.Scalar());
    if (!td.ok()) {
      return p_.ExpectedBecause(*field, "trust_domain", kExpected, td.status().message());
    }
    config->trust_domain = td->name();
    return absl::OkStatus();
  }

  // - /path/roots.crt                  roots of the local trust domain
  // - trust_domain: partner.example    roots of another one (federation)
  //   file: /path/partner.crt
  absl::Status TrustBundles(const Field& field, Config* config) const {
    constexpr absl::string_view kExpected =
        "a list of absolute paths or {trust_domain, file} mappings";
    if (!field.value.IsSequence()) return p_.Expected(field, "trust_bundles", kExpected);
    for (size_t i = 0; i < field.value.size(); ++i) {
      const YAML::Node& item = field.value[i];
      std::string path = Item("trust_bundles", i);
      TrustBundleFile entry{config->trust_domain, ""};
      if (item.IsScalar()) {
        if (item.Scalar().empty() || item.Scalar().front() != '/') {
          return p_.Expected(item, path, "an absolute path");
        }
        entry.path = item.Scalar();
      } else {
        Mapping map;
        if (auto st = p_.OpenMapping(item, path, {"trust_domain", "file"}, &map); !st.ok()) {
          return st;
        }
        constexpr absl::string_view kDomain = "a trust domain name such as partner.example";
        const Field* td_field = map.Find("trust_domain");
        if (td_field == nullptr) return p_.Missing(map, "trust_domain", kDomain);
        std::string td_path = Child(path, "trust_domain");
        if (!td_field->value.IsScalar()) return p_.Expected(*td_field, td_path, kDomain);
        auto td = TrustDomain::Parse(td_field->value.Scalar());
        if (!td.ok()) return p_.ExpectedBecause(*td_field, td_path, kDomain, td.status().message());
        entry.trust_domain = td->name();
        const Field* file = map.Find("file");
        if (file == nullptr) return p_.Missing(map, "file", "an absolute path");
        if (auto st = p_.AbsolutePath(*file, Child(path, "file"), &entry.path); !st.ok()) return st;
      }
      config->trust_bundles.push_back(std::move(entry));
    }
    return absl::OkStatus();
  }

  absl::Status Identity(const Field& field, IdentityConfig* out) const {
    Mapping map;
    if (auto st = p_.OpenMapping(field.value, "identity",
                                 {"source", "ca_dir", "svid_dir", "svid_ttl"}, &map);
        !st.ok()) {
      return st;
    }
    if (const Field* f = map.Find("source")) {
      std::string source;
      if (auto st = p_.OneOf(*f, "identity.source", {"embedded_ca", "svid_files"}, &source);
          !st.ok()) {
        return st;
      }
      out->source = source == "embedded_ca" ? IdentityConfig::Source::kEmbeddedCa
                                            : IdentityConfig::Source::kSvidFiles;
    }
    if (const Field* f = map.Find("ca_dir")) {
      if (auto st = p_.AbsolutePath(*f, "identity.ca_dir", &out->ca_dir); !st.ok()) return st;
    }
    if (const Field* f = map.Find("svid_dir")) {
      if (auto st = p_.AbsolutePath(*f, "identity.svid_dir", &out->svid_dir); !st.ok()) return st;
    }
    if (out->source == IdentityConfig::Source::kSvidFiles && out->svid_dir.empty()) {
      return p_.Missing(map, "svid_dir",
                        "the directory holding tls.crt, tls.key and ca.crt (source is svid_files)");
    }
    if (const Field* f = map.Find("svid_ttl")) {
      constexpr absl::string_view kExpected = "a duration between 1m and 24h such as \"1h\"";
      absl::Duration ttl;
      if (!f->value.IsScalar() || !absl::ParseDuration(f->value.Scalar(), &ttl) ||
          ttl < kMinSvidTtl || ttl > kMaxSvidTtl) {
        return p_.Expected(*f, "identity.svid_ttl", kExpected);
      }
      out->svid_ttl = ttl;
    }
    return absl::OkStatus();
  }

  absl::Status Agent(const Field& field, AgentSettings* out) const {
    Mapping map;
    if (auto st = p_.OpenMapping(field.value, "agent",
                                 {"node_name",
                                  "cgroup_root",
                                  "bpf_pin_dir",
                                  "outbound_port",
                                  "upstream_source",
                                  "upstream_source6",
                                  "socket_mark",
                                  "control_socket",
                                  "control_group",
                                  "handover_socket",
                                  "metrics_address",
                                  "log_format",
                                  "log_level",
                                  "data_path",
                                  "max_inbound_handshakes",
                                  "max_outbound_handshakes",
                                  "max_handshakes_per_source",
                                  "first_byte_timeout",
                                  "tls_resumption",
                                  "drain_timeout",
                                  "holder_socket",
                                  "registration_socket",
                                  "oci_socket"},
                                 &map);
        !st.ok()) {
      return st;
    }
    for (const Field& f : map.fields) {
      std::string path = Child("agent", f.key);
      absl::Status st;
      if (f.key == "node_name") {
        st = p_.NonEmptyString(f, path, &out->node_name);
      } else if (f.key == "cgroup_root") {
        st = p_.AbsolutePath(f, path, &out->cgroup_root);
      } else if (f.key == "bpf_pin_dir") {
        st = p_.AbsolutePath(f, path, &out->bpf_pin_dir);
      } else if (f.key == "outbound_port") {
        st = p_.Port(f, path, &out->outbound_port);
      } else if (f.key == "upstream_source") {
        if (!f.value.IsScalar() || !IsIpAddress(AF_INET, f.value.Scalar())) {
          st = p_.Expected(f, path, "an IPv4 address such as 127.0.0.6");
        } else {
          out->upstream_source = f.value.Scalar();
        }
      } else if (f.key == "upstream_source6") {
        if (!f.value.IsScalar() || !IsIpAddress(AF_INET6, f.value.Scalar())) {
          st =
              p_.Expected(f, path, "an IPv6 address on this node's loopback, such as fd00:6b74::6");
        } else {
          out->upstream_source6 = f.value.Scalar();
        }
      } else if (f.key == "socket_mark") {
        st = SocketMark(f, path, &out->socket_mark);
      } else if (f.key == "control_socket") {
        st = p_.AbsolutePath(f, path, &out->control_socket);
      } else if (f.key == "handover_socket") {
        st = p_.AbsolutePath(f, path, &out->handover_socket);
      } else if (f.key == "holder_socket") {
        st = p_.AbsolutePath(f, path, &out->holder_socket);
      } else if (f.key == "registration_socket") {
        st = p_.AbsolutePath(f, path, &out->registration_socket);
      } else if (f.key == "oci_socket") {
        st = p_.AbsolutePath(f, path, &out->oci_socket);
      } else if (f.key == "control_group") {
        st = p_.String(f, path, &out->control_group, "a group name");
      } else if (f.key == "metrics_address") {
        st = p_.String(f, path, &out->metrics_address, "host:port or \"\"");
        if (st.ok() && !out->metrics_address.empty()) {
          if (auto address = SocketAddress::Parse(out->metrics_address); !address.ok()) {
            st = p_.Expected(f, path,
                             "an address such as 127.0.0.1:9464 or [::1]:9464, or \"\" for none");
          }
        }
      } else if (f.key == "log_format") {
        st = p_.OneOf(f, path, {"json", "text"}, &out->log_format);
      } else if (f.key == "log_level") {
        st = p_.OneOf(f, path, {"trace", "debug", "info", "warn", "error"}, &out->log_level);
      } else if (f.key == "data_path") {
        st = p_.OneOf(f, path, {"auto", "userspace"}, &out->data_path);
      } else if (f.key == "max_inbound_handshakes") {
        st = HandshakeLimit(f, path, &out->max_inbound_handshakes);
      } else if (f.key == "max_outbound_handshakes") {
        st = HandshakeLimit(f, path, &out->max_outbound_handshakes);
      } else if (f.key == "max_handshakes_per_source") {
        st = HandshakeLimit(f, path, &out->max_handshakes_per_source);
      } else if (f.key == "first_byte_timeout") {
        // Under a second a lost and resent ClientHello would be dropped; over
        // a minute a silent client holds its slot as long as a handshake may.
        absl::Duration d;
        if (!f.value.IsScalar() || !absl::ParseDuration(f.value.Scalar(), &d) ||
            d < absl::Seconds(1) || d > absl::Minutes(1)) {
          st = p_.Expected(f, path, "a duration between 1s and 1m such as \"3s\"");
        } else {
          out->first_byte_timeout = d;
        }
      } else if (f.key == "tls_resumption") {
        st = p_.Bool(f, path, &out->tls_resumption);
      } else if (f.key == "drain_timeout") {
        // 0s closes every connection at once; over an hour an agent that was
        // asked to stop would linger for a long-lived connection's life.
        absl::Duration d;
        if (!f.value.IsScalar() || !absl::ParseDuration(f.value.Scalar(), &d) ||
            d < absl::ZeroDuration() || d > absl::Hours(1)) {
          st = p_.Expected(f, path, "a duration between 0s and 1h such as \"30s\"");
        } else {
          out->drain_timeout = d;
        }
      }
      if (!st.ok()) return st;
    }
    return absl::OkStatus();
  }

  absl::Status Kubernetes(const Field& field, Config* config) const {
    Mapping map;
    if (auto st = p_.OpenMapping(field.value, "kubernetes",
                                 {"enabled", "node_name", "api_server", "token_file", "ca_file",
                                  "namespace_label", "spiffe_id", "ports_annotation"},
                                 &map);
        !st.ok()) {
      return st;
    }
    KubernetesSettings& out = config->kubernetes;
    for (const Field& f : map.fields) {
      std::string path = Child("kubernetes", f.key);
      absl::Status st;
      if (f.key == "enabled") {
        st = p_.Bool(f, path, &out.enabled);
      } else if (f.key == "node_name") {
        if (!f.value.IsScalar() || !IsDnsSubdomain(f.value.Scalar())) {
          st = p_.Expected(f, path, "a node name (a lowercase DNS subdomain such as node-1)");
        } else {
          out.node_name = f.value.Scalar();
        }
      } else if (f.key == "api_server") {
        if (!f.value.IsScalar() || !IsApiServerUrl(f.value.Scalar())) {
          st = p_.Expected(f, path, "an https URL with no path, such as https://10.96.0.1:443");
        } else {
          out.api_server = f.value.Scalar();
        }
      } else if (f.key == "token_file") {
        st = p_.AbsolutePath(f, path, &out.token_file);
      } else if (f.key == "ca_file") {
        st = p_.AbsolutePath(f, path, &out.ca_file);
      } else if (f.key == "namespace_label") {
        st = NamespaceLabel(f, path, &out);
      } else if (f.key == "ports_annotation") {
        if (!f.value.IsScalar() || !IsQualifiedName(f.value.Scalar())) {
          st = p_.Expected(f, path, "an annotation key such as ktrust.io/inbound-ports");
        } else {
          out.ports_annotation = f.value.Scalar();
        }
      }
      if (!st.ok()) return st;
    }
    if (out.enabled) {
      if (auto st = KubernetesEnvironmentDefaults(map, &out); !st.ok()) return st;
    }
    // Last: its sample rendering needs the node name.
    if (const Field* f = map.Find("spiffe_id")) {
      if (auto st = KubernetesTemplate(*f, *config, &out.spiffe_id); !st.ok()) return st;
    }
    return absl::OkStatus();
  }

  absl::Status NamespaceLabel(const Field& field, absl::string_view path,
                              KubernetesSettings* out) const {
    constexpr absl::string_view kExpected =
        "a label \"key=value\" such as \"ktrust.io/mesh=enabled\" (a qualified key, a non-empty "
        "value of up to 63 letters, digits, '-', '_', '.')";
    if (!field.value.IsScalar()) return p_.Expected(field, path, kExpected);
    absl::string_view text = field.value.Scalar();
    size_t equals = text.find('=');
    if (equals == absl::string_view::npos || !IsQualifiedName(text.substr(0, equals)) ||
        !IsLabelName(text.substr(equals + 1))) {
      return p_.Expected(field, path, kExpected);
    }
    out->namespace_label_key = std::string(text.substr(0, equals));
    out->namespace_label_value = std::string(text.substr(equals + 1));
    return absl::OkStatus();
  }

  // What kubelet and the downward API put in the agent's environment.
  absl::Status KubernetesEnvironmentDefaults(const Mapping& map, KubernetesSettings* out) const {
    if (out->node_name.empty()) {
      if (!env_.node_name || env_.node_name->empty()) {
        return p_.Missing(map, "node_name",
                          "this node's name (set it here, or NODE_NAME from the downward API's "
                          "spec.nodeName; NODE_NAME is not set either)");
      }
      if (!IsDnsSubdomain(*env_.node_name)) {
        return p_.Fail(map.node.Mark(), "kubernetes.node_name",
                       absl::StrCat("expected a node name (a lowercase DNS subdomain), got \"",
                                    absl::CHexEscape(*env_.node_name),
                                    "\" from the environment variable NODE_NAME"));
      }
      out->node_name = *env_.node_name;
    }
    if (out->api_server.empty()) {
      if (!env_.service_host || env_.service_host->empty() || !env_.service_port ||
          env_.service_port->empty()) {
        return p_.Missing(map, "api_server",
                          "the API server's https URL (set it here, or run in a pod, where "
                          "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are set; they are "
                          "not)");
      }
      const std::string& host = *env_.service_host;
      std::string url =
          absl::StrCat("https://", absl::StrContains(host, ':') ? "[" : "", host,
                       absl::StrContains(host, ':') ? "]" : "", ":", *env_.service_port);
      if (!IsApiServerUrl(url)) {
        return p_.Fail(map.node.Mark(), "kubernetes.api_server",
                       absl::StrCat("expected an https URL, got \"", absl::CHexEscape(url),
                                    "\" from KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT"));
      }
      out->api_server = std::move(url);
    }
    return absl::OkStatus();
  }

  absl::Status KubernetesTemplate(const Field& field, const Config& config,
                                  std::string* out) const {
    constexpr absl::string_view kExpected =
        "a SPIFFE ID template such as spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}";
    std::string path = "kubernetes.spiffe_id";
    if (!field.value.IsScalar()) return p_.Expected(field, path, kExpected);
    const std::string& tmpl = field.value.Scalar();
    if (auto st = config_internal::CheckTemplate(tmpl); !st.ok()) {
      return p_.ExpectedBecause(field, path, kExpected, st.message());
    }
    for (absl::string_view cgroup_only : {"{name}", "{unit}", "{cgroup}"}) {
      if (absl::StrContains(tmpl, cgroup_only)) {
        return p_.ExpectedBecause(
            field, path, kExpected,
            absl::StrCat(cgroup_only,
                         " belongs to `workloads` templates; a pod's template has "
                         "{trust_domain}, {node}, {namespace}, {service_account}, "
                         "{pod_name}, {pod_uid}"));
      }
    }
    TemplateValues sample = SampleKubernetesValues(config);
    auto id = RenderSpiffeId(tmpl, sample);
    if (!id.ok()) {
      return p_.ExpectedBecause(
          field, path,
          absl::StrCat("a template giving a workload SPIFFE ID in trust domain ",
                       config.trust_domain),
          absl::StrCat("with namespace ", sample.pod_namespace, ", service account ",
                       sample.service_account, ": ", id.status().message()));
    }
    *out = tmpl;
    return absl::OkStatus();
  }

  // What a pod could have: rendering these catches a template that can
  // never give a valid ID at load time.
  static TemplateValues SampleKubernetesValues(const Config& config) {
    TemplateValues values;
    values.trust_domain = config.trust_domain;
    values.node = config.agent.node_name.empty() ? "node" : config.agent.node_name;
    values.pod_namespace = "default";
    values.service_account = "default";
    values.pod_name = "pod";
    values.pod_uid = "00000000-0000-0000-0000-000000000000";
    return values;
  }

  absl::Status HandshakeLimit(const Field& field, absl::string_view path, int* out) const {
    int value = 0;
    if (!field.value.IsScalar() || field.value.Scalar().empty() ||
        !absl::ascii_isdigit(field.value.Scalar().front()) ||
        !absl::SimpleAtoi(field.value.Scalar(), &value) || value < 1 || value > 1000000) {
      return p_.Expected(field, path, "a number of handshakes between 1 and 1000000");
    }
    *out = value;
    return absl::OkStatus();
  }

  absl::Status SocketMark(const Field& field, absl::string_view path, uint32_t* out) const {
    uint32_t mark = 0;
    bool parsed = false;
    if (field.value.IsScalar() && !field.value.Scalar().empty()) {
      absl::string_view text = field.value.Scalar();
      if (absl::StartsWith(text, "0x") || absl::StartsWith(text, "0X")) {
        text.remove_prefix(2);
        parsed =
            !text.empty() && absl::ascii_isxdigit(text.front()) && absl::SimpleHexAtoi(text, &mark);
      } else {
        parsed = absl::ascii_isdigit(text.front()) && absl::SimpleAtoi(text, &mark);
      }
    }
    // The agent's sockets are known by their mark (never redirected, let
    // through to applications): without one it could not work.
    if (!parsed || mark == 0)
      return p_.Expected(field, path, "a non-zero 32-bit mark such as 0x6b74");
    *out = mark;
    return absl::OkStatus();
  }

  absl::Status Workloads(const Field& field, Config* config) const {
    if (!field.value.IsSequence()) return p_.Expected(field, "workloads", "a list of workloads");
    // Where each inbound port was claimed: a port belongs to one workload.
    std::map<uint16_t, std::string> port_owner;
    std::map<std::string, std::string> name_owner;
    for (size_t i = 0; i < field.value.size(); ++i) {
      std::string path = Item("workloads", i);
      Mapping map;
      if (auto st =
              p_.OpenMapping(field.value[i], path,
                             {"name", "cgroup", "spiffe_id", "mode", "ports", "data_path"}, &map);
          !st.ok()) {
        return st;
      }
      WorkloadConfig workload;
      if (auto st = WorkloadName(map, name_owner, &workload.name); !st.ok()) return st;
      if (auto st = CgroupGlob(map, &workload.cgroup); !st.ok()) return st;
      if (const Field* f = map.Find("mode")) {
        constexpr absl::string_view kExpected = "one of enforce, permissive, off";
        auto mode = f->value.IsScalar() ? ParseWorkloadMode(f->value.Scalar())
                                        : absl::InvalidArgumentError("");
        if (!mode.ok()) return p_.Expected(*f, Child(path, "mode"), kExpected);
        workload.mode = *mode;
      }
      if (auto st = WorkloadDataPathOf(map, workload, &workload.data_path); !st.ok()) return st;
      if (auto st = WorkloadPorts(map, workload, config->agent, &port_owner, &workload.ports);
          !st.ok()) {
        return st;
      }
      if (auto st = Template(map, *config, workload, &workload.spiffe_id); !st.ok()) return st;
      config->workloads.push_back(std::move(workload));
    }
    return absl::OkStatus();
  }

  absl::Status WorkloadDataPathOf(const Mapping& map, const WorkloadConfig& workload,
                                  WorkloadDataPath* out) const {
    const Field* f = map.Find("data_path");
    if (f == nullptr) return absl::OkStatus();
    std::string path = Child(map.path, "data_path");
    std::string name;
    if (auto st = p_.OneOf(*f, path, {"proxy", "zero_hop"}, &name); !st.ok()) return st;
    *out = name == "zero_hop" ? WorkloadDataPath::kZeroHop : WorkloadDataPath::kProxy;
    if (*out == WorkloadDataPath::kZeroHop && workload.mode == WorkloadMode::kOff) {
      return p_.Expected(*f, path,
                         "proxy for a workload whose mode is off (it is not intercepted)");
    }
    return absl::OkStatus();
  }

  absl::Status WorkloadName(const Mapping& map, std::map<std::string, std::string>& name_owner,
                            std::string* out) const {
    constexpr absl::string_view kExpected =
        "a workload name of lowercase letters, digits, '-', '_' and '.'";
    const Field* field = map.Find("name");
    if (field == nullptr) return p_.Missing(map, "name", kExpected);
    std::string path = Child(map.path, "name");
    if (!field->value.IsScalar() || field->value.Scalar().empty() ||
        !std::all_of(field->value.Scalar().begin(), field->value.Scalar().end(),
                     IsWorkloadNameChar)) {
      return p_.Expected(*field, path, kExpected);
    }
    const std::string& name = field->value.Scalar();
    if (auto it = name_owner.find(name); it != name_owner.end()) {
      return p_.Expected(*field, path,
                         absl::StrCat("a name no other workload has (", it->second, " is \"", name,
                                      "\" already)"));
    }
    name_owner[name] = map.path;
    *out = name;
    return absl::OkStatus();
  }

  absl::Status CgroupGlob(const Mapping& map, std::string* out) const {
    constexpr absl::string_view kExpected =
        "a cgroup path glob relative to the cgroup root, such as system.slice/nginx.service";
    const Field* field = map.Find("cgroup");
    if (field == nullptr) return p_.Missing(map, "cgroup", kExpected);
    std::string path = Child(map.path, "cgroup");
    if (!field->value.IsScalar()) return p_.Expected(*field, path, kExpected);
    const std::string& glob = field->value.Scalar();
    // Relative paths never start or end with '/' nor hold "//": such a glob
    // would silently match nothing.
    if (glob.empty() || glob.front() == '/' || glob.back() == '/' ||
        glob.find("//") != std::string::npos) {
      return p_.Expected(*field, path, absl::StrCat(kExpected, " (no leading or trailing '/')"));
    }
    *out = glob;
    return absl::OkStatus();
  }

  absl::Status WorkloadPorts(const Mapping& map, const WorkloadConfig& workload,
                             const AgentSettings& agent,
                             std::map<uint16_t, std::string>* port_owner,
                             std::vector<uint16_t>* out) const {
    const Field* field = map.Find("ports");
    if (field == nullptr) return absl::OkStatus();
    std::string path = Child(map.path, "ports");
    if (workload.mode == WorkloadMode::kOff) {
      return p_.Expected(*field, path,
                         "no ports for a workload whose mode is off (it is not intercepted)");
    }
    if (!field->value.IsSequence()) return p_.Expected(*field, path, "a list of port numbers");
    for (size_t i = 0; i < field->value.size(); ++i) {
      const YAML::Node& item = field->value[i];
      std::string item_path = Item(path, i);
      uint16_t port = 0;
      if (auto st = p_.Port(item, item_path, &port); !st.ok()) return st;
      if (port == agent.outbound_port) {
        return p_.Expected(
            item, item_path,
            absl::StrCat("a port other than the agent's outbound port ", agent.outbound_port));
      }
      if (auto it = port_owner->find(port); it != port_owner->end()) {
        return p_.Expected(item, item_path,
                           absl::StrCat("a port no other workload enforces (", it->second, " has ",
                                        port, " already)"));
      }
      (*port_owner)[port] = item_path;
      out->push_back(port);
    }
    return absl::OkStatus();
  }

  absl::Status Template(const Mapping& map, const Config& config, const WorkloadConfig& workload,
                        std::string* out) const {
    constexpr absl::string_view kExpected =
        "a SPIFFE ID template such as spiffe://{trust_domain}/node/{node}/{name}";
    const Field* field = map.Find("spiffe_id");
    if (field == nullptr) return p_.Missing(map, "spiffe_id", kExpected);
    std::string path = Child(map.path, "spiffe_id");
    if (!field->value.IsScalar()) return p_.Expected(*field, path, kExpected);
    const std::string& tmpl = field->value.Scalar();
    if (auto st = config_internal::CheckTemplate(tmpl); !st.ok()) {
      return p_.ExpectedBecause(*field, path, kExpected, st.message());
    }
    if (TemplateUsesKubernetes(tmpl) && !config.kubernetes.enabled) {
      return p_.ExpectedBecause(*field, path, kExpected,
                                "{namespace}, {service_account}, {pod_name} and {pod_uid} come "
                                "from the Kubernetes API: set kubernetes.enabled: true, or leave "
                                "them out");
    }
    // Render once with this workload's values and a cgroup the glob could
    // match, so a template that can never give a valid ID is caught now,
    // not at the first matching cgroup.
    std::string sample_cgroup = SampleCgroup(workload.cgroup);
    std::string sample_unit = "unit";
    TemplateValues sample = SampleKubernetesValues(config);
    sample.name = workload.name;
    sample.cgroup = sample_cgroup;
    auto id = config_internal::RenderSpiffeId(tmpl, sample, &sample_unit);
    if (!id.ok()) {
      return p_.ExpectedBecause(
          *field, path,
          absl::StrCat("a template giving a workload SPIFFE ID in trust domain ",
                       config.trust_domain),
          absl::StrCat("with name ", workload.name, ", node ", config.agent.node_name, ", cgroup ",
                       sample_cgroup, ": ", id.status().message()));
    }
    *out = tmpl;
    return absl::OkStatus();
  }

  // A path the glob matches: each wildcard stands for "x".
  static std::string SampleCgroup(absl::string_view glob) {
    std::string sample;
    for (size_t i = 0; i < glob.size(); ++i) {
      if (glob[i] == '*' || glob[i] == '?') {
        sample.push_back('x');
        while (i + 1 < glob.size() && glob[i] == '*' && glob[i + 1] == '*') ++i;
      } else {
        sample.push_back(glob[i]);
      }
    }
    return sample;
  }

  absl::Status MeshEntries(const Field& field, absl::string_view path,
                           std::vector<MeshEntry>* out) const {
    if (!field.value.IsSequence()) {
      return p_.Expected(field, path, "a list of {cidr, ports} entries");
    }
    for (size_t i = 0; i < field.value.size(); ++i) {
      Mapping map;
      if (auto st = p_.OpenMapping(field.value[i], Item(path, i), {"cidr", "ports"}, &map);
          !st.ok()) {
        return st;
      }
      auto prefix = p_.Prefix(map);
      if (!prefix.ok()) return prefix.status();
      MeshEntry entry{*std::move(prefix), {}};
      if (auto st = p_.PortRanges(map, &entry.ports); !st.ok()) return st;
      out->push_back(std::move(entry));
    }
    return absl::OkStatus();
  }

  absl::Status Mesh(const Field& field, Config* config) const {
    Mapping map;
    if (auto st = p_.OpenMapping(field.value, "mesh",
                                 {"destinations", "bypass", "require_expected_server"}, &map);
        !st.ok()) {
      return st;
    }
    if (const Field* f = map.Find("require_expected_server")) {
      if (auto st = p_.Bool(*f, "mesh.require_expected_server", &config->require_expected_server);
          !st.ok()) {
        return st;
      }
    }
    if (const Field* f = map.Find("destinations")) {
      if (auto st = MeshEntries(*f, "mesh.destinations", &config->mesh); !st.ok()) return st;
    }
    if (const Field* f = map.Find("bypass")) {
      if (auto st = MeshEntries(*f, "mesh.bypass", &config->bypass); !st.ok()) return st;
    }
    return absl::OkStatus();
  }

  absl::Status ExpectedServers(const Field& field, Config* config) const {
    if (!field.value.IsSequence()) {
      return p_.Expected(field, "expected_servers", "a list of {cidr, ports, spiffe_id} entries");
    }
    for (size_t i = 0; i < field.value.size(); ++i) {
      std::string path = Item("expected_servers", i);
      Mapping map;
      if (auto st = p_.OpenMapping(field.value[i], path, {"cidr", "ports", "spiffe_id"}, &map);
          !st.ok()) {
        return st;
      }
      auto prefix = p_.Prefix(map);
      if (!prefix.ok()) return prefix.status();
      std::vector<PortRange> ports;
      if (auto st = p_.PortRanges(map, &ports); !st.ok()) return st;
      const Field* id = map.Find("spiffe_id");
      if (id == nullptr) {
        return p_.Missing(map, "spiffe_id", "the SPIFFE ID or \"/*\" pattern the servers prove");
      }
      std::optional<SpiffeIdPattern> pattern;
      if (auto st = p_.Pattern(id->value, Child(path, "spiffe_id"), &pattern); !st.ok()) {
        return st;
      }
      config->expected_servers.push_back(
          ExpectedServerRule{*std::move(prefix), std::move(ports), *std::move(pattern)});
    }
    return absl::OkStatus();
  }

  absl::Status Policy(const Field& field, Config* config) const {
    if (!field.value.IsSequence()) {
      return p_.Expected(field, "policy", "a list of {to, ports, from} rules");
    }
    for (size_t i = 0; i < field.value.size(); ++i) {
      std::string path = Item("policy", i);
      Mapping map;
      if (auto st = p_.OpenMapping(field.value[i], path, {"to", "ports", "from"}, &map); !st.ok()) {
        return st;
      }
      PolicyRule rule;
      rule.origin = absl::StrCat(p_.source(), ":", field.value[i].Mark().line + 1);
      if (auto st = PolicyTarget(map, *config, &rule); !st.ok()) return st;
      if (auto st = p_.PortRanges(map, &rule.ports); !st.ok()) return st;
      constexpr absl::string_view kFrom =
          "a non-empty list of SPIFFE IDs and \"/*\" patterns allowed to connect";
      const Field* from = map.Find("from");
      if (from == nullptr) return p_.Missing(map, "from", kFrom);
      std::string from_path = Child(path, "from");
      if (!from->value.IsSequence() || from->value.size() == 0) {
        return p_.Expected(*from, from_path, kFrom);
      }
      for (size_t j = 0; j < from->value.size(); ++j) {
        std::optional<SpiffeIdPattern> pattern;
        if (auto st = p_.Pattern(from->value[j], Item(from_path, j), &pattern); !st.ok()) {
          return st;
        }
        rule.from.push_back(*std::move(pattern));
      }
      config->policy.push_back(std::move(rule));
    }
    return absl::OkStatus();
  }

  absl::Status PolicyTarget(const Mapping& map, const Config& config, PolicyRule* rule) const {
    constexpr absl::string_view kExpected = "a workload name or a SPIFFE ID pattern";
    const Field* to = map.Find("to");
    if (to == nullptr) return p_.Missing(map, "to", kExpected);
    std::string path = Child(map.path, "to");
    if (!to->value.IsScalar() || to->value.Scalar().empty()) {
      return p_.Expected(*to, path, kExpected);
    }
    const std::string& target = to->value.Scalar();
    if (absl::StartsWith(target, "spiffe://")) {
      return p_.Pattern(to->value, path, &rule->to_id);
    }
    bool known = std::any_of(config.workloads.begin(), config.workloads.end(),
                             [&](const WorkloadConfig& w) { return w.name == target; });
    if (!known) {
      std::vector<absl::string_view> names;
      for (const WorkloadConfig& w : config.workloads) names.push_back(w.name);
      return p_.Expected(*to, path,
                         absl::StrCat("the name of a workload in `workloads` (",
                                      names.empty() ? "there are none" : absl::StrJoin(names, ", "),
                                      ") or a spiffe:// pattern"));
    }
    rule->to_workload = target;
    return absl::OkStatus();
  }

  Parser p_;
  const ConfigEnvironment& env_;
};

}  // namespace

ConfigEnvironment ConfigEnvironment::FromProcess() {
  auto get = [](const char* name) -> std::optional<std::string> {
    const char* value = getenv(name);
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  };
  return ConfigEnvironment{get("NODE_NAME"), get("KUBERNETES_SERVICE_HOST"),
                           get("KUBERNETES_SERVICE_PORT")};
}

absl::string_view WorkloadDataPathName(WorkloadDataPath path) {
  return path == WorkloadDataPath::kZeroHop ? "zero_hop" : "proxy";
}

absl::string_view WorkloadModeName(WorkloadMode mode) {
  switch (mode) {
    case WorkloadMode::kEnforce:
      return "enforce";
    case WorkloadMode::kPermissive:
      return "permissive";
    case WorkloadMode::kOff:
      return "off";
  }
  return "unknown";
}

absl::StatusOr<WorkloadMode> ParseWorkloadMode(absl::string_view name) {
  for (WorkloadMode mode :
       {WorkloadMode::kEnforce, WorkloadMode::kPermissive, WorkloadMode::kOff}) {
    if (name == WorkloadModeName(mode)) return mode;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown workload mode \"", name, "\" (expected enforce, permissive or off)"));
}

const ExpectedServerRule* ExpectedServerFor(const Config& config, const IpPrefix& host,
                                            uint16_t port) {
  for (const ExpectedServerRule& rule : config.expected_servers) {
    if (!rule.prefix.Contains(host)) continue;
    bool port_ok = rule.ports.empty();
    for (const PortRange& r : rule.ports) port_ok |= r.Contains(port);
    if (port_ok) return &rule;
  }
  return nullptr;
}

namespace {

// Does `rule` alone cover every port of `ports` (empty: every port)?
bool PortsCovered(const std::vector<PortRange>& rule, const std::vector<PortRange>& ports) {
  if (rule.empty()) return true;
  std::vector<PortRange> wanted = ports.empty() ? std::vector<PortRange>{{1, 65535}} : ports;
  for (const PortRange& want : wanted) {
    bool inside = false;
    for (const PortRange& r : rule) inside |= r.first <= want.first && want.last <= r.last;
    if (!inside) return false;
  }
  return true;
}

}  // namespace

std::vector<std::string> ServerIdentityWarnings(const Config& config) {
  std::vector<std::string> warnings;
  if (config.require_expected_server) return warnings;
  for (const MeshEntry& entry : config.mesh) {
    bool pinned = false;
    for (const ExpectedServerRule& rule : config.expected_servers) {
      pinned |= rule.prefix.Contains(entry.prefix) && PortsCovered(rule.ports, entry.ports);
    }
    if (pinned) continue;
    std::vector<std::string> ports;
    for (const PortRange& r : entry.ports) {
      ports.push_back(r.first == r.last ? absl::StrCat(r.first)
                                        : absl::StrCat(r.first, "-", r.last));
    }
    warnings.push_back(absl::StrCat(
        "mesh destination ", entry.prefix.ToString(),
        ports.empty() ? " (every port)" : absl::StrCat(" ports ", absl::StrJoin(ports, ",")),
        " is not (entirely) covered by an expected_servers rule: there, any SVID of ",
        config.trust_domain,
        " is accepted as the server. Add expected_servers rules, or set "
        "mesh.require_expected_server: true to refuse such connections"));
  }
  return warnings;
}

absl::StatusOr<Config> ParseConfig(absl::string_view yaml, absl::string_view source_name) {
  return ParseConfig(yaml, source_name, ConfigEnvironment::FromProcess());
}

absl::StatusOr<Config> ParseConfig(absl::string_view yaml, absl::string_view source_name,
                                   const ConfigEnvironment& environment) {
  // yaml-cpp reports by exception; nothing may escape this library.
  try {
    YAML::Node root = YAML::Load(std::string(yaml));
    return ConfigReader(source_name, environment).Read(root);
  } catch (const YAML::Exception& e) {
    int line = e.mark.is_null() ? 1 : e.mark.line + 1;
    int column = e.mark.is_null() ? 1 : e.mark.column + 1;
    return absl::InvalidArgumentError(
        absl::StrCat(source_name, ":", line, ":", column, ": YAML syntax error: ", e.msg));
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat(source_name, ": reading the configuration: ", e.what()));
  }
}

absl::StatusOr<Config> LoadConfig(const std::string& path) {
  return LoadConfig(path, ConfigEnvironment::FromProcess());
}

absl::StatusOr<Config> LoadConfig(const std::string& path, const ConfigEnvironment& environment) {
  auto text = ReadFile(path);
  if (!text.ok()) return text.status();
  return ParseConfig(*text, path, environment);
}

}  // namespace ktrust
