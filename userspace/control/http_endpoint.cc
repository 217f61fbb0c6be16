// HttpEndpoint, declared in metrics.h.
#include <errno.h>
#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "ktrust/common/error_text.h"
#include "ktrust/common/log.h"
#include "ktrust/common/log_limiter.h"
#include "ktrust/common/socket_address.h"
#include "ktrust/common/thread_name.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/control/metrics.h"

namespace ktrust::control {

struct HttpEndpoint::Impl {
  httplib::Server server;
  std::thread thread;
  std::atomic<bool> finished{false};
  std::atomic<bool> stopping{false};
  int port = 0;
  bool stopped = false;
};

namespace {

// httplib only says that binding failed; binding once more ourselves tells why.
std::string WhyBindFails(const SocketAddress& address) {
  UniqueFd fd(::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoText(errno);
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd.get(), address.get(), address.size()) != 0) return ErrnoText(errno);
  return "the address could not be bound";
}

void GuardedCall(httplib::Response& res, const std::function<void()>& body) {
  try {
    body();
  } catch (const std::exception& e) {
    LogEvent(spdlog::level::err, {{"event", "http_handler_failed"}, {"reason", e.what()}});
    res.status = 500;
    res.set_content("internal error\n", "text/plain; charset=utf-8");
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpEndpoint>> HttpEndpoint::Start(absl::string_view address,
                                                                  Callbacks callbacks) {
  auto parsed = SocketAddress::Parse(address);
  if (!parsed.ok()) return parsed.status();
  if (!callbacks.metrics || !callbacks.ready) {
    return absl::InvalidArgumentError("HttpEndpoint needs both the metrics and ready callbacks");
  }
  // SocketAddress prints "1.2.3.4:80" or "[::1]:80"; httplib wants the bare host.
  std::string host = parsed->ToString();
  host = host.substr(0, host.rfind(':'));
  if (host.size() > 1 && host.front() == '[') host = host.substr(1, host.size() - 2);

  auto impl = std::make_unique<Impl>();
  httplib::Server& server = impl->server;
  // Two threads: a scrape and a probe may overlap; nothing needs more.
  server.new_task_queue = [] { return new httplib::ThreadPool(2); };
  server.set_read_timeout(5, 0);
  server.set_write_timeout(5, 0);
  server.set_keep_alive_timeout(5);
  server.set_payload_max_length(64 * 1024);
  // Only SO_REUSEADDR: with SO_REUSEPORT a second agent would share the port.
  server.set_socket_options([](int fd) {
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  });
  server.Get(
      "/metrics", [metrics = callbacks.metrics](const httplib::Request&, httplib::Response& res) {
        GuardedCall(
            res, [&] { res.set_content(metrics(), "text/plain; version=0.0.4; charset=utf-8"); });
      });
  server.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain; charset=utf-8");
  });
  server.Get("/readyz", [ready = callbacks.ready](const httplib::Request&, httplib::Response& res) {
    GuardedCall(res, [&] {
      auto [is_ready, reason] = ready();
      if (is_ready) {
        res.set_content("ready\n", "text/plain; charset=utf-8");
      } else {
        res.status = 503;
        res.set_content(absl::StrCat("not ready: ", reason, "\n"), "text/plain; charset=utf-8");
      }
    });
  });

  if (parsed->port() == 0) {
    impl->port = server.bind_to_any_port(host);
  } else {
    impl->port = server.bind_to_port(host, parsed->port()) ? parsed->port() : -1;
  }
  if (impl->port <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", address, ": ", WhyBindFails(*parsed)));
  }
  Impl* raw = impl.get();
  impl->thread = std::thread([raw, host] {
    NameThisThread("ktrust-http");
    // httplib retries an accept that fails with EMFILE every millisecond,
    // but on any other error (ENFILE, ENOMEM, ENOBUFS) it closes the
    // listening socket and returns: the endpoint would be gone for good
    // while the agent runs on. Listen again, once a second, until Stop().
    while (!raw->server.listen_after_bind() && !raw->stopping) {
      LogRefusal(spdlog::level::err,
                 {{"event", "http_accept_failed"},
                  {"port", raw->port},
                  {"reason",
                   "accepting a metrics or probe connection failed (the node is short of file "
                   "descriptors or memory); listening again in a second"}},
                 "http_accept_failed");
      do {
        std::this_thread::sleep_for(std::chrono::seconds(1));
      } while (!raw->stopping && !raw->server.bind_to_port(host, raw->port));
    }
    raw->finished = true;
  });
  LogEvent(spdlog::level::info,
           {{"event", "http_listening"}, {"address", std::string(address)}, {"port", impl->port}});
  return std::unique_ptr<HttpEndpoint>(new HttpEndpoint(std::move(impl)));
}

HttpEndpoint::HttpEndpoint(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpEndpoint::~HttpEndpoint() { Stop(); }

int HttpEndpoint::port() const { return impl_->port; }

void HttpEndpoint::Stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->stopping = true;
  // httplib's stop() does nothing until its accept loop has started, so
  // repeat it until the loop has ended.
  while (!impl_->finished) {
    impl_->server.stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  impl_->thread.join();
}

}  // namespace ktrust::control
