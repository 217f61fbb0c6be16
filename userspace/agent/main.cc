// ktrustd, the node agent.
//
//   ktrustd run --config /etc/ktrust/ktrustd.yaml   eBPF interception (docs/operations.md)
//   ktrustd uninstall [--pin-dir /sys/fs/bpf/ktrust] detach and unpin everything
//   ktrustd tunnel --identity DIR --outbound 127.0.0.1:15001=10.0.0.2:15006
//   ktrustd tunnel --identity DIR --inbound 0.0.0.0:15006=127.0.0.1:8080
//                  --allow 'spiffe://example.org/ns/prod/*'   static tunnels, no eBPF
//   ktrustd holder [--socket-dir /run/ktrust]       zero-hop fd holder (docs/dataplane.md)
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "ktrust/agent/agent.h"
#include "ktrust/agent/agent_control.h"
#include "ktrust/agent/allow_list_authorizer.h"
#include "ktrust/agent/handover.h"
#include "ktrust/common/log.h"
#include "ktrust/common/poll_timeout.h"
#include "ktrust/common/thread_name.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/control/metrics.h"
#include "ktrust/dataplane/engine.h"
#include "ktrust/identity/file_identity_source.h"
#include "ktrust/zerohop/holder.h"

namespace ktrust {
namespace {

struct TunnelFlags {
  std::string identity_dir;
  std::vector<std::string> outbound;
  std::vector<std::string> inbound;
  std::vector<std::string> allow;
  std::string expect_server;
  std::string data_path = "auto";
  std::string log_level = "info";
  int loops = 0;
  std::string workload = "tunnel";
  bool resumption = false;
};

// "LISTEN=TARGET" into two addresses.
absl::StatusOr<std::pair<SocketAddress, SocketAddress>> ParseMapping(const std::string& text) {
  std::vector<std::string> parts = absl::StrSplit(text, '=');
  if (parts.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", text, "\" should be LISTEN=TARGET, e.g. 127.0.0.1:15001=10.0.0.2:15006"));
  }
  auto listen = SocketAddress::Parse(parts[0]);
  if (!listen.ok()) return listen.status();
  auto target = SocketAddress::Parse(parts[1]);
  if (!target.ok()) return target.status();
  return std::make_pair(*listen, *target);
}

int Fail(const absl::Status& st) {
  LogEvent(spdlog::level::err, {{"event", "startup_failed"}, {"reason", st.message()}});
  return 1;
}

