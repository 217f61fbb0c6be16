// The supervisor's thread, bookkeeping and outbound connects (design §2).
// Inbound accepts and doorbells: supervisor_inbound.cc.
#include "ktrust/zerohop/supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "ktrust/common/thread_name.h"
#include "ktrust/zerohop/proc_mem.h"
#include "supervisor_internal.h"

namespace ktrust::zerohop {
namespace internal {

void LogZeroHop(spdlog::level::level_enum level, absl::string_view event, const Workload& w,
                std::initializer_list<std::pair<const char*, std::string>> fields) {
  nlohmann::ordered_json e;
  e["event"] = std::string(event);
  e["workload"] = w.hooks.workload;
  e["listener"] = w.id;
  for (const auto& [key, value] : fields) e[key] = value;
  LogEvent(level, e);
}

void ResetSocket(int fd) {
  linger l{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  shutdown(fd, SHUT_RDWR);
}

absl::StatusOr<uint64_t> SocketCookie(int fd) {
  uint64_t cookie = 0;
  socklen_t len = sizeof(cookie);
  if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) != 0) {
    return absl::ErrnoToStatus(errno, "SO_COOKIE");
  }
  return cookie;
}

int IntSockOpt(int fd, int opt) {
  int value = 0;
  socklen_t len = sizeof(value);
  if (getsockopt(fd, SOL_SOCKET, opt, &value, &len) != 0) return -errno;
  return value;
}

namespace {

std::string Describe(const absl::Status& st) { return std::string(st.message()); }

bool HasTlsUlp(int fd) {
  char ulp[16] = {};
  socklen_t len = sizeof(ulp);
  if (getsockopt(fd, IPPROTO_TCP, TCP_ULP, ulp, &len) != 0) return false;
  return std::strncmp(ulp, "tls", sizeof(ulp)) == 0;
}

}  // namespace

void State::Wake() {
  uint64_t one = 1;
  (void)!write(wake.get(), &one, sizeof(one));
}

void State::RunDeferred(std::unique_lock<std::mutex>& lock) {
  while (!deferred.empty()) {
    std::vector<std::function<void()>> run;
    run.swap(deferred);
    lock.unlock();
    for (auto& f : run) f();
    lock.lock();
  }
}

// Answers everything `w` holds and marks it removed; the listener closes when
// the last reference (the map's, the thread's, a pending `done`'s) goes.
void State::RemoveLocked(Workload& w, absl::string_view why) {
  if (w.removed) return;
  w.removed = true;
  for (auto& [cookie, out] : w.outbound) {
    ResetSocket(out->keep.get());
    for (const Notification& n : out->waiters) (void)w.listener.RespondError(n.id, ECONNREFUSED);
    ++w.counters.connects_failed;
    LogZeroHop(spdlog::level::warn, "zerohop_connect_failed", w,
               {{"destination", out->destination.ToString()},
                {"reason", absl::StrCat("the workload's listener was removed during the "
                                        "handshake (",
                                        why, ")")}});
  }
  w.outbound.clear();
  ResetInbound(w, ECONNABORTED);
  LogZeroHop(spdlog::level::info, "zerohop_listener_removed", w, {{"reason", std::string(why)}});
}

// ---- outbound ----

void State::OnConnect(std::unique_lock<std::mutex>& lock, const std::shared_ptr<Workload>& w,
                      const Notification& n) {
  auto answer_error = [&](int err, absl::string_view reason, const std::string& destination) {
    (void)w->listener.RespondError(n.id, err);
    ++w->counters.connects_failed;
    LogZeroHop(spdlog::level::warn, "zerohop_connect_failed", *w,
               {{"destination", destination},
                {"errno", strerrorname_np(err) ? strerrorname_np(err) : absl::StrCat(err)},
                {"reason", std::string(reason)}});
  };
  auto continue_in_kernel = [&] {
    (void)w->listener.Continue(n.id);
    ++w->counters.connects_continued;
  };
  // Without WAIT_KILLABLE_RECV a signal could take the application out of
  // the connect while the agent handshakes on its socket (D10).
  if (!w->options.outbound || !w->options.wait_killable_recv) return continue_in_kernel();

  absl::StatusOr<ConnectTarget> target = ReadConnectTarget(w->listener, n);
  if (!target.ok()) {
    if (absl::IsNotFound(target.status())) return;  // the thread is gone: nothing to answer
    // Unreadable memory is what the kernel answers EFAULT for; anything
    // else means we cannot tell where it goes: refuse rather than let it on.
    int err = absl::IsOutOfRange(target.status()) ? EFAULT : ECONNREFUSED;
    return answer_error(
        err, absl::StrCat("cannot read the connect address: ", Describe(target.status())), "");
  }
  if (target->family == AF_UNSPEC) {
    // A disconnect. A zero-hop (kTLS) socket must not be disconnected and
    // reused; every other socket may.
    absl::StatusOr<UniqueFd> dup = TakeNotifiedFd(w->listener, n);
    if (!dup.ok()) {
      if (absl::IsNotFound(dup.status())) return;
      return answer_error(
          EOPNOTSUPP,
          absl::StrCat("cannot inspect the socket of a disconnect: ", Describe(dup.status())),
          "AF_UNSPEC");
    }
    absl::StatusOr<uint64_t> cookie = SocketCookie(dup->get());
    bool ours = HasTlsUlp(dup->get()) ||
                (cookie.ok() && (w->zero_hop.count(*cookie) || w->outbound.count(*cookie)));
    if (ours) {
      return answer_error(EOPNOTSUPP, "a zero-hop socket cannot be disconnected", "AF_UNSPEC");
    }
    return continue_in_kernel();
  }
  if (!target->is_inet()) return continue_in_kernel();
  const SocketAddress destination = *target->address;
  const std::string dest_text = destination.ToString();
  if (auto it = proxy_only.find(dest_text); it != proxy_only.end()) {
    if (absl::Now() < it->second) return continue_in_kernel();
    proxy_only.erase(it);
  }
  bool mesh = false;
  if (w->hooks.is_mesh) {
    lock.unlock();
    mesh = w->hooks.is_mesh(destination);
    lock.lock();
  }
  if (w->removed) {
    return answer_error(ECONNREFUSED, "the workload's listener was removed", dest_text);
  }
  if (!mesh) return continue_in_kernel();

  // A mesh destination: from here on, never Continue.
  absl::StatusOr<UniqueFd> dup = TakeNotifiedFd(w->listener, n);
  if (!dup.ok()) {
    if (absl::IsNotFound(dup.status())) return;
    return answer_error(
        ECONNREFUSED,
        absl::StrCat("cannot take the application's socket: ", Describe(dup.status())), dest_text);
  }
  int type = IntSockOpt(dup->get(), SO_TYPE);
  if (type == -ENOTSOCK) return answer_error(ENOTSOCK, "connect on a non-socket", dest_text);
  int protocol = IntSockOpt(dup->get(), SO_PROTOCOL);
  // Not TCP (UDP, MPTCP, SCTP): not ours; the eBPF decision refuses such
  // sockets to the mesh in enforce mode.
  if (type != SOCK_STREAM || protocol != IPPROTO_TCP) return continue_in_kernel();
  absl::StatusOr<uint64_t> cookie = SocketCookie(dup->get());
  if (!cookie.ok()) {
    return answer_error(ECONNREFUSED,
                        absl::StrCat("cannot identify the socket: ", Describe(cookie.status())),
                        dest_text);
  }
  if (auto it = w->outbound.find(*cookie); it != w->outbound.end()) {
    // SA_RESTART re-entry (or another thread): answered with the first's
    // outcome, never a second handshake.
    it->second->waiters.push_back(n);
    w->listener.Hold(n.id, ECONNREFUSED);
    ++w->counters.connects_reentered;
    LogZeroHop(spdlog::level::debug, "zerohop_connect_reentered", *w, {{"destination", dest_text}});
    return;
  }
  if (w->zero_hop.count(*cookie) || HasTlsUlp(dup->get())) {
    return answer_error(EISCONN, "the socket is already connected (zero-hop)", dest_text);
  }
  int flags = fcntl(dup->get(), F_GETFL);
  UniqueFd keep(fcntl(dup->get(), F_DUPFD_CLOEXEC, 0));
  if (flags < 0 || !keep.valid() || fcntl(dup->get(), F_SETFL, flags | O_NONBLOCK) != 0) {
    return answer_error(
        ECONNREFUSED, absl::StrCat("cannot prepare the socket: ", std::strerror(errno)), dest_text);
  }
  auto out = std::make_shared<Outbound>();
  out->cookie = *cookie;
  out->destination = destination;
  out->keep = std::move(keep);
  out->app_nonblocking = (flags & O_NONBLOCK) != 0;
  out->waiters.push_back(n);
  w->listener.Hold(n.id, ECONNREFUSED);
  out->deadline = absl::Now() + w->options.handshake_timeout;
  w->outbound.emplace(*cookie, out);
  LogZeroHop(spdlog::level::debug, "zerohop_connect_handshake", *w, {{"destination", dest_text}});

  std::weak_ptr<State> self = weak_from_this();
  auto done = [self, w, out](OutboundOutcome outcome) {
    std::shared_ptr<State> state = self.lock();
    if (!state) return;
    std::unique_lock<std::mutex> held(state->mu);
    state->FinishOutbound(w, out, std::move(outcome));
    state->RunDeferred(held);
  };
  if (!w->hooks.handshake) {
    return FinishOutbound(w, out, {ECONNREFUSED, "no handshake configured", false});
  }
  lock.unlock();
  w->hooks.handshake(std::move(*dup), destination, std::move(done));
  lock.lock();
}

void State::FinishOutbound(const std::shared_ptr<Workload>& w, const std::shared_ptr<Outbound>& out,
                           OutboundOutcome outcome) {
  auto it = w->outbound.find(out->cookie);
  // Answered already (timeout, Remove, a second done).
  if (it == w->outbound.end() || it->second != out) return;
  w->outbound.erase(it);

  int fl = fcntl(out->keep.get(), F_GETFL);
  if (fl >= 0) {
    fcntl(out->keep.get(), F_SETFL, out->app_nonblocking ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK));
  }
  const std::string dest_text = out->destination.ToString();
  if (outcome.proxy_only) {
    proxy_only[dest_text] = absl::Now() + kProxyOnlyFor;
    if (outcome.error == 0) outcome.error = ECONNREFUSED;
    if (outcome.reason.empty()) outcome.reason = "the destination does not speak zero-hop";
    outcome.reason += "; connects there go to the proxy for the next 10 minutes";
  }
  if (outcome.error == 0) {
    bool answered = false;
    for (const Notification& n : out->waiters) {
      if (!answered) {
        answered = w->listener.RespondValue(n.id, 0).ok();
      } else {
        (void)w->listener.RespondError(n.id, EISCONN);
      }
    }
    if (!answered) {
      // The application left its connect (killed): leave nothing half-made.
      ResetSocket(out->keep.get());
      ++w->counters.connects_failed;
      LogZeroHop(spdlog::level::warn, "zerohop_connect_failed", *w,
                 {{"destination", dest_text},
                  {"reason",
                   "the application left its connect before the handshake ended; "
                   "socket reset"}});
    } else {
      ++w->counters.connects_zero_hop;
      w->zero_hop.insert(out->cookie);
      w->zero_hop_order.push_back(out->cookie);
      if (w->zero_hop_order.size() > kZeroHopCookiesKept) {
        w->zero_hop.erase(w->zero_hop_order.front());
        w->zero_hop_order.pop_front();
      }
      LogZeroHop(spdlog::level::debug, "zerohop_connected", *w, {{"destination", dest_text}});
      if (w->hooks.on_connection) {
        deferred.push_back([hook = w->hooks.on_connection, cookie = out->cookie,
                            dest = out->destination] { hook(cookie, dest, true); });
      }
    }
  } else {
    ResetSocket(out->keep.get());
    for (const Notification& n : out->waiters) {
      (void)w->listener.RespondError(n.id, outcome.error);
    }
    ++w->counters.connects_failed;
    const char* name = strerrorname_np(outcome.error);
    LogZeroHop(spdlog::level::warn, "zerohop_connect_failed", *w,
               {{"destination", dest_text},
                {"errno", name ? name : absl::StrCat(outcome.error)},
                {"reason", outcome.reason.empty() ? "the handshake failed" : outcome.reason}});
  }
}

