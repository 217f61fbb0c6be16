// The zero-hop fd holder for real (root): `ktrustd holder` with `ktrust exec`
// and runc registering, HolderClient as the agent, real seccomp
// notifications answered through the listeners the holder hands out.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "ktrust/common/files.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/zerohop/holder_client.h"
#include "ktrust/zerohop/holder_protocol.h"
#include "ktrust/zerohop/notify.h"
#include "ktrust/zerohop/proc_mem.h"

namespace ktrust::zerohop {
namespace {

constexpr absl::Duration kTimeout = absl::Seconds(10);
constexpr char kPython[] = "/usr/bin/python3";

struct Child {
  pid_t pid = -1;
  UniqueFd in;   // its stdin, if asked for
  UniqueFd out;  // its stdout+stderr, if asked for
};

Child Spawn(const std::vector<std::string>& argv, bool pipe_in, bool pipe_out) {
  int in[2] = {-1, -1}, out[2] = {-1, -1};
  if (pipe_in) {
    EXPECT_EQ(::pipe2(in, O_CLOEXEC), 0);
  }
  if (pipe_out) {
    EXPECT_EQ(::pipe2(out, O_CLOEXEC), 0);
  }
  pid_t pid = ::fork();
  if (pid == 0) {
    if (pipe_in) ::dup2(in[0], 0);
    if (pipe_out) {
      ::dup2(out[1], 1);
      ::dup2(out[1], 2);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  Child c;
  c.pid = pid;
  if (pipe_in) {
    ::close(in[0]);
    c.in.Reset(in[1]);
  }
  if (pipe_out) {
    ::close(out[1]);
    c.out.Reset(out[0]);
  }
  return c;
}

// The exit code, or 128+signal.
int Wait(pid_t pid) {
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string ReadAll(int fd) {
  std::string s;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) s.append(buf, static_cast<size_t>(n));
  return s;
}

std::string RunCommand(const std::vector<std::string>& argv, int* code) {
  Child c = Spawn(argv, false, true);
  std::string out = ReadAll(c.out.get());
  *code = Wait(c.pid);
  return out;
}

UniqueFd TcpListener(uint16_t* port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  EXPECT_EQ(::listen(fd.get(), 8), 0);
  socklen_t len = sizeof(a);
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return fd;
}

// What the peer accepted on `listener` sent, within kTimeout.
std::string AcceptAndRead(int listener) {
  pollfd p{listener, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(kTimeout))) != 1) return "";
  UniqueFd c(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
  return ReadAll(c.get());
}

// Answers every notification with Continue until a connect to `port` on
// loopback was among them; returns the pid that made it (0 if none).
pid_t ContinueUntilConnectTo(const NotificationListener& l, uint16_t port) {
  for (int i = 0; i < 64; ++i) {
    if (!l.WaitReadable(kTimeout).ok()) return 0;
    auto n = l.Receive();
    if (!n.ok()) continue;
    bool ours = false;
    if (n->syscall_nr == SYS_connect) {
      auto target = ReadConnectTarget(l, *n);
      ours = target.ok() && target->is_inet() && target->address->port() == port;
    }
    EXPECT_TRUE(l.Continue(n->id).ok());
    if (ours) return n->pid;
  }
  return 0;
}

ListenerRegistration ExpectEntry(const HolderClient& c) {
  auto m = c.Receive(kTimeout);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return {};
  auto* reg = std::get_if<ListenerRegistration>(&*m);
  EXPECT_NE(reg, nullptr) << "a removal arrived instead of an entry";
  return reg ? std::move(*reg) : ListenerRegistration{};
}

uint64_t ExpectRemoval(const HolderClient& c) {
  auto m = c.Receive(kTimeout);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return 0;
  auto* r = std::get_if<ListenerRemoval>(&*m);
  EXPECT_NE(r, nullptr) << "an entry arrived instead of a removal";
  return r ? r->id : 0;
}

std::string CgroupOfPid(pid_t pid) {
  auto text = ReadFile(absl::StrCat("/proc/", pid, "/cgroup"));
  if (!text.ok()) return "";
  return ParseCgroupV2(*text).value_or("");
}

size_t OpenFds(pid_t pid) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e :
       std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"))) {
    ++n;
  }
  return n;
}

class ZeroHopHolderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::geteuid(), 0u) << "the holder tests run as root (integration tier)";
    char tmpl[] = "/tmp/ktrust-zh-holder-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ::chmod(dir_.c_str(), 0755);  // nobody must reach the registration socket
    sock_dir_ = dir_ + "/run";
    reg_sock_ = sock_dir_ + "/" + kRegistrationSocketName;
    agent_sock_ = sock_dir_ + "/" + kAgentSocketName;
    oci_sock_ = sock_dir_ + "/" + kOciSocketName;
    StartHolder();
  }
  void TearDown() override {
    StopHolder();
    if (HasFailure()) {
      for (const auto& line : log_) std::cerr << "holder: " << line << "\n";
    }
    std::filesystem::remove_all(dir_);
  }

  void StartHolder() {
    holder_ = Spawn({KTRUSTD_BIN, "holder", "--socket-dir", sock_dir_}, false, true);
    reader_ = std::thread([this, fd = holder_.out.get()] {
      std::string partial;
      char buf[4096];
      ssize_t n;
      while ((n = ::read(fd, buf, sizeof(buf))) > 0) {
        std::lock_guard<std::mutex> lock(mu_);
        partial.append(buf, static_cast<size_t>(n));
        size_t nl;
        while ((nl = partial.find('\n')) != std::string::npos) {
          log_.push_back(partial.substr(0, nl));
          partial.erase(0, nl + 1);
        }
        cv_.notify_all();
      }
    });
    ASSERT_TRUE(WaitLog("\"holder_ready\"")) << "the holder did not start";
  }
  void StopHolder() {
    if (holder_.pid > 0) {
      ::kill(holder_.pid, SIGTERM);
      Wait(holder_.pid);
      holder_.pid = -1;
    }
    if (reader_.joinable()) reader_.join();
  }

  // Waits for a holder log line containing every one of `parts`.
  bool WaitLog(std::initializer_list<std::string> parts) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] {
      for (const auto& line : log_) {
        bool all = true;
        for (const auto& p : parts) all = all && absl::StrContains(line, p);
        if (all) return true;
      }
      return false;
    });
  }
  bool WaitLog(const std::string& part) { return WaitLog({part}); }
  bool LogHas(const std::string& part) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& line : log_) {
      if (absl::StrContains(line, part)) return true;
    }
    return false;
  }

  // `ktrust exec` of a python script that reads stdin to its end, then
  // connects to 127.0.0.1:`port` and sends "hello".
  Child ExecConnector(uint16_t port) {
    std::string script = absl::StrCat(
        "import socket,sys\nsys.stdin.read()\n"
        "s=socket.create_connection(('127.0.0.1',",
        port, "))\ns.sendall(b'hello')\ns.close()\n");
    return Spawn({KTRUST_BIN, "exec", "--workload", "web", "--holder-socket", reg_sock_, "--",
                  kPython, "-c", script},
                 true, false);
  }

  std::string dir_, sock_dir_, reg_sock_, agent_sock_, oci_sock_;
  Child holder_;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> log_;
};

