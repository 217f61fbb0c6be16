#include "ktrust/control/control_client.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "absl/strings/str_cat.h"
#include "ktrust/common/error_text.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/control/protocol.h"

namespace ktrust::control {

namespace {

absl::Status Unreachable(const std::string& path, int err) {
  std::string why;
  switch (err) {
    case ENOENT:
      why = "no such file (is ktrustd running?)";
      break;
    case ECONNREFUSED: {
      struct stat st {};
      why = ::stat(path.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode)
                ? "not a socket"
                : "connection refused (the socket is left over: is ktrustd running?)";
      break;
    }
    case EACCES:
    case EPERM:
      why = "permission denied (run as root or as a member of the agent's control group)";
      break;
    default:
      why = ErrnoText(err);
  }
  return absl::UnavailableError(absl::StrCat("cannot reach ktrustd at ", path, ": ", why));
}

// Waits for `events` on fd until `deadline`; false on timeout.
absl::StatusOr<bool> WaitFor(int fd, short events, absl::Time deadline) {
  for (;;) {
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    pollfd p{fd, events, 0};
    int ms = static_cast<int>(absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1))));
    int ready = ::poll(&p, 1, ms);
    if (ready > 0) return true;
    if (ready < 0 && errno != EINTR) {
      return absl::InternalError(absl::StrCat("poll: ", ErrnoText(errno)));
    }
  }
}

}  // namespace

absl::StatusOr<nlohmann::json> CallControl(const std::string& socket_path,
                                           const std::string& method, const nlohmann::json& params,
                                           absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("control socket path \"", socket_path, "\" is empty or too long"));
  }
  socket_path.copy(addr.sun_path, socket_path.size());

  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return absl::InternalError(absl::StrCat("socket: ", ErrnoText(errno)));
  // A Unix connect either completes at once or fails with EAGAIN when the
  // agent's backlog is full; retry that until the deadline.
  for (;;) {
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) break;
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return Unreachable(socket_path, errno);
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "ktrustd at ", socket_path, " did not accept within ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }

  auto timed_out = [&] {
    return absl::DeadlineExceededError(absl::StrCat(
        "ktrustd at ", socket_path, " did not answer within ", absl::FormatDuration(timeout)));
  };
  std::string request = FormatControlRequest(method, params);
  size_t sent = 0;
  std::string send_failure;  // the agent hung up on the request
  while (sent < request.size()) {
    auto writable = WaitFor(fd.get(), POLLOUT, deadline);
    if (!writable.ok()) return writable.status();
    if (!*writable) return timed_out();
    ssize_t n = ::send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      send_failure = absl::StrCat("sending to ktrustd at ", socket_path, ": ", ErrnoText(errno));
      // An agent that refuses a client (at its fd limit) answers and hangs
      // up without reading: its answer is still there to read.
      if (errno == EPIPE || errno == ECONNRESET) break;
      return absl::DataLossError(send_failure);
    }
    sent += static_cast<size_t>(n);
  }

  std::string response;
  size_t newline = std::string::npos;
  while (newline == std::string::npos) {
    auto readable = WaitFor(fd.get(), POLLIN, deadline);
    if (!readable.ok()) return readable.status();
    if (!*readable) return timed_out();
    char buffer[65536];
    ssize_t n = ::recv(fd.get(), buffer, sizeof(buffer), 0);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return absl::DataLossError(
          absl::StrCat("reading from ktrustd at ", socket_path, ": ", ErrnoText(errno)));
    }
    if (n == 0) {
      if (!send_failure.empty()) return absl::DataLossError(send_failure);
      return absl::DataLossError(
          absl::StrCat("ktrustd at ", socket_path, " closed the connection without an answer"));
    }
    size_t before = response.size();
    response.append(buffer, static_cast<size_t>(n));
    newline = response.find('\n', before);
    if (response.size() > kMaxResponseBytes && newline == std::string::npos) {
      return absl::DataLossError(
          absl::StrCat("ktrustd's answer is longer than ", kMaxResponseBytes, " bytes"));
    }
  }
  response.resize(newline);

  auto parsed = ParseControlResponse(response);
  if (!parsed.ok()) {
    return absl::DataLossError(absl::StrCat("ktrustd at ", socket_path,
                                            " sent a broken answer: ", parsed.status().message()));
  }
  if (!parsed->ok) return absl::UnknownError(parsed->error);
  return std::move(parsed->result);
}

}  // namespace ktrust::control
