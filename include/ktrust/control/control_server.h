// The agent's control socket: serves the methods of docs/control-api.md to
// the `ktrust` CLI and to scripts.
//
//   std::map<std::string, control::ControlHandler> handlers;
//   handlers[control::kMethodStatus] = [&](const nlohmann::json&) -> absl::StatusOr<nlohmann::json>
//   {
//     return nlohmann::json(BuildStatusView());
//   };
//   control::ControlServerOptions options;  // path /run/ktrust/control.sock, root only
//   options.group = config.control_group;
//   auto server = control::ControlServer::Start(options, handlers);
//   if (!server.ok()) return server.status();
//   ...
//   (*server)->Stop();  // or let it go out of scope
//
// Threading: one server thread accepts clients and reads their requests. It
// calls the handlers itself, one at a time, so a handler never runs
// concurrently with another handler, but it does run concurrently with the
// rest of the agent: it must lock whatever it reads. A handler should answer
// in milliseconds; while it runs, no other client is served.
//
// A misbehaving client (not JSON, an oversized line, an unknown method, a
// stall) gets an error response or is dropped, and is logged; it never stops
// the server or delays other clients for longer than one handler call.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ktrust/common/unique_fd.h"

namespace ktrust::control {

// Answers one method. `params` is always a JSON object (possibly empty). An
// error status is sent to the client as {"ok":false,"error":<its message>},
// so the message should make sense to an operator, e.g. "no workload named
// \"web\"". A thrown exception is caught and reported as an internal error.
using ControlHandler = std::function<absl::StatusOr<nlohmann::json>(const nlohmann::json& params)>;

struct ControlServerOptions {
  std::string path = "/run/ktrust/control.sock";
  // Empty: root only (mode 0600). Otherwise the socket gets this group and
  // mode 0660, so members of the group may use the CLI without root.
  std::string group;
  // A client must deliver each request line (and take each response) within
  // this long, or it is dropped.
  absl::Duration io_timeout = absl::Seconds(5);
  // Clients beyond this many are answered with an error and closed.
  int max_clients = 16;
};

class ControlServer {
 public:
  // Creates the socket (and its parent directory, mode 0755, if missing) and
  // starts serving. A socket file left by a dead agent is replaced; anything
  // else at `path` (a regular file, a live agent's socket) is an error.
  static absl::StatusOr<std::unique_ptr<ControlServer>> Start(
      ControlServerOptions options, std::map<std::string, ControlHandler> handlers);

  ~ControlServer();  // Stop()
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Stops serving, closes every client and removes the socket file (unless
  // another process has replaced it since). Idempotent.
  void Stop();

  const std::string& path() const { return options_.path; }

 private:
  ControlServer(ControlServerOptions options, std::map<std::string, ControlHandler> handlers,
                UniqueFd listener, UniqueFd wakeup, dev_t dev, ino_t ino);
  void Serve();

  ControlServerOptions options_;
  std::map<std::string, ControlHandler> handlers_;
  UniqueFd listener_;
  UniqueFd wakeup_;  // an eventfd that Stop() signals
  dev_t socket_dev_;
  ino_t socket_ino_;
  std::thread thread_;
  bool stopped_ = false;
};

}  // namespace ktrust::control
