#include "render.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace ktrust::cli {

namespace {

std::string OrDash(const std::string& text) { return text.empty() ? "-" : text; }

// Kubernetes mode's columns of `ktrust workloads` and `ktrust conns`.
constexpr const char* kPodColumns[] = {"NAMESPACE", "POD", "SERVICE ACCOUNT"};
void AppendPodColumns(const control::PodView& pod, std::vector<std::string>& row) {
  // An unresolved pod: its UID is all there is.
  std::string name =
      pod.name.empty() && !pod.uid.empty() ? absl::StrCat("uid ", pod.uid) : pod.name;
  row.insert(row.end(), {pod.namespace_name, name, pod.service_account});
}

// The length of the well-formed UTF-8 sequence starting text[at] (a non-ASCII
// byte), 0 when there is none (RFC 3629: no overlongs, no surrogates).
size_t Utf8SequenceAt(absl::string_view text, size_t at, uint32_t* code_point) {
  auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  unsigned char lead = byte(at);
  size_t length = 0;
  unsigned char low = 0x80, high = 0xBF;  // the second byte's range
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) low = 0xA0;
    if (lead == 0xED) high = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) low = 0x90;
    if (lead == 0xF4) high = 0x8F;
  } else {
    return 0;
  }
  if (at + length > text.size()) return 0;
  uint32_t cp = lead & (0xFF >> (length + 1));
  for (size_t i = 1; i < length; ++i) {
    unsigned char b = byte(at + i);
    if (i == 1 ? (b < low || b > high) : (b < 0x80 || b > 0xBF)) return 0;
    cp = (cp << 6) | (b & 0x3F);
  }
  *code_point = cp;
  return length;
}

// C1 controls, and the marks that reorder or separate the text around them.
bool IsInvisibleControl(uint32_t cp) {
  return (cp >= 0x80 && cp <= 0x9F) || cp == 0x061C || cp == 0x200E || cp == 0x200F ||
         (cp >= 0x2028 && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069);
}

// Display width: UTF-8 continuation bytes take no column.
size_t Width(const std::string& text) {
  return static_cast<size_t>(
      std::count_if(text.begin(), text.end(), [](char c) { return (c & 0xC0) != 0x80; }));
}

absl::Time FromUnix(double seconds) { return absl::UnixEpoch() + absl::Seconds(seconds); }

std::string YesNo(bool b) { return b ? "yes" : "no"; }

// A block of "label  value" lines with the values aligned; a value with
// several lines continues under its first.
std::string RenderFields(const std::vector<std::pair<std::string, std::string>>& fields) {
  size_t width = 0;
  for (const auto& [label, unused] : fields) width = std::max(width, Width(label));
  std::string out;
  for (const auto& [label, value] : fields) {
    std::string indent(width + 2, ' ');
    std::string text = OrDash(value);
    absl::StrAppend(&out, label, std::string(width + 2 - Width(label), ' '));
    for (size_t start = 0, line = 0;; ++line) {
      size_t end = text.find('\n', start);
      absl::StrAppend(&out, line ? indent : "", text.substr(start, end - start), "\n");
      if (end == std::string::npos) break;
      start = end + 1;
    }
  }
  return out;
}

}  // namespace

std::string EscapeForTerminal(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    unsigned char b = static_cast<unsigned char>(text[i]);
    if (b < 0x80) {
      if (b < 0x20 || b == 0x7F) {
        absl::StrAppendFormat(&out, "\\x%02x", b);
      } else {
        out.push_back(static_cast<char>(b));
      }
      ++i;
      continue;
    }
    uint32_t cp = 0;
    size_t length = Utf8SequenceAt(text, i, &cp);
    if (length == 0) {
      absl::StrAppendFormat(&out, "\\x%02x", b);
      ++i;
    } else {
      if (IsInvisibleControl(cp)) {
        absl::StrAppendFormat(&out, "\\u%04x", cp);
      } else {
        out.append(text.data() + i, length);
      }
      i += length;
    }
  }
  return out;
}

