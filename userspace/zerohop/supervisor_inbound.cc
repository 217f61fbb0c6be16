// Inbound (design §3): the application's accept() returns sockets the agent
// authenticated, handed over with SECCOMP_ADDFD_FLAG_SEND. One doorbell per
// port wakes epoll/select servers while sockets wait; the agent drains it
// from its dup of the application's listener, so the application never
// accepts it.
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "ktrust/common/fd_reserve.h"
#include "ktrust/common/files.h"
#include "ktrust/common/netns.h"
#include "ktrust/zerohop/proc_mem.h"
#include "supervisor_internal.h"

namespace ktrust::zerohop::internal {
namespace {

// How long Deliver waits for a doorbell's loopback connect to be accepted or
// refused by the kernel (microseconds in practice); after that the thread
// watches it.
constexpr int kDoorbellSettleMs = 50;
// Bound on connections drained from one listener queue in one go.
constexpr int kMaxDrain = 1024;

const char* ErrnoName(int err) {
  const char* name = strerrorname_np(err);
  return name ? name : "?";
}

// True when the thread has a signal pending that it neither blocks nor
// ignores: its handler would run now if the held accept let it (design 3.3).
absl::StatusOr<bool> SignalWaiting(pid_t tid) {
  absl::StatusOr<std::string> text = ReadFile(absl::StrCat("/proc/", tid, "/status"), 64 << 10);
  if (!text.ok()) return text.status();
  uint64_t pending = 0, blocked = 0, ignored = 0;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    uint64_t* into = nullptr;
    bool add = false;
    if (absl::ConsumePrefix(&line, "SigPnd:") || absl::ConsumePrefix(&line, "ShdPnd:")) {
      into = &pending;
      add = true;
    } else if (absl::ConsumePrefix(&line, "SigBlk:")) {
      into = &blocked;
    } else if (absl::ConsumePrefix(&line, "SigIgn:")) {
      into = &ignored;
    } else {
      continue;
    }
    uint64_t value = 0;
    if (!absl::SimpleHexAtoi(absl::StripAsciiWhitespace(line), &value)) {
      return absl::InternalError(absl::StrCat("/proc/", tid, "/status: bad signal mask"));
    }
    *into = add ? (*into | value) : value;
  }
  return (pending & ~blocked & ~ignored) != 0;
}

// A doorbell socket in the workload's network namespace, made by the
// calling thread from inside it (RunInNetns: in and back, no thread).
absl::StatusOr<UniqueFd> DoorbellSocket(const Workload& w, int family) {
  UniqueFd fd;
  auto make = [&]() -> absl::Status {
    fd.Reset(socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    return fd.valid() ? absl::OkStatus() : absl::ErrnoToStatus(errno, "doorbell socket");
  };
  absl::Status made = w.netns.get() < 0
                          ? make()
                          : RunInNetns(w.netns.get(), -1, "the workload's network namespace",
                                       "the agent's network namespace", make);
  if (!made.ok()) return made;
  return fd;
}

// What accept() on an AF_INET6 listener reports for an IPv4 client: the
// v4-mapped form.
SocketAddress AsSeenBy(const SocketAddress& peer, int listener_family) {
  if (listener_family != AF_INET6 || peer.family() != AF_INET) return peer;
  const auto* in = reinterpret_cast<const sockaddr_in*>(peer.get());
  sockaddr_in6 six{};
  six.sin6_family = AF_INET6;
  six.sin6_port = in->sin_port;
  six.sin6_addr.s6_addr[10] = 0xff;
  six.sin6_addr.s6_addr[11] = 0xff;
  std::memcpy(&six.sin6_addr.s6_addr[12], &in->sin_addr, 4);
  return SocketAddress::FromSockaddr(reinterpret_cast<const sockaddr*>(&six), sizeof(six));
}

// Compared as an IPv6 listener sees them: a dual-stack listener reports an
// IPv4 doorbell's source as ::ffff:a.b.c.d.
bool SameAddress(const SocketAddress& a, const SocketAddress& b) {
  SocketAddress a6 = AsSeenBy(a, AF_INET6), b6 = AsSeenBy(b, AF_INET6);
  return a6.size() == b6.size() && a6.size() > 0 && a6.ToString() == b6.ToString();
}

enum class HandOff { kDelivered, kGone, kAnswered };

// Pops the first ready socket and makes it the result of accept `n`.
HandOff HandOver(Workload& w, Port& p, const Notification& n, int accept_flags, int listener_family,
                 std::vector<std::function<void()>>& deferred) {
  ReadySocket r = std::move(p.ready.front());
  p.ready.pop_front();
  auto put_back = [&] { p.ready.push_front(std::move(r)); };
  absl::Status st = WriteAcceptPeer(w.listener, n, AsSeenBy(r.peer, listener_family));
  if (!st.ok()) {
    put_back();
    if (absl::IsNotFound(st)) return HandOff::kGone;
    int err = absl::IsInvalidArgument(st) ? EINVAL : EFAULT;
    (void)w.listener.RespondError(n.id, err);
    ++w.counters.accepts_failed;
    LogZeroHop(spdlog::level::warn, "zerohop_accept_failed", w,
               {{"errno", ErrnoName(err)},
                {"reason", absl::StrCat("cannot write the peer address: ", st.message())}});
    return HandOff::kAnswered;
  }
  int fl = fcntl(r.fd.get(), F_GETFL);
  bool nonblocking = (accept_flags & SOCK_NONBLOCK) != 0;
  if (fl < 0 ||
      fcntl(r.fd.get(), F_SETFL, nonblocking ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK)) != 0) {
    int err = errno;
    put_back();
    (void)w.listener.RespondError(n.id, ECONNABORTED);
    ++w.counters.accepts_failed;
    LogZeroHop(spdlog::level::warn, "zerohop_accept_failed", w,
               {{"errno", "ECONNABORTED"},
                {"reason", absl::StrCat("cannot set the socket's flags: ", std::strerror(err))}});
    return HandOff::kAnswered;
  }
  absl::StatusOr<uint64_t> cookie = SocketCookie(r.fd.get());
  absl::StatusOr<int> target =
      w.listener.AddFdSend(n.id, r.fd.get(), (accept_flags & SOCK_CLOEXEC) ? O_CLOEXEC : 0);
  if (!target.ok()) {
    put_back();
    if (absl::IsNotFound(target.status())) return HandOff::kGone;
    // The notification is still pending when the fd could not be installed.
    int err = absl::IsResourceExhausted(target.status()) ? EMFILE : ECONNABORTED;
    (void)w.listener.RespondError(n.id, err);
    ++w.counters.accepts_failed;
    LogZeroHop(
        spdlog::level::warn, "zerohop_accept_failed", w,
        {{"errno", ErrnoName(err)},
         {"reason", absl::StrCat("cannot hand the socket over: ", target.status().message())}});
    return HandOff::kAnswered;
  }
  ++w.counters.accepts_delivered;
  LogZeroHop(spdlog::level::debug, "zerohop_accepted", w,
             {{"peer", r.peer.ToString()}, {"local", r.local.ToString()}});
  if (w.hooks.on_connection && cookie.ok()) {
    deferred.push_back(
        [hook = w.hooks.on_connection, c = *cookie, peer = r.peer] { hook(c, peer, false); });
  }
  return HandOff::kDelivered;  // r (our copy) closes here
}

// Accepts everything queued on the application's listener (through the dup),
// never blocking: our doorbells are reset and forgotten; anything else got
// there under the kernel's own rules (a connection the agent proxied, or a
// port ktrust does not enforce) and is the application's, so it joins the
// ready queue in arrival order.
void DrainQueue(Workload& w, Port& p, int listener) {
  for (int i = 0; i < kMaxDrain; ++i) {
    // The dup shares the application's open file: on a blocking listener an
    // accept with an empty queue would block the supervisor.
    pollfd pf{listener, POLLIN, 0};
    if (poll(&pf, 1, 0) <= 0 || (pf.revents & POLLIN) == 0) return;
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    UniqueFd conn(
        accept4(listener, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!conn.valid()) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // EAGAIN (another supervisor was first), or nothing more we can do
    }
    SocketAddress from = SocketAddress::FromSockaddr(reinterpret_cast<sockaddr*>(&ss), len);
    auto doorbell = std::find_if(p.doorbells.begin(), p.doorbells.end(),
                                 [&](const Doorbell& d) { return SameAddress(d.source, from); });
    if (doorbell != p.doorbells.end()) {
      ResetSocket(conn.get());
      ResetSocket(doorbell->client.get());
      p.doorbells.erase(doorbell);
      ++w.counters.doorbells_drained;
      continue;
    }
    if (p.ready.size() >= w.options.max_ready_per_port) {
      ResetSocket(conn.get());
      ++w.counters.ready_reset;
      LogZeroHop(spdlog::level::warn, "zerohop_direct_refused", w,
                 {{"peer", from.ToString()},
                  {"reason", absl::StrCat("the application has not accepted the ", p.ready.size(),
                                          " connections already waiting; reset")}});
      continue;
    }
    // The application's accept would have reported the socket's own address.
    absl::StatusOr<SocketAddress> local = SocketAddress::LocalOf(conn.get());
    ++w.counters.accepts_direct;
    p.ready.push_back({std::move(conn), local.ok() ? *local : SocketAddress(), from});
  }
}

absl::Status RingDoorbell(Workload& w, Port& p, const SocketAddress& target) {
  absl::StatusOr<UniqueFd> fd = DoorbellSocket(w, target.family());
  if (!fd.ok()) return fd.status();
  if (w.options.socket_mark != 0 &&
      setsockopt(fd->get(), SOL_SOCKET, SO_MARK, &w.options.socket_mark,
                 sizeof(w.options.socket_mark)) != 0) {
    return absl::ErrnoToStatus(errno, "doorbell SO_MARK");
  }
  const std::optional<SocketAddress>& source =
      target.family() == AF_INET6 ? w.options.doorbell_source6 : w.options.doorbell_source4;
  if (source && bind(fd->get(), source->get(), source->size()) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("doorbell bind ", source->ToString()));
  }
  if (connect(fd->get(), target.get(), target.size()) != 0 && errno != EINPROGRESS) {
    return absl::ErrnoToStatus(errno, absl::StrCat("doorbell connect ", target.ToString()));
  }
  // Loopback: the kernel settles it in microseconds; a refusal here means
  // nothing listens there, which the caller wants to know now.
  pollfd pf{fd->get(), POLLOUT, 0};
  if (poll(&pf, 1, kDoorbellSettleMs) > 0) {
    int err = IntSockOpt(fd->get(), SO_ERROR);
    if (err != 0) {
      return absl::ErrnoToStatus(err < 0 ? -err : err,
                                 absl::StrCat("doorbell connect ", target.ToString()));
    }
  }
  absl::StatusOr<SocketAddress> me = SocketAddress::LocalOf(fd->get());
  if (!me.ok()) return me.status();
  Doorbell d;
  d.client = std::move(*fd);
  d.source = *me;
  d.connected = pf.revents != 0;
  p.doorbells.push_back(std::move(d));
  ++w.counters.doorbells_rung;
  return absl::OkStatus();
}

}  // namespace

