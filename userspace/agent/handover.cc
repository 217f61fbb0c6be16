#include "ktrust/agent/handover.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <type_traits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "ktrust/common/error_text.h"
#include "ktrust/common/files.h"
#include "ktrust/common/log.h"
#include "ktrust/common/peer_process.h"
#include "ktrust/common/poll_timeout.h"
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

HandoverMessage MessageOf(std::string type, int64_t pid = 0, std::string reason = "",
                          std::string control_socket = "", uint64_t id = 0) {
  HandoverMessage m;
  m.type = std::move(type);
  m.pid = pid;
  m.reason = std::move(reason);
  m.control_socket = std::move(control_socket);
  m.id = id;
  return m;
}

// Room for more descriptors than any message carries, so that a message
// with too many is seen (and they are closed) rather than cut short.
constexpr size_t kMaxFdsSeen = 8;

// One message, with `fds` (SCM_RIGHTS) when given.
absl::Status Send(int fd, const HandoverMessage& message, std::vector<int> fds = {}) {
  std::string text = EncodeHandoverMessage(message);
  msghdr msg{};
  iovec iov{text.data(), text.size()};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (!fds.empty()) {
    control.resize(CMSG_SPACE(sizeof(int) * fds.size()));
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  if (::sendmsg(fd, &msg, MSG_NOSIGNAL) != static_cast<ssize_t>(text.size())) {
    return absl::ErrnoToStatus(errno, absl::StrCat("sending ", message.type));
  }
  return absl::OkStatus();
}

struct Received {
  HandoverMessage message;
  std::vector<UniqueFd> fds;
};

// One message and the descriptors it carried, waiting up to `timeout`
// (zero: only what is there already). The peer's close is Unavailable. A
// message with the wrong number of descriptors for its type is refused
// (what it carried is closed).
absl::StatusOr<Received> ReceiveWithFds(int fd, absl::Duration timeout) {
  pollfd p{fd, POLLIN, 0};
  int ready = ::poll(&p, 1, PollMilliseconds(timeout));
  if (ready < 0) return absl::ErrnoToStatus(errno, "poll");
  if (ready == 0) return absl::DeadlineExceededError("no answer in time");
  std::string buffer(kMaxHandoverMessageBytes, '\0');
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsSeen)];
  msghdr msg{};
  iovec iov{buffer.data(), buffer.size()};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n < 0) return absl::ErrnoToStatus(errno, "receiving");
  Received received;
  // Whatever came is ours to close, whatever else is wrong with the message.
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int received_fd = -1;
      std::memcpy(&received_fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      received.fds.emplace_back(received_fd);
    }
  }
  if (n == 0 && received.fds.empty()) {
    return absl::UnavailableError("the other agent closed the connection");
  }
  if ((msg.msg_flags & MSG_TRUNC) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("a message longer than ", kMaxHandoverMessageBytes, " bytes"));
  }
  if ((msg.msg_flags & MSG_CTRUNC) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("a message with more than ", kMaxFdsSeen, " descriptors"));
  }
  auto message = DecodeHandoverMessage(absl::string_view(buffer.data(), static_cast<size_t>(n)));
  if (!message.ok()) return message.status();
  if (received.fds.size() != HandoverFdCount(message->type)) {
    return absl::InvalidArgumentError(absl::StrCat("a \"", message->type, "\" message with ",
                                                   received.fds.size(), " descriptors (expected ",
                                                   HandoverFdCount(message->type), ")"));
  }
  received.message = *std::move(message);
  return received;
}

absl::StatusOr<HandoverMessage> Receive(int fd, absl::Duration timeout) {
  auto received = ReceiveWithFds(fd, timeout);
  if (!received.ok()) return received.status();
  return std::move(received->message);
}

int64_t UnixNanos(absl::Time t) { return absl::ToUnixNanos(t); }

