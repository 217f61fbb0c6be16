#include "ktrust/zerohop/holder.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "ktrust/common/files.h"
#include "ktrust/common/log.h"
#include "ktrust/common/peer_process.h"
#include "ktrust/zerohop/notify.h"
#include "ktrust/zerohop/proc_mem.h"

namespace ktrust::zerohop {
namespace {

using json = nlohmann::ordered_json;

enum class Kind { kExec, kOci };

// A registering connection that has not finished sending.
struct Pending {
  UniqueFd fd;
  Kind kind = Kind::kExec;
  absl::Time deadline;
  ucred cred{};
  // The peer process, taken at accept: SO_PEERPIDFD where the kernel has it
  // (6.5+, the very process that connected), else pidfd_open(peer pid).
  UniqueFd peer_pidfd;
  std::string data;  // OCI: the stream so far
  std::vector<UniqueFd> fds;
};

struct Entry {
  std::shared_ptr<const ListenerRegistration> reg;
  uid_t owner = 0;
};

struct Outgoing {
  std::string json;
  std::shared_ptr<const ListenerRegistration> entry;  // null: a removal
};

struct AgentClient {
  UniqueFd fd;
  ucred cred{};
  std::deque<Outgoing> queue;
  // Notifications the agent made wait ({entry, notification id} -> the
  // errno to answer them with if its connection ends first).
  std::map<std::pair<uint64_t, uint64_t>, int> held;
  bool held_full_logged = false;
};

absl::StatusOr<ucred> PeerCred(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return absl::ErrnoToStatus(errno, "SO_PEERCRED");
  }
  return cred;
}

// The cgroup v2 path of the process behind `pidfd` (whose pid is `pid`),
// read through /proc and trusted only if the process is still the same
// afterwards (alive: its pid cannot have been reused).
absl::StatusOr<std::string> CgroupOf(pid_t pid, int pidfd) {
  auto text = ReadFile(absl::StrCat("/proc/", pid, "/cgroup"));
  if (!text.ok()) return absl::FailedPreconditionError("the process is gone (no /proc entry)");
  auto cgroup = ParseCgroupV2(*text);
  if (!cgroup.ok()) return cgroup.status();
  if (PidfdExited(pidfd)) {
    return absl::FailedPreconditionError("the process exited during registration");
  }
  return cgroup;
}

absl::StatusOr<UniqueFd> Listen(const std::string& path, int type, mode_t mode) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path too long: ", path));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "socket");
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(path, " exists and is not a socket"));
    }
    ::unlink(path.c_str());  // a stale socket from a previous holder
  }
  // Bound with no access at all, opened up by chmod once complete.
  mode_t old = ::umask(0777);
  int rc = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  int err = errno;
  ::umask(old);
  if (rc != 0) return absl::ErrnoToStatus(err, absl::StrCat("bind ", path));
  if (::chmod(path.c_str(), mode) != 0) return absl::ErrnoToStatus(errno, "chmod " + path);
  if (::listen(fd.get(), 128) != 0) return absl::ErrnoToStatus(errno, "listen " + path);
  return fd;
}

// True if something accepts connections at `path`.
bool Answers(const std::string& path, int type) { return ConnectUnixSocket(path, type).ok(); }

absl::Status PrepareDir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return absl::ErrnoToStatus(errno, "mkdir " + dir);
  }
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) return absl::ErrnoToStatus(errno, "stat " + dir);
  if (!S_ISDIR(st.st_mode)) return absl::FailedPreconditionError(dir + " is not a directory");
  if (st.st_uid != ::geteuid() || (st.st_mode & 022) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir, " must be owned by uid ", ::geteuid(),
                     " and writable by no one else: whoever can replace its sockets receives the "
                     "workloads' listeners"));
  }
  return absl::OkStatus();
}

std::string ErrorReply(absl::string_view reason) {
  return json{{"ok", false}, {"error", reason}}.dump();
}

void RaiseFdLimit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

}  // namespace

absl::Status CheckSeccompListener(int fd) {
  char target[64] = {};
  std::string link = absl::StrCat("/proc/self/fd/", fd);
  ssize_t n = ::readlink(link.c_str(), target, sizeof(target) - 1);
  if (n < 0) return absl::ErrnoToStatus(errno, "readlink " + link);
  if (absl::string_view(target, static_cast<size_t>(n)) != "anon_inode:seccomp notify") {
    return absl::InvalidArgumentError(absl::StrCat("the fd is not a seccomp listener (it is ",
                                                   absl::string_view(target, n), ")"));
  }
  return absl::OkStatus();
}