void State::OnAccept(const std::shared_ptr<Workload>& w, const Notification& n) {
  auto fail = [&](int err, const std::string& reason) {
    (void)w->listener.RespondError(n.id, err);
    ++w->counters.accepts_failed;
    LogZeroHop(spdlog::level::warn, "zerohop_accept_failed", *w,
               {{"errno", ErrnoName(err)}, {"reason", reason}});
  };
  if (!w->options.inbound) {
    (void)w->listener.Continue(n.id);
    ++w->counters.accepts_continued;
    return;
  }
  int accept_flags = n.syscall_nr == SYS_accept4 ? static_cast<int>(n.args[3]) : 0;
  if (accept_flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) {
    return fail(EINVAL, "accept4 with unknown flags");
  }
  absl::StatusOr<UniqueFd> dup = TakeNotifiedFd(w->listener, n);
  if (!dup.ok()) {
    if (absl::IsNotFound(dup.status())) return;
    // Letting it continue could hand the application a doorbell. The agent
    // out of descriptors or memory: that errno (EMFILE, ENFILE, ENOMEM,
    // ENOBUFS are accept's own), which servers take as a reason to back off
    // and retry; EPERM would make many of them stop serving.
    int err = DescriptorErrorOf(dup.status());
    if (err == 0) err = MemoryErrorOf(dup.status());
    if (err == 0) err = EPERM;
    return fail(err,
                absl::StrCat("cannot take the application's listener: ", dup.status().message()));
  }
  int family = IntSockOpt(dup->get(), SO_DOMAIN);
  if (family == -ENOTSOCK) return fail(ENOTSOCK, "accept on a non-socket");
  int protocol = IntSockOpt(dup->get(), SO_PROTOCOL);
  if ((family != AF_INET && family != AF_INET6) || protocol != IPPROTO_TCP) {
    // Unix sockets and the like: not ours.
    (void)w->listener.Continue(n.id);
    ++w->counters.accepts_continued;
    return;
  }
  if (IntSockOpt(dup->get(), SO_ACCEPTCONN) != 1) return fail(EINVAL, "accept on a non-listener");
  absl::StatusOr<SocketAddress> local = SocketAddress::LocalOf(dup->get());
  if (!local.ok()) {
    return fail(ECONNABORTED,
                absl::StrCat("cannot read the listener's address: ", local.status().message()));
  }
  uint16_t port = local->port();
  Port& p = w->ports[port];
  // Connections the kernel queued on the listener itself are the
  // application's as much as the handed-over ones.
  DrainQueue(*w, p, dup->get());
  if (!p.ready.empty()) {
    (void)HandOver(*w, p, n, accept_flags, family, deferred);
    if (p.ready.empty()) {
      // Nothing else waits: a doorbell still on its way is drained on arrival.
      if (!p.doorbells.empty()) p.drain_listener = std::move(*dup);
    } else if (p.doorbells.empty()) {
      // More wait, and the drain took the doorbell: the listener must stay
      // readable, or a level-triggered server would not come back for them.
      (void)RingDoorbell(*w, p, p.ready.front().local);
    }
    return;
  }
  int fl = fcntl(dup->get(), F_GETFL);
  if (fl >= 0 && (fl & O_NONBLOCK)) {
    (void)w->listener.RespondError(n.id, EAGAIN);
    ++w->counters.accepts_eagain;
    if (!p.doorbells.empty()) p.drain_listener = std::move(*dup);
    return;
  }
  // Held: watch the listener, so that a connection the kernel queues there
  // directly also answers this accept.
  p.drain_listener = std::move(*dup);
  p.held.push_back({n, accept_flags, family});
  w->listener.Hold(n.id, ECONNABORTED);
  LogZeroHop(spdlog::level::debug, "zerohop_accept_held", *w, {{"port", absl::StrCat(port)}});
}

