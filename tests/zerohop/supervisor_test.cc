// The supervisor against real programs under the zero-hop filter: curl,
// python3 -m http.server, small python epoll/blocking servers. The handshake
// is a fake that connects the application's socket in place (this host has
// no kTLS; the real handshake is the engine's); inbound sockets are plain TCP
// connections the test accepts on a listener of its own and delivers, as
// the agent's inbound listener would after a handshake.
//
// Needs root (pidfd_getfd on the workload is PTRACE_MODE_ATTACH; the
// doorbell's SO_MARK needs CAP_NET_ADMIN, though no mark is set here: no
// ktrust eBPF is loaded, so nothing steers the doorbell away).
#include "ktrust/zerohop/supervisor.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "ktrust/common/log.h"
#include "unit/zerohop/filtered_child.h"

namespace ktrust::zerohop {
namespace {

using ::testing::HasSubstr;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Polls a program's output file for `text` (the program is another process:
// there is no event to wait on but its output).
bool WaitForText(const std::string& path, const std::string& text,
                 absl::Duration timeout = kTestTimeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (ReadAll(path).find(text) != std::string::npos) return true;
    usleep(10000);
  }
  return false;
}

template <typename F>
bool WaitUntil(F condition, absl::Duration timeout = kTestTimeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    usleep(5000);
  }
  return condition();
}

uint16_t FreePort() {
  absl::StatusOr<TestListener> l = ListenOnLoopback(AF_INET);
  return l.ok() ? l->address.port() : 0;
}

// A program under the filter with its output in a file.
struct Workload {
  std::unique_ptr<FilteredChild> child;
  std::string output;
};

Workload Launch(std::vector<std::string> argv,
                FilteredChild::Signals signals = FilteredChild::Signals::kHeld) {
  static std::atomic<int> counter{0};
  // Debian's interpreter, not whatever PATH finds first: a pyenv shim (a
  // bash script that forks pyenv) took 2 s to start, past kTestTimeout
  // under load.
  if (argv[0] == "python3" && access("/usr/bin/python3", X_OK) == 0) argv[0] = "/usr/bin/python3";
  Workload w;
  w.output = absl::StrCat(testing::TempDir(), "/zh_supervisor_", getpid(), "_", counter++, ".out");
  std::string out = w.output;
  absl::StatusOr<std::unique_ptr<FilteredChild>> child = FilteredChild::Start(
      [argv, out](const ChildChannel&) {
        int fd = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        std::vector<char*> args;
        for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        execvp(args[0], args.data());
        _exit(127);
      },
      signals);
  EXPECT_TRUE(child.ok()) << child.status();
  if (child.ok()) w.child = std::move(*child);
  return w;
}

// The fake handshake: connects the application's socket in place and
// reports the kernel's verdict, from a thread of its own like the engine.
struct FakeHandshake {
  std::atomic<int> calls{0};
  // >0: report this errno after connecting anyway (a refused identity).
  int fail_with = 0;
  absl::Duration delay = absl::ZeroDuration();
  bool never_done = false;
  std::vector<std::thread> threads;
  std::mutex mu;
  std::vector<std::function<void(OutboundOutcome)>> parked;

  void operator()(UniqueFd socket, SocketAddress destination,
                  std::function<void(OutboundOutcome)> done) {
    ++calls;
    std::lock_guard<std::mutex> lock(mu);
    if (never_done) {
      parked.push_back(std::move(done));
      threads.emplace_back([s = std::move(socket)] {});
      return;
    }
    threads.emplace_back([this, s = std::move(socket), destination, done] {
      OutboundOutcome outcome;
      if (connect(s.get(), destination.get(), destination.size()) != 0 && errno != EINPROGRESS) {
        outcome.error = errno;
      } else {
        pollfd p{s.get(), POLLOUT, 0};
        if (poll(&p, 1, 5000) != 1) {
          outcome.error = ETIMEDOUT;
        } else {
          int err = 0;
          socklen_t len = sizeof(err);
          getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &len);
          outcome.error = err;
        }
      }
      absl::SleepFor(delay);
      if (outcome.error == 0 && fail_with != 0) {
        outcome.error = fail_with;
        outcome.reason = "test: the server's identity is not allowed";
      }
      done(outcome);
    });
  }
  ~FakeHandshake() {
    for (auto& t : threads) t.join();
  }
};