// The main path: a workload started with `ktrust exec` registers; the agent
// receives its listener and answers its connect through it; the workload's
// exit removes the entry.
TEST_F(ZeroHopHolderTest, ExecRegistersAndTheAgentAnswersItsConnects) {
  auto agent = HolderClient::Connect(agent_sock_);
  ASSERT_TRUE(agent.ok()) << agent.status();
  uint16_t port = 0;
  UniqueFd server = TcpListener(&port);
  Child w = ExecConnector(port);

  ListenerRegistration e = ExpectEntry(*agent);
  EXPECT_EQ(e.source, ListenerSource::kExec);
  EXPECT_EQ(e.pid, w.pid) << "ktrust exec registers itself, the process it becomes";
  EXPECT_EQ(e.workload_hint, "web");
  EXPECT_TRUE(e.wait_killable_recv);
  EXPECT_EQ(e.cgroup, CgroupOfPid(w.pid));
  EXPECT_TRUE(e.pidfd.valid());
  auto listener = NotificationListener::Create(std::move(e.listener));
  ASSERT_TRUE(listener.ok()) << listener.status();

  w.in.Reset();  // go: the workload connects
  EXPECT_EQ(ContinueUntilConnectTo(*listener, port), w.pid);
  EXPECT_EQ(AcceptAndRead(server.get()), "hello");
  EXPECT_EQ(Wait(w.pid), 0);
  EXPECT_EQ(ExpectRemoval(*agent), e.id);
}

