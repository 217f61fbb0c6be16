#include "ktrust/agent/zero_hop_path.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "ktrust/bpf/cgroup2.h"
#include "ktrust/common/error_text.h"
#include "ktrust/common/files.h"
#include "ktrust/common/log.h"
#include "ktrust/common/poll_timeout.h"
#include "ktrust/common/thread_name.h"
#include "ktrust/identity/peer_verifier.h"
#include "ktrust/identity/x509.h"
#include "ktrust/tls/ktls.h"
#include "ktrust/zerohop/holder_client.h"
#include "ktrust/zerohop/sock_diag.h"

namespace ktrust {
namespace {

// The registered process's cgroup as the agent sees it: /proc/<pid>/cgroup
// read here (the holder's copy is only informational), named through the
// agent's cgroup view (right in a cgroup namespace too), and its id. The
// pidfd proves the process outlived the read, so the pid was not reused
// meanwhile.
absl::StatusOr<uint64_t> CgroupIdOfProcess(pid_t pid, int pidfd, const CgroupView& view) {
  auto text = ReadFile(absl::StrCat("/proc/", pid, "/cgroup"));
  if (!text.ok()) return text.status();
  pollfd p{pidfd, POLLIN, 0};
  if (poll(&p, 1, 0) != 0) return absl::NotFoundError("the process has exited");
  auto cgroup = CgroupV2PathOf(*text);
  if (!cgroup.ok()) return cgroup.status();
  auto path = view.DirOf(*cgroup);
  if (!path.ok()) return path.status();
  return CgroupIdOf(*path);
}

// Whether process `pid` holds a listening TCP socket on `port` (any address,
// either family), read from its network namespace's /proc/<pid>/net/tcp{,6}
// and its own fd table: the doorbell for a hand-over must wake that process's
// accept and nobody else's.
bool ListensOn(pid_t pid, uint16_t port) {
  std::set<std::string> inodes;
  for (const char* table : {"tcp", "tcp6"}) {
    auto text = ReadFile(absl::StrCat("/proc/", pid, "/net/", table));
    if (!text.ok()) continue;
    for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
      std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
      // sl local_address rem_address st ... inode (field 9); 0A is LISTEN.
      if (f.size() < 10 || f[3] != "0A") continue;
      size_t colon = f[1].rfind(':');
      uint32_t local_port = 0;
      if (colon == absl::string_view::npos ||
          !absl::SimpleHexAtoi(f[1].substr(colon + 1), &local_port) || local_port != port) {
        continue;
      }
      inodes.insert(absl::StrCat("socket:[", f[9], "]"));
    }
  }
  if (inodes.empty()) return false;
  std::string dir = absl::StrCat("/proc/", pid, "/fd");
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return false;
  bool found = false;
  while (dirent* e = readdir(d)) {
    char target[64] = {};
    std::string link = absl::StrCat(dir, "/", e->d_name);
    ssize_t n = readlink(link.c_str(), target, sizeof(target) - 1);
    if (n > 0 && inodes.count(std::string(target, static_cast<size_t>(n))) > 0) {
      found = true;
      break;
    }
  }
  closedir(d);
  return found;
}

// Why the agent cannot take this process's sockets, or empty. pidfd_getfd
// and process_vm_readv need ptrace access (PTRACE_MODE_ATTACH): without
// CAP_SYS_PTRACE only to a dumpable process of the agent's own uids and gids
// whose permitted capabilities the agent all has (a root workload with its
// full set is out of reach too), and Yama or another security module may
// narrow it further. So the kernel is asked: pidfd_getfd of an fd number no
// process has fails with EPERM at the access check, EBADF after it.
std::string PtraceProblem(pid_t pid, int pidfd) {
  long probe = syscall(SYS_pidfd_getfd, pidfd, INT_MAX, 0);
  int err = errno;
  if (probe >= 0) close(static_cast<int>(probe));
  if (probe >= 0 || err == EBADF) return "";
  if (err == ESRCH) return "the process has exited";
  if (err != EPERM) return absl::StrCat("pidfd_getfd on it fails: ", ErrnoText(err));
  // In words: what the agent lacks, as far as /proc says.
  auto own = ReadFile("/proc/self/status");
  auto theirs = ReadFile(absl::StrCat("/proc/", pid, "/status"));
  auto field = [](const absl::StatusOr<std::string>& text, absl::string_view name) -> std::string {
    if (!text.ok()) return "";
    for (absl::string_view line : absl::StrSplit(*text, '\n')) {
      if (absl::ConsumePrefix(&line, name)) return std::string(absl::StripAsciiWhitespace(line));
    }
    return "";
  };
  uint64_t own_caps = 0, their_caps = 0;
  constexpr int kCapSysPtrace = 19;  // linux/capability.h
  bool has_ptrace =
      absl::SimpleHexAtoi(field(own, "CapEff:"), &own_caps) && (own_caps >> kCapSysPtrace) & 1;
  if (has_ptrace) {
    return "the kernel refuses the agent ptrace access to it (pidfd_getfd: EPERM; Yama's "
           "ptrace_scope or another security module)";
  }
  // "Uid: real effective saved fs".
  std::vector<std::string> mine = absl::StrSplit(field(own, "Uid:"), '\t', absl::SkipEmpty());
  std::vector<std::string> their = absl::StrSplit(field(theirs, "Uid:"), '\t', absl::SkipEmpty());
  if (mine.empty() || their.empty() || mine != their) {
    return absl::StrCat("the agent lacks CAP_SYS_PTRACE, needed to take the sockets of uid ",
                        their.size() > 1 ? their[1] : "?");
  }
  if (absl::SimpleHexAtoi(field(own, "CapPrm:"), &own_caps) &&
      absl::SimpleHexAtoi(field(theirs, "CapPrm:"), &their_caps) && (their_caps & ~own_caps) != 0) {
    return "the agent lacks CAP_SYS_PTRACE, needed to take the sockets of a process with "
           "capabilities the agent does not have";
  }
  return "the agent lacks CAP_SYS_PTRACE, needed to take the sockets of this process (other "
         "gids, not dumpable, or Yama's ptrace_scope)";
}

// The connection's socket, for the moment: from its registered owner, or,
// when that no longer holds it (exited, or closed it after forking), from
// whichever process holds it now. NotFound: no process does.
absl::StatusOr<UniqueFd> TakeConnectionSocket(const zerohop::ZeroHopConnection& c) {
  auto fd = zerohop::TakeSocket(c.owner, c.inode, c.cookie);
  if (!absl::IsNotFound(fd.status())) return fd;
  auto holder = zerohop::FindSocketHolder(c.inode);
  if (!holder.ok()) return holder.status();
  return zerohop::TakeSocket(*holder, c.inode, c.cookie);
}

// Ends `c` with a TCP reset: SOCK_DESTROY by cookie in its namespace (no fd
// taken), or where the kernel lacks it, through an fd taken for the moment
// (ResetSocket: FailedPrecondition when it could only shut it down with
// FIN). NotFound: the connection is gone.
absl::Status ResetConnection(const zerohop::ZeroHopConnection& c) {
  auto netns = zerohop::OpenNetnsOf(c.owner, c.netns);
  if (absl::IsNotFound(netns.status())) {
    // The owner is gone; the socket may live on in a child.
    auto holder = zerohop::FindSocketHolder(c.inode);
    if (!holder.ok()) return holder.status();
    netns = zerohop::OpenNetnsOf(*holder, c.netns);
    if (absl::IsNotFound(netns.status())) {
      // Held from another namespace (the fd was passed on): through the fd.
      auto fd = TakeConnectionSocket(c);
      if (!fd.ok()) return fd.status();
      return zerohop::ResetSocket(fd->get());
    }
  }
  if (!netns.ok()) return netns.status();
  auto sockets = zerohop::ListTcpSockets(netns->get());
  if (!sockets.ok()) return sockets.status();
  for (const zerohop::TcpSocketInfo& s : *sockets) {
    if (s.cookie != c.cookie) continue;
    absl::Status st = zerohop::DestroySocket(netns->get(), s);
    if (!absl::IsUnimplemented(st)) return st;
    auto fd = TakeConnectionSocket(c);
    if (!fd.ok()) return fd.status();
    return zerohop::ResetSocket(fd->get());
  }
  return absl::NotFoundError("the connection is gone");
}

zerohop::ZeroHopConnection ConnectionOf(uint64_t cookie, uint64_t inode, uint64_t netns,
                                        pid_t owner, std::string direction,
                                        const std::string& workload, const ConnectionInfo& info,
                                        const VerifiedPeer& peer, uint16_t port,
                                        absl::Time started) {
  zerohop::ZeroHopConnection c;
  c.cookie = cookie;
  c.inode = inode;
  c.netns = netns;
  c.owner = owner;
  c.direction = std::move(direction);
  c.workload = workload;
  c.local_id = info.local_id;
  c.peer_id = info.peer_id;
  c.local = info.wire_local;
  c.peer = info.wire_peer;
  c.cipher = info.cipher;
  c.port = port;
  c.started = started;
  c.peer_chain_pem = peer.chain_pem;
  c.verified_at = peer.verified_at;
  return c;
}

}  // namespace

