// loadgen: the backend and the load generator for tools/bench/run.sh.
//
//   loadgen server     --listen 127.0.0.1:PORT
//   loadgen throughput --connect ADDR --bytes N [--watch PID,...]
//   loadgen rr         --connect ADDR --count N [--size 64] [--warmup W]
//   loadgen connrate   --connect ADDR --concurrency C --seconds S [--size 64]
//   loadgen firstbyte  --connect ADDR --count N [--warmup W]
//   loadgen idle       --connect ADDR --connections N [--waves 1] [--hold 5]
//                      [--settle 10] [--size 64] [--watch PID,...]
//   loadgen soak       --connect ADDR --connections N --rate R --seconds S
//                      [--size 64] [--workers W] [--check-every 60]
//                      [--series FILE] [--interval 1] [--ready FILE]
//
// Wire protocol (the proxies under test just carry it): the first byte a
// client sends picks the mode of its connection on the server.
//   'S' sink: then an 8-byte little-endian length N, then N bytes; once all N
//       arrived the server answers with the 8-byte little-endian count, so the
//       client's clock stops only after delivery through every proxy.
//   anything else: echo; the server sends back every byte, the first included.
//
// throughput --watch also reports the on-CPU time of the processes PID,...
// (the agents) during the clocked window, as watched_cpu_s.
//
// firstbyte is sequential: N times socket(), connect(), send 1 byte, read the
// echoed byte, close(); it times each connection from socket() to close()
// and, inside that, the connect() call, and prints every sample (run.sh e2e
// pools them across rounds).
//
// idle opens N echo connections (a round trip each), holds them for --hold
// seconds, checks that each still echoes, closes them all and samples the
// watched processes' RSS (VmRSS) every 100 ms for --settle seconds: the
// memory an idle connection costs the agents, and whether they give it back
// after a wave (back_within_2x_s: first moment every watched process was
// within twice its RSS before the first wave).
//
// soak holds N echo connections open (opened 8 at a time, one echo each)
// while it opens, echoes on and closes R new connections per second for S
// seconds (paced by a schedule, on W threads), echoes on every held one once
// per --check-every seconds and once more at the end, then closes them all.
// Unlike the other modes, a failed connection does not end the run: each is
// counted by what went wrong, and --series FILE gets one JSON line per
// --interval seconds (unix time, phase, held connections still alive, new
// connections made and failed, their latency), so that errors are seen over
// time next to the agents' samples. --ready FILE is created once every held
// connection is open.
//
// Every client mode prints one JSON object on stdout and exits 0, or prints
// "loadgen: error: ..." on stderr and exits 1. The server is one epoll thread:
// it is the same for every target, so it costs the same everywhere.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

constexpr char kSinkMode = 'S';
constexpr char kEchoMode = 'E';
// Client sockets give up after this long, so a wedged proxy fails a run
// instead of hanging it.
constexpr int kIoTimeoutSeconds = 10;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "loadgen: error: %s\n", what.c_str());
  std::exit(1);
}

[[noreturn]] void DieErrno(const std::string& what) { Die(what + ": " + std::strerror(errno)); }

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// User + system CPU seconds of this process (all threads).
double ProcessCpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto secs = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
  };
  return secs(ru.ru_utime) + secs(ru.ru_stime);
}

// Busy CPU seconds of the whole machine so far (user, nice, system, irq and
// softirq of /proc/stat's cpu line; -1 if unreadable): sampled around the
// clocked part of a run, so that process start-up and connection set-up stay
// out of a figure per byte.
double MachineBusySeconds() {
  FILE* f = std::fopen("/proc/stat", "r");
  if (f == nullptr) return -1;
  unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0;
  int n = std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu", &user, &nice, &system, &idle,
                      &iowait, &irq, &softirq);
  std::fclose(f);
  if (n != 7) return -1;
  return static_cast<double>(user + nice + system + irq + softirq) /
         static_cast<double>(sysconf(_SC_CLK_TCK));
}

// On-CPU nanoseconds of every thread of the processes PIDS, keyed
// "PID/TID NAME", from /proc/PID/task/*/schedstat (nanoseconds, so a share
// under 1% of a short window is still measurable; /proc/PID/stat counts in
// 10 ms ticks); empty if a process is unreadable. Sampled around the clocked
// window like MachineBusySeconds: the agents' CPU during the transfer alone.
std::map<std::string, double> ThreadsCpuSeconds(const std::vector<int>& pids) {
  std::map<std::string, double> threads;
  for (int pid : pids) {
    std::string tasks = "/proc/" + std::to_string(pid) + "/task";
    std::error_code ec;
    size_t before = threads.size();
    for (const auto& task : std::filesystem::directory_iterator(tasks, ec)) {
      FILE* f = std::fopen((task.path() / "schedstat").c_str(), "r");
      if (f == nullptr) continue;  // a thread that just ended
      unsigned long long ns = 0;
      bool read = std::fscanf(f, "%llu", &ns) == 1;
      std::fclose(f);
      if (!read) continue;
      std::string name;
      if (FILE* c = std::fopen((task.path() / "comm").c_str(), "r")) {
        char buf[64] = {};
        if (std::fgets(buf, sizeof(buf), c)) name = buf;
        std::fclose(c);
        if (!name.empty() && name.back() == '\n') name.pop_back();
      }
      threads[std::to_string(pid) + "/" + task.path().filename().string() + " " + name] =
          static_cast<double>(ns) / 1e9;
    }
    if (ec || threads.size() == before) return {};
  }
  return threads;
}