// Agents that connect after the registration get the entry; several agents
// (an upgrade) each get all; an agent that goes away (a crash) leaves the
// listener with the holder, and the next agent answers the connect that
// waited meanwhile: the workload never sees ENOSYS.
TEST_F(ZeroHopHolderTest, EntriesOutliveAgentsAndReachEveryAgent) {
  uint16_t port = 0;
  UniqueFd server = TcpListener(&port);
  Child w = ExecConnector(port);
  ASSERT_TRUE(WaitLog({"zerohop_listener_registered", absl::StrCat("\"pid\":", w.pid)}));

  auto first = HolderClient::Connect(agent_sock_);
  ASSERT_TRUE(first.ok()) << first.status();
  ListenerRegistration a = ExpectEntry(*first);
  EXPECT_EQ(a.pid, w.pid);
  auto second = HolderClient::Connect(agent_sock_);
  ASSERT_TRUE(second.ok()) << second.status();
  ListenerRegistration b = ExpectEntry(*second);
  EXPECT_EQ(b.id, a.id);
  EXPECT_EQ(b.pid, w.pid);

  // The first agent crashes, with its copy of the listener.
  a = ListenerRegistration{};
  first = absl::UnavailableError("crashed");
  ASSERT_TRUE(WaitLog("holder_agent_disconnected"));

  w.in.Reset();  // the workload connects while no first agent exists
  auto restarted = HolderClient::Connect(agent_sock_);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  ListenerRegistration r = ExpectEntry(*restarted);
  EXPECT_EQ(r.id, b.id);
  auto listener = NotificationListener::Create(std::move(r.listener));
  ASSERT_TRUE(listener.ok());
  EXPECT_EQ(ContinueUntilConnectTo(*listener, port), w.pid);
  EXPECT_EQ(AcceptAndRead(server.get()), "hello");
  EXPECT_EQ(Wait(w.pid), 0) << "the workload's connect failed";
  EXPECT_EQ(ExpectRemoval(*restarted), b.id);
  EXPECT_EQ(ExpectRemoval(*second), b.id);
}