DeliverResult State::DeliverLocked(Workload& w, UniqueFd& socket, const SocketAddress& local,
                                   const SocketAddress& peer) {
  if (!w.options.inbound || !socket.valid()) return DeliverResult::kNotZeroHop;
  uint16_t port = local.port();
  auto existing = w.ports.find(port);
  // A blocking accept is waiting: answer it directly, no doorbell.
  if (existing != w.ports.end()) {
    Port& p = existing->second;
    while (!p.held.empty()) {
      HeldAccept h = p.held.front();
      p.held.pop_front();
      p.ready.push_front({std::move(socket), local, peer});
      HandOff r = HandOver(w, p, h.notification, h.accept_flags, h.listener_family, deferred);
      if (r == HandOff::kDelivered) return DeliverResult::kAccepted;
      socket = std::move(p.ready.front().fd);
      p.ready.pop_front();
    }
  }
  Port& p = w.ports[port];
  if (p.ready.size() >= w.options.max_ready_per_port) {
    ResetSocket(socket.get());
    socket.Reset();
    ++w.counters.ready_reset;
    LogZeroHop(spdlog::level::warn, "zerohop_deliver_refused", w,
               {{"peer", peer.ToString()},
                {"local", local.ToString()},
                {"reason", absl::StrCat("the application has not accepted the ", p.ready.size(),
                                        " connections already waiting; reset")}});
    return DeliverResult::kRefused;
  }
  if (p.doorbells.empty()) {
    absl::Status st = RingDoorbell(w, p, local);
    if (!st.ok()) {
      LogZeroHop(spdlog::level::warn, "zerohop_doorbell_failed", w,
                 {{"local", local.ToString()},
                  {"reason", absl::StrCat("cannot wake the application (", st.message(),
                                          "); the connection stays with the proxy")}});
      if (p.ready.empty() && p.held.empty()) w.ports.erase(port);
      return DeliverResult::kNotZeroHop;
    }
  }
  // A doorbell still on its way now wakes the application for this socket.
  p.drain_listener.Reset();
  p.ready.push_back({std::move(socket), local, peer});
  return DeliverResult::kQueued;
}

