// Prometheus metrics and health checks over HTTP.
//
//   PrometheusText text;
//   text.Gauge("ktrust_connections_active", "Connections open now.", {}, 3);
//   text.Counter("ktrust_denials_total", "Refused connections.", {{"result", "denied"}}, 7);
//   std::string body = text.Finish();
//
//   auto http = HttpEndpoint::Start("127.0.0.1:9464",
//       {.metrics = [&] { return BuildMetrics(); },
//        .ready = [&] { return std::make_pair(agent.ready(), agent.not_ready_reason()); }});
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ktrust::control {

// Label name and value pairs, in the order they are printed.
using MetricLabels = std::vector<std::pair<std::string, std::string>>;

// Builds one scrape in the text exposition format 0.0.4. Samples of one
// metric family are printed together under a single # HELP and # TYPE, in
// the order the families were first used, whatever order samples arrive in.
// A family keeps the help and type of its first sample; a sample with an
// invalid metric or label name, or of a different type than its family, is
// dropped (a programming error, logged).
class PrometheusText {
 public:
  void Counter(absl::string_view name, absl::string_view help, const MetricLabels& labels,
               double value);
  void Gauge(absl::string_view name, absl::string_view help, const MetricLabels& labels,
             double value);
  std::string Finish() const;

 private:
  struct Family {
    std::string name, help, type;
    std::string samples;
  };
  void Add(absl::string_view type, absl::string_view name, absl::string_view help,
           const MetricLabels& labels, double value);
  std::vector<Family> families_;
  std::map<std::string, size_t, std::less<>> index_;
};

// Text exposition helpers, exposed for tests.
std::string EscapeLabelValue(absl::string_view value);  // \ " and newline
std::string FormatSampleValue(double value);            // shortest exact form; NaN, +Inf, -Inf

// GET /metrics  200, text/plain; version=0.0.4, the metrics callback's text
// GET /healthz  200 "ok" while the process serves at all
// GET /readyz   200 "ready", or 503 "not ready: <reason>"
// anything else 404
// Served on the endpoint's own threads (two), so the callbacks may be called
// concurrently with anything else in the agent and with each other.
class HttpEndpoint {
 public:
  struct Callbacks {
    std::function<std::string()> metrics;
    std::function<std::pair<bool, std::string>()> ready;  // ready, and why not
  };

  // address: "127.0.0.1:9464", "[::1]:9464"; port 0 picks a free port (see
  // port()). Fails when the address cannot be bound, e.g. the port is in use.
  static absl::StatusOr<std::unique_ptr<HttpEndpoint>> Start(absl::string_view address,
                                                             Callbacks callbacks);
  ~HttpEndpoint();  // Stop()
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  void Stop();  // idempotent; returns after the threads are gone
  int port() const;

 private:
  struct Impl;
  explicit HttpEndpoint(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ktrust::control