int RunTunnel(const TunnelFlags& f) {
  SetUpLogging(spdlog::level::from_str(f.log_level));
  // Block the stop signals before any thread starts, so only sigwait sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto source = FileIdentitySource::Create(f.identity_dir);
  if (!source.ok()) return Fail(source.status());
  auto current = (*source)->Current();
  auto trust = std::make_shared<TrustStore>();
  trust->Put(current->bundle);

  std::shared_ptr<FileIdentitySource> identity = *std::move(source);
  SvidProvider svid = [identity] {
    auto now = identity->Current();
    return std::shared_ptr<const Svid>(now, &now->svid);
  };

  std::optional<SpiffeIdPattern> expected;
  if (!f.expect_server.empty()) {
    auto pattern = SpiffeIdPattern::Parse(f.expect_server);
    if (!pattern.ok()) return Fail(pattern.status());
    expected = *pattern;
  }
  std::vector<OutboundListener> outbound;
  for (const auto& text : f.outbound) {
    auto m = ParseMapping(text);
    if (!m.ok()) return Fail(m.status());
    OutboundRoute route{m->second, f.workload, svid, expected};
    outbound.push_back({m->first, [route](int) -> absl::StatusOr<OutboundRoute> { return route; }});
  }
  std::vector<InboundListener> inbound;
  for (const auto& text : f.inbound) {
    auto m = ParseMapping(text);
    if (!m.ok()) return Fail(m.status());
    inbound.push_back({m->first, f.workload, svid, m->second});
  }
  std::vector<SpiffeIdPattern> allowed;
  for (const auto& text : f.allow) {
    auto pattern = SpiffeIdPattern::Parse(text);
    if (!pattern.ok()) return Fail(pattern.status());
    allowed.push_back(*pattern);
  }
  if (!inbound.empty() && allowed.empty()) {
    LogEvent(spdlog::level::warn, {{"event", "no_allow_rules"},
                                   {"reason", "no --allow given: every inbound client is denied"}});
  }

  EngineOptions options;
  options.loops = f.loops;
  options.data_path = f.data_path == "userspace" ? DataPathMode::kUserspace : DataPathMode::kAuto;
  options.tls.resumption = f.resumption;
  auto engine = Engine::Create(options, trust, std::make_shared<AllowListAuthorizer>(allowed),
                               std::move(outbound), std::move(inbound));
  if (!engine.ok()) return Fail(engine.status());
  if (auto st = (*engine)->Start(); !st.ok()) return Fail(st);

  // Identity files are re-read every few seconds; a new bundle applies to
  // new handshakes.
  identity->StartWatching(absl::Seconds(5));
  std::atomic<bool> stop{false};
  std::thread bundle_watcher([&] {
    uint64_t seen = identity->reloads();
    while (!stop.load()) {
      absl::SleepFor(absl::Seconds(1));
      if (identity->reloads() == seen) continue;
      seen = identity->reloads();
      auto next = std::make_shared<TrustStore>();
      next->Put(identity->Current()->bundle);
      (*engine)->SetTrustStore(next);
      LogEvent(spdlog::level::info,
               {{"event", "identity_reloaded"}, {"id", identity->Current()->svid.id().ToString()}});
    }
  });

  nlohmann::json ready = {{"event", "ready"},
                          {"id", current->svid.id().ToString()},
                          {"data_path", (*engine)->data_path()},
                          {"data_path_reason", (*engine)->data_path_reason()}};
  for (const auto& a : (*engine)->outbound_addresses()) ready["outbound"].push_back(a.ToString());
  for (const auto& a : (*engine)->inbound_addresses()) ready["inbound"].push_back(a.ToString());
  LogEvent(spdlog::level::info, ready);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  LogEvent(spdlog::level::info, {{"event", "stopping"}, {"signal", sigdescr_np(sig)}});
  stop.store(true);
  bundle_watcher.join();
  (*engine)->Stop();
  return 0;
}

// A stopping agent: accepts nothing more and carries its open connections
// until they end or agent.drain_timeout passes, then closes what is left,
// each with a log line. A SIGTERM or SIGINT beyond the one that stopped it
// ends the wait at once. One that hands over has not been told to stop yet:
// its supervisor's SIGTERM comes once the successor is ready (the kubelet
// deleting the old pod of a surge), and must not cut the drain short.
// SIGHUP is ignored (a reload would enrol and open listeners).
// `each_second`, if set, runs at the start and then about once a second
// (a handover moves what it can meanwhile).
void DrainThenEnd(Agent& agent, const sigset_t& signals, const std::string& reason,
                  bool told_to_stop, const std::function<void()>& each_second = nullptr) {
  agent.BeginDrain(reason, agent.config()->agent.drain_timeout);
  // Polled: the engine has no "last connection ended" signal, and a tenth
  // of a second is well under what any deadline here is measured in.
  timespec tick{0, 100 * 1000 * 1000};
  absl::Time next_second = absl::InfinitePast();
  while (!agent.Drained() && absl::Now() < agent.drain().deadline) {
    if (each_second && absl::Now() >= next_second) {
      each_second();
      next_second = absl::Now() + absl::Seconds(1);
      if (agent.Drained()) break;
    }
    int sig = sigtimedwait(&signals, nullptr, &tick);
    if ((sig == SIGINT || sig == SIGTERM) && !told_to_stop) {
      told_to_stop = true;
      LogEvent(spdlog::level::info,
               {{"event", "stopping"},
                {"signal", sigdescr_np(sig)},
                {"note",
                 "draining on until the connections end or the drain deadline; "
                 "another signal ends the wait at once"}});
      continue;
    }
    if (sig == SIGINT || sig == SIGTERM) {
      LogEvent(spdlog::level::warn, {{"event", "drain_cut_short"},
                                     {"signal", sigdescr_np(sig)},
                                     {"connections", agent.engine().counters().active.load()}});
      break;
    }
    if (sig == SIGHUP) {
      LogEvent(spdlog::level::warn,
               {{"event", "reload_ignored"}, {"reason", "the agent is draining"}});
    }
  }
  if (!agent.Drained()) {
    agent.EndDrain();
    // Each reset connection logs its line once its pending operations have
    // completed on its loop, which stopping the engine would cut short.
    absl::Time end = absl::Now() + absl::Seconds(2);
    while (!agent.Drained() && absl::Now() < end) absl::SleepFor(absl::Milliseconds(10));
  }
  DrainState drained = agent.drain();
  LogEvent(spdlog::level::info,
           {{"event", "drained"}, {"reason", reason}, {"moved", drained.moved}});
}