// Design D8: a received notification is never delivered again, so an agent
// that dies while a workload's connect or accept waits for it (a handshake,
// a held accept) would leave that thread waiting for ever. The agent tells
// the holder which ones wait (HolderJournal); when its connection ends the
// holder answers those with a failure the workload can retry. One the agent
// answered itself is not answered twice, and one it never said it held
// stays for the next agent.
TEST_F(ZeroHopHolderTest, AnAgentThatDiesLeavesItsWaitingConnectsAndAcceptsAnswered) {
  auto agent = HolderClient::Connect(agent_sock_);
  ASSERT_TRUE(agent.ok()) << agent.status();
  auto journal = std::make_shared<HolderJournal>();
  journal->Connect(UniqueFd(::fcntl(agent->fd(), F_DUPFD_CLOEXEC, 0)));
  uint16_t answered_port = 0, held_port = 0, unheld_port = 0;
  UniqueFd answered_server = TcpListener(&answered_port);
  UniqueFd held_server = TcpListener(&held_port);
  UniqueFd unheld_server = TcpListener(&unheld_port);
  // Three threads connect, the main thread accepts; each prints its result.
  std::string script = absl::StrCat(R"PY(
import errno, socket, sys, threading
sys.stdin.read()
def connect(port, tag):
    try:
        socket.create_connection(('127.0.0.1', port)).close()
        print(tag, 'ok', flush=True)
    except OSError as e:
        print(tag, errno.errorcode.get(e.errno, e.errno), flush=True)
threads = [threading.Thread(target=connect, args=a)
           for a in ((int(sys.argv[1]), 'answered'), (int(sys.argv[2]), 'held'),
                     (int(sys.argv[3]), 'unheld'))]
l = socket.socket()
l.bind(('127.0.0.1', 0))
l.listen()
for t in threads: t.start()
try:
    l.accept()
    print('accept ok', flush=True)
except OSError as e:
    print('accept', errno.errorcode.get(e.errno, e.errno), flush=True)
for t in threads: t.join()
)PY");
  Child w = Spawn({KTRUST_BIN, "exec", "--workload", "web", "--holder-socket", reg_sock_, "--",
                   kPython, "-c", script, std::to_string(answered_port), std::to_string(held_port),
                   std::to_string(unheld_port)},
                  true, true);
  ListenerRegistration e = ExpectEntry(*agent);
  ASSERT_EQ(e.pid, w.pid);
  auto listener = NotificationListener::Create(std::move(e.listener));
  ASSERT_TRUE(listener.ok()) << listener.status();
  listener->JournalTo(journal, e.id);
  w.in.Reset();  // go

  // Receive the three connects and the accept; anything else continues.
  std::optional<uint64_t> unheld_id;
  int seen = 0;
  for (int i = 0; i < 64 && seen < 4; ++i) {
    ASSERT_TRUE(listener->WaitReadable(kTimeout).ok()) << "the workload did not notify";
    auto n = listener->Receive();
    if (!n.ok()) continue;
    if (n->syscall_nr == SYS_accept || n->syscall_nr == SYS_accept4) {
      listener->Hold(n->id, ECONNABORTED);  // a blocking accept the agent holds
      ++seen;
      continue;
    }
    uint16_t port = 0;
    if (n->syscall_nr == SYS_connect) {
      auto target = ReadConnectTarget(*listener, *n);
      if (target.ok() && target->is_inet()) port = target->address->port();
    }
    if (port == answered_port) {
      listener->Hold(n->id, ECONNREFUSED);
      ASSERT_TRUE(listener->Continue(n->id).ok());  // answered while the agent lives
      ++seen;
    } else if (port == held_port) {
      listener->Hold(n->id, ECONNREFUSED);  // in handshake when the agent dies
      ++seen;
    } else if (port == unheld_port) {
      unheld_id = n->id;  // received, never said to be held
      ++seen;
    } else {
      ASSERT_TRUE(listener->Continue(n->id).ok());
    }
  }
  ASSERT_EQ(seen, 4);
  EXPECT_EQ(journal->held(), 2u) << "the held connect and the held accept";
  ASSERT_TRUE(unheld_id.has_value());

  // The agent dies: its holder connection and its copy of the listener go.
  journal->Connect(UniqueFd());
  agent = absl::UnavailableError("killed");
  listener = absl::UnavailableError("killed");
  EXPECT_TRUE(WaitLog({"holder_answered_held", "\"held\":2", "\"answered\":2"}));

  // The next agent finds the unheld connect still waiting, and answers it.
  auto next = HolderClient::Connect(agent_sock_);
  ASSERT_TRUE(next.ok()) << next.status();
  ListenerRegistration r = ExpectEntry(*next);
  EXPECT_EQ(r.id, e.id);
  auto again = NotificationListener::Create(std::move(r.listener));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->IdValid(*unheld_id).ok()) << "the holder answered one nobody held";
  ASSERT_TRUE(again->Continue(*unheld_id).ok());

  // Every thread of the workload returned, with what it was told.
  pollfd p{w.out.get(), POLLIN, 0};
  std::string out;
  absl::Time deadline = absl::Now() + kTimeout;
  while (absl::Now() < deadline) {
    if (::poll(&p, 1, 100) != 1) continue;
    char buf[512];
    ssize_t k = ::read(w.out.get(), buf, sizeof(buf));
    if (k <= 0) break;
    out.append(buf, static_cast<size_t>(k));
  }
  if (absl::Now() >= deadline) ::kill(w.pid, SIGKILL);
  EXPECT_EQ(Wait(w.pid), 0) << out;
  EXPECT_TRUE(absl::StrContains(out, "answered ok")) << out;
  EXPECT_TRUE(absl::StrContains(out, "held ECONNREFUSED")) << out;
  EXPECT_TRUE(absl::StrContains(out, "accept ECONNABORTED")) << out;
  EXPECT_TRUE(absl::StrContains(out, "unheld ok")) << out;
}