double Total(const std::map<std::string, double>& threads) {
  double total = 0;
  for (const auto& [name, s] : threads) total += s;
  return threads.empty() ? -1 : total;
}

// The threads that used the most CPU between two samples, as a JSON array of
// {"thread": "PID/TID NAME", "cpu_s": S}: where the watched CPU went.
std::string BusiestThreads(const std::map<std::string, double>& before,
                           const std::map<std::string, double>& after, size_t top) {
  std::vector<std::pair<double, std::string>> used;
  for (const auto& [name, s] : after) {
    auto it = before.find(name);
    double delta = s - (it == before.end() ? 0 : it->second);
    if (delta > 0) used.push_back({delta, name});
  }
  std::sort(used.rbegin(), used.rend());
  std::string out = "[";
  for (size_t i = 0; i < used.size() && i < top; ++i) {
    char item[160];
    std::snprintf(item, sizeof(item), "%s{\"thread\": \"%s\", \"cpu_s\": %.6f}", i ? ", " : "",
                  used[i].second.c_str(), used[i].first);
    out += item;
  }
  return out + "]";
}

// "--name value" pairs into a map; a bare "--flag" maps to "".
std::map<std::string, std::string> ParseFlags(int argc, char** argv, int first) {
  std::map<std::string, std::string> flags;
  for (int i = first; i < argc; ++i) {
    std::string name = argv[i];
    if (name.rfind("--", 0) != 0) Die("unexpected argument \"" + name + "\"");
    name = name.substr(2);
    if (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) {
      flags[name] = argv[++i];
    } else {
      flags[name] = "";
    }
  }
  return flags;
}

std::string Need(const std::map<std::string, std::string>& flags, const std::string& name) {
  auto it = flags.find(name);
  if (it == flags.end() || it->second.empty()) Die("--" + name + " is required");
  return it->second;
}

int64_t NumberFlag(const std::map<std::string, std::string>& flags, const std::string& name,
                   std::optional<int64_t> fallback = std::nullopt) {
  auto it = flags.find(name);
  if (it == flags.end()) {
    if (!fallback) Die("--" + name + " is required");
    return *fallback;
  }
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(it->second.c_str(), &end, 10);
  if (errno != 0 || end == it->second.c_str() || *end != '\0' || v < 0) {
    Die("--" + name + " wants a non-negative integer, got \"" + it->second + "\"");
  }
  return v;
}

sockaddr_in ParseAddress(const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos) Die("address \"" + text + "\" should be IPV4:PORT");
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  if (inet_pton(AF_INET, text.substr(0, colon).c_str(), &sa.sin_addr) != 1) {
    Die("address \"" + text + "\" has no valid IPv4 host");
  }
  int port = std::atoi(text.c_str() + colon + 1);
  if (port <= 0 || port > 65535) Die("address \"" + text + "\" has no valid port");
  sa.sin_port = htons(static_cast<uint16_t>(port));
  return sa;
}

// A file descriptor closed on scope exit.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(other.Release()) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) Reset(other.Release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset(int fd = -1) {
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
  }

 private:
  int fd_;
};

void SetNoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// A blocking client socket connected to `sa`, or an error message.
std::optional<Fd> Connect(const sockaddr_in& sa, std::string* error) {
  Fd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) {
    *error = std::string("socket: ") + std::strerror(errno);
    return std::nullopt;
  }
  timeval tv{kIoTimeoutSeconds, 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  SetNoDelay(fd.get());
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) != 0) {
    *error = std::string("connect: ") + std::strerror(errno);
    return std::nullopt;
  }
  return fd;
}

Fd MustConnect(const sockaddr_in& sa) {
  std::string error;
  auto fd = Connect(sa, &error);
  if (!fd) Die(error);
  return std::move(*fd);
}

