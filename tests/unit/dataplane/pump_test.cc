// SplicePump and its loop's PipePool, over loopback TCP sockets: a pump
// holds a pipe only while its sink is behind, and borrowing pipes loses,
// mixes up and reorders nothing; and its handover flush.
#include "dataplane/pump.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "dataplane/stream_ends.h"
#include "unit/common/no_free_descriptors.h"
#include "unit/tls/tls_test_peers.h"

namespace ktrust {
namespace {

using testing::ConnectedTcpPair;
using testing::TcpPair;

void SetNonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

// Waits (at most 10 s) until `fd` is readable.
bool Readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  int r;
  do {
    r = poll(&p, 1, 10000);
  } while (r < 0 && errno == EINTR);
  return r == 1;
}

// Waits (at most 10 s) until either is readable.
bool EitherReadable(int a, int b) {
  pollfd p[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
  int r;
  do {
    r = poll(p, 2, 10000);
  } while (r < 0 && errno == EINTR);
  return r >= 1;
}

// Different at every offset and for every `seed`, so a byte out of place
// or from another stream shows.
std::string Pattern(size_t size, int seed) {
  std::string text(size, '\0');
  for (size_t i = 0; i < size; ++i) text[i] = static_cast<char>('a' + (i * 7 + seed * 13) % 26);
  return text;
}

bool SendAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// What is readable on nonblocking `fd` now.
std::string Drain(int fd) {
  std::string out;
  char buf[65536];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0)
    out.append(buf, static_cast<size_t>(n));
  return out;
}

// source writer -> [source] pump [sink] -> sink reader
struct Streams {
  TcpPair source = ConnectedTcpPair();  // .client writes, .server is the pump's source
  TcpPair sink = ConnectedTcpPair();    // .client is the pump's sink, .server reads
  Streams() {
    SetNonblocking(source.server.get());
    SetNonblocking(sink.client.get());
    SetNonblocking(sink.server.get());
  }
};

TEST(PipePoolTest, AnIdlePumpHoldsNoPipeAndIdlePumpsShareOne) {
  PipePool pool;
  Streams a, b;
  SplicePump pa(a.source.server.get(), a.sink.client.get(), pool, nullptr, nullptr);
  SplicePump pb(b.source.server.get(), b.sink.client.get(), pool, nullptr, nullptr);
  for (int round = 0; round < 3; ++round) {
    for (auto [streams, pump] : {std::pair{&a, &pa}, std::pair{&b, &pb}}) {
      std::string sent = Pattern(100 * 1024, round * 2 + (pump == &pb));
      ASSERT_TRUE(SendAll(streams->source.client.get(), sent));
      std::string got;
      while (got.size() < sent.size()) {
        ASSERT_TRUE(EitherReadable(streams->source.server.get(), streams->sink.server.get()));
        PumpStep step = pump->Step();
        ASSERT_EQ(step.status, PumpStatus::kBlocked) << step.error;
        got += Drain(streams->sink.server.get());
      }
      // Drained again: the step that found the source empty gave it back.
      EXPECT_FALSE(pump->holds_pipe());
      EXPECT_TRUE(got == sent) << "round " << round << ": what arrived differs from what was sent";
    }
    std::printf("round %d: %zu pipes lent, %zu idle in the pool\n", round, pool.lent(),
                pool.idle());
    EXPECT_EQ(pool.lent(), 0u);
    EXPECT_EQ(pool.idle(), 1u) << "two pumps that never move bytes at once need one pipe";
  }
}

TEST(PipePoolTest, APumpWhoseSinkIsBehindKeepsItsPipeUntilEveryByteIsTaken) {
  PipePool pool;
  Streams s;
  int small = 4096;
  setsockopt(s.sink.client.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
  SplicePump pump(s.source.server.get(), s.sink.client.get(), pool, nullptr, nullptr);
  std::string sent = Pattern(4 << 20, 7);
  std::string got;
  size_t written = 0;
  bool saw_held = false;
  SetNonblocking(s.source.client.get());
  while (got.size() < sent.size()) {
    if (written < sent.size()) {
      ssize_t n = send(s.source.client.get(), sent.data() + written, sent.size() - written,
                       MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) written += static_cast<size_t>(n);
    }
    PumpStep step = pump.Step();
    ASSERT_EQ(step.status, PumpStatus::kBlocked) << step.error;
    if (step.wait.fd == s.sink.client.get()) {
      // Bytes wait in the pipe for the sink: the pipe is this pump's.
      ASSERT_TRUE(pump.holds_pipe());
      EXPECT_EQ(pool.lent(), 1u);
      saw_held = true;
    }
    // The reader takes its time: one read per step, when the pump waits.
    pollfd p[2] = {{s.sink.server.get(), POLLIN, 0}, {step.wait.fd, step.wait.events, 0}};
    ASSERT_GT(poll(p, 2, 10000), 0) << "neither the reader nor the pump can go on";
    char buf[16384];
    ssize_t n = recv(s.sink.server.get(), buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) got.append(buf, static_cast<size_t>(n));
  }
  EXPECT_TRUE(saw_held) << "the sink never fell behind; the test proved nothing";
  EXPECT_TRUE(got == sent) << "what arrived differs from what was sent";
  EXPECT_FALSE(pump.holds_pipe());
  EXPECT_EQ(pool.lent(), 0u);
}

TEST(PipePoolTest, APipeWithBytesLeftIsNeverLentAgain) {
  PipePool pool;
  auto pipe = pool.Take();
  ASSERT_TRUE(pipe.ok()) << pipe.status();
  ASSERT_EQ(write(pipe->write.get(), "x", 1), 1);
  pool.Give(*std::move(pipe), false);
  EXPECT_EQ(pool.idle(), 0u);
  auto next = pool.Take();
  ASSERT_TRUE(next.ok()) << next.status();
  char c;
  EXPECT_EQ(read(next->read.get(), &c, 1), -1) << "a new pipe holds nothing";
  EXPECT_EQ(errno, EAGAIN);
}

// Out of descriptors, a pump that has bytes to move reports kStarved and
// leaves them in the socket; once a pipe can be had they arrive intact.
TEST(PipePoolTest, APumpWithoutAPipeLosesNothing) {
  PipePool pool;
  Streams s;
  SplicePump pump(s.source.server.get(), s.sink.client.get(), pool, nullptr, nullptr);
  std::string sent = Pattern(64 * 1024, 3);
  ASSERT_TRUE(SendAll(s.source.client.get(), sent));
  ASSERT_TRUE(Readable(s.source.server.get()));

  testing::NoFreeDescriptors no_descriptors;
  ASSERT_TRUE(no_descriptors.active());
  PumpStep starved = pump.Step();
  no_descriptors.Restore();
  std::printf("without descriptors: status %d, \"%s\"\n", static_cast<int>(starved.status),
              starved.error.c_str());
  EXPECT_EQ(starved.status, PumpStatus::kStarved);
  EXPECT_NE(starved.error.find("pipe2"), std::string::npos) << starved.error;
  EXPECT_EQ(starved.bytes, 0u);
  EXPECT_EQ(pool.lent(), 0u);

  std::string got;
  while (got.size() < sent.size()) {
    PumpStep step = pump.Step();
    ASSERT_EQ(step.status, PumpStatus::kBlocked) << step.error;
    got += Drain(s.sink.server.get());
    if (got.size() < sent.size()) {
      ASSERT_TRUE(Readable(s.sink.server.get()));
    }
  }
  EXPECT_TRUE(got == sent) << "what arrived differs from what was sent";
}

// The handover flush, over a small pipe as the sink so that "the sink is
// full" is exact.
// What is in nonblocking pipe `fd` now.
std::string DrainPipe(int fd) {
  std::string out;
  char buffer[65536];
  ssize_t n;
  while ((n = ::read(fd, buffer, sizeof(buffer))) > 0) out.append(buffer, static_cast<size_t>(n));
  return out;
}

struct Pipe {
  UniqueFd read, write;
  Pipe() {
    int fds[2];
    EXPECT_EQ(pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
    read.Reset(fds[0]);
    write.Reset(fds[1]);
  }
};

// A source that never runs dry (here: a full pipe) does not keep its loop:
// one step moves about kStepBudget, then waits on the source (readable, so
// at once), and every byte still arrives, in order.
TEST(SplicePumpTest, AStepMovesItsShareAndLetsTheLoopServeOthers) {
  Pipe source, sink;
  constexpr int kSize = 1 << 20;
  // fs.pipe-max-size is 1 MiB unless lowered.
  ASSERT_GE(fcntl(source.write.get(), F_SETPIPE_SZ, kSize), kSize);
  ASSERT_GE(fcntl(sink.write.get(), F_SETPIPE_SZ, kSize), kSize);
  std::string sent = Pattern(kSize, 3);
  ASSERT_EQ(write(source.write.get(), sent.data(), sent.size()), kSize);
  PipePool pool;
  SplicePump pump(source.read.get(), sink.write.get(), pool, nullptr, nullptr);
  PumpStep first = pump.Step();
  ASSERT_EQ(first.status, PumpStatus::kBlocked) << first.error;
  std::printf("first step: %llu bytes of %d\n", static_cast<unsigned long long>(first.bytes),
              kSize);
  EXPECT_GE(first.bytes, SplicePump::kStepBudget);
  EXPECT_LT(first.bytes, static_cast<uint64_t>(kSize)) << "one step took the whole stream";
  EXPECT_EQ(first.wait.fd, source.read.get());
  EXPECT_EQ(first.wait.events, POLLIN);
  uint64_t moved = first.bytes;
  for (int steps = 0; moved < static_cast<uint64_t>(kSize) && steps < 64; ++steps) {
    PumpStep step = pump.Step();
    ASSERT_EQ(step.status, PumpStatus::kBlocked) << step.error;
    moved += step.bytes;
  }
  EXPECT_EQ(moved, static_cast<uint64_t>(kSize));
  EXPECT_TRUE(DrainPipe(sink.read.get()) == sent) << "what arrived differs from what was sent";
}

TEST(SplicePumpTest, FlushWritesWhatItHoldsAndReadsNothingMore) {
  testing::TcpPair tcp = testing::ConnectedTcpPair();
  fcntl(tcp.server.get(), F_SETFL, O_NONBLOCK);
  Pipe sink;
  ASSERT_GT(fcntl(sink.write.get(), F_SETPIPE_SZ, 4096), 0);
  PipePool pool;
  auto pump =
      std::make_unique<SplicePump>(tcp.server.get(), sink.write.get(), pool, nullptr, nullptr);

  std::string first(32 * 1024, 'a');
  ASSERT_EQ(send(tcp.client.get(), first.data(), first.size(), 0),
            static_cast<ssize_t>(first.size()));
  PumpStep step = pump->Step();
  ASSERT_EQ(step.status, PumpStatus::kBlocked);
  EXPECT_EQ(step.wait.fd, sink.write.get()) << "it holds bytes its sink refused";
  uint64_t moved = step.bytes;

  // More arrives; a flush must not read it, only write what is held.
  ASSERT_EQ(send(tcp.client.get(), "later", 5, 0), 5);
  std::string through;
  while (true) {
    through += DrainPipe(sink.read.get());
    PumpStep flush = pump->Flush();
    moved += flush.bytes;
    ASSERT_NE(flush.status, PumpStatus::kFailed) << flush.error;
    if (flush.status == PumpStatus::kFinished) break;
    EXPECT_EQ(flush.wait.fd, sink.write.get());
    EXPECT_EQ(flush.wait.events, POLLOUT);
  }
  through += DrainPipe(sink.read.get());
  EXPECT_FALSE(pump->source_ended());
  EXPECT_EQ(moved, through.size());
  // What it had read, all of it and nothing else: "later" is still in the
  // socket, for whoever owns it next.
  EXPECT_EQ(through, first.substr(0, through.size()));
  char rest[64 * 1024];
  ssize_t n = recv(tcp.server.get(), rest, sizeof(rest), MSG_DONTWAIT);
  ASSERT_GT(n, 0);
  EXPECT_EQ(through + std::string(rest, static_cast<size_t>(n)), first + "later");
}

TEST(SplicePumpTest, FlushOfAnEndedSourceHalfClosesTheSink) {
  testing::TcpPair source = testing::ConnectedTcpPair();
  testing::TcpPair sink = testing::ConnectedTcpPair();
  fcntl(source.server.get(), F_SETFL, O_NONBLOCK);
  fcntl(sink.server.get(), F_SETFL, O_NONBLOCK);
  PipePool pool;
  auto pump =
      std::make_unique<SplicePump>(source.server.get(), sink.server.get(), pool, nullptr, nullptr);
  shutdown(source.client.get(), SHUT_WR);
  PumpStep step = pump->Step();
  EXPECT_EQ(step.status, PumpStatus::kFinished);
  EXPECT_TRUE(pump->source_ended());
  char byte;
  EXPECT_EQ(recv(sink.client.get(), &byte, 1, 0), 0) << "the sink was shut down";
}

TEST(CopyPumpTest, CannotBeQuiescedForAHandover) {
  struct NoEnd : StreamEnd {
    int fd() const override { return -1; }
    Io Read(char*, size_t) override { return {Io::kWouldBlock, 0, POLLIN, ""}; }
    Io Write(const char*, size_t) override { return {Io::kWouldBlock, 0, POLLOUT, ""}; }
    Io ShutdownWrite() override { return {}; }
  } a, b;
  char scratch[CopyPump::kBufferSize];
  CopyPump pump(a, b, scratch);
  PumpStep flush = pump.Flush();
  EXPECT_EQ(flush.status, PumpStatus::kFailed);
  EXPECT_NE(flush.error.find("cannot be quiesced"), std::string::npos);
}

// A request/response exchange reads each side once: after a short read the
// pump waits for POLLIN instead of reading again only to hear EAGAIN (that
// read was a third of the agent's system calls on small requests).
TEST(CopyPumpTest, AShortReadWaitsForPollInsteadOfReadingAgain) {
  struct CountingEnd : SocketEnd {
    using SocketEnd::SocketEnd;
    Io Read(char* buf, size_t len) override {
      ++reads;
      return SocketEnd::Read(buf, len);
    }
    int reads = 0;
  };
  TcpPair source = ConnectedTcpPair();
  TcpPair sink = ConnectedTcpPair();
  SetNonblocking(source.server.get());
  SetNonblocking(sink.server.get());
  CountingEnd from(source.server.get());
  SocketEnd to(sink.server.get());
  std::vector<char> scratch(CopyPump::kBufferSize);
  CopyPump pump(from, to, scratch.data());

  ASSERT_TRUE(SendAll(source.client.get(), "GET key\r\n"));
  ASSERT_TRUE(Readable(source.server.get()));
  PumpStep step = pump.Step();
  EXPECT_EQ(step.status, PumpStatus::kBlocked);
  EXPECT_EQ(step.bytes, 9u);
  EXPECT_EQ(step.wait.fd, source.server.get());
  EXPECT_EQ(step.wait.events, POLLIN);
  EXPECT_EQ(from.reads, 1) << "reads for one short request";

  // More than a buffer's worth at once: every byte still arrives, in order.
  std::string bulk = Pattern(CopyPump::kBufferSize * 2 + 100, 1);
  std::thread writer([&] { SendAll(source.client.get(), bulk); });
  const std::string want = "GET key\r\n" + bulk;
  std::string got;
  while (got.size() < want.size()) {
    step = pump.Step();
    ASSERT_NE(step.status, PumpStatus::kFailed) << step.error;
    char buf[65536];
    ssize_t n;
    while ((n = recv(sink.client.get(), buf, sizeof(buf), MSG_DONTWAIT)) > 0) got.append(buf, n);
    if (got.size() < want.size()) {
      ASSERT_TRUE(EitherReadable(source.server.get(), sink.client.get()));
    }
  }
  writer.join();
  EXPECT_TRUE(got == want) << "the bytes arrived changed (" << got.size() << " of " << want.size()
                           << ")";
}

// A sender as fast as the pump gets its share per step, not the loop: the
// step ends past kStepBudget and waits for POLLIN, which fires at once.
TEST(CopyPumpTest, AStepMovesItsShareAndLetsTheLoopServeOthers) {
  constexpr size_t kStream = size_t{4} << 20;
  struct FastSource : StreamEnd {
    int fd() const override { return 7; }
    Io Read(char* buf, size_t len) override {
      if (left == 0) return {Io::kEof, 0, 0, ""};
      size_t n = std::min(len, left);
      std::memset(buf, 'x', n);
      left -= n;
      return {Io::kOk, n, 0, ""};  // a full buffer each time: never drained
    }
    Io Write(const char*, size_t) override { return {Io::kError, 0, 0, "not a sink"}; }
    Io ShutdownWrite() override { return {}; }
    size_t left = kStream;
  } source;
  struct TakesAll : StreamEnd {
    int fd() const override { return 8; }
    Io Read(char*, size_t) override { return {Io::kError, 0, 0, "not a source"}; }
    Io Write(const char*, size_t len) override {
      taken += len;
      return {Io::kOk, len, 0, ""};
    }
    Io ShutdownWrite() override { return {}; }
    size_t taken = 0;
  } sink;
  std::vector<char> scratch(CopyPump::kBufferSize);
  CopyPump pump(source, sink, scratch.data());
  PumpStep first = pump.Step();
  std::printf("first step: %llu bytes of %zu\n", static_cast<unsigned long long>(first.bytes),
              kStream);
  ASSERT_EQ(first.status, PumpStatus::kBlocked) << "one step took the whole stream";
  EXPECT_GE(first.bytes, Pump::kStepBudget);
  EXPECT_LT(first.bytes, Pump::kStepBudget + CopyPump::kBufferSize);
  EXPECT_EQ(first.wait.fd, 7);
  EXPECT_EQ(first.wait.events, POLLIN);
  PumpStep step = first;
  for (int steps = 0; step.status == PumpStatus::kBlocked && steps < 64; ++steps) {
    step = pump.Step();
  }
  EXPECT_EQ(step.status, PumpStatus::kFinished);
  EXPECT_EQ(sink.taken, kStream);
}

}  // namespace
}  // namespace ktrust