ZeroHopPath::ZeroHopPath(ZeroHopSettings settings, zerohop::ZeroHopFeatures features,
                         const OutboundRouting& routing)
    : settings_(std::move(settings)), features_(std::move(features)), routing_(routing) {}

ZeroHopPath::~ZeroHopPath() { Stop(); }

void ZeroHopPath::Start(Engine& engine) {
  engine_ = &engine;
  if (!settings_.journal_path.empty()) {
    auto opened = zerohop::ZeroHopConnections::Open(settings_.journal_path);
    if (opened.ok()) {
      live_ = *std::move(opened);
      const zerohop::JournalLoad& load = live_->journal_load();
      LogEvent(spdlog::level::info, {{"event", "zero_hop_journal_loaded"},
                                     {"path", settings_.journal_path},
                                     {"connections", load.loaded},
                                     {"malformed_lines", load.malformed}});
    } else {
      // Zero-hop still works; only a restarted agent would not list them.
      LogEvent(spdlog::level::warn, {{"event", "zero_hop_journal_unavailable"},
                                     {"path", settings_.journal_path},
                                     {"reason", opened.status().message()}});
    }
  }
  if (!live_) live_ = std::make_unique<zerohop::ZeroHopConnections>();
  RefreshConnections();
  thread_ = std::thread([this] {
    NameThisThread("ktrust-zerohop");
    Run();
  });
}