void State::ExpireHandshakes(const std::shared_ptr<Workload>& w, absl::Time now) {
  std::vector<std::shared_ptr<Outbound>> late;
  for (auto& [cookie, out] : w->outbound) {
    if (out->deadline <= now) late.push_back(out);
  }
  for (auto& out : late) {
    FinishOutbound(w, out, {ETIMEDOUT, "the handshake did not finish in time", false});
  }
}

// ---- the thread ----

void State::Loop() {
  std::unique_lock<std::mutex> lock(mu);
  while (!stopping) {
    // What to watch, rebuilt each round; the workloads are held so their
    // listener fds stay open while unlocked.
    enum Kind { kWake, kListener, kDrain, kDoorbell };
    struct Watch {
      Kind kind;
      std::shared_ptr<Workload> w;
      uint16_t port = 0;
      int fd = -1;
    };
    std::vector<pollfd> fds;
    std::vector<Watch> what;
    fds.push_back({wake.get(), POLLIN, 0});
    what.push_back({kWake, nullptr});
    bool tick = false;
    for (auto& [id, w] : workloads) {
      if (w->removed) continue;
      // Not receiving: watched for the hang-up only.
      fds.push_back({w->listener.fd(), static_cast<short>(receiving ? POLLIN : 0), 0});
      what.push_back({kListener, w});
      if (!w->outbound.empty()) tick = true;
      for (auto& [port, p] : w->ports) {
        if (!p.held.empty()) tick = true;
        if (p.drain_listener.valid()) {
          fds.push_back({p.drain_listener.get(), POLLIN, 0});
          what.push_back({kDrain, w, port});
        }
        for (size_t i = 0; i < p.doorbells.size(); ++i) {
          // Until connected: its outcome. Then: a reset means the listener
          // dropped it (closed), so it no longer wakes anyone.
          short events = p.doorbells[i].connected ? POLLRDHUP : POLLOUT;
          fds.push_back({p.doorbells[i].client.get(), events, 0});
          what.push_back({kDoorbell, w, port, p.doorbells[i].client.get()});
        }
      }
    }
    lock.unlock();
    int timeout = tick ? static_cast<int>(absl::ToInt64Milliseconds(kHeldAcceptCheck)) : -1;
    int ready = poll(fds.data(), fds.size(), timeout);
    int poll_errno = errno;
    lock.lock();
    if (stopping) break;
    if (ready < 0 && poll_errno != EINTR) {
      LogEvent(spdlog::level::err, {{"event", "zerohop_supervisor_poll_failed"},
                                    {"reason", std::strerror(poll_errno)}});
    }
    for (size_t i = 0; ready > 0 && i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      Watch& x = what[i];
      if (x.kind == kWake) {
        uint64_t v;
        (void)!read(wake.get(), &v, sizeof(v));
        continue;
      }
      if (x.w->removed) continue;
      if (x.kind == kListener) {
        if (fds[i].revents & POLLIN) {
          if (!receiving) continue;  // stopped meanwhile: the other agent's to take
          absl::StatusOr<Notification> n = x.w->listener.Receive();
          if (!n.ok()) {
            if (!absl::IsNotFound(n.status())) {
              RemoveLocked(*x.w, absl::StrCat("receive failed: ", n.status().message()));
            }
            continue;
          }
          if (n->syscall_nr == SYS_connect) {
            OnConnect(lock, x.w, *n);
          } else if (n->syscall_nr == SYS_accept || n->syscall_nr == SYS_accept4) {
            OnAccept(x.w, *n);
          } else {
            // The filter notifies nothing else; answer rather than strand it.
            (void)x.w->listener.RespondError(n->id, ENOSYS);
          }
        } else {
          // POLLHUP: no task uses the filter any more.
          RemoveLocked(*x.w, "the workload exited");
          workloads.erase(x.w->id);
          if (x.w->hooks.on_removed) {
            ListenerStatus last;
            last.id = x.w->id;
            last.workload = x.w->hooks.workload;
            last.inbound = x.w->options.inbound;
            last.outbound = x.w->options.outbound && x.w->options.wait_killable_recv;
            last.counters = x.w->counters;
            deferred.push_back(
                [hook = x.w->hooks.on_removed, last] { hook(last, "the workload exited"); });
          }
        }
      } else if (x.kind == kDrain) {
        DrainWhenArrived(*x.w, x.port);
      } else if (x.kind == kDoorbell) {
        DoorbellProgress(*x.w, x.port, x.fd, fds[i].revents);
      }
    }
    absl::Time now = absl::Now();
    for (auto& [id, w] : workloads) {
      if (w->removed) continue;
      ExpireHandshakes(w, now);
      CheckHeldAccepts(*w);
    }
    RunDeferred(lock);
  }
}

}  // namespace internal