// A local unprivileged user cannot attach a listener to another process:
// the pid must be the registering process's own.
TEST_F(ZeroHopHolderTest, RefusesAPidThatIsNotTheSender) {
  auto agent = HolderClient::Connect(agent_sock_);
  ASSERT_TRUE(agent.ok());
  Child victim = Spawn({"/bin/sleep", "30"}, false, false);
  int code = 0;
  std::string out =
      RunCommand({"/usr/bin/setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                  REGISTER_HELPER_BIN, reg_sock_, std::to_string(victim.pid)},
                 &code);
  EXPECT_EQ(code, 0) << out;
  EXPECT_TRUE(absl::StrContains(out, "\"ok\":false")) << out;
  EXPECT_TRUE(absl::StrContains(out, "is not the registering process")) << out;
  EXPECT_TRUE(WaitLog({"zerohop_registration_refused", "\"peer_uid\":65534"}));
  ::kill(victim.pid, SIGKILL);
  Wait(victim.pid);

  // Nothing reached the agent: the next message is the next registration.
  uint16_t port = 0;
  UniqueFd server = TcpListener(&port);
  Child w = ExecConnector(port);
  ListenerRegistration e = ExpectEntry(*agent);
  EXPECT_EQ(e.pid, w.pid);
  w.in.Reset();
  auto listener = NotificationListener::Create(std::move(e.listener));
  ASSERT_TRUE(listener.ok());
  EXPECT_EQ(ContinueUntilConnectTo(*listener, port), w.pid);
  EXPECT_EQ(Wait(w.pid), 0);
}

// Anything but a well-formed registration with a seccomp listener is
// refused with a reason, its fds closed, and the holder keeps serving.
TEST_F(ZeroHopHolderTest, RefusesOtherFdsAndGarbageWithoutLeakingOrCrashing) {
  auto agent = HolderClient::Connect(agent_sock_);
  ASSERT_TRUE(agent.ok());
  ASSERT_TRUE(WaitLog("holder_agent_connected"));  // its connection counted in the baseline
  size_t fds_before = OpenFds(holder_.pid);
  std::string script = R"PY(
import json, os, random, socket, sys
path = sys.argv[1]
def send(data, fds=()):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    socket.send_fds(s, [data], list(fds)) if fds else s.send(data)
    s.settimeout(10)
    r = s.recv(4096)
    print(r.decode())
    s.close()
    return r
me = os.getpid()
r, w = os.pipe()
reg = json.dumps({"v": 1, "pid": me}).encode()
out = []
out.append(send(reg, [r]))                       # a pipe, not a listener
out.append(send(reg))                            # no fd at all
out.append(send(reg, [r, w]))                    # two fds
out.append(send(reg, [r] * 12))                  # more fds than allowed
out.append(send(b"x" * 5000, [r]))               # longer than allowed
out.append(send(b"\x00\xff{not json", [r]))
out.append(send(json.dumps({"v": 2, "pid": me}).encode(), [r]))
out.append(send(json.dumps({"v": 1, "pid": "1"}).encode(), [r]))
out.append(send(json.dumps({"v": 1, "pid": me, "flags": ["bogus"]}).encode(), [r]))
out.append(send(json.dumps({"v": 1, "pid": me, "workload_hint": "a\nb"}).encode(), [r]))
out.append(send(b"[1,2,3]", [r]))
rnd = random.Random(11)
for i in range(200):
    out.append(send(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300))),
                    [r] if i % 2 else []))