struct Harness {
  Harness() { SetUpLogging(spdlog::level::debug, LogFormat::kText); }
  Supervisor supervisor;
  FakeHandshake handshake;
  std::atomic<int> removed{0};

  uint64_t Add(Workload& w, std::function<bool(const SocketAddress&)> is_mesh, bool inbound = true,
               bool outbound = true) {
    return AddListener(std::move(w.child->listener()), std::move(is_mesh), inbound, outbound);
  }
  uint64_t AddListener(NotificationListener listener,
                       std::function<bool(const SocketAddress&)> is_mesh, bool inbound = true,
                       bool outbound = true) {
    WorkloadHooks hooks;
    hooks.workload = "test";
    hooks.is_mesh = std::move(is_mesh);
    hooks.handshake = [this](UniqueFd s, SocketAddress d,
                             std::function<void(OutboundOutcome)> done) {
      handshake(std::move(s), d, std::move(done));
    };
    hooks.on_removed = [this](const ListenerStatus& last, const std::string&) {
      std::lock_guard<std::mutex> lock(mu);
      final_counters = last.counters;
      ++removed;
    };
    AddOptions options;
    options.wait_killable_recv = true;
    options.inbound = inbound;
    options.outbound = outbound;
    return supervisor.Add(std::move(listener), std::move(hooks), options);
  }
  // The first listener's counters, live or as it was removed (a workload
  // that exited is dropped at once).
  SupervisorCounters Counters() {
    std::vector<ListenerStatus> all = supervisor.Status();
    if (!all.empty()) return all[0].counters;
    WaitUntil([&] { return removed.load() > 0; });
    std::lock_guard<std::mutex> lock(mu);
    return final_counters;
  }
  std::mutex mu;
  SupervisorCounters final_counters;
  size_t Held() {
    size_t n = 0;
    for (const ListenerStatus& s : supervisor.Status())
      for (const PortStatus& p : s.ports) n += p.held_accepts;
    return n;
  }
};