using internal::State;
using internal::Workload;

Supervisor::Supervisor() : state_(std::make_shared<State>()) {
  state_->wake.Reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
}

Supervisor::~Supervisor() { Stop(); }

uint64_t Supervisor::Add(NotificationListener listener, WorkloadHooks hooks, AddOptions options) {
  std::unique_lock<std::mutex> lock(state_->mu);
  uint64_t id = state_->next_id++;
  auto w = std::make_shared<Workload>(id, std::move(listener), std::move(hooks), options);
  if (options.netns_fd >= 0) w->netns.Reset(fcntl(options.netns_fd, F_DUPFD_CLOEXEC, 0));
  w->options.netns_fd = -1;  // ours is w->netns
  state_->workloads.emplace(id, w);
  internal::LogZeroHop(spdlog::level::info, "zerohop_listener_added", *w,
                       {{"inbound", options.inbound ? "yes" : "no"},
                        {"outbound", options.outbound && options.wait_killable_recv
                                         ? "yes"
                                         : (options.outbound ? "no (the filter lacks "
                                                               "WAIT_KILLABLE_RECV: proxy)"
                                                             : "no")}});
  if (!state_->thread.joinable() && !state_->stopping) {
    state_->thread = std::thread([s = state_] {
      NameThisThread("ktrust-zh-notif");
      s->Loop();
    });
  }
  state_->Wake();
  return id;
}