bad = [x for x in out if not x.startswith(b'{"ok":false,"error":')]
print("NOT REFUSED:", bad) if bad else print("ALL REFUSED", len(out))
)PY";
  int code = 0;
  std::string out = RunCommand({kPython, "-c", script, reg_sock_}, &code);
  EXPECT_EQ(code, 0) << out;
  EXPECT_TRUE(absl::StrContains(out, "ALL REFUSED 211")) << out;
  EXPECT_TRUE(absl::StrContains(out, "not a seccomp listener (it is pipe:")) << out;
  EXPECT_TRUE(absl::StrContains(out, "longer than 4096 bytes")) << out;
  EXPECT_TRUE(absl::StrContains(out, "more than 8 fds")) << out;

  // Still serving, and nothing of the above reached the agent.
  uint16_t port = 0;
  UniqueFd server = TcpListener(&port);
  Child w = ExecConnector(port);
  ListenerRegistration e = ExpectEntry(*agent);
  EXPECT_EQ(e.pid, w.pid);
  w.in.Reset();
  auto listener = NotificationListener::Create(std::move(e.listener));
  ASSERT_TRUE(listener.ok());
  EXPECT_EQ(ContinueUntilConnectTo(*listener, port), w.pid);
  EXPECT_EQ(Wait(w.pid), 0);
  // Once the holder has dropped that entry, it holds exactly what it held
  // before the garbage: every fd of every refused message was closed.
  EXPECT_EQ(ExpectRemoval(*agent), e.id);
  EXPECT_EQ(OpenFds(holder_.pid), fds_before) << "the holder kept fds of refused messages";
}