// An HTTP server outside the filter: the destination of outbound tests.
struct HttpServer {
  pid_t pid = -1;
  uint16_t port = 0;
  HttpServer() {
    port = FreePort();
    pid = fork();
    if (pid == 0) {
      int null = open("/dev/null", O_WRONLY);
      dup2(null, 1);
      dup2(null, 2);
      execlp("python3", "python3", "-m", "http.server", "--bind", "127.0.0.1",
             std::to_string(port).c_str(), nullptr);
      _exit(127);
    }
    // Ready when it accepts a connection.
    WaitUntil([&] {
      int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(port);
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      bool ok = connect(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
      close(s);
      return ok;
    });
  }
  ~HttpServer() {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
};

int ExitCode(Workload& w) {
  absl::StatusOr<int> st = w.child->Wait();
  if (!st.ok()) return -1;
  return WIFEXITED(*st) ? WEXITSTATUS(*st) : 128 + WTERMSIG(*st);
}

TEST(SupervisorOutbound, CurlGetsHttp200ThroughInPlaceConnect) {
  HttpServer server;
  Workload w = Launch({"curl", "-s", "-o", "/dev/null", "-w", "code=%{http_code}\n",
                       absl::StrCat("http://127.0.0.1:", server.port, "/")});
  Harness h;
  h.Add(w, [&](const SocketAddress& a) { return a.port() == server.port; });
  EXPECT_EQ(ExitCode(w), 0) << ReadAll(w.output);
  EXPECT_THAT(ReadAll(w.output), HasSubstr("code=200"));
  EXPECT_EQ(h.handshake.calls.load(), 1);
  EXPECT_EQ(h.Counters().connects_zero_hop, 1u);
}

TEST(SupervisorOutbound, BlockingClientConnectsInPlaceAndKeepsBlocking) {
  HttpServer server;
  Workload w =
      Launch({"python3", "-c",
              absl::StrCat("import socket,fcntl,os\n"
                           "s=socket.socket()\n"
                           "s.connect(('127.0.0.1',",
                           server.port,
                           "))\n"
                           "print('nonblocking' if fcntl.fcntl(s,fcntl.F_GETFL)&os.O_NONBLOCK "
                           "else 'blocking')\n"
                           "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
                           "print(s.recv(12).decode())\n")});
  Harness h;
  h.Add(w, [&](const SocketAddress& a) { return a.port() == server.port; });
  EXPECT_EQ(ExitCode(w), 0) << ReadAll(w.output);
  std::string out = ReadAll(w.output);
  EXPECT_THAT(out, HasSubstr("blocking\nHTTP/1.0 200"));
  EXPECT_EQ(h.handshake.calls.load(), 1);
}

TEST(SupervisorOutbound, NonMeshDestinationContinuesWithoutHandshake) {
  HttpServer server;
  Workload w = Launch({"curl", "-s", "-o", "/dev/null", "-w", "code=%{http_code}\n",
                       absl::StrCat("http://127.0.0.1:", server.port, "/")});
  Harness h;
  h.Add(w, [](const SocketAddress&) { return false; });
  EXPECT_EQ(ExitCode(w), 0) << ReadAll(w.output);
  EXPECT_THAT(ReadAll(w.output), HasSubstr("code=200"));
  EXPECT_EQ(h.handshake.calls.load(), 0);
  EXPECT_GE(h.Counters().connects_continued, 1u);
}

TEST(SupervisorOutbound, FailedHandshakeRefusesConnectAndDestinationGetsNoBytes) {
  absl::StatusOr<TestListener> dest = ListenOnLoopback(AF_INET);
  ASSERT_TRUE(dest.ok());
  Workload w = Launch({"python3", "-c",
                       absl::StrCat("import socket\n"
                                    "s=socket.socket()\n"
                                    "try:\n"
                                    "  s.connect(('127.0.0.1',",
                                    dest->address.port(),
                                    "))\n"
                                    "  print('connected')\n"
                                    "except OSError as e:\n"
                                    "  print('errno', e.errno)\n"
                                    "try: s.sendall(b'SECRET')\n"
                                    "except OSError as e: print('send', e.errno)\n")});
  Harness h;
  h.handshake.fail_with = ECONNREFUSED;
  h.Add(w, [](const SocketAddress&) { return true; });
  // The handshake did connect (the server's identity was refused after).
  absl::StatusOr<UniqueFd> conn = AcceptWithin(dest->fd.get());
  ASSERT_TRUE(conn.ok()) << conn.status();
  EXPECT_EQ(ExitCode(w), 0) << ReadAll(w.output);
  EXPECT_THAT(ReadAll(w.output), HasSubstr(absl::StrCat("errno ", ECONNREFUSED)));
  EXPECT_THAT(ReadAll(w.output), ::testing::Not(HasSubstr("connected")));
  char buf[64];
  ssize_t n = recv(conn->get(), buf, sizeof(buf), 0);
  EXPECT_LE(n, 0) << "the destination received application bytes";
  EXPECT_EQ(h.Counters().connects_failed, 1u);
}

TEST(SupervisorOutbound, ReenteredConnectIsHandshakenOnce) {
  absl::StatusOr<TestListener> dest = ListenOnLoopback(AF_INET);
  ASSERT_TRUE(dest.ok());
  SocketAddress target = dest->address;
  // Without WAIT_KILLABLE_RECV a SA_RESTART signal restarts the connect as
  // a new notification while the first is in its handshake.
  absl::StatusOr<std::unique_ptr<FilteredChild>> child = FilteredChild::Start(
      [target](const ChildChannel& channel) {
        struct sigaction sa {};
        sa.sa_handler = [](int) {};
        sa.sa_flags = SA_RESTART;
        sigaction(SIGALRM, &sa, nullptr);
        itimerval t{};
        t.it_value.tv_usec = 100000;
        setitimer(ITIMER_REAL, &t, nullptr);
        int s = socket(AF_INET, SOCK_STREAM, 0);
        int rc = connect(s, target.get(), target.size());
        channel.Report(rc == 0 ? 0 : errno);
      },
      FilteredChild::Signals::kSignalsInterrupt);
  ASSERT_TRUE(child.ok()) << child.status();
  Workload w{std::move(*child), ""};
  Harness h;
  h.handshake.delay = absl::Milliseconds(600);
  h.Add(w, [](const SocketAddress&) { return true; });
  absl::StatusOr<int64_t> result = w.child->NextReport();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, 0);
  EXPECT_EQ(h.handshake.calls.load(), 1);
  EXPECT_GE(h.Counters().connects_reentered, 1u);
  EXPECT_EQ(h.Counters().connects_zero_hop, 1u);
}

// ---- inbound ----

// An epoll server: logs every accepted peer ("ACCEPT port"), echoes one
// message per connection. mode "lt": one accept per wakeup; "et": accept
// until EAGAIN.
constexpr char kEpollServer[] = R"(
import socket, select, sys
mode, port = sys.argv[1], int(sys.argv[2])
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(('127.0.0.1', port)); l.listen(16); l.setblocking(False)
ep = select.epoll()
ep.register(l.fileno(), select.EPOLLIN | (select.EPOLLET if mode == 'et' else 0))
print('READY', flush=True)
eagain = 0
while True:
    for fd, ev in ep.poll():
        while True:
            try:
                c, peer = l.accept()
            except BlockingIOError:
                eagain += 1
                print('EAGAIN', eagain, flush=True)
                break
            print('ACCEPT', peer[1], flush=True)
            c.setblocking(True)
            data = c.recv(100)
            c.sendall(b'echo:' + data)
            c.close()
            if mode == 'lt':
                break
)";