void ZeroHopPath::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  Wake();
  if (thread_.joinable()) thread_.join();
  supervisor_.Stop();
}

void ZeroHopPath::Wake() {
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof(one));
}

void ZeroHopPath::Sleep(absl::Duration d) {
  pollfd p{wake_.get(), POLLIN, 0};
  if (::poll(&p, 1, PollMilliseconds(d)) > 0) {
    uint64_t count = 0;
    (void)!::read(wake_.get(), &count, sizeof(count));
  }
}

absl::Duration ZeroHopPath::UntilRefresh() const {
  // Nothing to watch: asleep until woken (if it can be).
  if (live_->size() == 0) return wake_.valid() ? absl::InfiniteDuration() : kRefreshInterval;
  return std::max(last_refresh_ + kRefreshInterval - absl::Now(), absl::ZeroDuration());
}

void ZeroHopPath::Run() {
  bool reported = false;  // the holder's absence, said once until it changes
  absl::Duration retry = kRefreshInterval;
  while (!stop_.HasBeenNotified()) {
    auto client = zerohop::HolderClient::Connect(settings_.holder_socket);
    if (!client.ok()) {
      {
        absl::MutexLock lock(&mu_);
        holder_connected_ = false;
        holder_problem_ = std::string(client.status().message());
      }
      if (!reported) {
        LogEvent(spdlog::level::info, {{"event", "zero_hop_holder_unavailable"},
                                       {"socket", settings_.holder_socket},
                                       {"reason", client.status().message()}});
        reported = true;
      }
      // Retried at growing intervals; the connections served meanwhile (the
      // listeners this agent already has) are still refreshed on time.
      absl::Time next_try = absl::Now() + retry;
      retry = std::min(retry * 2, kHolderRetryMax);
      while (!stop_.HasBeenNotified() && absl::Now() < next_try) {
        Sleep(std::min(next_try - absl::Now(), UntilRefresh()));
        if (UntilRefresh() == absl::ZeroDuration()) RefreshConnections();
      }
      continue;
    }
    retry = kRefreshInterval;
    journal_->Connect(UniqueFd(::fcntl(client->fd(), F_DUPFD_CLOEXEC, 0)));
    {
      absl::MutexLock lock(&mu_);
      holder_connected_ = true;
      holder_problem_.clear();
    }
    LogEvent(spdlog::level::info,
             {{"event", "zero_hop_holder_connected"}, {"socket", settings_.holder_socket}});
    reported = false;
    while (!stop_.HasBeenNotified()) {
      // A refresh a second while there are connections; otherwise asleep
      // until the holder speaks or a connection is made.
      if (UntilRefresh() == absl::ZeroDuration()) RefreshConnections();
      bool was_empty = live_->size() == 0;
      if (was_empty) lister_.Retain({});  // no namespace kept alive for nothing
      auto message = client->Receive(UntilRefresh(), wake_.get());
      if (absl::IsCancelled(message.status())) {
        Sleep(absl::ZeroDuration());  // consume the wake-up
        // Entries moved in or rejoined are checked against the kernel now.
        // Woken by the first connection made: there is nothing to learn of
        // it for a refresh interval (a brand-new connection has not ended
        // and is far from its record limit), so its refresh is not due yet.
        if (check_now_.exchange(false)) {
          last_refresh_ = absl::InfinitePast();
        } else if (was_empty) {
          last_refresh_ = absl::Now();
        }
        continue;
      }
      if (absl::IsDeadlineExceeded(message.status())) continue;
      if (absl::IsInvalidArgument(message.status())) {
        LogEvent(spdlog::level::warn, {{"event", "zero_hop_holder_message_refused"},
                                       {"reason", message.status().message()}});
        continue;
      }
      if (!message.ok()) {
        journal_->Connect(UniqueFd());
        absl::MutexLock lock(&mu_);
        holder_connected_ = false;
        holder_problem_ = absl::StrCat("lost the holder: ", message.status().message());
        break;
      }
      if (auto* entry = std::get_if<zerohop::ListenerRegistration>(&*message)) {
        Serve(std::move(*entry));
      } else {
        Forget(std::get<zerohop::ListenerRemoval>(*message).id);
      }
    }
  }
}