void Supervisor::Remove(uint64_t id) {
  std::unique_lock<std::mutex> lock(state_->mu);
  auto it = state_->workloads.find(id);
  if (it == state_->workloads.end()) return;
  std::shared_ptr<Workload> w = it->second;
  state_->workloads.erase(it);
  state_->RemoveLocked(*w, "removed by the agent");
  state_->Wake();
}

DeliverResult Supervisor::Deliver(uint64_t id, UniqueFd& socket, const SocketAddress& local,
                                  const SocketAddress& peer) {
  std::unique_lock<std::mutex> lock(state_->mu);
  auto it = state_->workloads.find(id);
  if (it == state_->workloads.end() || it->second->removed) return DeliverResult::kNotZeroHop;
  std::shared_ptr<Workload> w = it->second;
  DeliverResult r = state_->DeliverLocked(*w, socket, local, peer);
  state_->Wake();  // new doorbells to watch
  state_->RunDeferred(lock);
  return r;
}

std::vector<ListenerStatus> Supervisor::Status() const {
  std::unique_lock<std::mutex> lock(state_->mu);
  std::vector<ListenerStatus> all;
  for (const auto& [id, w] : state_->workloads) {
    ListenerStatus s;
    s.id = id;
    s.workload = w->hooks.workload;
    s.inbound = w->options.inbound;
    s.outbound = w->options.outbound && w->options.wait_killable_recv;
    s.pending_handshakes = w->outbound.size();
    for (const auto& [port, p] : w->ports) {
      PortStatus ps;
      ps.port = port;
      ps.ready = p.ready.size();
      ps.held_accepts = p.held.size();
      ps.doorbells = p.doorbells.size();
      s.ports.push_back(ps);
    }
    s.counters = w->counters;
    all.push_back(std::move(s));
  }
  return all;
}