void State::CheckHeldAccepts(Workload& w) {
  for (auto& [port, p] : w.ports) {
    for (auto it = p.held.begin(); it != p.held.end();) {
      const Notification& n = it->notification;
      absl::StatusOr<bool> signal = SignalWaiting(n.pid);
      // Trust what /proc said only if the thread is still in that accept.
      if (!w.listener.IdValid(n.id).ok()) {
        it = p.held.erase(it);
        continue;
      }
      if (signal.ok() && !*signal) {
        ++it;
        continue;
      }
      // A signal waits (or its state is unreadable): let the handler run.
      (void)w.listener.RespondError(n.id, EINTR);
      ++w.counters.accepts_interrupted;
      LogZeroHop(spdlog::level::debug, "zerohop_accept_interrupted", w,
                 {{"port", absl::StrCat(port)},
                  {"reason",
                   signal.ok() ? "a signal is pending" : std::string(signal.status().message())}});
      it = p.held.erase(it);
    }
  }
}

void State::DrainWhenArrived(Workload& w, uint16_t port) {
  auto it = w.ports.find(port);
  if (it == w.ports.end() || !it->second.drain_listener.valid()) return;
  Port& p = it->second;
  DrainQueue(w, p, p.drain_listener.get());
  // A held accept takes what the kernel queued directly.
  while (!p.held.empty() && !p.ready.empty()) {
    HeldAccept h = p.held.front();
    p.held.pop_front();
    (void)HandOver(w, p, h.notification, h.accept_flags, h.listener_family, deferred);
  }
  // Keep watching while an accept is held or a doorbell is still to drain.
  if (p.held.empty() && (p.doorbells.empty() || !p.ready.empty())) p.drain_listener.Reset();
}