void ZeroHopPath::Serve(zerohop::ListenerRegistration entry) {
  {
    absl::MutexLock lock(&mu_);
    // A reconnect sends every entry again: keep serving the one we have.
    if (auto it = served_.find(entry.id); it != served_.end()) {
      if (it->second.view.pid == entry.pid) return;
    }
  }
  Forget(entry.id);  // an id a restarted holder reused for another process

  ZeroHopListener view;
  view.holder_id = entry.id;
  view.pid = entry.pid;
  view.source = std::string(zerohop::SourceName(entry.source));
  std::string why_proxy;
  WorkloadDataPath data_path = WorkloadDataPath::kProxy;
  auto cgroup = CgroupIdOfProcess(entry.pid, entry.pidfd.get(), settings_.cgroup_view);
  if (!cgroup.ok()) {
    why_proxy = absl::StrCat("its cgroup could not be read: ", cgroup.status().message());
  } else {
    view.cgroup_id = *cgroup;
    std::shared_ptr<const RoutingTable> routing = routing_.current();
    auto it = routing->by_cgroup.find(*cgroup);
    if (it == routing->by_cgroup.end()) {
      why_proxy = absl::StrCat("no enrolled workload has cgroup ", entry.cgroup);
    } else {
      view.workload = it->second.name;
      for (const WorkloadConfig& w : routing->config->workloads) {
        if (w.name == view.workload) data_path = w.data_path;
      }
      if (data_path != WorkloadDataPath::kZeroHop) {
        why_proxy = absl::StrCat("workload ", view.workload, " has data_path proxy");
      }
    }
  }
  if (why_proxy.empty() && !features_.inbound()) {
    why_proxy = absl::StrCat("zero-hop unavailable: ", features_.inbound_missing());
  }
  if (why_proxy.empty()) why_proxy = PtraceProblem(entry.pid, entry.pidfd.get());

  zerohop::AddOptions options;
  options.socket_mark = settings_.socket_mark;
  options.doorbell_source4 = settings_.doorbell_source4;
  options.doorbell_source6 = settings_.doorbell_source6;
  options.wait_killable_recv = entry.wait_killable_recv;
  UniqueFd netns(open(absl::StrCat("/proc/", entry.pid, "/ns/net").c_str(), O_RDONLY | O_CLOEXEC));
  int open_errno = errno;
  struct stat netns_stat {};
  if (netns.get() >= 0 && fstat(netns.get(), &netns_stat) == 0) view.netns = netns_stat.st_ino;
  // Alive after the open: the namespace is the process's, not a reused pid's.
  pollfd exited{entry.pidfd.get(), POLLIN, 0};
  if (why_proxy.empty() && (netns.get() < 0 || poll(&exited, 1, 0) != 0)) {
    why_proxy = netns.get() < 0 ? absl::StrCat("its network namespace could not be opened: ",
                                               ErrnoText(open_errno))
                                : "the process has exited";
  }
  if (why_proxy.empty()) {
    options.inbound = true;
    options.outbound = features_.outbound() && entry.wait_killable_recv;
    options.netns_fd = netns.get();
    if (options.outbound) {
      view.data_path = "zero-hop";
    } else if (!entry.wait_killable_recv) {
      // runc's listenerPath (design D10): a signal could end the app's
      // connect mid-handshake and leave it a half-made socket.
      view.data_path =
          "zero-hop inbound (outbound proxied: its filter was installed without "
          "WAIT_KILLABLE_RECV)";
    } else {
      view.data_path =
          absl::StrCat("zero-hop inbound (outbound proxied: ", features_.outbound_missing(), ")");
    }
  } else {
    view.data_path = absl::StrCat("proxy (", why_proxy, ")");
  }

  auto listener = zerohop::NotificationListener::Create(std::move(entry.listener));
  if (!listener.ok()) {
    // Nothing to serve it with: the holder keeps it for the next agent.
    LogEvent(spdlog::level::err, {{"event", "zero_hop_listener_refused"},
                                  {"holder_id", entry.id},
                                  {"pid", entry.pid},
                                  {"reason", listener.status().message()}});
    return;
  }
  // If this agent dies while a connect or accept waits for it, the holder
  // answers it (docs/dataplane.md, "What waits for a dead agent").
  listener->JournalTo(journal_, entry.id);
  zerohop::WorkloadHooks hooks;
  hooks.workload = view.workload;
  hooks.is_mesh = [this](const SocketAddress& destination) { return IsMesh(destination); };
  hooks.handshake = [this, owner = view](UniqueFd socket, SocketAddress destination,
                                         std::function<void(zerohop::OutboundOutcome)> done) {
    Handshake(owner, std::move(socket), std::move(destination), std::move(done));
  };
  hooks.on_removed = [this, holder_id = entry.id](const zerohop::ListenerStatus&,
                                                  const std::string&) {
    absl::MutexLock lock(&mu_);
    served_.erase(holder_id);
  };
  LogEvent(spdlog::level::info, {{"event", "zero_hop_listener"},
                                 {"holder_id", entry.id},
                                 {"pid", entry.pid},
                                 {"source", view.source},
                                 {"workload", view.workload},
                                 {"data_path", view.data_path}});
  uint64_t id = supervisor_.Add(*std::move(listener), std::move(hooks), options);
  absl::MutexLock lock(&mu_);
  served_[entry.id] = Served{id, std::move(view), {}};
}