json EncodeConnection(const MovedConnection& c) {
  const ConnectionInfo& i = c.info;
  return {{"direction", std::string(DirectionName(c.direction))},
          {"workload", c.workload},
          {"app", i.app_address},
          {"wire_local", i.wire_local},
          {"wire_peer", i.wire_peer},
          {"local_id", i.local_id},
          {"peer_id", i.peer_id},
          {"tls_version", i.tls_version},
          {"cipher", i.cipher},
          {"data_path", i.data_path},
          {"started_ns", UnixNanos(c.started)},
          {"bytes_to_wire", c.bytes_to_wire},
          {"bytes_from_wire", c.bytes_from_wire},
          {"to_wire_done", c.to_wire_done},
          {"from_wire_done", c.from_wire_done},
          {"fin_only", c.fin_only},
          {"peer_chain", c.peer.chain_pem},
          {"verified_at_ns", UnixNanos(c.peer.verified_at)},
          {"netns", c.netns}};
}

// Every field present and of its type: a connection is never adopted from
// a guess.
absl::StatusOr<MovedConnection> DecodeConnection(const json& j) {
  if (!j.is_object()) return absl::InvalidArgumentError("\"connection\" must be an object");
  MovedConnection c;
  auto string_field = [&](const char* key, std::string* out) -> absl::Status {
    auto it = j.find(key);
    if (it == j.end() || !it->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("connection.", key, " must be a string"));
    }
    *out = it->get<std::string>();
    return absl::OkStatus();
  };
  auto number_field = [&](const char* key, auto* out) -> absl::Status {
    auto it = j.find(key);
    if (it == j.end() || !it->is_number_integer() ||
        (it->is_number_unsigned() ? it->get<uint64_t>() > uint64_t{INT64_MAX}
                                  : it->get<int64_t>() < 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("connection.", key, " must be a non-negative integer"));
    }
    *out = static_cast<std::remove_pointer_t<decltype(out)>>(it->get<int64_t>());
    return absl::OkStatus();
  };
  auto bool_field = [&](const char* key, bool* out) -> absl::Status {
    auto it = j.find(key);
    if (it == j.end() || !it->is_boolean()) {
      return absl::InvalidArgumentError(absl::StrCat("connection.", key, " must be true or false"));
    }
    *out = it->get<bool>();
    return absl::OkStatus();
  };
  std::string direction;
  int64_t started_ns = 0, verified_at_ns = 0;
  ConnectionInfo& i = c.info;
  for (absl::Status st :
       {string_field("direction", &direction), string_field("workload", &c.workload),
        string_field("app", &i.app_address), string_field("wire_local", &i.wire_local),
        string_field("wire_peer", &i.wire_peer), string_field("local_id", &i.local_id),
        string_field("peer_id", &i.peer_id), string_field("tls_version", &i.tls_version),
        string_field("cipher", &i.cipher), string_field("data_path", &i.data_path),
        string_field("peer_chain", &c.peer.chain_pem), string_field("netns", &c.netns),
        number_field("started_ns", &started_ns), number_field("verified_at_ns", &verified_at_ns),
        number_field("bytes_to_wire", &c.bytes_to_wire),
        number_field("bytes_from_wire", &c.bytes_from_wire),
        bool_field("to_wire_done", &c.to_wire_done),
        bool_field("from_wire_done", &c.from_wire_done), bool_field("fin_only", &c.fin_only)}) {
    if (!st.ok()) return st;
  }
  if (direction == "inbound") {
    c.direction = Direction::kInbound;
  } else if (direction == "outbound") {
    c.direction = Direction::kOutbound;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("connection.direction must be inbound or outbound, not \"", direction, "\""));
  }
  if (started_ns == 0) return absl::InvalidArgumentError("connection.started_ns must be set");
  c.started = absl::FromUnixNanos(started_ns);
  c.peer.verified_at = absl::FromUnixNanos(verified_at_ns);
  return c;
}

absl::StatusOr<uint64_t> CapabilitiesOf(pid_t pid) {
  auto text = ReadFile(absl::StrCat("/proc/", pid, "/status"));
  if (!text.ok()) return text.status();
  return ParseEffectiveCapabilities(*text);
}

