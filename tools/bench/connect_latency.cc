// connect_latency: what ktrust's cgroup programs add to connect() for
// workloads they do not intercept (tools/bench/README.md,
// "connect"; tools/bench/run.sh connect runs it).
//
// As root: mounts a private bpffs, creates a cgroup subtree
// <cgroup2>/ktrust-bench-<pid>/{plain,enrolled}, and forks one worker into
// each child cgroup. A worker times N blocking connect()s to a listener on
// 127.0.0.1 (created by this process outside the subtree, so only the
// connecting side is in it), accepting and resetting each connection before
// the next. Rounds alternate between programs detached (BpfLoader::Uninstall)
// and attached (BpfLoader::Create + AttachCgroup on the parent) in A/B/B/A
// order, so slow drift cancels. "enrolled" is enrolled in the maps, and
// 127.0.0.1 is outside the mesh (10.96.0.0/12): connect4 does the enrolment
// lookup, the settings lookup and the trie lookup and lets it pass. "plain"
// is classified as not enrolled, as the agent leaves it: one hash lookup. The CONNECT_NOT_MESH
// counter must grow by exactly N per attached enrolled batch and no counter may move for the plain
// one, so "attached" is checked to mean attached.
//
//   connect_latency [--rounds R] [--connects N] [--warmup W] [--cpu C] [--json FILE]
//
// Cleans up (workers, links, cgroups, the bpffs mount) on every exit path,
// including SIGINT/SIGTERM.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "ktrust/bpf/bpf_loader.h"
#include "ktrust/bpf/cgroup2.h"
#include "ktrust/common/ip_prefix.h"
#include "ktrust/common/log.h"
#include "ktrust/common/unique_fd.h"
#include "nlohmann/json.hpp"