struct Holder::State {
  HolderOptions options;
  std::string registration_path, oci_path, agent_path;
  UniqueFd registration, oci, agent;
  std::vector<Pending> pending;
  std::vector<AgentClient> clients;
  std::map<uint64_t, Entry> entries;
  uint64_t next_id = 1;

  void Accept(int listen_fd, Kind kind);
  void AcceptAgent();
  // One message from the agent: a notification it holds, or released.
  void ReadAgent(AgentClient& c);
  // The agent's connection ended: answers what it still held.
  void AnswerHeld(AgentClient& c);
  void ReadPending(Pending& p);  // may close p.fd when finished
  absl::StatusOr<uint64_t> Register(Pending& p, absl::string_view data);
  void Refuse(const Pending& p, absl::string_view reason, bool reply);
  void Publish(Outgoing out);
  void Flush(AgentClient& c);
  void Remove(uint64_t id, absl::string_view why);
  size_t EntriesOf(uid_t uid) const {
    size_t n = 0;
    for (const auto& [id, e] : entries) n += e.owner == uid;
    return n;
  }
};

Holder::Holder(std::unique_ptr<State> state) : state_(std::move(state)) {}

Holder::~Holder() {
  if (!state_->entries.empty()) {
    LogEvent(spdlog::level::warn,
             {{"event", "holder_stopping"},
              {"listeners", state_->entries.size()},
              {"reason",
               "the holder is stopping: the listeners it alone held are closed, and the "
               "connects and accepts of those workloads now fail with ENOSYS"}});
  }
  for (const std::string* p :
       {&state_->registration_path, &state_->oci_path, &state_->agent_path}) {
    ::unlink(p->c_str());
  }
}

size_t Holder::entries() const { return state_->entries.size(); }

absl::StatusOr<std::unique_ptr<Holder>> Holder::Create(HolderOptions options) {
  auto s = std::make_unique<State>();
  s->options = std::move(options);
  const std::string& dir = s->options.socket_dir;
  if (auto st = PrepareDir(dir); !st.ok()) return st;
  s->registration_path = absl::StrCat(dir, "/", kRegistrationSocketName);
  s->oci_path = absl::StrCat(dir, "/", kOciSocketName);
  s->agent_path = absl::StrCat(dir, "/", kAgentSocketName);
  // Never take the sockets from a running holder: its listeners would be
  // unreachable for every agent.
  if (Answers(s->registration_path, SOCK_SEQPACKET)) {
    return absl::AlreadyExistsError(
        absl::StrCat("another holder is serving ", s->registration_path));
  }
  auto reg = Listen(s->registration_path, SOCK_SEQPACKET, 0666);
  if (!reg.ok()) return reg.status();
  auto oci = Listen(s->oci_path, SOCK_STREAM, 0600);
  if (!oci.ok()) return oci.status();
  auto agent = Listen(s->agent_path, SOCK_SEQPACKET, 0600);
  if (!agent.ok()) return agent.status();
  s->registration = *std::move(reg);
  s->oci = *std::move(oci);
  s->agent = *std::move(agent);
  RaiseFdLimit();
  return std::unique_ptr<Holder>(new Holder(std::move(s)));
}

void Holder::State::Refuse(const Pending& p, absl::string_view reason, bool reply) {
  LogEvent(spdlog::level::warn, {{"event", "zerohop_registration_refused"},
                                 {"source", p.kind == Kind::kOci ? "oci" : "exec"},
                                 {"peer_pid", p.cred.pid},
                                 {"peer_uid", p.cred.uid},
                                 {"reason", reason}});
  if (reply && p.fd.valid()) (void)SendWithFds(p.fd.get(), ErrorReply(reason), {}, MSG_DONTWAIT);
}