// The connected peer, checked: same uid, every capability of ours. The
// pid's /proc entry is trusted only if the process that connected is still
// alive after it was read (its pidfd, taken first, has not signalled
// exit): then the pid is still its own. Exact with SO_PEERPIDFD (Linux
// 6.5+); before, the pidfd is of whoever has the pid at accept, which is
// the peer unless it exited and its pid was reused in between
// (PeerPidfd).
absl::Status CheckPeer(int conn, pid_t* pid) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return absl::ErrnoToStatus(errno, "SO_PEERCRED");
  }
  *pid = cred.pid;
  auto pidfd = PeerPidfd(conn, cred.pid);
  if (!pidfd.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the peer process is gone: ", pidfd.status().message()));
  }
  auto own_caps = CapabilitiesOf(getpid());
  if (!own_caps.ok()) return own_caps.status();
  auto peer_caps = CapabilitiesOf(cred.pid);
  if (!peer_caps.ok()) return absl::FailedPreconditionError("the peer process is gone");
  if (PidfdExited(pidfd->get())) return absl::FailedPreconditionError("the peer process exited");
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
  if (message.id != 0) j["id"] = message.id;
  if (message.connection) j["connection"] = EncodeConnection(*message.connection);
  if (!message.zero_hop.empty()) {
    json rows = json::array();
    for (const zerohop::ZeroHopConnection& c : message.zero_hop) {
      rows.push_back(json::parse(zerohop::EncodeZeroHopConnection(c)));
    }
    j["zero_hop"] = std::move(rows);
  }
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
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
  static const std::set<std::string> kTypes = {"hello",    "welcome", "refused", "started",
                                               "released", "ready",   "move",    "took",
                                               "declined", "yours",   "zero_hop"};
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
  if (auto it = j.find("id"); it != j.end()) {
    if (!it->is_number_unsigned() || it->get<uint64_t>() == 0) {
      return absl::InvalidArgumentError("\"id\" must be a positive integer");
    }
    m.id = it->get<uint64_t>();
  }
  if (auto it = j.find("connection"); it != j.end()) {
    auto connection = DecodeConnection(*it);
    if (!connection.ok()) return connection.status();
    m.connection = *std::move(connection);
    m.connection->id = m.id;
  }
  if (auto it = j.find("zero_hop"); it != j.end()) {
    if (!it->is_array() || it->empty()) {
      return absl::InvalidArgumentError("\"zero_hop\" must be a list of connections");
    }
    for (const json& row : *it) {
      auto c = zerohop::DecodeZeroHopConnection(row.is_object() ? row.dump() : "");
      if (!c.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("zero_hop[", m.zero_hop.size(), "]: ", c.status().message()));
      }
      m.zero_hop.push_back(*std::move(c));
    }
  }
  if ((m.type == "zero_hop") != !m.zero_hop.empty()) {
    return absl::InvalidArgumentError(
        m.type == "zero_hop" ? "\"zero_hop\" needs its connections"
                             : absl::StrCat("\"", m.type, "\" carries no zero-hop connections"));
  }
  bool per_connection =
      m.type == "move" || m.type == "took" || m.type == "yours" || m.type == "zero_hop";
  if (per_connection && m.id == 0) {
    return absl::InvalidArgumentError(absl::StrCat("\"", m.type, "\" needs the connection's id"));
  }
  if ((m.type == "move") != m.connection.has_value()) {
    return absl::InvalidArgumentError(m.type == "move"
                                          ? "\"move\" needs its connection"
                                          : absl::StrCat("\"", m.type, "\" carries no connection"));
  }
  return m;
}

std::vector<std::vector<zerohop::ZeroHopConnection>> ZeroHopBatches(
    std::vector<zerohop::ZeroHopConnection> connections) {
  // Room for the envelope; a row is at most a few KiB of names and the
  // peer's chain (the journal's own bounds), so one always fits.
  constexpr size_t kBudget = kMaxHandoverMessageBytes - 1024;
  std::vector<std::vector<zerohop::ZeroHopConnection>> batches;
  size_t bytes = kBudget;  // a new batch first
  for (zerohop::ZeroHopConnection& c : connections) {
    size_t row = zerohop::EncodeZeroHopConnection(c).size() + 1;
    if (bytes + row > kBudget) {
      batches.emplace_back();
      bytes = 0;
    }
    bytes += row;
    batches.back().push_back(std::move(c));
  }
  return batches;
}