// Sends all of buf; false on error (errno set).
bool SendAll(int fd, const char* buf, size_t len) {
  while (len > 0) {
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    buf += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// Reads exactly len bytes; false on error or early EOF (errno = 0 for EOF).
bool RecvAll(int fd, char* buf, size_t len) {
  while (len > 0) {
    ssize_t n = recv(fd, buf, len, 0);
    if (n == 0) {
      errno = 0;
      return false;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    buf += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

std::string IoError(const char* what) {
  return std::string(what) + ": " + (errno == 0 ? "connection closed" : std::strerror(errno));
}

void PutLe64(char* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

uint64_t GetLe64(const char* in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i)
    v |= static_cast<uint64_t>(static_cast<unsigned char>(in[i])) << (8 * i);
  return v;
}

// Nearest-rank percentile of sorted samples, p in (0, 1].
double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t rank = static_cast<size_t>(std::ceil(p * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

// ---------------------------------------------------------------- server

struct ServerConn {
  enum class Mode { kUnknown, kEcho, kSink } mode = Mode::kUnknown;
  Fd fd;
  std::string pending;  // echo bytes the socket did not take yet
  uint64_t sink_header_got = 0;
  char sink_header[9] = {};
  uint64_t sink_expected = 0;
  uint64_t sink_received = 0;
};

class Server {
 public:
  explicit Server(const sockaddr_in& sa) {
    listener_.Reset(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (listener_.get() < 0) DieErrno("socket");
    int one = 1;
    setsockopt(listener_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(listener_.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) != 0) {
      DieErrno("bind");
    }
    if (listen(listener_.get(), 4096) != 0) DieErrno("listen");
    epoll_.Reset(epoll_create1(EPOLL_CLOEXEC));
    if (epoll_.get() < 0) DieErrno("epoll_create1");
    Watch(listener_.get(), EPOLLIN, EPOLL_CTL_ADD);
  }

  [[noreturn]] void Run() {
    std::vector<epoll_event> events(256);
    buf_.resize(256 * 1024);
    for (;;) {
      int n = epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()), -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        DieErrno("epoll_wait");
      }
      for (int i = 0; i < n; ++i) {
        int fd = events[static_cast<size_t>(i)].data.fd;
        if (fd == listener_.get()) {
          AcceptAll();
          continue;
        }
        auto it = conns_.find(fd);
        if (it == conns_.end()) continue;
        if (!Serve(*it->second, events[static_cast<size_t>(i)].events)) conns_.erase(it);
      }
    }
  }

 private:
  void Watch(int fd, uint32_t events, int op) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    if (epoll_ctl(epoll_.get(), op, fd, &ev) != 0) DieErrno("epoll_ctl");
  }

  void AcceptAll() {
    for (;;) {
      int fd = accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        if (errno == ECONNABORTED) continue;
        std::fprintf(stderr, "loadgen server: accept: %s\n", std::strerror(errno));
        return;
      }
      SetNoDelay(fd);
      auto conn = std::make_unique<ServerConn>();
      conn->fd.Reset(fd);
      Watch(fd, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_ADD);
      conns_[fd] = std::move(conn);
    }
  }

  // Flushes pending echo bytes; false if the connection is dead.
  bool Flush(ServerConn& c) {
    while (!c.pending.empty()) {
      ssize_t n = send(c.fd.get(), c.pending.data(), c.pending.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          // Stop reading until the peer drains what we owe it.
          Watch(c.fd.get(), EPOLLOUT | EPOLLRDHUP, EPOLL_CTL_MOD);
          return true;
        }
        return false;
      }
      c.pending.erase(0, static_cast<size_t>(n));
    }
    return true;
  }

  // Handles readiness on one connection; false to close it.
  bool Serve(ServerConn& c, uint32_t events) {
    if (events & EPOLLOUT) {
      if (!Flush(c)) return false;
      if (!c.pending.empty()) return true;
      Watch(c.fd.get(), EPOLLIN | EPOLLRDHUP, EPOLL_CTL_MOD);
    }
    if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) return true;
    // Read until EAGAIN (level-triggered, so stopping early is also fine).
    for (int rounds = 0; rounds < 64; ++rounds) {
      ssize_t n = recv(c.fd.get(), buf_.data(), buf_.size(), 0);
      if (n == 0) return false;
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno == EAGAIN || errno == EWOULDBLOCK;
      }
      if (!Consume(c, buf_.data(), static_cast<size_t>(n))) return false;
      if (!c.pending.empty()) return true;  // blocked on output: wait for EPOLLOUT
    }
    return true;
  }

  bool Consume(ServerConn& c, const char* data, size_t len) {
    if (c.mode == ServerConn::Mode::kUnknown) {
      c.mode = data[0] == kSinkMode ? ServerConn::Mode::kSink : ServerConn::Mode::kEcho;
    }
    if (c.mode == ServerConn::Mode::kEcho) {
      c.pending.append(data, len);
      return Flush(c);
    }
    // Sink: 1 mode byte + 8 length bytes, then the payload.
    while (c.sink_header_got < sizeof(c.sink_header) && len > 0) {
      c.sink_header[c.sink_header_got++] = *data++;
      --len;
      if (c.sink_header_got == sizeof(c.sink_header)) c.sink_expected = GetLe64(c.sink_header + 1);
    }
    if (c.sink_header_got < sizeof(c.sink_header)) return true;
    bool was_done = c.sink_received >= c.sink_expected;
    c.sink_received += len;
    if (!was_done && c.sink_received >= c.sink_expected) {
      char ack[8];
      PutLe64(ack, c.sink_received);
      c.pending.append(ack, sizeof(ack));
      return Flush(c);
    }
    return true;
  }

  Fd listener_;
  Fd epoll_;
  std::vector<char> buf_;
  std::unordered_map<int, std::unique_ptr<ServerConn>> conns_;
};

// ---------------------------------------------------------------- clients

int RunThroughput(const sockaddr_in& sa, uint64_t bytes, const std::vector<int>& watched) {
  std::vector<char> chunk(1 << 20, 'x');
  double cpu0 = ProcessCpuSeconds();
  Fd fd = MustConnect(sa);
  double busy0 = MachineBusySeconds();
  std::map<std::string, double> watched0 = ThreadsCpuSeconds(watched);
  auto start = Clock::now();
  char header[9];
  header[0] = kSinkMode;
  PutLe64(header + 1, bytes);
  if (!SendAll(fd.get(), header, sizeof(header))) Die(IoError("send"));
  for (uint64_t left = bytes; left > 0;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(left, chunk.size()));
    if (!SendAll(fd.get(), chunk.data(), n)) Die(IoError("send"));
    left -= n;
  }
  char ack[8];
  if (!RecvAll(fd.get(), ack, sizeof(ack))) Die(IoError("waiting for the backend's count"));
  double seconds = SecondsSince(start);
  double busy = MachineBusySeconds() - busy0;
  std::map<std::string, double> watched1 = ThreadsCpuSeconds(watched);
  uint64_t got = GetLe64(ack);
  if (got != bytes) {
    Die("backend counted " + std::to_string(got) + " bytes, sent " + std::to_string(bytes));
  }
  bool watched_ok = !watched0.empty() && !watched1.empty();
  std::printf("{\"bytes\": %" PRIu64
              ", \"seconds\": %.6f, \"gbps\": %.4f, \"client_cpu_s\": %.4f, "
              "\"machine_busy_s\": %.2f, \"watched_cpu_s\": %.6f, \"watched_threads\": %s}\n",
              bytes, seconds, static_cast<double>(bytes) * 8 / seconds / 1e9,
              ProcessCpuSeconds() - cpu0, busy0 < 0 ? -1.0 : busy,
              watched_ok ? Total(watched1) - Total(watched0) : -1.0,
              watched_ok ? BusiestThreads(watched0, watched1, 6).c_str() : "[]");
  return 0;
}