// Clients connect to the test's "agent" listener; each accepted one is
// delivered to `port` of the workload. Returns the delivered peers' ports.
std::vector<UniqueFd> DeliverClients(Harness& h, uint64_t id, TestListener& agent, uint16_t port,
                                     int count, std::set<uint16_t>* peers) {
  std::vector<UniqueFd> clients;
  for (int i = 0; i < count; ++i) {
    UniqueFd c(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    EXPECT_EQ(connect(c.get(), agent.address.get(), agent.address.size()), 0);
    absl::StatusOr<UniqueFd> s = AcceptWithin(agent.fd.get());
    EXPECT_TRUE(s.ok());
    if (!s.ok()) continue;
    absl::StatusOr<SocketAddress> peer = SocketAddress::PeerOf(s->get());
    absl::StatusOr<SocketAddress> local = SocketAddress::Parse(absl::StrCat("127.0.0.1:", port));
    peers->insert(peer->port());
    UniqueFd fd = std::move(*s);
    DeliverResult r = h.supervisor.Deliver(id, fd, *local, *peer);
    EXPECT_TRUE(r == DeliverResult::kQueued || r == DeliverResult::kAccepted);
    clients.push_back(std::move(c));
  }
  return clients;
}

void ExpectEcho(std::vector<UniqueFd>& clients) {
  for (UniqueFd& c : clients) {
    timeval tv = absl::ToTimeval(kTestTimeout);
    setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ASSERT_EQ(send(c.get(), "hi", 2, MSG_NOSIGNAL), 2);
    char buf[16] = {};
    ssize_t n = recv(c.get(), buf, sizeof(buf), MSG_WAITALL);
    EXPECT_EQ(std::string(buf, n > 0 ? n : 0), "echo:hi");
  }
}

std::set<uint16_t> AcceptedPorts(const std::string& output) {
  std::set<uint16_t> ports;
  for (absl::string_view line : absl::StrSplit(output, '\n')) {
    uint32_t p;
    if (absl::ConsumePrefix(&line, "ACCEPT ") && absl::SimpleAtoi(line, &p)) ports.insert(p);
  }
  return ports;
}

class SupervisorInboundEpoll : public ::testing::TestWithParam<const char*> {};

TEST_P(SupervisorInboundEpoll, ServerAcceptsExactlyTheDeliveredConnections) {
  uint16_t port = FreePort();
  Workload w = Launch({"python3", "-c", kEpollServer, GetParam(), std::to_string(port)});
  Harness h;
  uint64_t id = h.Add(w, [](const SocketAddress&) { return false; });
  ASSERT_TRUE(WaitForText(w.output, "READY")) << ReadAll(w.output);
  absl::StatusOr<TestListener> agent = ListenOnLoopback(AF_INET);
  ASSERT_TRUE(agent.ok());
  std::set<uint16_t> delivered;
  // Two rounds: the second needs a fresh wakeup after the first drained.
  for (int round = 0; round < 2; ++round) {
    std::vector<UniqueFd> clients = DeliverClients(h, id, *agent, port, 5, &delivered);
    ExpectEcho(clients);
  }
  ASSERT_TRUE(WaitUntil([&] { return AcceptedPorts(ReadAll(w.output)).size() >= 10; }));
  EXPECT_EQ(AcceptedPorts(ReadAll(w.output)), delivered)
      << "the application accepted something that was not delivered (a doorbell?)\n"
      << ReadAll(w.output);
  SupervisorCounters c = h.Counters();
  EXPECT_EQ(c.accepts_delivered, 10u);
  EXPECT_EQ(c.accepts_direct, 0u);
  EXPECT_GE(c.doorbells_rung, 2u);
  EXPECT_TRUE(
      WaitUntil([&] { return h.Counters().doorbells_drained == h.Counters().doorbells_rung; }));
}

INSTANTIATE_TEST_SUITE_P(Modes, SupervisorInboundEpoll, ::testing::Values("lt", "et"));

// Disabled: http.server logs "GET / 200" for the delivered connection but
// curl receives 0 bytes and times out; not understood yet (the epoll servers
// echo through the same path). See the report of the supervisor package.
// http.server on 127.0.0.1, and on :: (its default: dual-stack), where an
// IPv4 doorbell's source reads back as ::ffff:127.0.0.x.
void HttpServerServesDeliveredCurl(const std::string& bind) {
  uint16_t port = FreePort();
  Workload w = Launch({"python3", "-m", "http.server", "--bind", bind, std::to_string(port)});
  Harness h;
  uint64_t id = h.Add(w, [](const SocketAddress&) { return false; });
  ASSERT_TRUE(WaitUntil([&] {
    return system(absl::StrCat("ss -Htln 'sport = :", port, "' | grep -q LISTEN").c_str()) == 0;
  }));
  absl::StatusOr<TestListener> agent = ListenOnLoopback(AF_INET);
  ASSERT_TRUE(agent.ok());
  for (int i = 0; i < 3; ++i) {
    std::string out = absl::StrCat(testing::TempDir(), "/zh_curl_", getpid(), "_", i);
    std::thread curl([&] {
      EXPECT_EQ(system(absl::StrCat("curl -sv -m 5 -o /dev/null -w '%{http_code}' http://",
                                    agent->address.ToString(), "/ > ", out, " 2>", out, ".err")
                           .c_str()),
                0);
    });
    absl::StatusOr<UniqueFd> s = AcceptWithin(agent->fd.get());
    ASSERT_TRUE(s.ok());
    absl::StatusOr<SocketAddress> peer = SocketAddress::PeerOf(s->get());
    absl::StatusOr<SocketAddress> local = SocketAddress::Parse(absl::StrCat("127.0.0.1:", port));
    UniqueFd fd = std::move(*s);
    DeliverResult r = h.supervisor.Deliver(id, fd, *local, *peer);
    EXPECT_NE(r, DeliverResult::kNotZeroHop);
    curl.join();
    EXPECT_EQ(ReadAll(out), "200");
  }
  EXPECT_EQ(h.Counters().accepts_delivered, 3u);
  EXPECT_EQ(h.Counters().accepts_direct, 0u);
}

TEST(SupervisorInbound, HttpServerServesDeliveredCurl) {
  HttpServerServesDeliveredCurl("127.0.0.1");
}

TEST(SupervisorInbound, DualStackHttpServerServesDeliveredIpv4Curl) {
  HttpServerServesDeliveredCurl("::");
}

// A connection the kernel queued on the application's listener itself (one
// the agent proxied, or a port ktrust does not enforce) is the
// application's: served, never reset as a stranger. Both a select-then-accept
// server and a bare blocking accept (held by the supervisor) get it.
TEST(SupervisorInbound, ConnectionsQueuedDirectlyOnTheListenerReachTheApplication) {
  uint16_t port = FreePort();
  Workload http =
      Launch({"python3", "-m", "http.server", "--bind", "127.0.0.1", std::to_string(port)});
  uint16_t blocking_port = FreePort();
  Workload blocking =
      Launch({"python3", "-c",
              absl::StrCat("import socket\n"
                           "l=socket.socket(); l.bind(('127.0.0.1',",
                           blocking_port,
                           ")); l.listen(4)\n"
                           "print('LISTENING', flush=True)\n"
                           "c,peer=l.accept(); c.sendall(b'direct'); c.close()\n")});
  Harness h;
  h.Add(http, [](const SocketAddress&) { return false; });
  h.Add(blocking, [](const SocketAddress&) { return false; });
  ASSERT_TRUE(WaitUntil([&] {
    return system(absl::StrCat("ss -Htln 'sport = :", port, "' | grep -q LISTEN").c_str()) == 0;
  }));
  std::string out = absl::StrCat(testing::TempDir(), "/zh_direct_", getpid());
  EXPECT_EQ(system(absl::StrCat("curl -s -m 10 -o /dev/null -w '%{http_code}' http://127.0.0.1:",
                                port, "/ > ", out)
                       .c_str()),
            0);
  EXPECT_EQ(ReadAll(out), "200");
  EXPECT_EQ(h.Counters().accepts_direct, 1u) << "http.server's listener is the first added";

  ASSERT_TRUE(WaitUntil([&] { return h.Held() == 1; }));
  std::string got = absl::StrCat(testing::TempDir(), "/zh_direct_blocking_", getpid());
  EXPECT_EQ(
      system(absl::StrCat("curl -s -m 10 telnet://127.0.0.1:", blocking_port, " </dev/null > ", got)
                 .c_str()),
      0);
  EXPECT_EQ(ReadAll(got), "direct");
  EXPECT_EQ(ExitCode(blocking), 0) << ReadAll(blocking.output);
}

TEST(SupervisorInbound, NonBlockingAcceptWithNothingReadyGetsEagain) {
  Workload w = Launch({"python3", "-c",
                       "import socket\n"
                       "l=socket.socket(); l.bind(('127.0.0.1',0)); l.listen(4)\n"
                       "l.setblocking(False)\n"
                       "try:\n  l.accept(); print('accepted')\n"
                       "except BlockingIOError: print('EAGAIN')\n"});
  Harness h;
  h.Add(w, [](const SocketAddress&) { return false; });
  EXPECT_EQ(ExitCode(w), 0);
  EXPECT_EQ(ReadAll(w.output), "EAGAIN\n");
  EXPECT_EQ(h.Counters().accepts_eagain, 1u);
}

TEST(SupervisorInbound, HeldBlockingAcceptReturnsEintrForASignalThenAcceptsDelivered) {
  uint16_t port = FreePort();
  Workload w = Launch(
      {"python3", "-c",
       absl::StrCat("import socket,signal,time\n"
                    "signal.signal(signal.SIGUSR1, lambda *a: print('HANDLER', flush=True))\n"
                    "l=socket.socket(); l.bind(('127.0.0.1',",
                    port,
                    ")); l.listen(4)\n"
                    "c,peer=l.accept()\n"
                    "print('ACCEPT', peer[1], flush=True)\n")});
  Harness h;
  uint64_t id = h.Add(w, [](const SocketAddress&) { return false; });
  ASSERT_TRUE(WaitUntil([&] { return h.Held() == 1; }));
  auto start = absl::Now();
  ASSERT_EQ(kill(w.child->pid(), SIGUSR1), 0);
  ASSERT_TRUE(WaitForText(w.output, "HANDLER"));
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(300));
  EXPECT_EQ(h.Counters().accepts_interrupted, 1u);
  // Python retries the accept after the handler (PEP 475): held again.
  ASSERT_TRUE(WaitUntil([&] { return h.Held() == 1; }));
  absl::StatusOr<TestListener> agent = ListenOnLoopback(AF_INET);
  ASSERT_TRUE(agent.ok());
  std::set<uint16_t> delivered;
  std::vector<UniqueFd> clients = DeliverClients(h, id, *agent, port, 1, &delivered);
  EXPECT_EQ(ExitCode(w), 0);
  EXPECT_EQ(AcceptedPorts(ReadAll(w.output)), delivered) << ReadAll(w.output);
  EXPECT_EQ(h.Counters().doorbells_rung, 0u);  // answered directly
}

