#include "ktrust/control/control_server.h"

#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <exception>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "ktrust/common/error_text.h"
#include "ktrust/common/fd_reserve.h"
#include "ktrust/common/log.h"
#include "ktrust/common/log_limiter.h"
#include "ktrust/common/thread_name.h"
#include "ktrust/control/protocol.h"

namespace ktrust::control {

namespace {

using nlohmann::json;

absl::Status ErrnoError(absl::string_view what, int err) {
  return absl::InternalError(absl::StrCat(what, ": ", ErrnoText(err)));
}

absl::StatusOr<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("control socket path \"", path,
                                                   "\" must be 1 to ", sizeof(addr.sun_path) - 1,
                                                   " bytes long"));
  }
  path.copy(addr.sun_path, path.size());
  return addr;
}

// mkdir -p for the socket's directory. Only directories it creates get 0755.
absl::Status MakeParentDirectories(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos || slash == 0) return absl::OkStatus();
  std::string dir = path.substr(0, slash);
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    std::string prefix = dir.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0755) == 0) {
      ::chmod(prefix.c_str(), 0755);  // umask may have taken bits away
    } else if (errno != EEXIST) {
      return ErrnoError(absl::StrCat("cannot create directory ", prefix), errno);
    }
  }
  return absl::OkStatus();
}

// A socket file at `path` left by an agent that died is removed; a live
// agent's socket or any other kind of file is left alone.
absl::Status RemoveStaleSocket(const std::string& path, const sockaddr_un& addr) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoError(absl::StrCat("cannot inspect ", path), errno);
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("refusing to replace ", path, ": it exists and is not a socket"));
  }
  // Non-blocking: a live but busy agent (full backlog) says EAGAIN instead
  // of holding up our start.
  UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!probe.valid()) return ErrnoError("socket", errno);
  if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0 ||
      errno == EAGAIN) {
    return absl::AlreadyExistsError(
        absl::StrCat("another process (a running ktrustd?) is serving ", path));
  }
  if (errno != ECONNREFUSED) {
    return ErrnoError(absl::StrCat("cannot tell whether ", path, " is stale"), errno);
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoError(absl::StrCat("cannot remove stale socket ", path), errno);
  }
  LogEvent(spdlog::level::info, {{"event", "control_stale_socket_removed"}, {"path", path}});
  return absl::OkStatus();
}

absl::Status SetOwnershipAndMode(const std::string& path, const std::string& group_name) {
  mode_t mode = 0600;
  if (!group_name.empty()) {
    struct group g {};
    struct group* found = nullptr;
    std::vector<char> buffer(16384);
    int err = ::getgrnam_r(group_name.c_str(), &g, buffer.data(), buffer.size(), &found);
    if (err != 0) {
      return ErrnoError(absl::StrCat("cannot look up group \"", group_name, "\""), err);
    }
    if (found == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("control socket group \"", group_name, "\" does not exist"));
    }
    if (::chown(path.c_str(), static_cast<uid_t>(-1), g.gr_gid) != 0) {
      return ErrnoError(absl::StrCat("cannot give ", path, " to group ", group_name), errno);
    }
    mode = 0660;
  }
  if (::chmod(path.c_str(), mode) != 0) {
    return ErrnoError(absl::StrCat("cannot set the mode of ", path), errno);
  }
  return absl::OkStatus();
}

struct Client {
  UniqueFd fd;
  std::string in;   // received bytes not yet answered
  std::string out;  // response bytes not yet sent
  absl::Time deadline;
  bool eof = false;               // the client shut down its side
  bool close_after_send = false;  // after an unrecoverable error
  bool closed = false;
  int answered = 0;
  json who;  // pid and uid, for logs
};

json PeerOf(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return json::object();
  return {{"pid", cred.pid}, {"uid", cred.uid}};
}