int RunRequestResponse(const sockaddr_in& sa, int64_t count, int64_t warmup, size_t size) {
  double cpu0 = ProcessCpuSeconds();
  Fd fd = MustConnect(sa);
  std::string request(size, kEchoMode);
  std::string reply(size, '\0');
  std::vector<double> micros;
  micros.reserve(static_cast<size_t>(count));
  for (int64_t i = 0; i < warmup + count; ++i) {
    auto t0 = Clock::now();
    if (!SendAll(fd.get(), request.data(), size)) Die(IoError("send"));
    if (!RecvAll(fd.get(), reply.data(), size)) Die(IoError("recv"));
    double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    if (reply != request) Die("echo differs from the request");
    if (i >= warmup) micros.push_back(us);
  }
  std::vector<double> sorted = micros;
  std::sort(sorted.begin(), sorted.end());
  double sum = 0;
  for (double us : sorted) sum += us;
  std::printf(
      "{\"count\": %zu, \"size\": %zu, \"p50_us\": %.2f, \"p90_us\": %.2f, \"p99_us\": %.2f, "
      "\"p999_us\": %.2f, \"mean_us\": %.2f, \"max_us\": %.2f, \"client_cpu_s\": %.4f}\n",
      sorted.size(), size, Percentile(sorted, 0.50), Percentile(sorted, 0.90),
      Percentile(sorted, 0.99), Percentile(sorted, 0.999),
      sorted.empty() ? 0.0 : sum / static_cast<double>(sorted.size()),
      sorted.empty() ? 0.0 : sorted.back(), ProcessCpuSeconds() - cpu0);
  return 0;
}

struct WorkerResult {
  uint64_t ok = 0;
  uint64_t errors = 0;
  std::vector<double> micros;  // one connect..close duration per success
  std::map<std::string, uint64_t> error_kinds;
};