std::string RenderTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::vector<std::string>> shown;
  for (const auto& row : rows) {
    shown.emplace_back();
    for (const std::string& cell : row) shown.back().push_back(EscapeForTerminal(cell));
  }
  std::vector<size_t> widths(header.size(), 0);
  auto measure = [&](const std::vector<std::string>& row) {
    for (size_t i = 0; i < row.size() && i < widths.size(); ++i) {
      widths[i] = std::max(widths[i], Width(OrDash(row[i])));
    }
  };
  measure(header);
  for (const auto& row : shown) measure(row);
  std::string out;
  auto print = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t i = 0; i < widths.size(); ++i) {
      std::string cell = OrDash(i < row.size() ? row[i] : "");
      line += cell;
      if (i + 1 < widths.size()) line += std::string(widths[i] - Width(cell) + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    absl::StrAppend(&out, line, "\n");
  };
  print(header);
  for (const auto& row : shown) print(row);
  return out;
}

std::string HumanBytes(uint64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes) / 1024;
  size_t unit = 0;
  while (value >= 1024 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.1f %s", value, kUnits[unit]);
}

std::string HumanAge(double seconds) {
  int64_t s = seconds > 0 ? static_cast<int64_t>(seconds) : 0;
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  if (s < 86400) return absl::StrFormat("%dh%02dm", s / 3600, s % 3600 / 60);
  return absl::StrFormat("%dd%02dh", s / 86400, s % 86400 / 3600);
}