// A moved connection nobody can carry: logged, and both sockets reset
// (SO_LINGER 0), so that neither end mistakes the close for a whole stream.
void FailMovedConnection(DetachedConnection& c, const std::string& reason) {
  LogEvent(spdlog::level::warn, {{"event", "connection_failed"},
                                 {"id", c.meta.id},
                                 {"direction", DirectionName(c.meta.direction)},
                                 {"workload", c.meta.workload},
                                 {"result", "handover"},
                                 {"reason", reason}});
  linger reset{1, 0};
  for (UniqueFd* fd : {&c.app, &c.wire}) {
    setsockopt(fd->get(), SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
    fd->Reset();
  }
}

// A connection detached for a successor that stays here after all: carried
// on by this agent's engine, or, if even that fails, closed with a log line.
void KeepConnection(Agent& agent, DetachedConnection& c, const absl::Status& why) {
  // Adopting takes the connection (and its row): say which one first.
  const uint64_t id = c.meta.id;
  const std::string workload = c.meta.workload;
  absl::Status kept = agent.AdoptConnection(c, /*moved_in=*/false);
  if (kept.ok()) {
    LogEvent(spdlog::level::info, {{"event", "connection_kept"},
                                   {"id", id},
                                   {"workload", workload},
                                   {"reason", why.message()},
                                   {"note", "not moved: it drains here"}});
    return;
  }
  FailMovedConnection(c, absl::StrCat("it could not move (", why.message(),
                                      ") nor be carried on here (", kept.message(), ")"));
}

// Handover, the predecessor's side: every established connection whose
// sockets can move (kernel TLS or plain) goes to the successor, in batches.
// What it does not take stays here. False once moving has stopped for good
// (the successor declined one, or is gone).
bool MoveConnections(Agent& agent, HandoverServer& handover) {
  // A batch is paused (quiesced) while it moves: small enough that this
  // is a blink, large enough for few round trips through the loops.
  constexpr size_t kBatch = 64;
  // How long a stalled receiver may keep its pump's bytes before its
  // connection is left to drain here instead.
  constexpr absl::Duration kQuiesce = absl::Seconds(2);
  // How long the successor may take to answer one move.
  constexpr absl::Duration kAnswer = absl::Seconds(5);
  while (handover.can_move()) {
    std::vector<DetachedConnection> batch = agent.DetachForHandover(kBatch, kQuiesce);
    bool declined = false;
    for (DetachedConnection& c : batch) {
      absl::Status moved = handover.can_move() && !declined
                               ? handover.Move(c, kAnswer)
                               : absl::FailedPreconditionError("moving has stopped");
      if (!moved.ok()) {
        declined = true;
        KeepConnection(agent, c, moved);
        continue;
      }
      agent.CountMovedOut();
      LogEvent(spdlog::level::info, {{"event", "connection_moved"},
                                     {"id", c.meta.id},
                                     {"direction", DirectionName(c.meta.direction)},
                                     {"workload", c.meta.workload},
                                     {"peer_id", c.meta.info.peer_id},
                                     {"data_path", c.meta.info.data_path},
                                     {"bytes_to_wire", c.meta.bytes_to_wire},
                                     {"bytes_from_wire", c.meta.bytes_from_wire},
                                     {"note", "the successor carries it now"}});
      // Plain closes: the successor holds the sockets now.
      c.app.Reset();
      c.wire.Reset();
    }
    if (declined) return false;
    if (batch.size() < kBatch) return true;
  }
  return false;
}

// Handover, the predecessor's side: the zero-hop connections this agent
// made (the successor's journal load missed those made after it) go to
// the successor, which journals them; this agent forgets each batch it
// took. False once passing has stopped for good (declined, or no
// successor): the caller keeps them and rejoins the journal.
bool PassZeroHopConnections(Agent& agent, HandoverServer& handover) {
  constexpr absl::Duration kAnswer = absl::Seconds(5);
  for (std::vector<zerohop::ZeroHopConnection>& batch :
       ZeroHopBatches(agent.zero_hop().connections())) {
    absl::Status passed = handover.can_move()
                              ? handover.PassZeroHop(batch, kAnswer)
                              : absl::FailedPreconditionError("no successor to pass them to");
    if (!passed.ok()) {
      LogEvent(spdlog::level::warn, {{"event", "zero_hop_connections_kept"},
                                     {"connections", batch.size()},
                                     {"reason", passed.message()},
                                     {"note",
                                      "enforced here until this agent exits, and "
                                      "journaled for the agent after it"}});
      return false;
    }
    agent.zero_hop().MovedOut(batch);
  }
  return true;
}

// The agent's two watcher threads (interception events, cgroups), stopped
// while another agent may be writing the kernel's maps (a handover) and
// while draining.
class Watchers {
 public:
  explicit Watchers(Agent& agent) : agent_(agent) {}
  ~Watchers() { Stop(); }
  // False if the stop eventfd cannot be made (the threads could not be
  // stopped, so they are not started).
  bool Start() {
    if (events_.joinable()) return true;
    if (!wake_.valid()) return false;
    uint64_t count = 0;
    (void)!read(wake_.get(), &count, sizeof(count));  // a previous Stop's
    stop_.store(false);
    // Both threads sleep until their events come, or `wake_` says stop: an
    // idle agent's wake-ups cost CPU, under TCG a great deal.
    events_ = std::thread([this] {
      NameThisThread("ktrust-events");
      while (!stop_.load()) agent_.PollEvents(absl::InfiniteDuration(), wake_.get());
    });
    cgroups_ = std::thread([this] {
      NameThisThread("ktrust-cgroups");
      while (!stop_.load()) agent_.WatchCgroups(absl::InfiniteDuration(), wake_.get());
    });
    return true;
  }
  void Stop() {
    if (!events_.joinable()) return;
    stop_.store(true);
    uint64_t one = 1;
    (void)!write(wake_.get(), &one, sizeof(one));  // stays readable: wakes both
    events_.join();
    cgroups_.join();
  }
  bool running() const { return events_.joinable(); }

 private:
  Agent& agent_;
  std::atomic<bool> stop_{false};
  UniqueFd wake_{eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
  std::thread events_;
  std::thread cgroups_;
};

int RunAgent(const std::string& config_path) {
  // Loaded once: the log settings come from it, and the agent starts from it.
  // A successor whose file does not load stops here, before it touches the
  // running agent.
  auto loaded = LoadConfig(config_path);
  if (!loaded.ok()) {
    SetUpLogging(spdlog::level::info);
    return Fail(loaded.status());
  }
  auto config = std::make_shared<const Config>(*std::move(loaded));
  SetUpLogging(spdlog::level::from_str(config->agent.log_level),
               ParseLogFormat(config->agent.log_format).value_or(LogFormat::kJson));
  sigset_t signals;
  sigemptyset(&signals);
  for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&signals, s);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  UniqueFd signal_fd(signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!signal_fd.valid()) return Fail(absl::ErrnoToStatus(errno, "signalfd"));

  // An agent of this configuration running already: take over from it
  // (docs/operations.md, "Stopping and upgrading").
  const std::string handover_path = config->agent.handover_socket.empty()
                                        ? HandoverSocketPath(config->agent.control_socket)
                                        : config->agent.handover_socket;
  auto predecessor = HandoverClient::Connect(handover_path, absl::Seconds(10));
  if (!predecessor.ok()) return Fail(predecessor.status());
  if (*predecessor) {
    LogEvent(
        spdlog::level::info,
        {{"event", "taking_over"},
         {"predecessor_pid", (*predecessor)->predecessor()},
         {"note", "starting alongside the running agent; it hands over once this one serves"}});
  }

  AgentStats stats;
  auto agent = Agent::Start(config, config_path,
                            {[&stats](const ClosedConnection& c) { stats.ConnectionClosed(c); },
                             [&stats](const InterceptionEvent& e) { stats.Intercepted(e); }});
  if (!agent.ok()) return Fail(agent.status());
  std::string predecessor_status;
  if (*predecessor) {
    auto where = (*predecessor)->Started(absl::Seconds(30));
    if (!where.ok()) return Fail(where.status());
    predecessor_status = *where;
    // Tests kill a successor at this, the worst moment: it steered the
    // kernel to itself and holds the control socket, and is not ready.
    if (const char* stop = getenv("KTRUST_TEST_HANDOVER_STOP");
        stop && stop == std::string("started")) {
      LogEvent(spdlog::level::warn,
               {{"event", "test_handover_stop"},
                {"reason", "KTRUST_TEST_HANDOVER_STOP: stopped after started"}});
      raise(SIGSTOP);
    }
  }
  control::ControlServerOptions control_options{config->agent.control_socket,
                                                config->agent.control_group};
  std::unique_ptr<control::ControlServer> control;
  {
    auto started = control::ControlServer::Start(control_options, ControlHandlers(**agent, stats));
    if (!started.ok()) return Fail(started.status());
    control = *std::move(started);
  }
  // Metrics and probes are not worth refusing every enforced connection
  // for: if their address is taken (any local user can bind a TCP port),
  // the agent runs without them, says so, and tries again every tick.
  std::unique_ptr<control::HttpEndpoint> metrics;
  std::string metrics_problem;
  auto start_metrics = [&] {
    if (metrics || config->agent.metrics_address.empty()) return;
    Agent* a = agent->get();
    auto endpoint = control::HttpEndpoint::Start(config->agent.metrics_address,
                                                 {[a, &stats] { return RenderMetrics(*a, stats); },
                                                  [a]() -> std::pair<bool, std::string> {
                                                    return {a->ready(), a->not_ready_reason()};
                                                  }});
    if (endpoint.ok()) {
      metrics = *std::move(endpoint);
      if (!metrics_problem.empty()) {
        LogEvent(spdlog::level::info,
                 {{"event", "metrics_listening"}, {"address", config->agent.metrics_address}});
      }
      metrics_problem.clear();
      return;
    }
    std::string problem(endpoint.status().message());
    if (problem != metrics_problem) {
      LogEvent(spdlog::level::err,
               {{"event", "metrics_unavailable"},
                {"address", config->agent.metrics_address},
                {"reason", absl::StrCat(problem,
                                        "; /metrics, /healthz and /readyz are down, "
                                        "retrying every second")}});
    }
    metrics_problem = std::move(problem);
  };
  start_metrics();

  Watchers watchers(**agent);
  if (!watchers.Start()) return Fail(absl::ErrnoToStatus(errno, "eventfd for the watcher threads"));
  if (*predecessor) {
    if (auto st = (*predecessor)->Ready(); !st.ok()) return Fail(st);
    (*agent)->SetPredecessor(absl::StrCat("ktrustd pid ", (*predecessor)->predecessor(),
                                          " is draining; its status: ktrust --socket ",
                                          predecessor_status, " status"));
  }
  const Engine& engine = (*agent)->engine();
  nlohmann::json ready = {{"event", "ready"},
                          {"node", config->agent.node_name},
                          {"control_socket", config->agent.control_socket},
                          {"data_path", engine.data_path()},
                          {"data_path_reason", engine.data_path_reason()},
                          {"workloads", (*agent)->workloads().size()}};
  if (*predecessor) ready["predecessor_pid"] = (*predecessor)->predecessor();
  if (metrics) ready["metrics_port"] = metrics->port();
  for (const auto& a : engine.outbound_addresses()) ready["outbound"].push_back(a.ToString());
  for (const auto& a : engine.inbound_addresses()) ready["inbound"].push_back(a.ToString());
  LogEvent(spdlog::level::info, ready);

  // The predecessor's connections, as it moves them.
  HandoverClient::Adoption adoption;
  uint64_t taken = 0;
  // Tests stop a successor halfway through a move (moving:<n>): it holds
  // the sockets of the connection after its n-th, unanswered.
  std::optional<uint64_t> stop_after;
  if (const char* stop = getenv("KTRUST_TEST_HANDOVER_STOP")) {
    uint64_t n = 0;
    absl::string_view stage(stop);
    if (absl::ConsumePrefix(&stage, "moving:") && absl::SimpleAtoi(stage, &n)) {
      stop_after = n;
    }
  }
  adoption.check = [&](const DetachedConnection& c) {
    if (stop_after && taken == *stop_after) {
      LogEvent(spdlog::level::warn,
               {{"event", "test_handover_stop"},
                {"reason", absl::StrCat("KTRUST_TEST_HANDOVER_STOP: stopped holding moved "
                                        "connection ",
                                        c.meta.id, " after ", taken)}});
      raise(SIGSTOP);
    }
    return CheckMovedSockets(c.meta, c.app.get(), c.wire.get());
  };
  adoption.zero_hop = [&](std::vector<zerohop::ZeroHopConnection> connections) {
    return (*agent)->zero_hop().MoveIn(std::move(connections));
  };
  adoption.adopt = [&](DetachedConnection c) {
    ++taken;
    // Written before adopting, which takes the connection and its row.
    nlohmann::ordered_json moved_in = {
        {"event", "connection_moved_in"},
        {"predecessor_id", c.meta.id},
        {"direction", DirectionName(c.meta.direction)},
        {"workload", c.meta.workload},
        {"peer_id", c.meta.info.peer_id},
        {"data_path", c.meta.info.data_path},
        {"started", absl::FormatTime(absl::RFC3339_full, c.meta.started, absl::UTCTimeZone())}};
    absl::Status adopted = (*agent)->AdoptConnection(c, /*moved_in=*/true);
    if (!adopted.ok()) {
      // Ours since "yours", and this agent cannot carry it.
      FailMovedConnection(c, absl::StrCat("moved from the predecessor, and not carried on here: ",
                                          adopted.message()));
      return;
    }
    LogEvent(spdlog::level::info, moved_in);
  };

  // The handover socket, for the next agent. Bound once the predecessor
  // has let go of it (it does at "ready"): retried every tick until then.
  bool paused = false;  // a successor is starting: no enrolment, no map writes
  pid_t successor = 0;  // handed over to it: drain after the grace below
  absl::Time drain_at = absl::InfiniteFuture();
  std::unique_ptr<control::ControlServer> draining_control;
  HandoverServer::Hooks hooks;
  hooks.pause = [&](pid_t) {
    paused = true;
    watchers.Stop();
  };
  hooks.release = [&]() -> absl::StatusOr<std::string> {
    // The successor takes the control socket and the metrics address; this
    // agent's status stays reachable beside them while it drains.
    std::string path =
        absl::StrCat(std::filesystem::path(config->agent.control_socket).parent_path().string(),
                     "/control-", getpid(), ".sock");
    auto moved = control::ControlServer::Start({path, config->agent.control_group},
                                               ControlHandlers(**agent, stats));
    if (!moved.ok()) return moved.status();
    draining_control = *std::move(moved);
    control->Stop();
    control.reset();
    if (metrics) metrics->Stop();
    metrics.reset();
    return path;
  };
  hooks.resume = [&](const std::string&, bool released) {
    if (released) {
      auto back = control::ControlServer::Start(control_options, ControlHandlers(**agent, stats));
      if (back.ok()) {
        control = *std::move(back);
        draining_control.reset();
      } else {
        LogEvent(spdlog::level::err,
                 {{"event", "control_socket_not_restored"},
                  {"reason", back.status().message()},
                  {"note", absl::StrCat("the status stays at ", control_options.path)}});
      }
    }
    // It may have replaced the zero-hop journal with its own.
    (*agent)->zero_hop().RejoinJournal("the handover was aborted");
    // The successor may have pointed the kernel at its own listeners.
    if (auto st = (*agent)->RestoreSteering(); !st.ok()) {
      LogEvent(spdlog::level::err, {{"event", "steering_not_restored"}, {"reason", st.message()}});
    }
    paused = false;
    (void)watchers.Start();  // its eventfd exists: it started once already
  };
  hooks.handed_over = [&](pid_t pid) {
    successor = pid;
    // The successor answers every zero-hop notification now: what this
    // agent has made is then a finite set, passed on below.
    (*agent)->zero_hop().Yield();
    (*agent)->SetSuccessor(absl::StrCat("ktrustd pid ", pid, " serves new connections"));
    // Connections the kernel steered here just before the successor took
    // the steering may still be completing their TCP handshake on this
    // agent's listeners: keep accepting a moment for them.
    drain_at = absl::Now() + absl::Seconds(1);
  };
  std::unique_ptr<HandoverServer> handover;
  std::string handover_problem;
  auto listen_for_successor = [&] {
    if (handover) return;
    auto server = HandoverServer::Listen(handover_path, hooks);
    if (server.ok()) {
      handover = *std::move(server);
      return;
    }
    std::string problem(server.status().message());
    if (problem != handover_problem) {
      LogEvent(spdlog::level::info, {{"event", "handover_socket_unavailable"},
                                     {"path", handover_path},
                                     {"reason", absl::StrCat(problem, "; retrying every second")}});
    }
    handover_problem = std::move(problem);
  };
  listen_for_successor();

  std::string stop_reason = "SIGTERM";
  bool stop_requested = false;  // SIGTERM during a handover
  absl::Time next_tick = absl::Now();
  while (true) {
    absl::Time now = absl::Now();
    if (now >= drain_at) {
      stop_reason = absl::StrCat("handed over to ktrustd pid ", successor);
      break;
    }
    std::vector<pollfd> fds = {{signal_fd.get(), POLLIN, 0}};
    if (handover) {
      for (int fd : handover->fds()) fds.push_back({fd, POLLIN, 0});
    }
    if (*predecessor && !(*predecessor)->PredecessorGone()) {
      fds.push_back({(*predecessor)->fd(), POLLIN, 0});
    }
    // Rounded up: a wait under a millisecond truncated to 0 spun until the tick.
    ::poll(fds.data(), fds.size(), PollMilliseconds(std::min(next_tick, drain_at) - now));
    signalfd_siginfo info{};
    int sig = ::read(signal_fd.get(), &info, sizeof(info)) == sizeof(info)
                  ? static_cast<int>(info.ssi_signo)
                  : 0;
    if (sig == SIGHUP && !paused) {
      (void)(*agent)->Reload();  // a bad file is logged and kept out; never fatal
    }
    if (sig == SIGINT || sig == SIGTERM) {
      LogEvent(spdlog::level::info,
               {{"event", "stopping"},
                {"signal", sigdescr_np(sig)},
                {"note",
                 "the interception programs stay attached: enrolled workloads are "
                 "refused until ktrustd is back (ktrustd uninstall removes them)"}});
      // Mid-handover the successor is waiting for this agent: finish the
      // handover (or see it fail) first, unless told twice.
      if (!paused || stop_requested) break;
      stop_requested = true;
    }
    now = absl::Now();
    if (*predecessor) (*predecessor)->ServiceMoves(adoption);
    if (handover) handover->Service(now);
    if (stop_requested && !paused && successor == 0) break;  // the handover failed
    if (now < next_tick) continue;
    next_tick = now + absl::Seconds(1);
    if (*predecessor && (*predecessor)->PredecessorGone()) {
      LogEvent(spdlog::level::info,
               {{"event", "predecessor_exited"}, {"pid", (*predecessor)->predecessor()}});
      predecessor->reset();
      (*agent)->SetPredecessor("");
    }
    if (paused || successor != 0) continue;
    (*agent)->Maintain(now);
    start_metrics();
    listen_for_successor();
  }
  // Nothing changes the kernel's maps or reads its events while draining:
  // a successor may be doing so.
  watchers.Stop();
  // Handed over: what can move goes to the successor (again each second,
  // for connections that finish their handshake here meanwhile); the rest
  // drains here.
  bool moving = successor != 0;
  bool passing_zero_hop = successor != 0;
  // Passing stopped half-way: this agent's zero-hop connections stay its
  // own, journaled where the next agent reads; with no successor left to
  // answer the workloads' notifications, this agent answers them again.
  auto keep_zero_hop = [&](const std::string& why) {
    passing_zero_hop = false;
    if (!handover || !handover->can_move()) (*agent)->zero_hop().Resume();
    (*agent)->zero_hop().RejoinJournal(why);
  };
  DrainThenEnd(
      **agent, signals, stop_reason, /*told_to_stop=*/successor == 0 || stop_requested, [&] {
        if (moving && handover) moving = MoveConnections(**agent, *handover);
        if (passing_zero_hop &&
            !(handover && handover->can_move() && PassZeroHopConnections(**agent, *handover))) {
          keep_zero_hop("the successor did not take this agent's zero-hop connections");
        }
      });
  if (passing_zero_hop) {
    // A last pass once this agent answers nothing more (its handshakes in
    // flight are refused as at any stop), so none is made after it.
    (*agent)->zero_hop().Stop();
    if (!(handover && handover->can_move() && PassZeroHopConnections(**agent, *handover))) {
      keep_zero_hop("the successor did not take this agent's last zero-hop connections");
    }
  }
  if (metrics) metrics->Stop();
  if (control) control->Stop();
  draining_control.reset();
  handover.reset();
  agent->reset();
  return 0;
}

int RunUninstall(const std::string& pin_dir) {
  SetUpLogging(spdlog::level::info);
  if (auto st = UninstallAgent(pin_dir); !st.ok()) return Fail(st);
  LogEvent(spdlog::level::info, {{"event", "uninstalled"}, {"pin_dir", pin_dir}});
  return 0;
}

}  // namespace
}  // namespace ktrust