void ZeroHopPath::Forget(uint64_t holder_id) {
  uint64_t supervisor_id = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = served_.find(holder_id);
    if (it == served_.end()) return;
    supervisor_id = it->second.supervisor_id;
    served_.erase(it);
  }
  supervisor_.Remove(supervisor_id);
}

bool ZeroHopPath::IsMesh(const SocketAddress& destination) {
  std::shared_ptr<const RoutingTable> routing = routing_.current();
  std::shared_ptr<const MeshTable> mesh;
  {
    absl::MutexLock lock(&mu_);
    if (mesh_config_ != routing->config) {
      auto table = BuildMeshTable(*routing->config);
      // The agent loaded this configuration, so its table builds; if not,
      // nothing is the mesh's here and the kernel's hooks decide.
      mesh_ = table.ok() ? std::make_shared<const MeshTable>(*std::move(table)) : nullptr;
      mesh_config_ = routing->config;
    }
    mesh = mesh_;
  }
  return mesh != nullptr && MeshActionOf(*mesh, destination) == MeshAction::kRedirect;
}

void ZeroHopPath::Handshake(const ZeroHopListener& owner, UniqueFd socket,
                            SocketAddress destination,
                            std::function<void(zerohop::OutboundOutcome)> done) {
  const std::string& workload = owner.workload;
  std::shared_ptr<const RoutingTable> routing = routing_.current();
  auto it = routing->by_cgroup.find(owner.cgroup_id);
  if (it == routing->by_cgroup.end()) {
    done({ECONNREFUSED, absl::StrCat("workload ", workload, " is no longer enrolled"), false});
    return;
  }
  auto expected = ExpectedServerOf(*routing->config, destination, workload);
  if (!expected.ok()) {
    done({ECONNREFUSED, std::string(expected.status().message()), false});
    return;
  }
  InPlaceOutbound request;
  request.socket = std::move(socket);
  request.destination = std::move(destination);
  request.workload = workload;
  request.identity = it->second.identity;
  request.expected_server = *std::move(expected);
  struct stat socket_stat {};
  uint64_t inode = fstat(request.socket.get(), &socket_stat) == 0 ? socket_stat.st_ino : 0;
  request.done = [this, owner, inode, done = std::move(done)](InPlaceResult result) {
    if (result.error == 0) {
      Track(ConnectionOf(result.socket_cookie, inode, owner.netns, owner.pid, "outbound",
                         owner.workload, result.info, result.peer, 0, result.started));
    }
    done({result.error, result.reason, result.proxy_only()});
  };
  engine_->HandshakeInPlace(std::move(request));
}