size_t HandoverFdCount(absl::string_view type) { return type == "move" ? 2 : 0; }

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
  for (const Newcomer& n : newcomers_) out.push_back(n.conn.get());
  if (successor_.valid()) out.push_back(successor_.get());
  return out;
}

void HandoverServer::Service(absl::Time now) {
  while (state_ != State::kHandedOver) {
    int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) break;
    Newcomer newcomer{UniqueFd(fd), 0, absl::OkStatus(), now + kHelloDeadline};
    newcomer.allowed = CheckPeer(newcomer.conn.get(), &newcomer.pid);
    if (newcomers_.size() >= kMaxWaitingForHello) {
      Refuse(newcomer, absl::ResourceExhaustedError(absl::StrCat(
                           kMaxWaitingForHello, " connections are waiting for their hello")));
      continue;
    }
    newcomers_.push_back(std::move(newcomer));
  }
  ServiceNewcomers(now);
  if (successor_.valid()) OnMessage(now);
}

void HandoverServer::ServiceNewcomers(absl::Time now) {
  // Taken out first: admitting one changes what the others are told.
  std::vector<Newcomer> waiting;
  waiting.swap(newcomers_);
  for (Newcomer& n : waiting) {
    // The hello is the first thing a successor sends. Read before any
    // answer: a refusal sent over an unread hello reaches the newcomer as a
    // reset or a broken pipe, not as the reason. Never waited for here:
    // a peer that connects and says nothing holds up nothing but itself.
    auto hello = Receive(n.conn.get(), absl::ZeroDuration());
    if (absl::IsDeadlineExceeded(hello.status())) {
      if (now < n.deadline) {
        newcomers_.push_back(std::move(n));
      } else {
        Refuse(n, absl::DeadlineExceededError(
                      absl::StrCat("no hello within ", absl::FormatDuration(kHelloDeadline))));
      }
      continue;
    }
    if (absl::IsUnavailable(hello.status())) {
      LogEvent(spdlog::level::info, {{"event", "handover_refused"},
                                     {"pid", n.pid},
                                     {"reason", "it hung up before its hello"}});
      continue;
    }
    Admit(std::move(n), hello);
  }
}

void HandoverServer::Refuse(const Newcomer& newcomer, const absl::Status& why) {
  LogEvent(spdlog::level::warn,
           {{"event", "handover_refused"}, {"pid", newcomer.pid}, {"reason", why.message()}});
  (void)Send(newcomer.conn.get(), MessageOf("refused", 0, std::string(why.message()), ""));
}