int main(int argc, char** argv) {
  CLI::App app{"ktrustd: the ktrust node agent"};
  app.require_subcommand(1);
  ktrust::TunnelFlags f;
  std::string config_path = "/etc/ktrust/ktrustd.yaml";
  CLI::App* run = app.add_subcommand("run", "Run the node agent with eBPF interception");
  run->add_option("--config", config_path, "The configuration file (docs/configuration.md)");
  std::string pin_dir = "/sys/fs/bpf/ktrust";
  CLI::App* uninstall =
      app.add_subcommand("uninstall", "Detach and unpin every program and map ktrustd installed");
  uninstall->add_option("--pin-dir", pin_dir, "The agent's bpffs directory");
  CLI::App* tunnel = app.add_subcommand("tunnel", "Run static mTLS tunnels (no interception)");
  tunnel->add_option("--identity", f.identity_dir, "Directory with tls.crt, tls.key, ca.crt")
      ->required();
  tunnel->add_option("--outbound", f.outbound, "LISTEN=DESTINATION: plaintext in, mTLS out");
  tunnel->add_option("--inbound", f.inbound, "LISTEN=APPLICATION: mTLS in, plaintext out");
  tunnel->add_option("--allow", f.allow, "SPIFFE ID or prefix pattern allowed inbound");
  tunnel->add_option("--expect-server", f.expect_server,
                     "SPIFFE ID pattern outbound servers must have");
  tunnel->add_option("--data-path", f.data_path, "auto (kTLS when available) or userspace")
      ->check(CLI::IsMember({"auto", "userspace"}));
  tunnel->add_option("--loops", f.loops, "Event-loop threads (default: one per core)");
  tunnel->add_flag("--resumption", f.resumption,
                   "TLS 1.3 session resumption with ktrust peers that have it on "
                   "(agent.tls_resumption)");
  tunnel->add_option("--workload", f.workload, "Name for logs and the connection table");
  tunnel->add_option("--log-level", f.log_level, "debug, info, warn or error")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}));
  std::string holder_dir = ktrust::zerohop::kDefaultHolderDir;
  CLI::App* holder = app.add_subcommand(
      "holder", "Keep zero-hop workloads' seccomp listeners across agent restarts");
  holder->add_option("--socket-dir", holder_dir, "Directory of the holder's sockets");
  holder->add_option("--log-level", f.log_level, "debug, info, warn or error")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "ktrustd: usage error: " << e.what() << "\n";
    return 2;
  }
  try {
    if (run->parsed()) return ktrust::RunAgent(config_path);
    if (uninstall->parsed()) return ktrust::RunUninstall(pin_dir);
    if (holder->parsed()) return ktrust::zerohop::RunHolderCommand(holder_dir, f.log_level);
  } catch (const std::exception& e) {
    std::cerr << "ktrustd: error: " << e.what() << "\n";
    return 1;
  }
  if (f.outbound.empty() && f.inbound.empty()) {
    std::cerr << "ktrustd: usage error: give at least one --outbound or --inbound\n";
    return 2;
  }
  try {
    return ktrust::RunTunnel(f);
  } catch (const std::exception& e) {
    std::cerr << "ktrustd: error: " << e.what() << "\n";
    return 1;
  }
}