int RunConnectionRate(const sockaddr_in& sa, int concurrency, double seconds, size_t size) {
  double cpu0 = ProcessCpuSeconds();
  std::vector<WorkerResult> results(static_cast<size_t>(concurrency));
  std::vector<std::thread> workers;
  double busy0 = MachineBusySeconds();
  auto start = Clock::now();
  auto deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  for (int w = 0; w < concurrency; ++w) {
    workers.emplace_back([&, w] {
      WorkerResult& r = results[static_cast<size_t>(w)];
      std::string request(size, kEchoMode);
      std::string reply(size, '\0');
      while (Clock::now() < deadline) {
        auto t0 = Clock::now();
        std::string error;
        auto fd = Connect(sa, &error);
        if (fd) {
          if (!SendAll(fd->get(), request.data(), size)) {
            error = IoError("send");
          } else if (!RecvAll(fd->get(), reply.data(), size)) {
            error = IoError("recv");
          } else if (reply != request) {
            error = "echo differs";
          }
          fd->Reset();
        }
        if (error.empty()) {
          ++r.ok;
          r.micros.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
        } else {
          ++r.errors;
          ++r.error_kinds[error];
          // Back off a little so a refusing target is not spun against.
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
      }
    });
  }
  for (auto& t : workers) t.join();
  double elapsed = SecondsSince(start);
  double busy = MachineBusySeconds() - busy0;
  uint64_t ok = 0, errors = 0;
  std::vector<double> micros;
  std::map<std::string, uint64_t> kinds;
  for (auto& r : results) {
    ok += r.ok;
    errors += r.errors;
    micros.insert(micros.end(), r.micros.begin(), r.micros.end());
    for (auto& [k, v] : r.error_kinds) kinds[k] += v;
  }
  std::sort(micros.begin(), micros.end());
  std::string kinds_json;
  for (auto& [k, v] : kinds) {
    if (!kinds_json.empty()) kinds_json += ", ";
    kinds_json += "\"" + k + "\": " + std::to_string(v);
  }
  std::printf("{\"concurrency\": %d, \"seconds\": %.4f, \"connections\": %" PRIu64
              ", \"errors\": %" PRIu64
              ", \"conns_per_sec\": %.1f, \"conn_p50_us\": %.1f, \"conn_p99_us\": %.1f, "
              "\"client_cpu_s\": %.4f, \"machine_busy_s\": %.2f, \"error_kinds\": {%s}}\n",
              concurrency, elapsed, ok, errors, static_cast<double>(ok) / elapsed,
              Percentile(micros, 0.50), Percentile(micros, 0.99), ProcessCpuSeconds() - cpu0,
              busy0 < 0 ? -1.0 : busy, kinds_json.c_str());
  return 0;
}

// N sequential connections, each: socket(), connect(), 1 byte out, the echoed
// byte back, close(). The first W are not recorded. Any failure ends the run:
// a benchmark of connections that did not happen would mean nothing.
int RunFirstByte(const sockaddr_in& sa, int64_t count, int64_t warmup) {
  double cpu0 = ProcessCpuSeconds();
  std::vector<double> total_us;
  std::vector<double> connect_us;
  total_us.reserve(static_cast<size_t>(count));
  connect_us.reserve(static_cast<size_t>(count));
  for (int64_t i = 0; i < warmup + count; ++i) {
    const char out = static_cast<char>('a' + i % 26);
    char in = 0;
    auto t0 = Clock::now();
    Fd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) DieErrno("socket");
    timeval tv{kIoTimeoutSeconds, 0};
    setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    SetNoDelay(fd.get());
    if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) != 0) {
      DieErrno("connect (connection " + std::to_string(i + 1) + ")");
    }
    auto t1 = Clock::now();
    if (!SendAll(fd.get(), &out, 1)) Die(IoError("send"));
    if (!RecvAll(fd.get(), &in, 1)) {
      Die(IoError(("first byte (connection " + std::to_string(i + 1) + ")").c_str()));
    }
    fd.Reset();
    auto t2 = Clock::now();
    if (in != out) Die("the echoed byte differs from the one sent");
    if (i < warmup) continue;
    total_us.push_back(std::chrono::duration<double, std::micro>(t2 - t0).count());
    connect_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  auto list = [](const std::vector<double>& v) {
    std::string s;
    char num[32];
    for (double x : v) {
      std::snprintf(num, sizeof(num), "%s%.1f", s.empty() ? "" : ",", x);
      s += num;
    }
    return s;
  };
  std::vector<double> sorted = total_us;
  std::sort(sorted.begin(), sorted.end());
  std::vector<double> sorted_connect = connect_us;
  std::sort(sorted_connect.begin(), sorted_connect.end());
  std::printf(
      "{\"count\": %zu, \"p50_us\": %.1f, \"p99_us\": %.1f, \"connect_p50_us\": %.1f, "
      "\"client_cpu_s\": %.4f, \"total_us\": [%s], \"connect_us\": [%s]}\n",
      sorted.size(), Percentile(sorted, 0.50), Percentile(sorted, 0.99),
      Percentile(sorted_connect, 0.50), ProcessCpuSeconds() - cpu0, list(total_us).c_str(),
      list(connect_us).c_str());
  return 0;
}

// ---------------------------------------------------------------- idle

// Resident set of process PID in KiB (VmRSS), or -1 once it is gone.
long RssKib(int pid) {
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/status").c_str(), "r");
  if (f == nullptr) return -1;
  char line[256];
  long kib = -1;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
  }
  std::fclose(f);
  return kib;
}

std::string RssList(const std::vector<int>& pids) {
  std::string out;
  for (int pid : pids) {
    if (!out.empty()) out += ", ";
    out += std::to_string(RssKib(pid));
  }
  return "[" + out + "]";
}

// One echo of `size` bytes on connection `i`; an empty string if every byte
// came back as sent, else what went wrong. The payload differs per
// connection and per round, so a byte delivered to the wrong connection is
// caught.
std::string EchoOnce(int fd, size_t i, int round, size_t size) {
  std::string request(size, kEchoMode);
  for (size_t b = 1; b < size; ++b) request[b] = static_cast<char>('a' + (i + b + round) % 26);
  std::string reply(size, '\0');
  if (!SendAll(fd, request.data(), size)) return IoError("send");
  if (!RecvAll(fd, reply.data(), size)) return IoError("recv");
  if (reply != request) return "the echo differs from what was sent";
  return "";
}

// Runs `each(i)` for every i below `count` on `threads` threads; false (and
// stops early) once one returns false.
bool ForEachConnection(size_t count, int threads, const std::function<bool(size_t)>& each) {
  std::atomic<bool> ok{true};
  std::vector<std::thread> workers;
  for (int w = 0; w < threads; ++w) {
    workers.emplace_back([&, w] {
      for (size_t i = static_cast<size_t>(w); i < count && ok; i += static_cast<size_t>(threads)) {
        if (!each(i)) ok = false;
      }
    });
  }
  for (auto& t : workers) t.join();
  return ok;
}