namespace ktrust {
namespace {

volatile std::sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }

constexpr double kTargetAddedNs = 1000;  // the goal: under 1 µs added

struct Options {
  int rounds = 20;      // measured rounds; each has one batch per state and worker
  int connects = 2000;  // per batch
  int warmup = 2;       // rounds run first and discarded
  int cpu = -1;         // pin the workers to this CPU; -1: no pinning
  std::string json;
  // Diagnosis: keep only these cgroup programs attached (pin names:
  // connect4, sockops, ...); empty: all of them, as the agent runs.
  std::vector<std::string> only;
};

int64_t NowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

template <typename T>
T Quantile(std::vector<T> v, double q) {
  if (v.empty()) return T{};
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

// ------------------------------------------------------------------ workers

// One batch as a worker reports it across its pipe: plain data.
struct BatchResult {
  int64_t connect_p50_ns = 0;
  int64_t connect_p10_ns = 0;
  int64_t connect_p90_ns = 0;
  int64_t cycle_p50_ns = 0;  // socket() .. both ends closed
  int32_t errors = 0;
  int32_t first_errno = 0;
};

bool ReadFull(int fd, void* data, size_t size) {
  auto* p = static_cast<char*>(data);
  while (size > 0) {
    ssize_t n = read(fd, p, size);
    if (n < 0 && errno == EINTR) {
      if (g_stop) return false;
      continue;
    }
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

bool WriteFull(int fd, const void* data, size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// Runs in the forked worker, already in its cgroup: one batch per count read
// from cmd_fd, until a count of 0 or EOF. System calls only, apart from the
// vectors (the parent has no threads, so malloc is safe after fork).
int WorkerMain(int cmd_fd, int result_fd, int listen_fd, sockaddr_in to, int cpu) {
  if (cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0) return 3;
  }
  const linger reset{.l_onoff = 1, .l_linger = 0};
  const auto* addr = reinterpret_cast<const sockaddr*>(&to);
  for (;;) {
    uint32_t count = 0;
    if (!ReadFull(cmd_fd, &count, sizeof(count)) || count == 0) return 0;
    std::vector<int64_t> connect_ns, cycle_ns;
    connect_ns.reserve(count);
    cycle_ns.reserve(count);
    BatchResult result;
    for (uint32_t i = 0; i < count; ++i) {
      int64_t c0 = NowNs();
      int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) return 4;
      int64_t t0 = NowNs();
      int rc = connect(fd, addr, sizeof(to));
      int64_t t1 = NowNs();
      if (rc != 0) {
        if (result.errors++ == 0) result.first_errno = errno;
        close(fd);
        continue;
      }
      int accepted = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      // An RST instead of a FIN: no TIME_WAIT, so the ephemeral ports never
      // run out however many batches run.
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
      close(fd);
      if (accepted >= 0) close(accepted);
      int64_t c1 = NowNs();
      connect_ns.push_back(t1 - t0);
      cycle_ns.push_back(c1 - c0);
    }
    result.connect_p50_ns = Quantile(connect_ns, 0.5);
    result.connect_p10_ns = Quantile(connect_ns, 0.1);
    result.connect_p90_ns = Quantile(connect_ns, 0.9);
    result.cycle_p50_ns = Quantile(cycle_ns, 0.5);
    if (!WriteFull(result_fd, &result, sizeof(result))) return 5;
  }
}

struct Worker {
  std::string name;
  std::string cgroup;
  pid_t pid = -1;
  UniqueFd cmd;     // parent -> worker
  UniqueFd result;  // worker -> parent
};

// Forks a worker and moves it into its cgroup before it creates any socket.
absl::Status StartWorker(Worker& w, int listen_fd, const sockaddr_in& to, int cpu) {
  int cmd[2], res[2];
  if (pipe2(cmd, O_CLOEXEC) != 0) return absl::ErrnoToStatus(errno, "pipe2");
  if (pipe2(res, O_CLOEXEC) != 0) {
    close(cmd[0]);
    close(cmd[1]);
    return absl::ErrnoToStatus(errno, "pipe2");
  }
  pid_t pid = fork();
  if (pid < 0) return absl::ErrnoToStatus(errno, "fork");
  if (pid == 0) {
    // The parent stops the workers; a terminal's Ctrl-C is for the parent.
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    close(cmd[1]);
    close(res[0]);
    char go = 0;  // written once the parent has moved this process
    if (read(cmd[0], &go, 1) != 1) _exit(2);
    _exit(WorkerMain(cmd[0], res[1], listen_fd, to, cpu));
  }
  w.pid = pid;
  w.cmd.Reset(cmd[1]);
  w.result.Reset(res[0]);
  close(cmd[0]);
  close(res[1]);
  std::string procs = w.cgroup + "/cgroup.procs";
  UniqueFd fd(open(procs.c_str(), O_WRONLY | O_CLOEXEC));
  std::string text = std::to_string(pid);
  if (!fd.valid() || write(fd.get(), text.data(), text.size()) < 0) {
    return absl::ErrnoToStatus(errno, "moving the worker into " + procs);
  }
  char go = 1;
  if (!WriteFull(w.cmd.get(), &go, 1)) return absl::ErrnoToStatus(errno, "starting the worker");
  return absl::OkStatus();
}

absl::StatusOr<BatchResult> RunBatch(Worker& w, uint32_t count) {
  if (!WriteFull(w.cmd.get(), &count, sizeof(count))) {
    return absl::ErrnoToStatus(errno, absl::StrCat("commanding the ", w.name, " worker"));
  }
  BatchResult r;
  if (!ReadFull(w.result.get(), &r, sizeof(r))) {
    if (g_stop) return absl::CancelledError("interrupted");
    int status = 0;
    waitpid(w.pid, &status, WNOHANG);
    return absl::InternalError(
        absl::StrCat("the ", w.name, " worker died (wait status ", status, ")"));
  }
  return r;
}

// ------------------------------------------------------------------ environment

// Everything this run creates, torn down in reverse in the destructor.
struct Environment {
  std::string bpffs;                 // mount point, empty until mounted
  std::string cgroup_root;           // <cgroup2>/ktrust-bench-<pid>
  std::vector<std::string> cgroups;  // created, parent first
  Worker workers[2];
  std::unique_ptr<BpfLoader> loader;

  ~Environment() {
    for (Worker& w : workers) {
      if (w.pid > 0) {
        kill(w.pid, SIGKILL);
        waitpid(w.pid, nullptr, 0);
      }
    }
    if (loader) {
      if (auto st = loader->Uninstall(); !st.ok()) {
        std::fprintf(stderr, "connect_latency: cleanup: %s\n", st.ToString().c_str());
      }
      loader.reset();
    }
    for (auto it = cgroups.rbegin(); it != cgroups.rend(); ++it) {
      if (rmdir(it->c_str()) != 0) {
        std::fprintf(stderr, "connect_latency: cleanup: rmdir %s: %s\n", it->c_str(),
                     std::strerror(errno));
      }
    }
    if (!bpffs.empty()) {
      // Dropping the mount drops every pin, and with them any link left.
      umount2(bpffs.c_str(), MNT_DETACH);
      rmdir(bpffs.c_str());
    }
  }

  std::string pin_dir() const { return bpffs + "/ktrust"; }
};

absl::Status MountBpffs(Environment& env) {
  char templ[] = "/tmp/ktrust-bench-bpffs-XXXXXX";
  if (!mkdtemp(templ)) return absl::ErrnoToStatus(errno, "mkdtemp");
  if (mount("bpf", templ, "bpf", 0, nullptr) != 0) {
    int err = errno;
    rmdir(templ);
    return absl::ErrnoToStatus(err, absl::StrCat("mounting bpffs on ", templ));
  }
  env.bpffs = templ;
  return absl::OkStatus();
}

absl::Status MakeCgroup(Environment& env, const std::string& path) {
  if (mkdir(path.c_str(), 0755) != 0) return absl::ErrnoToStatus(errno, "mkdir " + path);
  env.cgroups.push_back(path);
  return absl::OkStatus();
}

// Attached: a fresh loader, configured like an agent with one mesh range,
// "enrolled" enrolled, "plain" classified as not enrolled and the parent
// watched (as the agent leaves every other cgroup under its root), the
// programs on the subtree's parent. Detached: its links and maps gone, as
// after `ktrustd --uninstall`.
absl::Status Attach(Environment& env, uint16_t agent_port, uint64_t enrolled_id, uint64_t plain_id,
                    const std::vector<std::string>& only) {
  auto loader = BpfLoader::Create({.pin_dir = env.pin_dir()});
  if (!loader.ok()) return loader.status();
  env.loader = std::move(*loader);
  InterceptionMaps& maps = env.loader->maps();
  if (auto st = maps.Configure({.outbound_port = agent_port}); !st.ok()) return st;
  auto mesh = IpPrefix::Parse("10.96.0.0/12");
  if (!mesh.ok()) return mesh.status();
  if (auto st = maps.AddMeshDestination(*mesh, {{1, 65535, MeshAction::kRedirect}}); !st.ok()) {
    return st;
  }
  if (auto st = maps.EnrollCgroup(enrolled_id, EnforcementMode::kEnforce, 1); !st.ok()) return st;
  if (auto st = maps.MarkCgroupNotEnrolled(plain_id); !st.ok()) return st;
  auto root_id = CgroupIdOf(env.cgroup_root);
  if (!root_id.ok()) return root_id.status();
  if (auto st = maps.WatchOnlyCgroups({*root_id}); !st.ok()) return st;
  if (auto st = env.loader->AttachCgroup(env.cgroup_root); !st.ok()) return st;
  // As the agent does: sockops only on the enrolled cgroup.
  if (auto st = env.loader->AttachSockops(env.cgroup_root + "/enrolled"); !st.ok()) return st;
  if (only.empty()) return absl::OkStatus();
  // --only: detach the other links (pinned as links/cgroup-<id>-<program>).
  const std::string links = env.pin_dir() + "/links";
  std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir(links.c_str()), closedir);
  if (!dir) return absl::ErrnoToStatus(errno, "opendir " + links);
  while (dirent* e = readdir(dir.get())) {
    absl::string_view name = e->d_name;
    size_t dash = name.rfind('-');
    if (name[0] == '.' || dash == absl::string_view::npos) continue;
    if (std::find(only.begin(), only.end(), name.substr(dash + 1)) != only.end()) continue;
    std::string path = links + "/" + std::string(name);
    UniqueFd link(bpf_obj_get(path.c_str()));
    if (!link.valid() || bpf_link_detach(link.get()) != 0) {
      return absl::ErrnoToStatus(errno, "detaching " + path);
    }
  }
  return absl::OkStatus();
}

absl::Status Detach(Environment& env) {
  if (!env.loader) return absl::OkStatus();
  auto st = env.loader->Uninstall();
  env.loader.reset();
  return st;
}

absl::StatusOr<uint64_t> CounterSum(Environment& env, ktrust_reason only) {
  auto counters = env.loader->maps().Counters();
  if (!counters.ok()) return counters.status();
  if (only != KTRUST_REASON_MAX) return (*counters)[only];
  uint64_t sum = 0;
  for (uint64_t c : *counters) sum += c;
  return sum;
}

UniqueFd Listen(uint16_t* port) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  auto* sa = reinterpret_cast<sockaddr*>(&a);
  if (!fd.valid() || bind(fd.get(), sa, sizeof(a)) != 0 || listen(fd.get(), 4096) != 0 ||
      getsockname(fd.get(), sa, &len) != 0) {
    return UniqueFd();
  }
  *port = ntohs(a.sin_port);
  return fd;
}

// ------------------------------------------------------------------ report

enum State { kDetached = 0, kAttached = 1 };
constexpr const char* kStateName[] = {"detached", "attached"};

struct Series {
  std::vector<int64_t> connect_p50[2];  // per state, one per round
  std::vector<int64_t> connect_p10[2];
  std::vector<int64_t> connect_p90[2];
  std::vector<int64_t> cycle_p50[2];
};

struct Summary {
  double detached = 0, attached = 0, added = 0, ratio = 0, paired_p25 = 0, paired_p75 = 0;
};

Summary Summarize(const std::vector<int64_t> (&per_state)[2]) {
  Summary s;
  s.detached = static_cast<double>(Quantile(per_state[kDetached], 0.5));
  s.attached = static_cast<double>(Quantile(per_state[kAttached], 0.5));
  std::vector<int64_t> diffs;
  for (size_t i = 0; i < per_state[0].size() && i < per_state[1].size(); ++i) {
    diffs.push_back(per_state[kAttached][i] - per_state[kDetached][i]);
  }
  s.added = static_cast<double>(Quantile(diffs, 0.5));  // the round-paired median
  s.paired_p25 = static_cast<double>(Quantile(diffs, 0.25));
  s.paired_p75 = static_cast<double>(Quantile(diffs, 0.75));
  std::vector<double> ratios;
  for (size_t i = 0; i < diffs.size(); ++i) {
    if (per_state[kDetached][i] > 0) {
      ratios.push_back(static_cast<double>(per_state[kAttached][i]) /
                       static_cast<double>(per_state[kDetached][i]));
    }
  }
  s.ratio = Quantile(ratios, 0.5);  // per round, like added
  return s;
}

nlohmann::json ToJson(const Summary& s) {
  return {{"detached_ns", s.detached},    {"attached_ns", s.attached},
          {"added_ns", s.added},          {"ratio", s.ratio},
          {"added_p25_ns", s.paired_p25}, {"added_p75_ns", s.paired_p75}};
}

void PrintRow(const char* label, const Summary& s) {
  std::printf("  %-22s %9.0f %9.0f %+8.0f  [%+6.0f .. %+6.0f]  %6.3f\n", label, s.detached,
              s.attached, s.added, s.paired_p25, s.paired_p75, s.ratio);
}

std::string ReadFirstLine(const char* path, absl::string_view prefix) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (absl::string_view(line).substr(0, prefix.size()) == prefix) {
      size_t colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(colon + 2);
    }
  }
  return "";
}