void Supervisor::SetReceiving(bool receiving) {
  std::unique_lock<std::mutex> lock(state_->mu);
  if (state_->receiving == receiving) return;
  state_->receiving = receiving;
  if (!receiving) {
    // An accept held here would wait for a socket only this agent could
    // hand it, and this agent hands none any more. EINTR, not ECONNABORTED:
    // no connection was lost, and a blocking accept() retries EINTR by
    // itself (Python, Go, Java, libuv, Rust's std), while many servers take
    // ECONNABORTED as fatal (Python raises ConnectionAbortedError). The
    // retry reaches the agent that answers now.
    for (auto& [id, w] : state_->workloads) {
      if (w->removed) continue;
      size_t answered = 0;
      for (auto& [port, p] : w->ports) {
        for (const internal::HeldAccept& h : p.held) {
          (void)w->listener.RespondError(h.notification.id, EINTR);
          ++answered;
        }
        p.held.clear();
      }
      if (answered > 0) {
        internal::LogZeroHop(spdlog::level::info, "zerohop_held_accepts_released", *w,
                             {{"accepts", absl::StrCat(answered)},
                              {"reason", "this agent stopped taking notifications"}});
      }
    }
  }
  LogEvent(spdlog::level::info,
           {{"event", receiving ? "zerohop_receiving" : "zerohop_not_receiving"},
            {"listeners", state_->workloads.size()}});
  state_->Wake();
}

void Supervisor::Stop() {
  std::thread thread;
  {
    std::unique_lock<std::mutex> lock(state_->mu);
    if (state_->stopping && !state_->thread.joinable()) return;
    state_->stopping = true;
    for (auto& [id, w] : state_->workloads) state_->RemoveLocked(*w, "the supervisor stopped");
    state_->workloads.clear();
    state_->Wake();
    thread = std::move(state_->thread);
  }
  if (thread.joinable()) thread.join();
}

}  // namespace ktrust::zerohop