void Holder::State::Accept(int listen_fd, Kind kind) {
  UniqueFd fd(::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  if (!fd.valid()) return;
  Pending p;
  p.kind = kind;
  p.fd = std::move(fd);
  auto cred = PeerCred(p.fd.get());
  if (!cred.ok()) return;
  p.cred = *cred;
  // The OCI socket is 0600 already; a runtime that is not root (or the
  // holder's user) is not one that may vouch for a container's pid.
  if (kind == Kind::kOci && p.cred.uid != 0 && p.cred.uid != ::geteuid()) {
    Refuse(p, "OCI registrations are accepted from root only", false);
    return;
  }
  size_t same_uid = 0;
  for (const Pending& q : pending) same_uid += q.cred.uid == p.cred.uid;
  if (pending.size() >= options.max_pending || same_uid >= options.max_pending_per_uid) {
    Refuse(p, "too many registrations in progress", true);
    return;
  }
  auto pidfd = PeerPidfd(p.fd.get(), p.cred.pid);
  if (!pidfd.ok()) {
    Refuse(p, absl::StrCat("the registering process is gone: ", pidfd.status().message()), true);
    return;
  }
  p.peer_pidfd = *std::move(pidfd);
  p.deadline = absl::Now() + options.registration_timeout;
  pending.push_back(std::move(p));
}

absl::StatusOr<uint64_t> Holder::State::Register(Pending& p, absl::string_view data) {
  auto reg = std::make_shared<ListenerRegistration>();
  UniqueFd listener;
  UniqueFd pidfd;
  uid_t owner = p.cred.uid;
  if (p.kind == Kind::kExec) {
    auto r = ParseExecRegistration(data);
    if (!r.ok()) return r.status();
    // The process registers itself: its own pid, the one the kernel vouches
    // for, so no user can attach a listener to another user's process.
    if (r->pid != p.cred.pid) {
      return absl::PermissionDeniedError(
          absl::StrCat("pid ", r->pid, " is not the registering process (pid ", p.cred.pid, ")"));
    }
    if (p.fds.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("a registration carries exactly one fd, this one ", p.fds.size()));
    }
    listener = std::move(p.fds[0]);
    pidfd = std::move(p.peer_pidfd);
    reg->source = ListenerSource::kExec;
    reg->pid = r->pid;
    reg->workload_hint = r->workload_hint;
    reg->wait_killable_recv = r->wait_killable_recv;
  } else {
    auto r = ParseOciState(data, p.fds.size());
    if (!r.ok()) return r.status();
    listener = std::move(p.fds[r->seccomp_fd_index]);
    // The container's process, not runc: take it before anything else.
    auto container_pidfd = PidfdOpen(r->pid);
    if (!container_pidfd.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("the container's process ", r->pid, " is gone"));
    }
    pidfd = *std::move(container_pidfd);
    owner = 0;
    reg->source = ListenerSource::kOci;
    reg->pid = r->pid;
    reg->workload_hint = r->workload_hint;
    reg->container_id = r->container_id;
    // runc 1.1.5 cannot set SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (design D10).
    reg->wait_killable_recv = false;
  }
  if (auto st = CheckSeccompListener(listener.get()); !st.ok()) return st;
  // A listener whose tasks are all gone would be dropped at once.
  pollfd pf{listener.get(), 0, 0};
  if (::poll(&pf, 1, 0) > 0 && (pf.revents & (POLLHUP | POLLERR | POLLNVAL))) {
    return absl::FailedPreconditionError("no process uses this filter any more");
  }
  auto cgroup = CgroupOf(reg->pid, pidfd.get());
  if (!cgroup.ok()) return cgroup.status();
  reg->cgroup = *std::move(cgroup);
  if (entries.size() >= options.max_entries ||
      (owner != ::geteuid() && owner != 0 && EntriesOf(owner) >= options.max_entries_per_uid)) {
    return absl::ResourceExhaustedError("the holder keeps too many listeners for this user");
  }
  reg->id = next_id++;
  reg->listener = std::move(listener);
  reg->pidfd = std::move(pidfd);
  entries[reg->id] = Entry{reg, owner};
  LogEvent(spdlog::level::info, {{"event", "zerohop_listener_registered"},
                                 {"id", reg->id},
                                 {"source", SourceName(reg->source)},
                                 {"pid", reg->pid},
                                 {"cgroup", reg->cgroup},
                                 {"workload_hint", reg->workload_hint},
                                 {"container_id", reg->container_id},
                                 {"wait_killable_recv", reg->wait_killable_recv},
                                 {"agents", clients.size()}});
  Publish(Outgoing{EncodeEntry(*reg), reg});
  return reg->id;
}