// Waves of `count` connections: each opens every connection (one echo of
// `size` bytes, so each is established end to end), holds them all for
// `hold` seconds, echoes on every one again (data still flows after
// idleness), closes them all and samples the watched processes' RSS every
// 100 ms for `settle` seconds.
int RunIdle(const sockaddr_in& sa, int64_t count, int64_t waves, double hold, double settle,
            size_t size, const std::vector<int>& watched) {
  constexpr int kThreads = 8;
  std::string baseline = RssList(watched);
  std::vector<long> base;
  for (int pid : watched) base.push_back(RssKib(pid));
  std::string out = "{\"connections\": " + std::to_string(count) +
                    ", \"size\": " + std::to_string(size) + ", \"baseline_kib\": " + baseline +
                    ", \"waves\": [";
  for (int64_t wave = 0; wave < waves; ++wave) {
    std::vector<Fd> conns(static_cast<size_t>(count));
    auto opened_at = Clock::now();
    // Each connection echoes as soon as it is open: a few handshakes at a
    // time, as clients would, rather than thousands pending at once (which
    // the engine's handshake budget refuses).
    bool opened = ForEachConnection(conns.size(), kThreads, [&](size_t i) {
      std::string error;
      auto fd = Connect(sa, &error);
      if (fd) {
        error = EchoOnce(fd->get(), i, 0, size);
        conns[i] = std::move(*fd);
      }
      if (!error.empty()) std::fprintf(stderr, "loadgen: connection %zu: %s\n", i, error.c_str());
      return error.empty();
    });
    if (!opened) Die("could not open and echo on every connection of wave " + std::to_string(wave));
    double open_s = SecondsSince(opened_at);
    std::this_thread::sleep_for(std::chrono::duration<double>(hold));
    std::string idle = RssList(watched);
    bool echoed = ForEachConnection(conns.size(), kThreads, [&](size_t i) {
      std::string error = EchoOnce(conns[i].get(), i, 1, size);
      if (!error.empty()) {
        std::fprintf(stderr, "loadgen: connection %zu after the idle period: %s\n", i,
                     error.c_str());
      }
      return error.empty();
    });
    if (!echoed) Die("an echo failed after the idle period");
    std::string after_echo = RssList(watched);
    auto closed_at = Clock::now();
    conns.clear();
    // RSS after the wave: sampled until `settle`; `back_s` is when every
    // watched process was first within 2x its baseline (-1: not within settle).
    double back_s = -1;
    std::string samples;
    while (SecondsSince(closed_at) < settle) {
      bool back = true;
      for (size_t p = 0; p < watched.size(); ++p) {
        long now = RssKib(watched[p]);
        if (now < 0 || now > 2 * base[p]) back = false;
      }
      if (back && back_s < 0) back_s = SecondsSince(closed_at);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    char head[256];
    std::snprintf(head, sizeof(head), "%s{\"open_s\": %.2f, \"back_within_2x_s\": %.1f, ",
                  wave == 0 ? "" : ", ", open_s, back_s);
    out += head;
    out += "\"idle_kib\": " + idle + ", \"after_echo_kib\": " + after_echo +
           ", \"settled_kib\": " + RssList(watched) + "}";
  }
  out += "]}";
  std::printf("%s\n", out.c_str());
  return 0;
}

// ---------------------------------------------------------------- soak

// What happened to connections in one interval of a soak (and in total).
struct SoakTally {
  uint64_t open_errors = 0;
  uint64_t new_ok = 0;
  uint64_t new_errors = 0;
  uint64_t held_errors = 0;
  uint64_t held_checked = 0;
  std::vector<double> new_ms;  // connect..close of each new connection that worked
  std::map<std::string, uint64_t> error_kinds;
};

class SoakRecorder {
 public:
  void NewConnection(double ms, const std::string& error) {
    std::lock_guard<std::mutex> lock(mu_);
    for (SoakTally* t : {&interval_, &total_}) {
      if (error.empty()) {
        ++t->new_ok;
        t->new_ms.push_back(ms);
      } else {
        ++t->new_errors;
        ++t->error_kinds["new: " + error];
      }
    }
  }
  void HeldChecked(const std::string& error) {
    std::lock_guard<std::mutex> lock(mu_);
    for (SoakTally* t : {&interval_, &total_}) {
      ++t->held_checked;
      if (!error.empty()) {
        ++t->held_errors;
        ++t->error_kinds["held: " + error];
      }
    }
  }
  void OpenFailed(const std::string& error) {
    std::lock_guard<std::mutex> lock(mu_);
    for (SoakTally* t : {&interval_, &total_}) {
      ++t->open_errors;
      ++t->error_kinds["open: " + error];
    }
  }
  SoakTally TakeInterval() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::exchange(interval_, SoakTally{});
  }
  SoakTally Total() {
    std::lock_guard<std::mutex> lock(mu_);
    return total_;
  }

 private:
  std::mutex mu_;
  SoakTally interval_;
  SoakTally total_;
};

std::string KindsJson(const std::map<std::string, uint64_t>& kinds) {
  std::string out;
  for (const auto& [kind, n] : kinds) {
    std::string escaped;
    for (char c : kind) {
      if (c == '"' || c == '\\') escaped += '\\';
      escaped += c;
    }
    out += (out.empty() ? "\"" : ", \"") + escaped + "\": " + std::to_string(n);
  }
  return "{" + out + "}";
}

double UnixSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

struct SoakOptions {
  int64_t held = 0;
  int64_t rate = 0;
  double seconds = 0;
  size_t size = 64;
  int workers = 0;
  double check_every = 60;
  double interval = 1;
  std::string series;
  std::string ready;
};