void State::DoorbellProgress(Workload& w, uint16_t port, int client_fd, short revents) {
  auto it = w.ports.find(port);
  if (it == w.ports.end()) return;
  Port& p = it->second;
  size_t index = 0;
  while (index < p.doorbells.size() && p.doorbells[index].client.get() != client_fd) ++index;
  if (index == p.doorbells.size()) return;  // drained meanwhile
  Doorbell& d = p.doorbells[index];
  if (d.connected) {
    if (revents & (POLLRDHUP | POLLHUP | POLLERR)) {
      // Dropped by the listener (closed with it in its queue): the next
      // delivered socket rings a new one.
      p.doorbells.erase(p.doorbells.begin() + static_cast<ptrdiff_t>(index));
    }
    return;
  }
  int err = IntSockOpt(d.client.get(), SO_ERROR);
  if (err == 0) {
    d.connected = true;
    return;
  }
  // Refused: nothing listens there any more; the waiting sockets cannot be
  // accepted.
  LogZeroHop(
      spdlog::level::warn, "zerohop_doorbell_failed", w,
      {{"port", absl::StrCat(port)},
       {"reason", absl::StrCat("the doorbell was refused (", std::strerror(err < 0 ? -err : err),
                               "): ", p.ready.size(), " waiting connections reset")}});
  for (ReadySocket& r : p.ready) ResetSocket(r.fd.get());
  w.counters.ready_reset += p.ready.size();
  p.ready.clear();
  p.doorbells.erase(p.doorbells.begin() + static_cast<ptrdiff_t>(index));
}

void State::ResetInbound(Workload& w, int held_errno) {
  for (auto& [port, p] : w.ports) {
    for (const HeldAccept& h : p.held) {
      (void)w.listener.RespondError(h.notification.id, held_errno);
    }
    p.held.clear();
    for (ReadySocket& r : p.ready) ResetSocket(r.fd.get());
    p.ready.clear();
    for (Doorbell& d : p.doorbells) ResetSocket(d.client.get());
    p.doorbells.clear();
    p.drain_listener.Reset();
  }
}

}  // namespace ktrust::zerohop::internal