// A client that connects and sends nothing is timed out; it does not hold
// up anyone else's registration meanwhile.
TEST_F(ZeroHopHolderTest, ASilentClientDoesNotDelayOthers) {
  auto agent = HolderClient::Connect(agent_sock_);
  ASSERT_TRUE(agent.ok());
  UniqueFd silent(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, reg_sock_.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(::connect(silent.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  uint16_t port = 0;
  UniqueFd server = TcpListener(&port);
  absl::Time start = absl::Now();
  Child w = ExecConnector(port);
  ListenerRegistration e = ExpectEntry(*agent);
  EXPECT_EQ(e.pid, w.pid);
  EXPECT_LT(absl::Now() - start, absl::Seconds(4)) << "waited for the silent client's timeout";
  w.in.Reset();
  auto listener = NotificationListener::Create(std::move(e.listener));
  ASSERT_TRUE(listener.ok());
  EXPECT_EQ(ContinueUntilConnectTo(*listener, port), w.pid);
  EXPECT_EQ(Wait(w.pid), 0);
  // The silent one is told why and disconnected.
  pollfd p{silent.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 10000), 1);
  char buf[512] = {};
  ASSERT_GT(::recv(silent.get(), buf, sizeof(buf) - 1, 0), 0);
  EXPECT_TRUE(absl::StrContains(buf, "no registration arrived in time")) << buf;
}

// The agent socket is root's: an unprivileged user gets no listener.
TEST_F(ZeroHopHolderTest, AgentSocketRefusesOtherUsers) {
  int code = 0;
  std::string out = RunCommand(
      {"/usr/bin/setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", kPython, "-c",
       "import socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_SEQPACKET)\n"
       "s.connect(sys.argv[1])",
       agent_sock_},
      &code);
  EXPECT_NE(code, 0);
  EXPECT_TRUE(absl::StrContains(out, "PermissionError")) << out;
}

// Without a holder to take the listener the command must not run: its
// connects would fail with ENOSYS.
TEST_F(ZeroHopHolderTest, ExecWithoutAHolderDoesNotRunTheCommand) {
  std::string marker = dir_ + "/ran";
  int code = 0;
  std::string out = RunCommand({KTRUST_BIN, "exec", "--holder-socket", dir_ + "/absent.sock", "--",
                                "/bin/sh", "-c", "touch " + marker},
                               &code);
  EXPECT_EQ(code, 1) << out;
  EXPECT_TRUE(absl::StrContains(out, "cannot reach the ktrust holder")) << out;
  EXPECT_FALSE(std::filesystem::exists(marker));
}

// A holder that refuses: the same.
TEST_F(ZeroHopHolderTest, ExecRefusedByTheHolderDoesNotRunTheCommand) {
  std::string path = dir_ + "/refusing.sock";
  UniqueFd fake(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(::bind(fake.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fake.get(), 1), 0);
  std::thread refuser([&] {
    UniqueFd c(::accept4(fake.get(), nullptr, nullptr, SOCK_CLOEXEC));
    auto m = ReceiveWithFds(c.get(), 4096);
    EXPECT_TRUE(m.ok());
    EXPECT_EQ(m.ok() ? m->fds.size() : 0u, 1u) << "the listener was sent";
    (void)SendWithFds(c.get(), R"({"ok":false,"error":"test says no"})", {});
  });
  std::string marker = dir_ + "/ran";
  int code = 0;
  std::string out = RunCommand(
      {KTRUST_BIN, "exec", "--holder-socket", path, "--", "/bin/sh", "-c", "touch " + marker},
      &code);
  refuser.join();
  EXPECT_EQ(code, 1) << out;
  EXPECT_TRUE(absl::StrContains(out, "the holder refused the registration: test says no")) << out;
  EXPECT_FALSE(std::filesystem::exists(marker));
}

TEST_F(ZeroHopHolderTest, ExecRefusesAForeignArchitectureBinary) {
  std::string fake = dir_ + "/i386";
  {
    // An ELF header of a 32-bit x86 executable: what the filter would kill.
    std::string h(64, '\0');
    h.replace(0, 4,
              "\x7f"
              "ELF");
    h[4] = 1;  // ELFCLASS32
    h[5] = 1;  // little endian
    h[6] = 1;
    h[16] = 2;  // ET_EXEC
    h[18] = 3;  // EM_386
    std::ofstream(fake, std::ios::binary) << h;
    ::chmod(fake.c_str(), 0755);
  }
  int code = 0;
  std::string out =
      RunCommand({KTRUST_BIN, "exec", "--holder-socket", reg_sock_, "--", fake}, &code);
  EXPECT_EQ(code, 1) << out;
  EXPECT_TRUE(absl::StrContains(out, "native system call ABI")) << out;
  // It refused before connecting to the holder: nothing can be in flight.
  EXPECT_FALSE(LogHas("zerohop_listener_registered"));
}

// A container started by an unmodified runc with linux.seccomp.listenerPath
// pointing at the holder: received with the container's pid, cgroup and id,
// its connects answered by the agent, removed when it exits.
TEST_F(ZeroHopHolderTest, RuncListenerPathIsReceived) {
  auto agent = HolderClient::Connect(agent_sock_);
  ASSERT_TRUE(agent.ok());
  std::string bundle = dir_ + "/bundle";
  std::filesystem::create_directories(bundle + "/rootfs");
  uint16_t port = 0;
  UniqueFd server = TcpListener(&port);
  nlohmann::json config;
  {
    int code = 0;
    std::string out = RunCommand({"/usr/sbin/runc", "spec", "--bundle", bundle}, &code);
    ASSERT_EQ(code, 0) << out;
    std::ifstream in(bundle + "/config.json");
    config = nlohmann::json::parse(in);
  }
  config["root"] = {{"path", "rootfs"}, {"readonly", true}};
  config["process"].erase("rlimits");  // refused in this sandbox (ARCHITECTURE.md)
  config["process"]["terminal"] = false;
  config["process"]["args"] = {
      kPython, "-c",
      absl::StrCat("import socket\ns=socket.create_connection(('127.0.0.1',", port,
                   "))\ns.sendall(b'from-container')\ns.close()\n")};
  nlohmann::json mounts = nlohmann::json::array();
  for (auto& m : config["mounts"]) {
    if (m["type"] != "cgroup") mounts.push_back(m);  // the host's cgroupfs is a hybrid
  }
  for (const char* d : {"/usr", "/bin", "/lib", "/lib64", "/etc"}) {
    if (std::filesystem::exists(d)) {
      mounts.push_back(
          {{"destination", d}, {"type", "bind"}, {"source", d}, {"options", {"rbind", "ro"}}});
    }
  }
  config["mounts"] = mounts;
  // The host's network namespace, so the container reaches the test's server.
  nlohmann::json namespaces = nlohmann::json::array();
  for (auto& ns : config["linux"]["namespaces"]) {
    if (ns["type"] != "network") namespaces.push_back(ns);
  }
  config["linux"]["namespaces"] = namespaces;
  config["linux"]["seccomp"] = {
      {"defaultAction", "SCMP_ACT_ALLOW"},
      {"listenerPath", oci_sock_},
      {"listenerMetadata", "web-container"},
      {"architectures", {"SCMP_ARCH_X86_64"}},
      {"syscalls",
       {{{"names", {"connect", "accept", "accept4"}}, {"action", "SCMP_ACT_NOTIFY"}},
        {{"names", {"io_uring_setup"}}, {"action", "SCMP_ACT_ERRNO"}, {"errnoRet", 1}}}}};
  std::ofstream(bundle + "/config.json") << config.dump();

  std::string id = absl::StrCat("ktrust-zh-", ::getpid());
  std::string root = dir_ + "/runc";
  Child runc =
      Spawn({"/usr/sbin/runc", "--root", root, "run", "--bundle", bundle, id}, false, true);
  ListenerRegistration e = ExpectEntry(*agent);
  if (!e.listener.valid()) {
    ::kill(runc.pid, SIGKILL);
    FAIL() << "runc: " << ReadAll(runc.out.get());
  }
  EXPECT_EQ(e.source, ListenerSource::kOci);
  EXPECT_EQ(e.container_id, id);
  EXPECT_EQ(e.workload_hint, "web-container");
  EXPECT_FALSE(e.wait_killable_recv) << "runc 1.1.5 cannot set WAIT_KILLABLE_RECV";
  EXPECT_TRUE(absl::EndsWith(e.cgroup, "/" + id)) << e.cgroup;
  EXPECT_EQ(CgroupOfPid(e.pid), e.cgroup);  // alive: its connect waits for us
  auto listener = NotificationListener::Create(std::move(e.listener));
  ASSERT_TRUE(listener.ok());
  pid_t connecting = ContinueUntilConnectTo(*listener, port);
  EXPECT_EQ(connecting, e.pid) << "the container's process made the connect";
  EXPECT_EQ(AcceptAndRead(server.get()), "from-container");
  std::string out = ReadAll(runc.out.get());
  EXPECT_EQ(Wait(runc.pid), 0) << out;
  EXPECT_EQ(ExpectRemoval(*agent), e.id);
  int code = 0;
  RunCommand({"/usr/sbin/runc", "--root", root, "delete", "-f", id}, &code);
}

}  // namespace
}  // namespace ktrust::zerohop
