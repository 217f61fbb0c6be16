#include "ktrust/agent/handover.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "ktrust/common/error_text.h"
#include "ktrust/common/files.h"
#include "ktrust/common/log.h"
#include "nlohmann/json.hpp"

namespace ktrust {
namespace {

using nlohmann::json;

constexpr int kVersion = 1;

absl::StatusOr<sockaddr_un> UnixAddressOf(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path too long: ", path));
  }
  path.copy(addr.sun_path, path.size());
  return addr;
}

absl::Status Send(int fd, const HandoverMessage& message) {
  std::string text = EncodeHandoverMessage(message);
  if (::send(fd, text.data(), text.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(text.size())) {
    return absl::ErrnoToStatus(errno, absl::StrCat("sending ", message.type));
  }
  return absl::OkStatus();
}

// One message, waiting up to `timeout` (zero: only what is there already).
// The peer's close is Unavailable.
absl::StatusOr<HandoverMessage> Receive(int fd, absl::Duration timeout) {
  pollfd p{fd, POLLIN, 0};
  int ready = ::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  if (ready < 0) return absl::ErrnoToStatus(errno, "poll");
  if (ready == 0) return absl::DeadlineExceededError("no answer in time");
  char buffer[kMaxHandoverMessageBytes];
  msghdr msg{};
  iovec iov{buffer, sizeof(buffer)};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n < 0) return absl::ErrnoToStatus(errno, "receiving");
  if (n == 0) return absl::UnavailableError("the other agent closed the connection");
  if ((msg.msg_flags & MSG_TRUNC) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("a message longer than ", kMaxHandoverMessageBytes, " bytes"));
  }
  return DecodeHandoverMessage(absl::string_view(buffer, static_cast<size_t>(n)));
}

absl::StatusOr<uint64_t> CapabilitiesOf(pid_t pid) {
  auto text = ReadFile(absl::StrCat("/proc/", pid, "/status"));
  if (!text.ok()) return text.status();
  return ParseEffectiveCapabilities(*text);
}

// The connected peer, checked: same uid, every capability of ours. The
// pid's /proc entry is trusted only if the same process is still alive
// after it was read (its pidfd, taken first, has not signalled exit).
absl::Status CheckPeer(int conn, pid_t* pid) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return absl::ErrnoToStatus(errno, "SO_PEERCRED");
  }
  *pid = cred.pid;
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, cred.pid, 0)));
  if (!pidfd.valid()) return absl::ErrnoToStatus(errno, "pidfd_open of the peer");
  auto own_caps = CapabilitiesOf(getpid());
  if (!own_caps.ok()) return own_caps.status();
  auto peer_caps = CapabilitiesOf(cred.pid);
  if (!peer_caps.ok()) return absl::FailedPreconditionError("the peer process is gone");
  pollfd p{pidfd.get(), POLLIN, 0};
  if (::poll(&p, 1, 0) != 0) return absl::FailedPreconditionError("the peer process exited");
  return CheckSuccessor(geteuid(), *own_caps, cred.uid, *peer_caps);
}

}  // namespace

std::string HandoverSocketPath(const std::string& control_socket) {
  return (std::filesystem::path(control_socket).parent_path() / "handover.sock").string();
}

std::string EncodeHandoverMessage(const HandoverMessage& message) {
  json j = {{"v", kVersion}, {"type", message.type}};
  if (message.pid != 0) j["pid"] = message.pid;
  if (!message.reason.empty()) j["reason"] = message.reason;
  if (!message.control_socket.empty()) j["control_socket"] = message.control_socket;
  return j.dump();
}

absl::StatusOr<HandoverMessage> DecodeHandoverMessage(absl::string_view text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return absl::InvalidArgumentError("a handover message is a JSON object");
  auto version = j.find("v");
  if (version == j.end() || !version->is_number_integer() || *version != kVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported handover protocol version (this agent speaks ", kVersion, ")"));
  }
  HandoverMessage m;
  auto type = j.find("type");
  if (type == j.end() || !type->is_string()) {
    return absl::InvalidArgumentError("a handover message needs a \"type\" string");
  }
  m.type = type->get<std::string>();
  static const std::set<std::string> kTypes = {"hello",   "welcome",  "refused",
                                               "started", "released", "ready"};
  if (!kTypes.count(m.type)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown handover message \"", m.type, "\""));
  }
  if (auto it = j.find("pid"); it != j.end()) {
    if (!it->is_number_integer() || it->get<int64_t>() <= 0) {
      return absl::InvalidArgumentError("\"pid\" must be a positive integer");
    }
    m.pid = it->get<int64_t>();
  }
  for (auto [key, field] : {std::pair<const char*, std::string*>{"reason", &m.reason},
                            {"control_socket", &m.control_socket}}) {
    auto it = j.find(key);
    if (it == j.end()) continue;
    if (!it->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be a string"));
    }
    *field = it->get<std::string>();
  }
  if ((m.type == "hello" || m.type == "welcome") && m.pid == 0) {
    return absl::InvalidArgumentError(absl::StrCat("\"", m.type, "\" needs its sender's pid"));
  }
  return m;
}