std::string FormatUnixTime(double unix_seconds) {
  if (unix_seconds == 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", FromUnix(unix_seconds), absl::UTCTimeZone());
}

std::string FormatExpiry(int64_t unix_seconds, absl::Time now) {
  if (unix_seconds == 0) return "-";
  double left = absl::ToDoubleSeconds(FromUnix(static_cast<double>(unix_seconds)) - now);
  return absl::StrCat(FormatUnixTime(static_cast<double>(unix_seconds)),
                      left >= 0 ? absl::StrCat(" (in ", HumanAge(left), ")")
                                : absl::StrCat(" (expired ", HumanAge(-left), " ago)"));
}

std::string RenderStatus(const control::StatusView& s, absl::Time now) {
  // Every string of the view is escaped before the lines are put together.
  auto shown = [](const std::string& text) { return EscapeForTerminal(text); };
  std::string title =
      absl::StrCat("ktrustd ", OrDash(shown(s.version)), " on ", OrDash(shown(s.node)));
  if (s.started != 0) {
    double up = absl::ToDoubleSeconds(now - FromUnix(static_cast<double>(s.started)));
    absl::StrAppend(&title, ", up ", HumanAge(up), " (since ",
                    FormatUnixTime(static_cast<double>(s.started)), ")");
  }

  std::vector<std::string> features;
  for (const auto& f : s.kernel_features) {
    features.push_back(
        absl::StrCat(shown(f.name), " ", YesNo(f.present),
                     f.detail.empty() ? "" : absl::StrCat(" (", shown(f.detail), ")")));
  }

  std::string bpf = s.bpf.attached ? "attached" : "not attached";
  if (!s.bpf.pin_dir.empty()) absl::StrAppend(&bpf, ", pinned at ", shown(s.bpf.pin_dir));
  if (s.bpf.adopted > 0) absl::StrAppend(&bpf, ", ", s.bpf.adopted, " links adopted");
  for (const auto& a : s.bpf.attachments) absl::StrAppend(&bpf, "\n", shown(a));

  std::string config = OrDash(shown(s.config.path));
  if (s.config.generation > 0 || s.config.loaded_at != 0) {
    absl::StrAppend(&config, ", generation ", s.config.generation, ", loaded ",
                    FormatUnixTime(static_cast<double>(s.config.loaded_at)));
  }
  if (!s.config.last_reload_ok) {
    absl::StrAppend(&config, "\nlast reload failed: ", OrDash(shown(s.config.last_reload_error)));
  }

  std::string ca = s.ca.trust_domain.empty() && s.ca.expires_at == 0
                       ? ""
                       : absl::StrCat(OrDash(shown(s.ca.trust_domain)), ", expires ",
                                      FormatExpiry(s.ca.expires_at, now));
  std::string bundle = s.bundle_expires_at == 0
                           ? ""
                           : absl::StrCat("expires ", FormatExpiry(s.bundle_expires_at, now));

  // Only once the holder was found or a listener is served: quiet otherwise.
  std::string zero_hop;
  if (s.zero_hop.holder_connected || !s.zero_hop.listeners.empty()) {
    zero_hop = s.zero_hop.holder_connected
                   ? absl::StrCat("holder connected (", shown(s.zero_hop.holder_socket), ")")
                   : absl::StrCat("holder not reachable (", shown(s.zero_hop.holder_problem), ")");
    for (const auto& l : s.zero_hop.listeners) {
      absl::StrAppend(&zero_hop, "\npid ", l.pid, " (", shown(l.source), ") ",
                      l.workload.empty() ? "no workload" : shown(l.workload), ": ",
                      shown(l.data_path));
    }
  }

  // Kubernetes mode only: whether the pods' identities can be trusted.
  std::string kubernetes;
  if (const auto& k = s.kubernetes; k.enabled) {
    kubernetes = absl::StrCat(
        k.synced ? "synced" : "NOT synced (its pods' mesh connections are refused meanwhile)",
        " with ", OrDash(shown(k.api_server)), " as node ", OrDash(shown(k.node)), ": ", k.pods,
        " pods here, ", k.pods_enrolled, " enrolled, ", k.pods_refused, " refused; ",
        k.namespaces_opted_in, " namespaces opted in");
    if (!k.problem.empty()) absl::StrAppend(&kubernetes, "\n", shown(k.problem));
  }

  const auto& c = s.counts;
  std::string data_path = shown(s.data_path);
  if (!s.data_path_reason.empty())
    absl::StrAppend(&data_path, " (", shown(s.data_path_reason), ")");

  std::vector<std::pair<std::string, std::string>> fields = {
      {"ready", s.ready ? "yes" : absl::StrCat("no: ", OrDash(shown(s.not_ready_reason)))}};
  // Only while stopping or upgrading: what is draining, and until when.
  const auto& d = s.drain;
  if (d.draining) {
    double left = absl::ToDoubleSeconds(FromUnix(static_cast<double>(d.deadline)) - now);
    fields.push_back(
        {"draining", absl::StrCat(OrDash(shown(d.reason)), ": ", d.connections,
                                  " connections open (", d.handshakes, " in handshake), closed at ",
                                  FormatUnixTime(static_cast<double>(d.deadline)),
                                  left >= 0 ? absl::StrCat(" (in ", HumanAge(left), ")") : "",
                                  " if still open; accepting no new connections")});
  }
  if (d.moved > 0) {
    fields.push_back({"moved", absl::StrCat(d.moved, " connections to the successor")});
  }
  if (d.moved_in > 0) {
    fields.push_back({"moved in", absl::StrCat(d.moved_in, " connections from the predecessor")});
  }
  if (!d.successor.empty()) fields.push_back({"successor", shown(d.successor)});
  if (!d.predecessor.empty()) fields.push_back({"predecessor", shown(d.predecessor)});
  // Only when there are any: a quiet status stays quiet.
  if (!s.warnings.empty()) {
    std::vector<std::string> warnings;
    for (const std::string& w : s.warnings) warnings.push_back(shown(w));
    fields.push_back({"warnings", absl::StrJoin(warnings, "\n")});
  }
  fields.insert(fields.end(), {
                                  {"data path", data_path},
                                  {"kernel", absl::StrJoin(features, "\n")},
                              });
  if (!zero_hop.empty()) fields.push_back({"zero-hop", zero_hop});
  if (!kubernetes.empty()) fields.push_back({"kubernetes", kubernetes});
  fields.insert(
      fields.end(),
      {
          {"bpf", bpf},
          {"config", config},
          {"ca", ca},
          {"bundle", bundle},
          {"connections",
           absl::StrCat(c.connections_active, " active, ", c.connections_total, " total, ",
                        c.handshakes_failed, " failed handshakes, ", c.denied, " denied")},
          {"workloads", absl::StrCat(c.workloads)},
      });
  return absl::StrCat(title, "\n", RenderFields(fields));
}

std::string RenderConnections(const std::vector<control::ConnectionView>& connections) {
  if (connections.empty()) return "no connections\n";
  // Kubernetes mode: the pod columns, when some connection is a pod's.
  bool pods = std::any_of(connections.begin(), connections.end(),
                          [](const control::ConnectionView& c) { return !c.pod.empty(); });
  std::vector<std::vector<std::string>> rows;
  for (const auto& c : connections) {
    // "TLSv1.3 TLS_AES_128_GCM_SHA256" reads as "TLSv1.3/AES_128_GCM_SHA256".
    std::string cipher = c.cipher;
    if (absl::StartsWith(cipher, "TLS_")) cipher = cipher.substr(4);
    std::string tls = c.tls_version.empty() ? "" : absl::StrCat(c.tls_version, "/", cipher);
    rows.push_back({absl::StrCat(c.id), c.direction, c.workload, c.local_id, c.peer_id,
                    c.app_address, c.wire_peer, c.state, tls, c.data_path,
                    HumanBytes(c.bytes_to_wire), HumanBytes(c.bytes_from_wire),
                    HumanAge(c.age_seconds)});
    if (pods) AppendPodColumns(c.pod, rows.back());
  }
  std::vector<std::string> header = {"ID",   "DIRECTION", "WORKLOAD", "LOCAL ID", "PEER ID",
                                     "APP",  "WIRE PEER", "STATE",    "TLS",      "DATA PATH",
                                     "SENT", "RECEIVED",  "AGE"};
  if (pods) header.insert(header.end(), std::begin(kPodColumns), std::end(kPodColumns));
  return RenderTable(header, rows);
}

std::string RenderWorkloads(const std::vector<control::WorkloadView>& workloads, absl::Time now) {
  if (workloads.empty()) return "no workloads\n";
  bool pods = std::any_of(workloads.begin(), workloads.end(),
                          [](const control::WorkloadView& w) { return !w.pod.empty(); });
  std::vector<std::vector<std::string>> rows;
  for (const auto& w : workloads) {
    std::string svid = "-";
    if (w.svid_expires_at != 0) {
      double left = absl::ToDoubleSeconds(FromUnix(static_cast<double>(w.svid_expires_at)) - now);
      svid = left >= 0 ? absl::StrCat("expires in ", HumanAge(left))
                       : absl::StrCat("expired ", HumanAge(-left), " ago");
    }
    // A cgroup whose template gives no ID is enrolled and refused: say why.
    if (!w.problem.empty()) svid = absl::StrCat("refused, no SPIFFE ID: ", w.problem);
    rows.push_back({w.name, w.spiffe_id, w.mode, absl::StrJoin(w.ports, ","), w.cgroup, svid,
                    w.network, w.data_path.empty() ? "proxy" : w.data_path});
    if (pods) AppendPodColumns(w.pod, rows.back());
  }
  std::vector<std::string> header = {"NAME",   "SPIFFE ID", "MODE",    "PORTS",
                                     "CGROUP", "SVID",      "NETWORK", "DATA PATH"};
  if (pods) header.insert(header.end(), std::begin(kPodColumns), std::end(kPodColumns));
  return RenderTable(header, rows);
}

std::string RenderPolicyCheck(const control::PolicyCheckParams& query,
                              const control::PolicyCheckView& verdict) {
  return absl::StrCat(verdict.allowed ? "allowed" : "denied", ": ", EscapeForTerminal(query.from),
                      " -> ", EscapeForTerminal(query.to), " port ", query.port, "\n",
                      RenderFields({{"  reason", EscapeForTerminal(verdict.reason)},
                                    {"  rule", EscapeForTerminal(verdict.rule)}}));
}

std::string RenderDenials(const std::vector<control::DenialView>& denials) {
  if (denials.empty()) return "no denials\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& d : denials) {
    rows.push_back({FormatUnixTime(d.time), d.direction, d.workload, d.peer_id, d.peer_address,
                    d.local_address, d.port == 0 ? "" : absl::StrCat(d.port), d.result, d.reason});
  }
  return RenderTable(
      {"TIME", "DIRECTION", "WORKLOAD", "PEER ID", "PEER", "LOCAL", "PORT", "RESULT", "REASON"},
      rows);
}

}  // namespace ktrust::cli