void Holder::State::ReadPending(Pending& p) {
  if (p.kind == Kind::kExec) {
    auto m = ReceiveWithFds(p.fd.get(), kMaxRegistrationBytes, MSG_DONTWAIT);
    if (!m.ok() && absl::IsUnavailable(m.status())) return;  // EAGAIN: spurious wakeup
    std::string reply;
    if (!m.ok()) {
      Refuse(p, m.status().message(), false);
      reply = ErrorReply(m.status().message());
    } else if (m->eof) {
      Refuse(p, "closed before sending a registration", false);
    } else {
      p.fds = std::move(m->fds);
      auto id = Register(p, m->data);
      if (!id.ok()) {
        Refuse(p, id.status().message(), false);
        reply = ErrorReply(id.status().message());
      } else {
        reply = json{{"ok", true}, {"id", *id}}.dump();
      }
    }
    // Every fd of the message is closed before the answer leaves, so a
    // refused sender can count on it.
    p.fds.clear();
    if (!reply.empty()) (void)SendWithFds(p.fd.get(), reply, {}, MSG_DONTWAIT);
    p.fd.Reset();
    return;
  }
  // OCI, a stream.
  size_t room = kMaxOciStateBytes - p.data.size();
  auto m = ReceiveWithFds(p.fd.get(), room + 1, MSG_DONTWAIT);
  if (!m.ok() && absl::IsUnavailable(m.status())) return;
  if (!m.ok()) {
    Refuse(p, m.status().message(), false);
    p.fd.Reset();
    return;
  }
  for (UniqueFd& fd : m->fds) p.fds.push_back(std::move(fd));
  if (p.fds.size() > static_cast<size_t>(kMaxFdsPerMessage)) {
    Refuse(p, "too many fds", false);
    p.fd.Reset();
    return;
  }
  if (m->data.size() > room) {
    Refuse(p, absl::StrCat("container state longer than ", kMaxOciStateBytes, " bytes"), false);
    p.fd.Reset();
    return;
  }
  p.data += m->data;
  // runc sends the state in one sendmsg and closes, but the close can come
  // late (runc run in the foreground keeps it): a complete JSON document is
  // the end of the message; EOF before one is refused by the parser.
  if (!m->eof && !json::accept(p.data)) return;
  auto id = Register(p, p.data);
  if (!id.ok()) Refuse(p, id.status().message(), false);
  p.fds.clear();
  p.fd.Reset();
}