bool ZeroHopPath::Deliver(const std::string& workload, uint64_t netns, UniqueFd& socket,
                          const ConnectionInfo& info, const VerifiedPeer& verified) {
  {
    // Handed over: the successor serves the accepts, so an application
    // would never be woken for a socket queued here. Proxied instead.
    absl::MutexLock lock(&mu_);
    if (yielded_) return false;
  }
  auto local = SocketAddress::LocalOf(socket.get());
  auto peer = SocketAddress::PeerOf(socket.get());
  if (!local.ok() || !peer.ok()) return false;
  uint16_t port = local->port();
  // Only the process that listens on the port: another process of the same
  // workload (or one started without ktrust exec) must never be woken for
  // it. What /proc said is remembered until a hand-over there fails.
  std::vector<std::pair<uint64_t, pid_t>> owners;   // supervisor id, process
  std::vector<std::pair<uint64_t, pid_t>> unknown;  // holder id, process
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [holder_id, served] : served_) {
      if (served.view.workload != workload || served.view.netns != netns ||
          !absl::StartsWith(served.view.data_path, "zero-hop")) {
        continue;
      }
      if (served.listening.count(port) > 0) {
        owners.emplace_back(served.supervisor_id, served.view.pid);
      } else {
        unknown.emplace_back(holder_id, served.view.pid);
      }
    }
  }
  for (const auto& [holder_id, pid] : unknown) {
    if (!ListensOn(pid, port)) continue;
    absl::MutexLock lock(&mu_);
    if (auto it = served_.find(holder_id); it != served_.end()) {
      it->second.listening.insert(port);
      owners.emplace_back(it->second.supervisor_id, pid);
    }
  }
  // What identifies it once the application has it (the socket's own).
  uint64_t cookie = 0;
  socklen_t cookie_len = sizeof(cookie);
  getsockopt(socket.get(), SOL_SOCKET, SO_COOKIE, &cookie, &cookie_len);
  struct stat socket_stat {};
  uint64_t inode = fstat(socket.get(), &socket_stat) == 0 ? socket_stat.st_ino : 0;
  for (const auto& [id, pid] : owners) {
    switch (supervisor_.Deliver(id, socket, *local, *peer)) {
      case zerohop::DeliverResult::kQueued:
      case zerohop::DeliverResult::kAccepted:
        Track(ConnectionOf(cookie, inode, netns, pid, "inbound", workload, info, verified, port,
                           absl::Now()));
        return true;
      case zerohop::DeliverResult::kRefused:
        return true;
      case zerohop::DeliverResult::kNotZeroHop: {
        absl::MutexLock lock(&mu_);
        for (auto& [holder_id, served] : served_) {
          if (served.supervisor_id == id) served.listening.erase(port);
        }
        break;
      }
    }
  }
  return false;
}

DeliverFunction ZeroHopDeliver(ZeroHopPath& path, std::string workload, uint64_t netns) {
  return [&path, workload = std::move(workload), netns](
             UniqueFd& socket, const ConnectionInfo& info, const VerifiedPeer& verified) {
    return path.Deliver(workload, netns, socket, info, verified);
  };
}

void ZeroHopPath::Track(zerohop::ZeroHopConnection connection) {
  if (auto st = live_->Add(std::move(connection)); !st.ok()) {
    LogEvent(spdlog::level::warn,
             {{"event", "zero_hop_journal_write_failed"}, {"reason", st.message()}});
  }
  Wake();  // the holder thread may be asleep with nothing to refresh
}

void ZeroHopPath::RefreshConnections() {
  last_refresh_ = absl::Now();
  zerohop::RefreshResult r = live_->Refresh(
      [this](const zerohop::NetnsRef& n) { return lister_(n); }, zerohop::ProcessHolderSearch());
  lister_.Retain(live_->Namespaces());
  for (const zerohop::NewHolder& moved : r.new_holders) {
    LogEvent(spdlog::level::info, {{"event", "zero_hop_connection_new_holder"},
                                   {"workload", moved.connection.workload},
                                   {"peer_id", moved.connection.peer_id},
                                   {"wire_peer", moved.connection.peer},
                                   {"old_pid", moved.connection.owner},
                                   {"pid", moved.holder},
                                   {"reason",
                                    "the process it was handed to no longer holds it; "
                                    "still enforced through the one that does"}});
  }
  for (const zerohop::EndedConnection& e : r.ended) {
    const zerohop::ZeroHopConnection& c = e.connection;
    LogEvent(spdlog::level::info,
             {{"event", "zero_hop_connection_closed"},
              {"direction", c.direction},
              {"workload", c.workload},
              {"peer_id", c.peer_id},
              {"wire_peer", c.peer},
              {"reason", e.reason},
              {"duration_ms", absl::ToInt64Milliseconds(absl::Now() - c.started)}});
    ReportClosed(c, CloseReason::kOk, "");
  }
  std::map<uint64_t, std::pair<CloseResult, std::string>> retry;
  {
    absl::MutexLock lock(&mu_);
    for (const zerohop::EndedConnection& e : r.ended) pending_resets_.erase(e.connection.cookie);
    retry = pending_resets_;
  }
  for (const zerohop::ZeroHopConnection& c : live_->Snapshot()) {
    if (auto it = retry.find(c.cookie); it != retry.end()) {
      Reset(c, it->second.first, it->second.second);
    }
  }
  EnforceRecordLimits();
}

