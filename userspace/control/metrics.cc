#include "ktrust/control/metrics.h"

#include <charconv>
#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "ktrust/common/log.h"

namespace ktrust::control {

namespace {

bool IsMetricName(absl::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!letter && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

// Label names are metric names without ':'; "__" prefixes are reserved.
bool IsLabelName(absl::string_view name) {
  return IsMetricName(name) && name.find(':') == absl::string_view::npos &&
         !absl::StartsWith(name, "__");
}

std::string EscapeHelp(absl::string_view help) {
  std::string out;
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

std::string EscapeLabelValue(absl::string_view value) {
  std::string out;
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string FormatSampleValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[32];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), value);
  if (ec != std::errc()) return "NaN";  // cannot happen with 32 bytes
  return std::string(buffer, end);
}

void PrometheusText::Counter(absl::string_view name, absl::string_view help,
                             const MetricLabels& labels, double value) {
  Add("counter", name, help, labels, value);
}

void PrometheusText::Gauge(absl::string_view name, absl::string_view help,
                           const MetricLabels& labels, double value) {
  Add("gauge", name, help, labels, value);
}

void PrometheusText::Add(absl::string_view type, absl::string_view name, absl::string_view help,
                         const MetricLabels& labels, double value) {
  auto drop = [&](absl::string_view why) {
    LogEvent(spdlog::level::warn,
             {{"event", "metric_dropped"}, {"metric", std::string(name)}, {"reason", why}});
  };
  if (!IsMetricName(name)) return drop("invalid metric name");
  for (const auto& [label, unused] : labels) {
    if (!IsLabelName(label)) return drop(absl::StrCat("invalid label name \"", label, "\""));
  }
  auto it = index_.find(name);
  if (it == index_.end()) {
    it = index_.emplace(std::string(name), families_.size()).first;
    families_.push_back({std::string(name), std::string(help), std::string(type), ""});
  }
  Family& family = families_[it->second];
  if (family.type != type) {
    return drop(absl::StrCat("the family is a ", family.type, ", not a ", type));
  }
  std::string& out = family.samples;
  absl::StrAppend(&out, name);
  if (!labels.empty()) {
    out += '{';
    for (size_t i = 0; i < labels.size(); ++i) {
      absl::StrAppend(&out, i ? "," : "", labels[i].first, "=\"",
                      EscapeLabelValue(labels[i].second), "\"");
    }
    out += '}';
  }
  absl::StrAppend(&out, " ", FormatSampleValue(value), "\n");
}

std::string PrometheusText::Finish() const {
  std::string out;
  for (const Family& f : families_) {
    absl::StrAppend(&out, "# HELP ", f.name, " ", EscapeHelp(f.help), "\n", "# TYPE ", f.name, " ",
                    f.type, "\n", f.samples);
  }
  return out;
}

}  // namespace ktrust::control