// ------------------------------------------------------------------ main

bool ParseInt(absl::string_view text, int min, int* out) {
  int v = 0;
  if (!absl::SimpleAtoi(text, &v) || v < min) return false;
  *out = v;
  return true;
}

void Usage(FILE* to) {
  std::fprintf(to,
               "usage: connect_latency [--rounds R] [--connects N] [--warmup W] [--cpu C] "
               "[--json FILE]\n"
               "  --rounds R    measured rounds, each one batch per state and cgroup (20)\n"
               "  --connects N  connect()s per batch (2000)\n"
               "  --warmup W    rounds run first and discarded (2)\n"
               "  --cpu C       pin the workers to CPU C (default: not pinned)\n"
               "  --json FILE   also write the results as JSON\n"
               "  --only LIST   diagnosis: keep only these cgroup programs attached\n"
               "                (connect4,connect6,sendmsg4,sendmsg6,getpeername4,\n"
               "                getpeername6,sockops); default: all, as the agent runs\n"
               "Needs root (bpffs mount, cgroups, BPF).\n");
}

int Run(const Options& opt) {
  Environment env;
  auto fail = [](absl::string_view what, const absl::Status& st) {
    std::fprintf(stderr, "connect_latency: %.*s: %s\n", static_cast<int>(what.size()), what.data(),
                 st.ToString().c_str());
    return 1;
  };

  if (auto st = MountBpffs(env); !st.ok()) return fail("bpffs", st);
  auto cg2 = Cgroup2Mount();
  if (!cg2.ok()) return fail("cgroup v2", cg2.status());
  env.cgroup_root = absl::StrCat(*cg2, "/ktrust-bench-", getpid());
  const std::string plain_path = env.cgroup_root + "/plain";
  const std::string enrolled_path = env.cgroup_root + "/enrolled";
  for (const std::string& p : {env.cgroup_root, plain_path, enrolled_path}) {
    if (auto st = MakeCgroup(env, p); !st.ok()) return fail("cgroup", st);
  }
  auto enrolled_id = CgroupIdOf(enrolled_path);
  if (!enrolled_id.ok()) return fail("cgroup id", enrolled_id.status());
  auto plain_id = CgroupIdOf(plain_path);
  if (!plain_id.ok()) return fail("cgroup id", plain_id.status());

  uint16_t port = 0, agent_port = 0;
  UniqueFd listener = Listen(&port);
  // Stands in for the agent's outbound listener: nothing may arrive there.
  UniqueFd agent = Listen(&agent_port);
  if (!listener.valid() || !agent.valid()) {
    return fail("listen", absl::ErrnoToStatus(errno, "127.0.0.1"));
  }
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  to.sin_port = htons(port);

  // Workers before the first load: they fork from a process with no threads.
  Worker& plain = env.workers[0];
  Worker& enrolled = env.workers[1];
  plain.name = "not enrolled";
  plain.cgroup = plain_path;
  enrolled.name = "enrolled, not mesh";
  enrolled.cgroup = enrolled_path;
  for (Worker& w : env.workers) {
    if (auto st = StartWorker(w, listener.get(), to, opt.cpu); !st.ok()) return fail(w.name, st);
  }

  utsname uts{};
  uname(&uts);
  std::printf(
      "connect() to 127.0.0.1:%u from a cgroup under %s\n"
      "kernel %s, %ld CPUs, %s; %d rounds (+%d warm-up) x %d connects per state and cgroup%s%s\n",
      port, env.cgroup_root.c_str(), uts.release, sysconf(_SC_NPROCESSORS_ONLN),
      ReadFirstLine("/proc/cpuinfo", "model name").c_str(), opt.rounds, opt.warmup, opt.connects,
      opt.cpu >= 0 ? absl::StrCat(", workers on CPU ", opt.cpu).c_str() : "",
      opt.only.empty()
          ? ""
          : absl::StrCat("; only ", absl::StrJoin(opt.only, ","), " attached").c_str());
  std::fflush(stdout);

  Series series[2];  // per worker
  int64_t attach_ns = 0, detach_ns = 0;
  int attaches = 0;
  const auto count = static_cast<uint32_t>(opt.connects);
  for (int r = -opt.warmup; r < opt.rounds; ++r) {
    // A B B A: each state goes first every other round, and so does each cgroup.
    const bool flip = (r + opt.warmup) % 2 == 1;
    const State order[2] = {flip ? kAttached : kDetached, flip ? kDetached : kAttached};
    for (State state : order) {
      if (g_stop) return fail("interrupted", absl::CancelledError("signal"));
      int64_t t0 = NowNs();
      auto st = state == kAttached ? Attach(env, agent_port, *enrolled_id, *plain_id, opt.only)
                                   : Detach(env);
      if (!st.ok()) return fail(state == kAttached ? "attaching" : "detaching", st);
      if (state == kAttached) {
        attach_ns += NowNs() - t0;
        ++attaches;
      } else {
        detach_ns += NowNs() - t0;
      }
      for (int k = 0; k < 2; ++k) {
        const int wi = flip ? 1 - k : k;
        Worker& w = env.workers[wi];
        // What the batch must leave in the counters (attached only).
        uint64_t before = 0;
        const ktrust_reason watched = wi == 1 ? KTRUST_REASON_CONNECT_NOT_MESH : KTRUST_REASON_MAX;
        if (state == kAttached) {
          auto c = CounterSum(env, watched);
          if (!c.ok()) return fail("counters", c.status());
          before = *c;
        }
        auto batch = RunBatch(w, count);
        if (!batch.ok()) return fail(w.name, batch.status());
        if (batch->errors > 0) {
          return fail(w.name, absl::ErrnoToStatus(
                                  batch->first_errno,
                                  absl::StrCat(batch->errors, " of ", count, " connects failed (",
                                               kStateName[state], ")")));
        }
        if (state == kAttached) {
          auto c = CounterSum(env, watched);
          if (!c.ok()) return fail("counters", c.status());
          const bool connect4 = opt.only.empty() || std::find(opt.only.begin(), opt.only.end(),
                                                              "connect4") != opt.only.end();
          const uint64_t want = wi == 1 && connect4 ? count : 0;
          if (*c - before != want) {
            return fail(w.name, absl::InternalError(absl::StrCat(
                                    "the programs counted ", *c - before, " decisions for ", count,
                                    " connects; expected ", want, ": not attached as intended?")));
          }
        }
        if (r < 0) continue;
        Series& s = series[wi];
        s.connect_p50[state].push_back(batch->connect_p50_ns);
        s.connect_p10[state].push_back(batch->connect_p10_ns);
        s.connect_p90[state].push_back(batch->connect_p90_ns);
        s.cycle_p50[state].push_back(batch->cycle_p50_ns);
      }
    }
    if (r >= 0 && (r + 1) % 5 == 0) {
      std::fprintf(stderr, "  round %d/%d done\n", r + 1, opt.rounds);
    }
  }
  if (auto st = Detach(env); !st.ok()) return fail("detaching", st);
  pollfd pfd{.fd = agent.get(), .events = POLLIN, .revents = 0};
  if (poll(&pfd, 1, 0) > 0) {
    return fail("check", absl::InternalError("a connection reached the agent stand-in: the "
                                             "programs redirected a non-mesh connect()"));
  }

  // Per batch the median connect(); per state the median over rounds; "added"
  // is the median of the per-round differences (attached - detached).
  std::printf(
      "\nmedian connect() ns (per batch p50, median over rounds); added = median of the per-round"
      "\ndifferences, [p25 .. p75] of those differences\n"
      "  %-22s %9s %9s %8s  %-18s  %6s\n",
      "", "detached", "attached", "added", "  [added p25..p75]", "ratio");
  nlohmann::json results = nlohmann::json::object();
  Summary headline;
  for (int wi = 0; wi < 2; ++wi) {
    const Series& s = series[wi];
    Summary connect = Summarize(s.connect_p50);
    Summary p10 = Summarize(s.connect_p10);
    Summary p90 = Summarize(s.connect_p90);
    Summary cycle = Summarize(s.cycle_p50);
    std::printf("%s\n", env.workers[wi].name.c_str());
    PrintRow("connect() p50", connect);
    PrintRow("connect() p10", p10);
    PrintRow("connect() p90", p90);
    PrintRow("socket..close p50", cycle);
    if (wi == 0) headline = connect;
    results[wi == 0 ? "not_enrolled" : "enrolled_not_mesh"] = {
        {"connect_p50", ToJson(connect)},
        {"connect_p10", ToJson(p10)},
        {"connect_p90", ToJson(p90)},
        {"cycle_p50", ToJson(cycle)},
        {"rounds",
         {{"detached_connect_p50_ns", s.connect_p50[kDetached]},
          {"attached_connect_p50_ns", s.connect_p50[kAttached]}}}};
  }
  const bool met = headline.added < kTargetAddedNs;
  std::printf(
      "\ngoal: connect() of a non-enrolled cgroup with the programs attached adds < 1 us: %s "
      "(%+.0f ns, ratio %.3f)\n",
      met ? "MET" : "NOT MET", headline.added, headline.ratio);
  std::printf("(attach: %.1f ms on average for load + configure + attach; detach %.1f ms)\n",
              attaches ? static_cast<double>(attach_ns) / attaches / 1e6 : 0.0,
              static_cast<double>(detach_ns) / std::max(1, opt.rounds + opt.warmup) / 1e6);

  if (!opt.json.empty()) {
    nlohmann::json out = {
        {"schema", "ktrust-bench-connect/1"},
        {"machine",
         {{"kernel", uts.release},
          {"nproc", sysconf(_SC_NPROCESSORS_ONLN)},
          {"cpu", ReadFirstLine("/proc/cpuinfo", "model name")}}},
        {"params",
         {{"rounds", opt.rounds},
          {"warmup", opt.warmup},
          {"connects", opt.connects},
          {"cpu", opt.cpu},
          {"only", opt.only},
          {"destination", "127.0.0.1 (mesh: 10.96.0.0/12)"}}},
        {"results", results},
        {"goal", {{"target_added_ns", kTargetAddedNs}, {"met", met}, {"added_ns", headline.added}}},
    };
    std::ofstream f(opt.json);
    f << out.dump(2) << "\n";
    if (!f) return fail("--json", absl::ErrnoToStatus(errno, opt.json));
    std::printf("wrote %s\n", opt.json.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace ktrust

int main(int argc, char** argv) {
  ktrust::Options opt;
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "-h" || a == "--help") {
      ktrust::Usage(stdout);
      return 0;
    } else if (a == "--rounds" && has_value && ktrust::ParseInt(argv[i + 1], 1, &opt.rounds)) {
      ++i;
    } else if (a == "--connects" && has_value && ktrust::ParseInt(argv[i + 1], 1, &opt.connects)) {
      ++i;
    } else if (a == "--warmup" && has_value && ktrust::ParseInt(argv[i + 1], 0, &opt.warmup)) {
      ++i;
    } else if (a == "--cpu" && has_value && ktrust::ParseInt(argv[i + 1], 0, &opt.cpu)) {
      ++i;
    } else if (a == "--only" && has_value) {
      opt.only = absl::StrSplit(argv[++i], ',', absl::SkipEmpty());
    } else if (a == "--json" && has_value) {
      opt.json = argv[++i];
    } else {
      std::fprintf(stderr, "connect_latency: bad argument %s\n", argv[i]);
      ktrust::Usage(stderr);
      return 2;
    }
  }
  if (geteuid() != 0) {
    std::fprintf(stderr, "connect_latency: needs root (bpffs mount, cgroups, BPF programs)\n");
    return 2;
  }
  ktrust::SetUpLogging(spdlog::level::warn);  // no bpf_attached line per round
  struct sigaction sa {};
  sa.sa_handler = ktrust::OnSignal;  // no SA_RESTART: blocking reads return EINTR
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  return ktrust::Run(opt);
}