TEST(SupervisorInbound, DeliverToAWorkloadWithoutInboundIsRefused) {
  Workload w = Launch({"sleep", "5"});
  Harness h;
  uint64_t id = h.Add(
      w, [](const SocketAddress&) { return false; }, /*inbound=*/false);
  UniqueFd s(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  int raw = s.get();
  absl::StatusOr<SocketAddress> a = SocketAddress::Parse("127.0.0.1:1");
  EXPECT_EQ(h.supervisor.Deliver(id, s, *a, *a), DeliverResult::kNotZeroHop);
  EXPECT_EQ(s.get(), raw) << "the socket must stay with the caller";
}

TEST(SupervisorLifecycle, WorkloadExitRemovesListener) {
  Workload w = Launch({"true"});
  Harness h;
  h.Add(w, [](const SocketAddress&) { return false; });
  EXPECT_EQ(ExitCode(w), 0);
  EXPECT_TRUE(WaitUntil([&] { return h.removed.load() == 1; }));
  EXPECT_TRUE(h.supervisor.Status().empty());
}

TEST(SupervisorLifecycle, StopAnswersHeldAcceptsAndPendingHandshakes) {
  absl::StatusOr<TestListener> dest = ListenOnLoopback(AF_INET);
  ASSERT_TRUE(dest.ok());
  Workload acceptor = Launch({"python3", "-c",
                              "import socket\n"
                              "l=socket.socket(); l.bind(('127.0.0.1',0)); l.listen(4)\n"
                              "try: l.accept()\n"
                              "except OSError as e: print('accept errno', e.errno)\n"});
  Workload connector = Launch({"python3", "-c",
                               absl::StrCat("import socket\n"
                                            "s=socket.socket()\n"
                                            "try: s.connect(('127.0.0.1',",
                                            dest->address.port(),
                                            "))\n"
                                            "except OSError as e: print('connect errno', "
                                            "e.errno)\n")});
  Harness h;
  h.handshake.never_done = true;
  h.Add(acceptor, [](const SocketAddress&) { return false; });
  h.Add(connector, [](const SocketAddress&) { return true; });
  ASSERT_TRUE(WaitUntil([&] { return h.Held() == 1 && h.handshake.calls.load() == 1; }));
  h.supervisor.Stop();
  EXPECT_EQ(ExitCode(acceptor), 0);
  EXPECT_EQ(ExitCode(connector), 0);
  EXPECT_EQ(ReadAll(acceptor.output), absl::StrCat("accept errno ", ECONNABORTED, "\n"));
  EXPECT_EQ(ReadAll(connector.output), absl::StrCat("connect errno ", ECONNREFUSED, "\n"));
  // A late done after Stop does nothing (and does not crash).
  for (auto& done : h.handshake.parked) done(OutboundOutcome{});
}

// A handover: both agents hold the workload's listener; the old one stops
// taking notifications once its successor serves. What it holds finishes
// there (a connect in its handshake connects; a held accept is answered
// EINTR, which a blocking accept retries by itself, and the retry reaches
// the successor), and every notification after that goes to the successor.
// The acceptor is a naive server: any error from accept() ends it.
TEST(SupervisorLifecycle, AnAgentThatStopsReceivingLeavesTheRestToTheOther) {
  absl::StatusOr<TestListener> dest = ListenOnLoopback(AF_INET);
  ASSERT_TRUE(dest.ok());
  uint16_t port = FreePort();
  Workload acceptor =
      Launch({"python3", "-c",
              absl::StrCat("import socket\n"
                           "l=socket.socket(); l.bind(('127.0.0.1',",
                           port,
                           ")); l.listen(4)\n"
                           "c,peer=l.accept(); print('ACCEPT', peer[1], flush=True)\n")});
  Workload connector = Launch(
      {"python3", "-c",
       absl::StrCat("import socket\n"
                    "for i in range(2):\n"
                    "  s=socket.socket()\n"
                    "  try: s.connect(('127.0.0.1',",
                    dest->address.port(),
                    ")); print('connected', flush=True)\n"
                    "  except OSError as e: print('connect errno', e.errno, flush=True)\n")});
  auto dup_of = [](Workload& w) {
    auto l =
        NotificationListener::Create(UniqueFd(fcntl(w.child->listener().fd(), F_DUPFD_CLOEXEC, 0)));
    EXPECT_TRUE(l.ok()) << l.status();
    return *std::move(l);
  };
  NotificationListener successor_acceptor = dup_of(acceptor);
  NotificationListener successor_connector = dup_of(connector);
  Harness old_agent;
  old_agent.handshake.delay = absl::Milliseconds(500);
  old_agent.Add(acceptor, [](const SocketAddress&) { return false; });
  old_agent.Add(connector, [](const SocketAddress&) { return true; });
  ASSERT_TRUE(
      WaitUntil([&] { return old_agent.Held() == 1 && old_agent.handshake.calls.load() == 1; }));
  old_agent.supervisor.SetReceiving(false);
  // The held accept is answered at once; the retry waits for whoever
  // receives.
  ASSERT_TRUE(WaitUntil([&] { return old_agent.Held() == 0; })) << "the held accept was answered";
  Harness successor;
  uint64_t accepting = successor.AddListener(std::move(successor_acceptor),
                                             [](const SocketAddress&) { return false; });
  successor.AddListener(std::move(successor_connector), [](const SocketAddress&) { return true; });
  EXPECT_EQ(ExitCode(connector), 0);
  EXPECT_EQ(ReadAll(connector.output), "connected\nconnected\n")
      << "the first connect finished in the old agent's handshake";
  EXPECT_EQ(old_agent.handshake.calls.load(), 1) << "the old agent took no new connect";
  EXPECT_EQ(successor.handshake.calls.load(), 1) << "the successor took the second";
  ASSERT_TRUE(WaitUntil([&] { return successor.Held() == 1; }))
      << "the retried accept is the successor's";
  EXPECT_EQ(old_agent.Held(), 0u);
  absl::StatusOr<TestListener> agent = ListenOnLoopback(AF_INET);
  ASSERT_TRUE(agent.ok());
  std::set<uint16_t> delivered;
  std::vector<UniqueFd> clients = DeliverClients(successor, accepting, *agent, port, 1, &delivered);
  EXPECT_EQ(ExitCode(acceptor), 0);
  EXPECT_EQ(AcceptedPorts(ReadAll(acceptor.output)), delivered) << ReadAll(acceptor.output);
  // Taking them again (a successor that went away) works as before.
  old_agent.supervisor.SetReceiving(true);
}

}  // namespace
}  // namespace ktrust::zerohop
