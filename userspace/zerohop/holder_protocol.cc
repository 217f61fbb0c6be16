#include "ktrust/zerohop/holder_protocol.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace ktrust::zerohop {
namespace {

using json = nlohmann::json;

// Parses without exceptions; nullopt-like discarded value on bad JSON.
absl::StatusOr<json> ParseObject(absl::string_view text, absl::string_view what) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(what, ": not JSON"));
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(what, ": not a JSON object"));
  return j;
}

// A positive pid_t from a JSON number; anything else is refused.
absl::StatusOr<pid_t> PidField(const json& j, const char* key, absl::string_view what) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": \"", key, "\" must be an integer"));
  }
  int64_t v = it->get<int64_t>();
  if (v <= 0 || v > std::numeric_limits<pid_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": \"", key, "\" out of range"));
  }
  return static_cast<pid_t>(v);
}

// An optional string field, bounded.
absl::StatusOr<std::string> StringField(const json& j, const char* key, size_t max,
                                        absl::string_view what) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::string();
  if (!it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": \"", key, "\" must be a string"));
  }
  const std::string& s = it->get_ref<const std::string&>();
  if (s.size() > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": \"", key, "\" longer than ", max, " bytes"));
  }
  return s;
}

bool PrintableAscii(absl::string_view s) {
  for (unsigned char c : s) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

}  // namespace

absl::string_view SourceName(ListenerSource source) {
  return source == ListenerSource::kOci ? "oci" : "exec";
}

absl::Status CheckWorkloadHint(absl::string_view hint) {
  if (hint.empty() || hint.size() > kMaxHintBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("workload hint must be 1 to ", kMaxHintBytes, " bytes"));
  }
  for (char c : hint) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '-' && c != ':' && c != '/') {
      return absl::InvalidArgumentError(
          "workload hint may hold only letters, digits and . _ - : /");
    }
  }
  return absl::OkStatus();
}

std::string EncodeExecRegistration(const ExecRegistration& r) {
  json j = {{"v", 1}, {"pid", r.pid}};
  if (!r.workload_hint.empty()) j["workload_hint"] = r.workload_hint;
  j["flags"] = json::array();
  if (r.wait_killable_recv) j["flags"].push_back("wait_killable_recv");
  return j.dump();
}

absl::StatusOr<ExecRegistration> ParseExecRegistration(absl::string_view text) {
  constexpr absl::string_view kWhat = "registration";
  auto j = ParseObject(text, kWhat);
  if (!j.ok()) return j.status();
  auto v = j->find("v");
  if (v == j->end() || !v->is_number_integer() || v->get<int64_t>() != 1) {
    return absl::InvalidArgumentError("registration: unsupported version (\"v\" must be 1)");
  }
  ExecRegistration r;
  auto pid = PidField(*j, "pid", kWhat);
  if (!pid.ok()) return pid.status();
  r.pid = *pid;
  auto hint = StringField(*j, "workload_hint", kMaxHintBytes, kWhat);
  if (!hint.ok()) return hint.status();
  if (!hint->empty()) {
    if (auto st = CheckWorkloadHint(*hint); !st.ok()) return st;
  }
  r.workload_hint = *std::move(hint);
  if (auto f = j->find("flags"); f != j->end()) {
    if (!f->is_array()) return absl::InvalidArgumentError("registration: \"flags\" must be a list");
    for (const json& flag : *f) {
      if (flag == "wait_killable_recv") {
        r.wait_killable_recv = true;
      } else {
        // An unknown flag may change what the listener needs: refuse rather
        // than guess.
        return absl::InvalidArgumentError(absl::StrCat("registration: unknown flag ", flag.dump()));
      }
    }
  }
  return r;
}