void HandoverServer::Admit(Newcomer newcomer, const absl::StatusOr<HandoverMessage>& hello) {
  absl::Status allowed = newcomer.allowed;
  if (allowed.ok() && !hello.ok()) allowed = hello.status();
  if (allowed.ok() && hello->type != "hello") {
    allowed = absl::InvalidArgumentError(absl::StrCat("expected hello, got ", hello->type));
  }
  if (allowed.ok() && successor_.valid()) {
    allowed = absl::ResourceExhaustedError(
        absl::StrCat("a handover to ktrustd pid ", successor_pid_, " is in progress"));
  }
  if (allowed.ok() && state_ == State::kHandedOver) {
    allowed = absl::FailedPreconditionError("this agent has handed over already");
  }
  if (!allowed.ok()) {
    Refuse(newcomer, allowed);
    return;
  }
  if (auto st = Send(newcomer.conn.get(), MessageOf("welcome", getpid(), "", "")); !st.ok()) {
    return;
  }
  pid_t pid = newcomer.pid;
  successor_ = std::move(newcomer.conn);
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
    if (auto st = Send(successor_.get(), MessageOf("released", 0, "", *where)); !st.ok()) {
      Abandon(std::string(st.message()));
    }
    return;
  }
  if (state_ == State::kHandedOver) {
    // Only Move() reads the successor's answers: anything else now is out
    // of turn.
    DropSuccessor(absl::StrCat("unexpected \"", message->type, "\" from the successor"));
    return;
  }
  if (message->type == "ready" && state_ == State::kReleased) {
    state_ = State::kHandedOver;
    // The socket is the successor's to bind now, for the agent after it;
    // whoever still waits to say hello asks the wrong agent.
    listener_.Reset();
    for (const Newcomer& n : newcomers_) {
      Refuse(n, absl::FailedPreconditionError(
                    absl::StrCat("this agent has handed over to ktrustd pid ", successor_pid_)));
    }
    newcomers_.clear();
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

void HandoverServer::DropSuccessor(const std::string& why) {
  LogEvent(spdlog::level::warn,
           {{"event", "successor_dropped"},
            {"successor_pid", successor_pid_},
            {"reason", why},
            {"note", "no more connections move to it; the ones not moved drain here"}});
  successor_.Reset();
}

absl::Status HandoverServer::Move(const DetachedConnection& connection, absl::Duration timeout) {
  if (!can_move()) return absl::FailedPreconditionError("no successor to move connections to");
  const uint64_t id = connection.meta.id;
  HandoverMessage move = MessageOf("move", 0, "", "", id);
  move.connection = connection.meta;
  if (auto st = Send(successor_.get(), move, {connection.app.get(), connection.wire.get()});
      !st.ok()) {
    DropSuccessor(std::string(st.message()));
    return st;
  }
  auto answer = Receive(successor_.get(), timeout);
  if (!answer.ok()) {
    // Gone, silent or garbled: it must never take this one later.
    DropSuccessor(absl::StrCat("no answer to move ", id, ": ", answer.status().message()));
    return answer.status();
  }
  if (answer->type == "declined") {
    return absl::FailedPreconditionError(
        absl::StrCat("the successor declined it: ", answer->reason));
  }
  if (answer->type != "took" || answer->id != id) {
    absl::Status wrong = absl::InvalidArgumentError(
        absl::StrCat("answered \"", answer->type, "\" for ", answer->id, " to move ", id));
    DropSuccessor(std::string(wrong.message()));
    return wrong;
  }
  if (auto st = Send(successor_.get(), MessageOf("yours", 0, "", "", id)); !st.ok()) {
    DropSuccessor(std::string(st.message()));
    return st;
  }
  return absl::OkStatus();
}

absl::Status HandoverServer::PassZeroHop(const std::vector<zerohop::ZeroHopConnection>& batch,
                                         absl::Duration timeout) {
  if (!can_move()) return absl::FailedPreconditionError("no successor to pass connections to");
  if (batch.empty()) return absl::OkStatus();
  const uint64_t id = ++zero_hop_batches_;
  HandoverMessage pass = MessageOf("zero_hop", 0, "", "", id);
  pass.zero_hop = batch;
  if (auto st = Send(successor_.get(), pass); !st.ok()) {
    DropSuccessor(std::string(st.message()));
    return st;
  }
  auto answer = Receive(successor_.get(), timeout);
  if (!answer.ok()) {
    DropSuccessor(
        absl::StrCat("no answer to zero-hop batch ", id, ": ", answer.status().message()));
    return answer.status();
  }
  if (answer->type == "declined") {
    return absl::FailedPreconditionError(
        absl::StrCat("the successor declined them: ", answer->reason));
  }
  if (answer->type != "took" || answer->id != id) {
    absl::Status wrong = absl::InvalidArgumentError(absl::StrCat(
        "answered \"", answer->type, "\" for ", answer->id, " to zero-hop batch ", id));
    DropSuccessor(std::string(wrong.message()));
    return wrong;
  }
  return absl::OkStatus();
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
  // It will hand this agent sockets: only an agent of our own user may.
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return absl::ErrnoToStatus(errno, "SO_PEERCRED of the running agent");
  }
  if (cred.uid != geteuid()) {
    return absl::PermissionDeniedError(absl::StrCat("the process at ", path, " runs as uid ",
                                                    cred.uid, ", this agent as uid ", geteuid(),
                                                    ": not taking over from it"));
  }
  std::unique_ptr<HandoverClient> client(new HandoverClient(std::move(fd)));
  if (auto st = Send(client->fd_.get(), MessageOf("hello", getpid(), "", "")); !st.ok()) return st;
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
  if (auto st = Send(fd_.get(), MessageOf("started", 0, "", "")); !st.ok()) return st;
  auto answer = Receive(fd_.get(), timeout);
  if (!answer.ok()) return answer.status();
  if (answer->type != "released") {
    return absl::FailedPreconditionError(
        absl::StrCat("the running agent answered ", answer->type, " instead of released"));
  }
  return answer->control_socket;
}