int RunSoak(const sockaddr_in& sa, const SoakOptions& o) {
  constexpr int kOpenThreads = 8;
  double cpu0 = ProcessCpuSeconds();
  SoakRecorder rec;
  std::atomic<const char*> phase{"open"};
  std::atomic<int64_t> alive{0};
  std::atomic<bool> done{false};
  FILE* series = nullptr;
  if (!o.series.empty() && (series = std::fopen(o.series.c_str(), "w")) == nullptr) {
    DieErrno("cannot write " + o.series);
  }
  auto start = Clock::now();
  // One line per interval, also when nothing happened (a stalled run shows).
  std::thread reporter([&] {
    auto next = start;
    while (!done) {
      next +=
          std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.interval));
      while (!done && Clock::now() < next)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      SoakTally t = rec.TakeInterval();
      if (series == nullptr) continue;
      std::sort(t.new_ms.begin(), t.new_ms.end());
      std::fprintf(series,
                   "{\"time\": %.3f, \"elapsed_s\": %.3f, \"phase\": \"%s\", \"held\": %" PRId64
                   ", \"open_errors\": %" PRIu64 ", \"new_ok\": %" PRIu64
                   ", \"new_errors\": %" PRIu64 ", \"held_checked\": %" PRIu64
                   ", \"held_errors\": %" PRIu64
                   ", \"new_p50_ms\": %.2f, \"new_p99_ms\": %.2f, \"error_kinds\": %s}\n",
                   UnixSeconds(), SecondsSince(start), phase.load(), alive.load(), t.open_errors,
                   t.new_ok, t.new_errors, t.held_checked, t.held_errors, Percentile(t.new_ms, 0.5),
                   Percentile(t.new_ms, 0.99), KindsJson(t.error_kinds).c_str());
      std::fflush(series);
    }
  });

  // Held connections: opened a few at a time, as clients would, rather than
  // thousands of handshakes pending at once (which the engine refuses).
  std::vector<Fd> held(static_cast<size_t>(o.held));
  ForEachConnection(held.size(), kOpenThreads, [&](size_t i) {
    std::string error;
    auto fd = Connect(sa, &error);
    if (fd) error = EchoOnce(fd->get(), i, 0, o.size);
    if (error.empty()) {
      held[i] = std::move(*fd);
      ++alive;
    } else {
      rec.OpenFailed(error);
    }
    return true;
  });
  double open_s = SecondsSince(start);
  int64_t opened = alive.load();
  if (!o.ready.empty()) {
    if (FILE* f = std::fopen(o.ready.c_str(), "w")) std::fclose(f);
  }

  // New connections on a schedule: the k-th is due at churn_start + k / rate.
  // A worker late by more than a second counts it (the target is not met).
  phase = "churn";
  auto churn_start = Clock::now();
  auto churn_end = churn_start + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(o.seconds));
  std::atomic<int64_t> next_ticket{0};
  std::atomic<int64_t> late{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < o.workers && o.rate > 0; ++w) {
    workers.emplace_back([&] {
      for (;;) {
        int64_t k = next_ticket++;
        auto due =
            churn_start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                              static_cast<double>(k) / static_cast<double>(o.rate)));
        if (due >= churn_end) return;
        std::this_thread::sleep_until(due);
        if (Clock::now() - due > std::chrono::seconds(1)) ++late;
        auto t0 = Clock::now();
        std::string error;
        auto fd = Connect(sa, &error);
        if (fd) error = EchoOnce(fd->get(), static_cast<size_t>(k), 2, o.size);
        fd.reset();
        rec.NewConnection(std::chrono::duration<double, std::milli>(Clock::now() - t0).count(),
                          error);
      }
    });
  }
  // Every held connection echoes once per check_every seconds, spread evenly.
  auto check = [&](size_t i) {
    if (held[i].get() < 0) return;
    std::string error = EchoOnce(held[i].get(), i, 1, o.size);
    rec.HeldChecked(error);
    if (!error.empty()) {
      held[i].Reset();
      --alive;
    }
  };
  if (!held.empty()) {
    double gap = o.check_every / static_cast<double>(held.size());
    auto due = churn_start;
    for (size_t i = 0;; i = (i + 1) % held.size()) {
      due += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap));
      if (due >= churn_end) break;
      std::this_thread::sleep_until(due);
      check(i);
    }
  }
  for (auto& t : workers) t.join();
  double churn_s = SecondsSince(churn_start);

  phase = "close";
  for (size_t i = 0; i < held.size(); ++i) check(i);
  int64_t held_at_end = alive.load();
  held.clear();
  alive = 0;
  done = true;
  reporter.join();
  if (series != nullptr) std::fclose(series);

  SoakTally t = rec.Total();
  std::sort(t.new_ms.begin(), t.new_ms.end());
  std::printf("{\"connections\": %" PRId64 ", \"opened\": %" PRId64
              ", \"open_s\": %.2f, "
              "\"rate\": %" PRId64 ", \"seconds\": %.2f, \"workers\": %d, \"new_ok\": %" PRIu64
              ", \"new_per_s\": %.1f, \"late\": %" PRId64
              ", \"new_p50_ms\": %.2f, "
              "\"new_p99_ms\": %.2f, \"held_checked\": %" PRIu64 ", \"held_at_end\": %" PRId64
              ", \"errors\": %" PRIu64 ", \"error_kinds\": %s, \"client_cpu_s\": %.2f}\n",
              o.held, opened, open_s, o.rate, churn_s, o.workers, t.new_ok,
              static_cast<double>(t.new_ok) / churn_s, late.load(), Percentile(t.new_ms, 0.5),
              Percentile(t.new_ms, 0.99), t.held_checked, held_at_end,
              t.open_errors + t.new_errors + t.held_errors, KindsJson(t.error_kinds).c_str(),
              ProcessCpuSeconds() - cpu0);
  return 0;
}