absl::StatusOr<uint64_t> ParseEffectiveCapabilities(absl::string_view status_text) {
  for (absl::string_view line : absl::StrSplit(status_text, '\n')) {
    if (!absl::ConsumePrefix(&line, "CapEff:")) continue;
    uint64_t caps = 0;
    if (!absl::SimpleHexAtoi(absl::StripAsciiWhitespace(line), &caps)) {
      return absl::InvalidArgumentError(absl::StrCat("unreadable CapEff: ", line));
    }
    return caps;
  }
  return absl::InvalidArgumentError("no CapEff line in the process status");
}

absl::Status CheckSuccessor(uid_t own_uid, uint64_t own_caps, uid_t peer_uid, uint64_t peer_caps) {
  if (peer_uid != own_uid) {
    return absl::PermissionDeniedError(
        absl::StrCat("the peer runs as uid ", peer_uid, ", this agent as uid ", own_uid));
  }
  if ((peer_caps & own_caps) != own_caps) {
    return absl::PermissionDeniedError(
        absl::StrCat("the peer lacks capabilities this agent has (CapEff ",
                     absl::Hex(peer_caps, absl::kZeroPad16), " does not include ",
                     absl::Hex(own_caps, absl::kZeroPad16), ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<HandoverServer>> HandoverServer::Listen(const std::string& path,
                                                                       Hooks hooks) {
  auto addr = UnixAddressOf(path);
  if (!addr.ok()) return addr.status();
  // A socket left by an agent that is gone is replaced; a live one is not.
  {
    UniqueFd probe(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!probe.valid()) return absl::ErrnoToStatus(errno, "socket");
    if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) == 0 ||
        errno == EAGAIN) {
      return absl::AlreadyExistsError(
          absl::StrCat("another agent is serving the handover socket ", path));
    }
    if (errno == ECONNREFUSED) ::unlink(path.c_str());
  }
  UniqueFd listener(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listener.valid()) return absl::ErrnoToStatus(errno, "socket");
  if (::bind(listener.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("bind ", path));
  }
  // Root's (the agent's user's) only, before anyone can connect.
  struct stat st {};
  if (::chmod(path.c_str(), 0600) != 0 || ::stat(path.c_str(), &st) != 0 ||
      ::listen(listener.get(), 4) != 0) {
    absl::Status failed = absl::ErrnoToStatus(errno, absl::StrCat("setting up ", path));
    ::unlink(path.c_str());
    return failed;
  }
  return std::unique_ptr<HandoverServer>(
      new HandoverServer(path, std::move(listener), std::move(hooks), st.st_dev, st.st_ino));
}

HandoverServer::HandoverServer(std::string path, UniqueFd listener, Hooks hooks, dev_t dev,
                               ino_t ino)
    : path_(std::move(path)),
      listener_(std::move(listener)),
      hooks_(std::move(hooks)),
      dev_(dev),
      ino_(ino) {}

HandoverServer::~HandoverServer() {
  // Only our own socket: a successor may have bound its own there already.
  struct stat st {};
  if (::stat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_) {
    ::unlink(path_.c_str());
  }
}

std::vector<int> HandoverServer::fds() const {
  std::vector<int> out;
  if (state_ != State::kHandedOver) out.push_back(listener_.get());
  if (successor_.valid()) out.push_back(successor_.get());
  return out;
}

void HandoverServer::Service(absl::Time now) {
  while (state_ != State::kHandedOver) {
    int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) break;
    Admit(UniqueFd(fd));
  }
  if (successor_.valid()) OnMessage(now);
}

void HandoverServer::Admit(UniqueFd conn) {
  pid_t pid = 0;
  absl::Status allowed = CheckPeer(conn.get(), &pid);
  // The hello is the first thing a successor sends; it is there already or
  // comes at once. Read before any answer: a refusal sent over an unread
  // hello reaches the newcomer as a reset or a broken pipe, not as the
  // reason.
  auto hello = Receive(conn.get(), absl::Seconds(5));
  if (allowed.ok() && !hello.ok()) allowed = hello.status();
  if (allowed.ok() && hello->type != "hello") {
    allowed = absl::InvalidArgumentError(absl::StrCat("expected hello, got ", hello->type));
  }
  if (allowed.ok() && successor_.valid()) {
    allowed = absl::ResourceExhaustedError(
        absl::StrCat("a handover to ktrustd pid ", successor_pid_, " is in progress"));
  }
  if (!allowed.ok()) {
    LogEvent(spdlog::level::warn,
             {{"event", "handover_refused"}, {"pid", pid}, {"reason", allowed.message()}});
    (void)Send(conn.get(), {"refused", 0, std::string(allowed.message()), ""});
    return;
  }
  if (auto st = Send(conn.get(), {"welcome", getpid(), "", ""}); !st.ok()) return;
  successor_ = std::move(conn);
  successor_pid_ = pid;
  state_ = State::kPaused;
  deadline_ = absl::Now() + kSuccessorDeadline;
  LogEvent(spdlog::level::info,
           {{"event", "handover_started"},
            {"successor_pid", pid},
            {"note", "enrolment paused until the successor is ready or gone"}});
  if (hooks_.pause) hooks_.pause(pid);
}

void HandoverServer::OnMessage(absl::Time now) {
  auto message = Receive(successor_.get(), absl::ZeroDuration());
  if (absl::IsDeadlineExceeded(message.status())) {
    if (state_ != State::kHandedOver && now > deadline_) {
      Abandon(absl::StrCat("the successor was not ready within ",
                           absl::FormatDuration(kSuccessorDeadline)));
    }
    return;
  }
  if (!message.ok()) {
    if (state_ == State::kHandedOver) {
      // It is serving; its going away now is its own business (and the
      // kernel's steering is its own): this agent drains what it has.
      LogEvent(spdlog::level::warn, {{"event", "successor_gone"}, {"pid", successor_pid_}});
      successor_.Reset();
      return;
    }
    Abandon(std::string(message.status().message()));
    return;
  }
  if (message->type == "started" && state_ == State::kPaused) {
    auto where = hooks_.release ? hooks_.release() : absl::StatusOr<std::string>("");
    if (!where.ok()) {
      Abandon(absl::StrCat("releasing the control socket: ", where.status().message()));
      return;
    }
    state_ = State::kReleased;
    if (auto st = Send(successor_.get(), {"released", 0, "", *where}); !st.ok()) {
      Abandon(std::string(st.message()));
    }
    return;
  }
  if (message->type == "ready" && state_ == State::kReleased) {
    state_ = State::kHandedOver;
    // The socket is the successor's to bind now, for the agent after it.
    listener_.Reset();
    struct stat st {};
    if (::stat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_) {
      ::unlink(path_.c_str());
    }
    LogEvent(spdlog::level::info, {{"event", "handed_over"}, {"successor_pid", successor_pid_}});
    if (hooks_.handed_over) hooks_.handed_over(successor_pid_);
    return;
  }
  Abandon(absl::StrCat("unexpected \"", message->type, "\" from the successor"));
}

void HandoverServer::Abandon(const std::string& why) {
  bool released = state_ == State::kReleased;
  LogEvent(spdlog::level::warn, {{"event", "handover_aborted"},
                                 {"successor_pid", successor_pid_},
                                 {"reason", why},
                                 {"note", "this agent keeps serving: nothing was handed over"}});
  successor_.Reset();
  successor_pid_ = 0;
  state_ = State::kIdle;
  deadline_ = absl::InfiniteFuture();
  if (hooks_.resume) hooks_.resume(why, released);
}

absl::StatusOr<std::unique_ptr<HandoverClient>> HandoverClient::Connect(const std::string& path,
                                                                        absl::Duration timeout) {
  auto addr = UnixAddressOf(path);
  if (!addr.ok()) return addr.status();
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "socket");
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
    if (errno == ENOENT || errno == ECONNREFUSED) return nullptr;  // no agent runs
    return absl::ErrnoToStatus(errno, absl::StrCat("connecting to ", path));
  }
  std::unique_ptr<HandoverClient> client(new HandoverClient(std::move(fd)));
  if (auto st = Send(client->fd_.get(), {"hello", getpid(), "", ""}); !st.ok()) return st;
  auto answer = Receive(client->fd_.get(), timeout);
  if (!answer.ok()) {
    return absl::Status(answer.status().code(),
                        absl::StrCat("the running agent at ", path,
                                     " did not take the handover: ", answer.status().message()));
  }
  if (answer->type != "welcome") {
    return absl::PermissionDeniedError(
        absl::StrCat("the running agent refused the handover: ",
                     answer->reason.empty() ? answer->type : answer->reason));
  }
  client->predecessor_ = static_cast<pid_t>(answer->pid);
  return client;
}

absl::StatusOr<std::string> HandoverClient::Started(absl::Duration timeout) {
  if (auto st = Send(fd_.get(), {"started", 0, "", ""}); !st.ok()) return st;
  auto answer = Receive(fd_.get(), timeout);
  if (!answer.ok()) return answer.status();
  if (answer->type != "released") {
    return absl::FailedPreconditionError(
        absl::StrCat("the running agent answered ", answer->type, " instead of released"));
  }
  return answer->control_socket;
}

absl::Status HandoverClient::Ready() { return Send(fd_.get(), {"ready", 0, "", ""}); }

bool HandoverClient::PredecessorGone() {
  char byte = 0;
  ssize_t n = ::recv(fd_.get(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

}  // namespace ktrust