absl::Status HandoverClient::Ready() { return Send(fd_.get(), MessageOf("ready", 0, "", "")); }

void HandoverClient::Drop(DetachedConnection connection, const std::string& why) {
  LogEvent(spdlog::level::warn, {{"event", "connection_not_taken"},
                                 {"id", connection.meta.id},
                                 {"workload", connection.meta.workload},
                                 {"reason", why},
                                 {"note", "the predecessor keeps it"}});
  // Plain closes: the sockets are the predecessor's still.
  connection.app.Reset();
  connection.wire.Reset();
}

void HandoverClient::ServiceMoves(const Adoption& adoption) {
  while (!gone_) {
    auto received = ReceiveWithFds(fd_.get(), absl::ZeroDuration());
    if (absl::IsDeadlineExceeded(received.status())) return;  // nothing more for now
    if (!received.ok()) {
      if (absl::IsUnavailable(received.status()) || !absl::IsInvalidArgument(received.status())) {
        // The predecessor is gone (or its socket failed): what it did not
        // give us is its own.
        gone_ = true;
        if (taken_) Drop(*std::move(taken_), "the predecessor went away before letting go of it");
        taken_.reset();
        return;
      }
      LogEvent(spdlog::level::warn,
               {{"event", "handover_message_refused"}, {"reason", received.status().message()}});
      (void)Send(fd_.get(), MessageOf("declined", 0, std::string(received.status().message())));
      continue;
    }
    HandoverMessage& m = received->message;
    if (m.type == "move") {
      DetachedConnection c{*std::move(m.connection), std::move(received->fds[0]),
                           std::move(received->fds[1])};
      absl::Status ok = taken_           ? absl::FailedPreconditionError(absl::StrCat(
                                               "connection ", taken_->meta.id, " is still being moved"))
                        : adoption.check ? adoption.check(c)
                                         : absl::UnimplementedError("this agent takes none");
      if (!ok.ok()) {
        (void)Send(fd_.get(), MessageOf("declined", 0, std::string(ok.message()), "", m.id));
        Drop(std::move(c), std::string(ok.message()));
        continue;
      }
      taken_ = std::move(c);
      if (!Send(fd_.get(), MessageOf("took", 0, "", "", m.id)).ok()) {
        gone_ = true;
        Drop(*std::move(taken_), "the predecessor went away before letting go of it");
        taken_.reset();
      }
      continue;
    }
    if (m.type == "zero_hop") {
      // Knowledge, not sockets: the predecessor forgets them only after
      // took, so until then both know them, never neither.
      size_t count = m.zero_hop.size();
      absl::Status ok = adoption.zero_hop ? adoption.zero_hop(std::move(m.zero_hop))
                                          : absl::UnimplementedError("this agent takes none");
      if (!Send(fd_.get(), ok.ok() ? MessageOf("took", 0, "", "", m.id)
                                   : MessageOf("declined", 0, std::string(ok.message()), "", m.id))
               .ok()) {
        gone_ = true;  // it keeps them as well: known twice, never lost
        return;
      }
      if (!ok.ok()) {
        LogEvent(spdlog::level::warn, {{"event", "zero_hop_connections_not_taken"},
                                       {"connections", count},
                                       {"reason", ok.message()},
                                       {"note", "the predecessor keeps them"}});
      }
      continue;
    }
    if (m.type == "yours" && taken_ && taken_->meta.id == m.id) {
      DetachedConnection c = *std::move(taken_);
      taken_.reset();
      if (adoption.adopt) adoption.adopt(std::move(c));
      continue;
    }
    LogEvent(spdlog::level::warn,
             {{"event", "handover_message_refused"},
              {"reason", absl::StrCat("unexpected \"", m.type, "\" (id ", m.id, ")")}});
  }
}

bool HandoverClient::PredecessorGone() {
  if (gone_) return true;
  char byte = 0;
  ssize_t n = ::recv(fd_.get(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

}  // namespace ktrust