absl::StatusOr<OciRegistration> ParseOciState(absl::string_view text, size_t fds_received) {
  constexpr absl::string_view kWhat = "OCI container process state";
  auto j = ParseObject(text, kWhat);
  if (!j.ok()) return j.status();
  OciRegistration r;
  auto fds = j->find("fds");
  if (fds == j->end() || !fds->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(kWhat, ": \"fds\" must be a list"));
  }
  if (fds->size() != fds_received) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, ": \"fds\" names ", fds->size(), " fds, ", fds_received, " came"));
  }
  bool found = false;
  for (size_t i = 0; i < fds->size(); ++i) {
    if ((*fds)[i] != "seccompFd") continue;
    if (found) return absl::InvalidArgumentError(absl::StrCat(kWhat, ": two \"seccompFd\""));
    found = true;
    r.seccomp_fd_index = i;
  }
  if (!found) return absl::InvalidArgumentError(absl::StrCat(kWhat, ": no \"seccompFd\""));
  auto pid = PidField(*j, "pid", kWhat);
  if (!pid.ok()) return pid.status();
  r.pid = *pid;
  auto state = j->find("state");
  if (state == j->end() || !state->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(kWhat, ": \"state\" must be an object"));
  }
  // The two pids are the same process in runc; a message where they differ
  // is not one we understand.
  if (state->contains("pid")) {
    auto state_pid = PidField(*state, "pid", kWhat);
    if (!state_pid.ok()) return state_pid.status();
    if (*state_pid != r.pid) {
      return absl::InvalidArgumentError(
          absl::StrCat(kWhat, ": \"pid\" ", r.pid, " differs from \"state.pid\" ", *state_pid));
    }
  }
  auto id = StringField(*state, "id", kMaxContainerIdBytes, kWhat);
  if (!id.ok()) return id.status();
  if (id->empty() || !PrintableAscii(*id)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, ": \"state.id\" must be a printable container id"));
  }
  r.container_id = *std::move(id);
  auto metadata = StringField(*j, "metadata", kMaxHintBytes, kWhat);
  if (!metadata.ok()) return metadata.status();
  if (!metadata->empty()) {
    if (auto st = CheckWorkloadHint(*metadata); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(kWhat, ": \"metadata\": ", st.message()));
    }
  }
  r.workload_hint = *std::move(metadata);
  return r;
}

absl::StatusOr<std::string> ParseCgroupV2(absl::string_view proc_cgroup) {
  for (absl::string_view line : absl::StrSplit(proc_cgroup, '\n')) {
    if (!absl::StartsWith(line, "0::")) continue;
    absl::string_view path = line.substr(3);
    if (path.empty() || path[0] != '/' || path.size() > kMaxCgroupBytes) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected cgroup v2 path \"", path, "\""));
    }
    return std::string(path);
  }
  return absl::FailedPreconditionError("the process is in no cgroup v2 hierarchy");
}

std::string EncodeEntry(const ListenerRegistration& e) {
  json j = {{"v", 1},
            {"id", e.id},
            {"source", SourceName(e.source)},
            {"pid", e.pid},
            {"cgroup", e.cgroup},
            {"workload_hint", e.workload_hint},
            {"wait_killable_recv", e.wait_killable_recv},
            {"container_id", e.container_id}};
  return j.dump();
}

std::string EncodeRemoval(uint64_t id) { return json{{"v", 1}, {"removed", id}}.dump(); }

std::string EncodeAgentMessage(const AgentMessage& m) {
  if (const auto* h = std::get_if<HeldNotification>(&m)) {
    return json{{"v", 1},
                {"held", {{"entry", h->entry}, {"id", h->id}, {"errno", h->fallback_errno}}}}
        .dump();
  }
  const auto& r = std::get<ReleasedNotification>(m);
  return json{{"v", 1}, {"released", {{"entry", r.entry}, {"id", r.id}}}}.dump();
}

absl::StatusOr<AgentMessage> DecodeAgentMessage(absl::string_view text) {
  constexpr absl::string_view kWhat = "agent message";
  if (text.size() > kMaxAgentMessageBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, ": longer than ", kMaxAgentMessageBytes, " bytes"));
  }
  auto j = ParseObject(text, kWhat);
  if (!j.ok()) return j.status();
  auto held = j->find("held");
  auto released = j->find("released");
  if ((held == j->end()) == (released == j->end())) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, ": exactly one of \"held\" and \"released\""));
  }
  const json& body = held != j->end() ? *held : *released;
  auto entry = body.is_object() ? body.find("entry") : body.end();
  auto id = body.is_object() ? body.find("id") : body.end();
  if (!body.is_object() || entry == body.end() || id == body.end() ||
      !entry->is_number_unsigned() || !id->is_number_unsigned()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, ": \"entry\" and \"id\" must be unsigned integers"));
  }
  if (released != j->end())
    return ReleasedNotification{entry->get<uint64_t>(), id->get<uint64_t>()};
  auto err = body.find("errno");
  if (err == body.end() || !err->is_number_integer() ||
      (err->get<int64_t>() != ECONNREFUSED && err->get<int64_t>() != ECONNABORTED)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, ": \"errno\" must be ECONNREFUSED or ECONNABORTED"));
  }
  return HeldNotification{entry->get<uint64_t>(), id->get<uint64_t>(),
                          static_cast<int>(err->get<int64_t>())};
}