void ZeroHopPath::EnforceRecordLimits() {
  // The byte counts only bound the records from above (a record is at
  // least 22 bytes): the kernel's own sequence numbers decide, read from
  // the socket for the moment it takes.
  for (const zerohop::ZeroHopConnection& c :
       live_->RecordLimitDue(settings_.record_limit_override)) {
    uint64_t budget = zerohop::RecordBudget(c.cipher, settings_.record_limit_override);
    auto fd = TakeConnectionSocket(c);
    if (absl::IsNotFound(fd.status())) continue;  // ended: the next refresh drops it
    absl::StatusOr<uint64_t> sent = fd.ok() ? RecordSequence(fd->get(), KtlsDirection::kTx)
                                            : absl::StatusOr<uint64_t>(fd.status());
    absl::StatusOr<uint64_t> received = fd.ok() ? RecordSequence(fd->get(), KtlsDirection::kRx)
                                                : absl::StatusOr<uint64_t>(fd.status());
    if (fd.ok()) fd->Reset();  // held, it would keep the connection open after the app's close
    if (sent.ok() && received.ok() && std::max(*sent, *received) < budget) continue;
    // At the limit, or near it and its records cannot be counted: fail
    // closed, before the AEAD limit is crossed.
    std::string reason =
        sent.ok() && received.ok()
            ? absl::StrCat("the connection carried ", std::max(*sent, *received),
                           " TLS records in one direction; ", c.cipher, " allows no more than ",
                           budget, " before rekeying, which kernel TLS cannot do: reconnect")
            : absl::StrCat("the connection is near the TLS record limit of ", c.cipher,
                           " and its record count could not be read (",
                           (sent.ok() ? received.status() : sent.status()).message(), ")");
    Reset(c, CloseReason::kRecordLimit, reason);
  }
}

std::vector<zerohop::ZeroHopConnection> ZeroHopPath::connections() const {
  return live_ ? live_->Snapshot() : std::vector<zerohop::ZeroHopConnection>{};
}

void ZeroHopPath::Recheck(const TrustStore& trust, const Authorizer& authorizer) {
  if (!live_) return;
  for (const zerohop::ZeroHopConnection& c : live_->Snapshot()) {
    // The peer's identity first, both directions, at the handshake's time
    // (an SVID that expired since does not end a live connection; a changed
    // trust store does), as TlsSession::ReverifyPeer does for the proxy's.
    PeerVerdict verdict = PeerVerdict::Reject(
        RejectReason::kNoCertificate,
        "the agent has no copy of the peer's certificate to check again (the connection was "
        "recorded by an older agent)");
    if (auto chain = ParseCertificates(c.peer_chain_pem, "the peer's chain"); chain.ok()) {
      VerifyOptions options;
      options.purpose =
          c.direction == "inbound" ? X509_PURPOSE_SSL_CLIENT : X509_PURPOSE_SSL_SERVER;
      std::vector<X509*> untrusted;
      for (size_t i = 1; i < chain->size(); ++i) untrusted.push_back((*chain)[i].get());
      verdict = VerifyPeerChain(trust, chain->front().get(), untrusted, options, c.verified_at);
    }
    if (!verdict.ok()) {
      Reset(c, CloseResult(CloseReason::kPeerRefused, verdict.reason),
            absl::StrCat("after a reload: ", verdict.explanation));
      continue;
    }
    if (c.direction != "inbound") continue;
    auto peer = SpiffeId::Parse(c.peer_id);
    auto local = SpiffeId::Parse(c.local_id);
    AuthorizationDecision d{false, "its peer's SPIFFE ID no longer parses"};
    if (peer.ok() && local.ok()) d = authorizer.Authorize({*peer, c.workload, *local, c.port});
    if (!d.allowed) Reset(c, CloseReason::kDeniedAfterReload, d.reason);
  }
}