void LogClient(spdlog::level::level_enum level, absl::string_view event, const Client& client,
               absl::string_view reason) {
  json line = {{"event", event}, {"reason", reason}};
  line.update(client.who);
  LogEvent(level, line);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ControlServer>> ControlServer::Start(
    ControlServerOptions options, std::map<std::string, ControlHandler> handlers) {
  if (options.max_clients < 1) return absl::InvalidArgumentError("max_clients must be at least 1");
  auto addr = UnixAddress(options.path);
  if (!addr.ok()) return addr.status();
  if (auto st = MakeParentDirectories(options.path); !st.ok()) return st;
  if (auto st = RemoveStaleSocket(options.path, *addr); !st.ok()) return st;

  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listener.valid()) return ErrnoError("socket", errno);
  if (::bind(listener.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
    return ErrnoError(absl::StrCat("cannot bind the control socket ", options.path), errno);
  }
  // Mode and group are set before listen(): until then a connect is refused,
  // so nobody gets in through the default mode.
  absl::Status setup = SetOwnershipAndMode(options.path, options.group);
  struct stat st {};
  if (setup.ok() && ::stat(options.path.c_str(), &st) != 0) {
    setup = ErrnoError(absl::StrCat("cannot inspect ", options.path), errno);
  }
  if (setup.ok() && ::listen(listener.get(), 64) != 0) {
    setup = ErrnoError(absl::StrCat("cannot listen on ", options.path), errno);
  }
  UniqueFd wakeup(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (setup.ok() && !wakeup.valid()) setup = ErrnoError("eventfd", errno);
  if (!setup.ok()) {
    ::unlink(options.path.c_str());
    return setup;
  }

  std::unique_ptr<ControlServer> server(new ControlServer(std::move(options), std::move(handlers),
                                                          std::move(listener), std::move(wakeup),
                                                          st.st_dev, st.st_ino));
  server->thread_ = std::thread([s = server.get()] {
    NameThisThread("ktrust-control");
    s->Serve();
  });
  LogEvent(spdlog::level::info,
           {{"event", "control_listening"},
            {"path", server->options_.path},
            {"group", server->options_.group.empty() ? "root only" : server->options_.group}});
  return server;
}

ControlServer::ControlServer(ControlServerOptions options,
                             std::map<std::string, ControlHandler> handlers, UniqueFd listener,
                             UniqueFd wakeup, dev_t dev, ino_t ino)
    : options_(std::move(options)),
      handlers_(std::move(handlers)),
      listener_(std::move(listener)),
      wakeup_(std::move(wakeup)),
      socket_dev_(dev),
      socket_ino_(ino) {}

ControlServer::~ControlServer() { Stop(); }

void ControlServer::Stop() {
  if (stopped_) return;
  stopped_ = true;
  uint64_t one = 1;
  if (::write(wakeup_.get(), &one, sizeof(one)) < 0) {
    // The eventfd cannot overflow with one write; nothing else to do.
  }
  if (thread_.joinable()) thread_.join();
  listener_.Reset();
  // Only our own socket: a newer agent may have replaced it already.
  struct stat st {};
  if (::stat(options_.path.c_str(), &st) == 0 && st.st_dev == socket_dev_ &&
      st.st_ino == socket_ino_) {
    ::unlink(options_.path.c_str());
  }
  LogEvent(spdlog::level::info, {{"event", "control_stopped"}, {"path", options_.path}});
}

namespace {

// The response line to one request line.
std::string Answer(absl::string_view line, const std::map<std::string, ControlHandler>& handlers,
                   const Client& client) {
  auto request = ParseControlRequest(line);
  if (!request.ok()) {
    LogClient(spdlog::level::warn, "control_bad_request", client, request.status().message());
    return FormatErrorResponse(request.status().message());
  }
  auto handler = handlers.find(request->method);
  if (handler == handlers.end()) {
    std::vector<absl::string_view> known;
    for (const auto& [name, unused] : handlers) known.push_back(name);
    std::string error = absl::StrCat("unknown method \"", request->method,
                                     "\" (this agent has: ", absl::StrJoin(known, ", "), ")");
    LogClient(spdlog::level::warn, "control_bad_request", client, error);
    return FormatErrorResponse(error);
  }
  json event = {{"event", "control_request"}, {"method", request->method}};
  event.update(client.who);
  LogEvent(spdlog::level::debug, event);
  try {
    absl::StatusOr<json> result = handler->second(request->params);
    if (!result.ok()) return FormatErrorResponse(result.status().message());
    return FormatOkResponse(*result);
  } catch (const std::exception& e) {
    std::string error = absl::StrCat("internal error in ", request->method, ": ", e.what());
    LogClient(spdlog::level::err, "control_handler_failed", client, error);
    return FormatErrorResponse(error);
  }
}

}  // namespace

void ControlServer::Serve() {
  std::vector<Client> clients;
  const absl::Duration timeout = options_.io_timeout;

  // Queues the answer to the next complete line, if nothing is being sent.
  auto advance = [&](Client& c) {
    while (c.out.empty() && !c.close_after_send) {
      size_t newline = c.in.find('\n');
      size_t line_length = newline == std::string::npos ? c.in.size() : newline;
      if (line_length > kMaxRequestBytes) {
        // The framing is lost: answer once and hang up.
        std::string error = absl::StrCat("request is longer than ", kMaxRequestBytes, " bytes");
        LogClient(spdlog::level::warn, "control_client_dropped", c, error);
        c.out = FormatErrorResponse(error);
        c.close_after_send = true;
        c.in.clear();
      } else if (newline != std::string::npos || (c.eof && !c.in.empty())) {
        absl::string_view line(c.in.data(), line_length);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        c.out = Answer(line, handlers_, c);
        c.in.erase(0, newline == std::string::npos ? c.in.size() : newline + 1);
        ++c.answered;
      } else {
        if (c.eof) c.closed = true;  // said everything and was answered
        return;
      }
      c.deadline = absl::Now() + timeout;
    }
  };

  // At the fd limit a queued client keeps the listener readable: it is
  // taken with the reserve and told why, or (no reserve) the listener is
  // left out of the poll for a second, never spun on.
  FdReserve reserve;
  absl::Time listener_paused_until = absl::InfinitePast();
  auto accept_clients = [&] {
    for (;;) {
      int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0 && (errno == EMFILE || errno == ENFILE)) {
        std::string reason = OutOfDescriptorsReason(errno);
        auto refused = reserve.AcceptWithReserve(listener_.get());
        if (absl::IsUnavailable(refused.status())) return;
        LogRefusal(spdlog::level::warn, {{"event", "control_client_refused"}, {"reason", reason}},
                   "fd_limit");
        if (!refused.ok()) {
          listener_paused_until = absl::Now() + absl::Seconds(1);
          return;
        }
        std::string response = FormatErrorResponse(reason);
        (void)!::send(refused->get(), response.data(), response.size(),
                      MSG_NOSIGNAL | MSG_DONTWAIT);
        continue;
      }
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno != EAGAIN) {
          LogEvent(spdlog::level::err,
                   {{"event", "control_accept_failed"}, {"reason", ErrnoText(errno)}});
        }
        return;
      }
      Client c;
      c.fd.Reset(fd);
      c.who = PeerOf(fd);
      c.deadline = absl::Now() + timeout;
      if (clients.size() >= static_cast<size_t>(options_.max_clients)) {
        std::string error =
            absl::StrCat("too many control clients (", options_.max_clients, "); try again");
        LogClient(spdlog::level::warn, "control_client_refused", c, error);
        std::string response = FormatErrorResponse(error);
        // Best effort: the socket buffer of a new connection takes one line.
        (void)!::send(fd, response.data(), response.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        continue;
      }
      clients.push_back(std::move(c));
    }
  };

  std::vector<pollfd> fds;
  for (;;) {
    fds.clear();
    fds.push_back({wakeup_.get(), POLLIN, 0});
    bool paused = absl::Now() < listener_paused_until;
    fds.push_back({paused ? -1 : listener_.get(), POLLIN, 0});  // -1: not polled
    absl::Time next_deadline = paused ? listener_paused_until : absl::InfiniteFuture();
    for (const Client& c : clients) {
      short events = c.out.empty() ? (c.eof ? 0 : POLLIN) : POLLOUT;
      fds.push_back({c.fd.get(), events, 0});
      next_deadline = std::min(next_deadline, c.deadline);
    }
    int wait_ms = -1;
    if (next_deadline != absl::InfiniteFuture()) {
      absl::Duration left = std::max(next_deadline - absl::Now(), absl::ZeroDuration());
      wait_ms =
          static_cast<int>(absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1))));
    }
    int ready = ::poll(fds.data(), fds.size(), wait_ms);
    if (ready < 0 && errno != EINTR) {
      LogEvent(spdlog::level::err,
               {{"event", "control_poll_failed"}, {"reason", ErrnoText(errno)}});
      return;
    }
    if (ready > 0 && (fds[0].revents & POLLIN)) return;

    const absl::Time now = absl::Now();
    for (size_t i = 0; i < clients.size(); ++i) {
      Client& c = clients[i];
      short revents = ready > 0 ? fds[i + 2].revents : 0;
      if (revents & POLLOUT) {
        ssize_t sent = ::send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent < 0 && errno != EAGAIN && errno != EINTR) {
          LogClient(spdlog::level::debug, "control_client_gone", c, ErrnoText(errno));
          c.closed = true;
          continue;
        }
        if (sent > 0) c.out.erase(0, static_cast<size_t>(sent));
        if (c.out.empty()) {
          if (c.close_after_send) {
            c.closed = true;
            continue;
          }
          c.deadline = now + timeout;
          advance(c);
        }
      } else if (revents & (POLLIN | POLLHUP | POLLERR)) {
        char buffer[16384];
        ssize_t got = ::recv(c.fd.get(), buffer, sizeof(buffer), MSG_DONTWAIT);
        if (got < 0 && errno != EAGAIN && errno != EINTR) {
          LogClient(spdlog::level::debug, "control_client_gone", c, ErrnoText(errno));
          c.closed = true;
          continue;
        }
        if (got == 0) c.eof = true;
        if (got > 0) c.in.append(buffer, static_cast<size_t>(got));
        advance(c);
      }
      if (!c.closed && c.deadline <= now) {
        // Quietly close a client that was answered and then lingered; a
        // client that stalls mid-request or will not read is a problem.
        bool idle = c.in.empty() && c.out.empty() && c.answered > 0;
        LogClient(idle ? spdlog::level::debug : spdlog::level::warn, "control_client_dropped", c,
                  c.out.empty() ? "no complete request line in time"
                                : "did not read its response in time");
        c.closed = true;
      }
    }
    std::erase_if(clients, [](const Client& c) { return c.closed; });
    if (ready > 0 && (fds[1].revents & POLLIN)) accept_clients();
  }
}

}  // namespace ktrust::control
