// One GET to the API server at a time, over HTTPS verified against the CA
// file, with the bearer token as the token file says it now. cpp-httplib
// does the HTTP; this adds what the agent requires of it: no fallback to the
// system's roots, TLS 1.2 at least, bounded bodies, words for every failure,
// and a cancel that interrupts a request blocked in a read.
#pragma once

#include <httplib.h>

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ktrust/kubernetes/api_options.h"

namespace ktrust::kubernetes_internal {

class ApiClient {
 public:
  explicit ApiClient(const KubernetesApiOptions& options) : options_(options) {}

  struct Response {
    int status = 0;
    // The body, unless `on_data` took it (2xx responses of a stream).
    std::string body;
    // `on_data` returned false: the caller stopped reading.
    bool stopped_by_reader = false;
  };

  // GET path?params. A 2xx body goes to `on_data` as it arrives when it is
  // set; any other body is collected, at most `max_body` bytes (more is an
  // error). Transport and TLS failures are errors; HTTP errors are not.
  absl::StatusOr<Response> Get(const std::string& path, const httplib::Params& params,
                               absl::Duration read_timeout, size_t max_body,
                               const std::function<bool(absl::string_view)>& on_data = nullptr);

  // From another thread: makes the request in flight, and every later one,
  // fail. A request still connecting may miss it; call again until the
  // caller's thread has returned.
  void Cancel();

 private:
  const KubernetesApiOptions& options_;
  absl::Mutex mu_;
  httplib::SSLClient* in_flight_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ktrust::kubernetes_internal