void ZeroHopPath::Reset(const zerohop::ZeroHopConnection& c, CloseResult result,
                        const std::string& reason) {
  absl::Status st = ResetConnection(c);
  bool retrying = false;
  {
    absl::MutexLock lock(&mu_);
    retrying = pending_resets_.erase(c.cookie) > 0;
  }
  if (absl::IsNotFound(st)) {  // it ended on its own meanwhile
    live_->Remove(c.cookie);
    ReportClosed(c, CloseReason::kOk, "");
    return;
  }
  // FailedPrecondition: the kernel would not reset it, so it was shut down
  // with FIN: ended all the same.
  bool ended = st.ok() || absl::IsFailedPrecondition(st);
  if (!ended) {
    // Still live: tried again at every refresh, logged once.
    absl::MutexLock lock(&mu_);
    pending_resets_[c.cookie] = {result, reason};
  }
  if (ended || !retrying) {
    LogEvent(ended ? spdlog::level::warn : spdlog::level::err,
             {{"event", ended ? "zero_hop_connection_reset" : "zero_hop_connection_reset_failed"},
              {"direction", c.direction},
              {"workload", c.workload},
              {"peer_id", c.peer_id},
              {"wire_peer", c.peer},
              {"result", result.code()},
              {"reason", reason},
              {"error", st.ok() ? "" : std::string(st.message())}});
  }
  if (!ended) return;
  live_->Remove(c.cookie);
  ReportClosed(c, result, reason);
}

void ZeroHopPath::ReportClosed(const zerohop::ZeroHopConnection& c, CloseResult result,
                               const std::string& reason) {
  if (!settings_.on_closed) return;
  ClosedConnection closed;
  closed.direction = c.direction == "inbound" ? Direction::kInbound : Direction::kOutbound;
  closed.workload = c.workload;
  closed.result = result;
  closed.reason = reason;
  closed.info.wire_local = c.local;
  closed.info.wire_peer = c.peer;
  closed.info.local_id = c.local_id;
  closed.info.peer_id = c.peer_id;
  closed.info.tls_version = "TLSv1.3";
  closed.info.cipher = c.cipher;
  closed.info.data_path = "zero-hop";
  closed.duration = absl::Now() - c.started;
  settings_.on_closed(closed);
}

absl::Status ZeroHopPath::MoveIn(std::vector<zerohop::ZeroHopConnection> connections) {
  if (!live_) return absl::FailedPreconditionError("the zero-hop path has not started");
  size_t count = connections.size();
  absl::Status journaled = absl::OkStatus();
  for (zerohop::ZeroHopConnection& c : connections) {
    // Held in memory whatever the journal says: enforced from now on.
    if (absl::Status st = live_->Add(std::move(c)); !st.ok() && journaled.ok()) journaled = st;
  }
  LogEvent(spdlog::level::info,
           {{"event", "zero_hop_connections_moved_in"},
            {"connections", count},
            {"journal", journaled.ok() ? "written" : std::string(journaled.message())},
            {"note", "made by the predecessor; enforced and listed here from now on"}});
  check_now_ = true;
  Wake();
  return absl::OkStatus();
}

void ZeroHopPath::MovedOut(const std::vector<zerohop::ZeroHopConnection>& connections) {
  if (!live_) return;
  std::vector<uint64_t> cookies;
  for (const zerohop::ZeroHopConnection& c : connections) cookies.push_back(c.cookie);
  live_->Release(cookies);
  {
    // A reset that failed here is the successor's to find again (its first
    // refresh re-reads the record counts; its next reload re-checks peers).
    absl::MutexLock lock(&mu_);
    for (uint64_t cookie : cookies) pending_resets_.erase(cookie);
  }
  LogEvent(spdlog::level::info, {{"event", "zero_hop_connections_moved"},
                                 {"connections", connections.size()},
                                 {"note", "the successor enforces and lists them now"}});
}

void ZeroHopPath::RejoinJournal(const std::string& why) {
  if (!live_) return;
  absl::StatusOr<size_t> learned = live_->Rejoin();
  if (!learned.ok()) {
    LogEvent(spdlog::level::err,
             {{"event", "zero_hop_journal_not_rejoined"},
              {"path", settings_.journal_path},
              {"reason", learned.status().message()},
              {"note",
               "an agent started after this one will not know this one's zero-hop "
               "connections"}});
    return;
  }
  LogEvent(spdlog::level::info, {{"event", "zero_hop_journal_rejoined"},
                                 {"path", settings_.journal_path},
                                 {"why", why},
                                 {"learned", *learned},
                                 {"connections", live_->size()}});
  check_now_ = true;
  Wake();
}

void ZeroHopPath::Yield() {
  {
    absl::MutexLock lock(&mu_);
    if (yielded_) return;
    yielded_ = true;
  }
  supervisor_.SetReceiving(false);
}

void ZeroHopPath::Resume() {
  {
    absl::MutexLock lock(&mu_);
    if (!yielded_) return;
    yielded_ = false;
  }
  supervisor_.SetReceiving(true);
}

ZeroHopStatus ZeroHopPath::status() const {
  absl::MutexLock lock(&mu_);
  ZeroHopStatus s;
  s.holder_connected = holder_connected_;
  s.holder_problem = holder_problem_;
  for (const auto& [id, served] : served_) s.listeners.push_back(served.view);
  return s;
}

}  // namespace ktrust