void Holder::State::AcceptAgent() {
  UniqueFd fd(::accept4(agent.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  if (!fd.valid()) return;
  auto cred = PeerCred(fd.get());
  if (!cred.ok()) return;
  // The socket is 0600 already; the peer check keeps it so if the mode is
  // ever loosened.
  if (cred->uid != 0 && cred->uid != ::geteuid()) {
    LogEvent(spdlog::level::warn, {{"event", "holder_agent_refused"},
                                   {"peer_pid", cred->pid},
                                   {"peer_uid", cred->uid},
                                   {"reason", "only root receives workload listeners"}});
    return;
  }
  AgentClient c;
  c.fd = std::move(fd);
  c.cred = *cred;
  for (const auto& [id, e] : entries) c.queue.push_back(Outgoing{EncodeEntry(*e.reg), e.reg});
  LogEvent(spdlog::level::info, {{"event", "holder_agent_connected"},
                                 {"peer_pid", cred->pid},
                                 {"listeners", entries.size()}});
  clients.push_back(std::move(c));
  Flush(clients.back());
}

void Holder::State::ReadAgent(AgentClient& c) {
  char buf[kMaxAgentMessageBytes + 1];
  ssize_t r = ::recv(c.fd.get(), buf, sizeof(buf), MSG_DONTWAIT);
  if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (r <= 0) {
    LogEvent(spdlog::level::info,
             {{"event", "holder_agent_disconnected"}, {"peer_pid", c.cred.pid}});
    c.fd.Reset();
    return;
  }
  auto m = DecodeAgentMessage(absl::string_view(buf, static_cast<size_t>(r)));
  if (!m.ok()) {
    LogEvent(spdlog::level::warn, {{"event", "holder_agent_message_refused"},
                                   {"peer_pid", c.cred.pid},
                                   {"reason", m.status().message()}});
    return;
  }
  if (const auto* h = std::get_if<HeldNotification>(&*m)) {
    if (c.held.size() >= options.max_held_per_agent) {
      if (!c.held_full_logged) {
        LogEvent(spdlog::level::warn,
                 {{"event", "holder_agent_held_full"},
                  {"peer_pid", c.cred.pid},
                  {"reason", absl::StrCat("the agent holds ", c.held.size(),
                                          " notifications; new ones are not answered if it "
                                          "dies")}});
        c.held_full_logged = true;
      }
      return;
    }
    c.held[{h->entry, h->id}] = h->fallback_errno;
  } else {
    const auto& rel = std::get<ReleasedNotification>(*m);
    c.held.erase({rel.entry, rel.id});
  }
}

void Holder::State::AnswerHeld(AgentClient& c) {
  if (c.held.empty()) return;
  size_t answered = 0;
  for (const auto& [key, err] : c.held) {
    auto it = entries.find(key.first);
    if (it == entries.end()) continue;  // the workload is gone
    auto listener = NotificationListener::Create(
        UniqueFd(::fcntl(it->second.reg->listener.get(), F_DUPFD_CLOEXEC, 0)));
    // Not found: the agent answered it just before it went, or the thread
    // left its syscall.
    if (listener.ok() && listener->RespondError(key.second, err).ok()) ++answered;
  }
  LogEvent(answered ? spdlog::level::warn : spdlog::level::info,
           {{"event", "holder_answered_held"},
            {"peer_pid", c.cred.pid},
            {"held", c.held.size()},
            {"answered", answered},
            {"reason",
             "the agent's connection ended while these connects and accepts waited for it: "
             "they fail (ECONNREFUSED, ECONNABORTED) rather than wait for ever"}});
  c.held.clear();
}

void Holder::State::Publish(Outgoing out) {
  for (AgentClient& c : clients) {
    if (!c.fd.valid()) continue;
    if (c.queue.size() >= options.max_agent_queue) {
      LogEvent(spdlog::level::warn, {{"event", "holder_agent_dropped"},
                                     {"peer_pid", c.cred.pid},
                                     {"reason",
                                      "the agent does not read; it gets every "
                                      "listener again when it reconnects"}});
      c.fd.Reset();
      continue;
    }
    c.queue.push_back(out);
    Flush(c);
  }
}

void Holder::State::Flush(AgentClient& c) {
  while (c.fd.valid() && !c.queue.empty()) {
    const Outgoing& out = c.queue.front();
    absl::Status st;
    if (out.entry) {
      int fds[2] = {out.entry->listener.get(), out.entry->pidfd.get()};
      st = SendWithFds(c.fd.get(), out.json, fds, MSG_DONTWAIT);
    } else {
      st = SendWithFds(c.fd.get(), out.json, {}, MSG_DONTWAIT);
    }
    if (absl::IsUnavailable(st)) return;  // EAGAIN: POLLOUT resumes
    if (!st.ok()) {
      LogEvent(spdlog::level::info, {{"event", "holder_agent_disconnected"},
                                     {"peer_pid", c.cred.pid},
                                     {"reason", st.message()}});
      c.fd.Reset();
      return;
    }
    c.queue.pop_front();
  }
}

void Holder::State::Remove(uint64_t id, absl::string_view why) {
  auto it = entries.find(id);
  if (it == entries.end()) return;
  LogEvent(spdlog::level::info, {{"event", "zerohop_listener_removed"},
                                 {"id", id},
                                 {"pid", it->second.reg->pid},
                                 {"reason", why}});
  entries.erase(it);
  Publish(Outgoing{EncodeRemoval(id), nullptr});
}

absl::Status Holder::Run(int stop_fd) {
  State& s = *state_;
  LogEvent(spdlog::level::info, {{"event", "holder_ready"},
                                 {"registration_socket", s.registration_path},
                                 {"oci_socket", s.oci_path},
                                 {"agent_socket", s.agent_path}});
  std::vector<pollfd> pfds;
  std::vector<uint64_t> entry_ids;
  for (;;) {
    pfds.clear();
    entry_ids.clear();
    pfds.push_back({stop_fd, POLLIN, 0});
    pfds.push_back({s.registration.get(), POLLIN, 0});
    pfds.push_back({s.oci.get(), POLLIN, 0});
    pfds.push_back({s.agent.get(), POLLIN, 0});
    const size_t pending_at = pfds.size();
    for (const Pending& p : s.pending) pfds.push_back({p.fd.get(), POLLIN, 0});
    const size_t clients_at = pfds.size();
    for (const AgentClient& c : s.clients) {
      pfds.push_back({c.fd.get(), static_cast<short>(POLLIN | (c.queue.empty() ? 0 : POLLOUT)), 0});
    }
    const size_t entries_at = pfds.size();
    // events 0: only POLLHUP (no task uses the filter any more) is of
    // interest; POLLIN (a notification) is the agent's business.
    for (const auto& [id, e] : s.entries) {
      pfds.push_back({e.reg->listener.get(), 0, 0});
      entry_ids.push_back(id);
    }
    int timeout_ms = -1;
    absl::Time now = absl::Now();
    for (const Pending& p : s.pending) {
      int64_t ms = absl::ToInt64Milliseconds(p.deadline - now) + 1;
      if (ms < 0) ms = 0;
      if (timeout_ms < 0 || ms < timeout_ms) timeout_ms = static_cast<int>(ms);
    }
    int n = ::poll(pfds.data(), pfds.size(), timeout_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, "poll");
    }
    if (pfds[0].revents) return absl::OkStatus();
    for (size_t i = 0; i < entry_ids.size(); ++i) {
      if (pfds[entries_at + i].revents & (POLLHUP | POLLERR | POLLNVAL)) {
        s.Remove(entry_ids[i], "every process using the filter has exited");
      }
    }
    for (size_t i = 0; i < s.clients.size(); ++i) {
      AgentClient& c = s.clients[i];
      short ev = pfds[clients_at + i].revents;
      if (ev & POLLIN) {
        s.ReadAgent(c);
      } else if (ev & (POLLHUP | POLLERR)) {
        LogEvent(spdlog::level::info,
                 {{"event", "holder_agent_disconnected"}, {"peer_pid", c.cred.pid}});
        c.fd.Reset();
      }
      if (c.fd.valid() && (ev & POLLOUT)) s.Flush(c);
    }
    for (AgentClient& c : s.clients) {
      if (!c.fd.valid()) s.AnswerHeld(c);
    }
    std::erase_if(s.clients, [](const AgentClient& c) { return !c.fd.valid(); });
    now = absl::Now();
    for (size_t i = 0; i < s.pending.size(); ++i) {
      Pending& p = s.pending[i];
      if (pfds[pending_at + i].revents) {
        s.ReadPending(p);
      } else if (now >= p.deadline) {
        s.Refuse(p, "no registration arrived in time", true);
        p.fd.Reset();
      }
    }
    std::erase_if(s.pending, [](const Pending& p) { return !p.fd.valid(); });
    // Accept last: the indexes above refer to the vectors as polled.
    if (pfds[1].revents & POLLIN) s.Accept(s.registration.get(), Kind::kExec);
    if (pfds[2].revents & POLLIN) s.Accept(s.oci.get(), Kind::kOci);
    if (pfds[3].revents & POLLIN) s.AcceptAgent();
  }
}

int RunHolderCommand(const std::string& socket_dir, const std::string& log_level) {
  SetUpLogging(spdlog::level::from_str(log_level));
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  signal(SIGPIPE, SIG_IGN);
  UniqueFd stop_fd(::signalfd(-1, &stop, SFD_CLOEXEC | SFD_NONBLOCK));
  auto fail = [](const absl::Status& st) {
    LogEvent(spdlog::level::err, {{"event", "startup_failed"}, {"reason", st.message()}});
    return 1;
  };
  if (!stop_fd.valid()) return fail(absl::ErrnoToStatus(errno, "signalfd"));
  HolderOptions options;
  options.socket_dir = socket_dir;
  auto holder = Holder::Create(options);
  if (!holder.ok()) return fail(holder.status());
  absl::Status st = (*holder)->Run(stop_fd.get());
  LogEvent(spdlog::level::info, {{"event", "stopping"}});
  return st.ok() ? 0 : fail(st);
}

}  // namespace ktrust::zerohop