void Usage() {
  std::fprintf(stderr,
               "usage:\n"
               "  loadgen server     --listen IP:PORT\n"
               "  loadgen throughput --connect IP:PORT --bytes N [--watch PID,...]\n"
               "  loadgen rr         --connect IP:PORT --count N [--size 64] [--warmup W]\n"
               "  loadgen connrate   --connect IP:PORT --concurrency C --seconds S [--size 64]\n"
               "  loadgen firstbyte  --connect IP:PORT --count N [--warmup W]\n"
               "  loadgen idle       --connect IP:PORT --connections N [--waves 1] [--hold 5]\n"
               "                     [--settle 10] [--size 64] [--watch PID,...]\n"
               "  loadgen soak       --connect IP:PORT --connections N --rate R --seconds S\n"
               "                     [--size 64] [--workers W] [--check-every 60]\n"
               "                     [--series FILE] [--interval 1] [--ready FILE]\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    Usage();
    return 2;
  }
  std::string mode = argv[1];
  auto flags = ParseFlags(argc, argv, 2);
  // The server and idle hold a descriptor per connection.
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  if (mode == "server") {
    Server server(ParseAddress(Need(flags, "listen")));
    server.Run();
  }
  std::vector<int> watched;
  if (flags.count("watch")) {
    std::string list = flags["watch"];
    for (size_t at = 0; at <= list.size();) {
      size_t end = std::min(list.find(',', at), list.size());
      std::string pid = list.substr(at, end - at);
      if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) {
        Die("--watch wants PID[,PID...]");
      }
      watched.push_back(std::stoi(pid));
      at = end + 1;
    }
  }
  if (mode == "throughput") {
    return RunThroughput(ParseAddress(Need(flags, "connect")),
                         static_cast<uint64_t>(NumberFlag(flags, "bytes")), watched);
  }
  if (mode == "firstbyte") {
    int64_t count = NumberFlag(flags, "count");
    if (count == 0) Die("--count must be positive");
    return RunFirstByte(ParseAddress(Need(flags, "connect")), count,
                        NumberFlag(flags, "warmup", 0));
  }
  size_t size = static_cast<size_t>(NumberFlag(flags, "size", 64));
  if (size == 0 || size > (1 << 20)) Die("--size must be 1..1048576");
  if (mode == "rr") {
    int64_t count = NumberFlag(flags, "count");
    if (count == 0) Die("--count must be positive");
    return RunRequestResponse(ParseAddress(Need(flags, "connect")), count,
                              NumberFlag(flags, "warmup", std::min<int64_t>(100, count / 10)),
                              size);
  }
  if (mode == "idle") {
    int64_t count = NumberFlag(flags, "connections");
    if (count == 0) Die("--connections must be positive");
    int64_t waves = NumberFlag(flags, "waves", 1);
    if (waves == 0) Die("--waves must be positive");
    return RunIdle(ParseAddress(Need(flags, "connect")), count, waves,
                   static_cast<double>(NumberFlag(flags, "hold", 5)),
                   static_cast<double>(NumberFlag(flags, "settle", 10)), size, watched);
  }
  if (mode == "soak") {
    SoakOptions o;
    o.held = NumberFlag(flags, "connections");
    o.rate = NumberFlag(flags, "rate");
    o.seconds = static_cast<double>(NumberFlag(flags, "seconds"));
    o.size = size;
    // Enough threads for the rate at 250 ms per connection; more if asked.
    o.workers =
        static_cast<int>(NumberFlag(flags, "workers", std::clamp<int64_t>(o.rate / 4, 8, 1024)));
    if (o.workers < 1 || o.workers > 4096) Die("--workers must be 1..4096");
    o.check_every = static_cast<double>(NumberFlag(flags, "check-every", 60));
    if (o.check_every < 1) Die("--check-every must be at least 1");
    o.interval = static_cast<double>(NumberFlag(flags, "interval", 1));
    if (o.interval < 1) Die("--interval must be at least 1");
    if (o.held == 0 && o.rate == 0) Die("--connections or --rate must be positive");
    if (flags.count("series")) o.series = Need(flags, "series");
    if (flags.count("ready")) o.ready = Need(flags, "ready");
    return RunSoak(ParseAddress(Need(flags, "connect")), o);
  }
  if (mode == "connrate") {
    int64_t concurrency = NumberFlag(flags, "concurrency");
    if (concurrency < 1 || concurrency > 1024) Die("--concurrency must be 1..1024");
    int64_t secs = NumberFlag(flags, "seconds");
    if (secs < 1) Die("--seconds must be positive");
    return RunConnectionRate(ParseAddress(Need(flags, "connect")), static_cast<int>(concurrency),
                             static_cast<double>(secs), size);
  }
  Usage();
  return 2;
}