absl::StatusOr<HolderMessage> DecodeHolderMessage(absl::string_view text,
                                                  std::vector<UniqueFd> fds) {
  constexpr absl::string_view kWhat = "holder message";
  auto j = ParseObject(text, kWhat);
  if (!j.ok()) return j.status();
  auto removed = j->find("removed");
  if (removed != j->end()) {
    if (!removed->is_number_unsigned() || !fds.empty()) {
      return absl::InvalidArgumentError("holder message: bad removal");
    }
    return ListenerRemoval{removed->get<uint64_t>()};
  }
  if (fds.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("holder message: an entry carries 2 fds, this one ", fds.size()));
  }
  ListenerRegistration e;
  auto id = j->find("id");
  if (id == j->end() || !id->is_number_unsigned()) {
    return absl::InvalidArgumentError("holder message: \"id\" must be an unsigned integer");
  }
  e.id = id->get<uint64_t>();
  auto source = StringField(*j, "source", 8, kWhat);
  if (!source.ok()) return source.status();
  if (*source == "exec") {
    e.source = ListenerSource::kExec;
  } else if (*source == "oci") {
    e.source = ListenerSource::kOci;
  } else {
    return absl::InvalidArgumentError("holder message: unknown \"source\"");
  }
  auto pid = PidField(*j, "pid", kWhat);
  if (!pid.ok()) return pid.status();
  e.pid = *pid;
  auto cgroup = StringField(*j, "cgroup", kMaxCgroupBytes, kWhat);
  auto hint = StringField(*j, "workload_hint", kMaxHintBytes, kWhat);
  auto container = StringField(*j, "container_id", kMaxContainerIdBytes, kWhat);
  for (const auto* s : {&cgroup, &hint, &container}) {
    if (!s->ok()) return s->status();
  }
  if (cgroup->empty() || (*cgroup)[0] != '/') {
    return absl::InvalidArgumentError("holder message: \"cgroup\" must be a path");
  }
  e.cgroup = *std::move(cgroup);
  e.workload_hint = *std::move(hint);
  e.container_id = *std::move(container);
  auto wkr = j->find("wait_killable_recv");
  if (wkr == j->end() || !wkr->is_boolean()) {
    return absl::InvalidArgumentError("holder message: \"wait_killable_recv\" must be a boolean");
  }
  e.wait_killable_recv = wkr->get<bool>();
  e.listener = std::move(fds[0]);
  e.pidfd = std::move(fds[1]);
  return e;
}

absl::StatusOr<UniqueFd> ConnectUnixSocket(const std::string& path, int type) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path too long: ", path));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("connect to ", path));
  }
  return fd;
}

absl::Status CheckPeerIsRootOrSelf(int sock, absl::string_view path) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return absl::ErrnoToStatus(errno, "SO_PEERCRED");
  }
  if (cred.uid != 0 && cred.uid != ::geteuid()) {
    return absl::PermissionDeniedError(
        absl::StrCat(path, " is served by uid ", cred.uid, ", not root: not the ktrust holder"));
  }
  return absl::OkStatus();
}

absl::Status SendWithFds(int sock, absl::string_view data, absl::Span<const int> fds, int flags) {
  if (fds.size() > static_cast<size_t>(kMaxFdsPerMessage)) {
    return absl::InvalidArgumentError("too many fds for one message");
  }
  iovec iov{const_cast<char*>(data.data()), data.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)] = {};
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    ssize_t n = ::sendmsg(sock, &msg, flags | MSG_NOSIGNAL);
    if (n >= 0) {
      if (static_cast<size_t>(n) != data.size()) {
        return absl::InternalError("short send of a whole message");
      }
      return absl::OkStatus();
    }
    if (errno != EINTR) return absl::ErrnoToStatus(errno, "sendmsg");
  }
}

absl::StatusOr<ReceivedMessage> ReceiveWithFds(int sock, size_t max_bytes, int flags) {
  ReceivedMessage m;
  m.data.resize(max_bytes);
  iovec iov{m.data.data(), max_bytes};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = ::recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return absl::ErrnoToStatus(errno, "recvmsg");
  // Take ownership of every fd first, so that each is closed whatever is
  // refused below.
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      m.fds.emplace_back(fd);
    }
  }
  if (msg.msg_flags & MSG_TRUNC) {
    return absl::InvalidArgumentError(
        absl::StrCat("message longer than ", max_bytes, " bytes (truncated)"));
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    return absl::InvalidArgumentError(
        absl::StrCat("more than ", kMaxFdsPerMessage, " fds or other control data (truncated)"));
  }
  m.data.resize(static_cast<size_t>(n));
  m.eof = n == 0 && m.fds.empty();
  return m;
}

}  // namespace ktrust::zerohop
