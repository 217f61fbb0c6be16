// SplicePump's handover flush over real descriptors: a TCP source and a
// small pipe as the sink, so that "the sink is full" is exact.
#include "dataplane/pump.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "unit/tls/tls_test_peers.h"

namespace ktrust {
namespace {

struct Pipe {
  UniqueFd read, write;
  Pipe() {
    int fds[2];
    EXPECT_EQ(pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
    read.Reset(fds[0]);
    write.Reset(fds[1]);
  }
};

std::string Drain(int fd) {
  std::string out;
  char buffer[65536];
  ssize_t n;
  while ((n = ::read(fd, buffer, sizeof(buffer))) > 0) out.append(buffer, static_cast<size_t>(n));
  return out;
}

TEST(SplicePumpTest, FlushWritesWhatItHoldsAndReadsNothingMore) {
  testing::TcpPair tcp = testing::ConnectedTcpPair();
  fcntl(tcp.server.get(), F_SETFL, O_NONBLOCK);
  Pipe sink;
  ASSERT_GT(fcntl(sink.write.get(), F_SETPIPE_SZ, 4096), 0);
  auto pump = SplicePump::Create(tcp.server.get(), sink.write.get(), nullptr, nullptr);
  ASSERT_TRUE(pump.ok()) << pump.status();

  std::string first(32 * 1024, 'a');
  ASSERT_EQ(send(tcp.client.get(), first.data(), first.size(), 0),
            static_cast<ssize_t>(first.size()));
  PumpStep step = (*pump)->Step();
  ASSERT_EQ(step.status, PumpStatus::kBlocked);
  EXPECT_EQ(step.wait.fd, sink.write.get()) << "it holds bytes its sink refused";
  uint64_t moved = step.bytes;

  // More arrives; a flush must not read it, only write what is held.
  ASSERT_EQ(send(tcp.client.get(), "later", 5, 0), 5);
  std::string through;
  while (true) {
    through += Drain(sink.read.get());
    PumpStep flush = (*pump)->Flush();
    moved += flush.bytes;
    ASSERT_NE(flush.status, PumpStatus::kFailed) << flush.error;
    if (flush.status == PumpStatus::kFinished) break;
    EXPECT_EQ(flush.wait.fd, sink.write.get());
    EXPECT_EQ(flush.wait.events, POLLOUT);
  }
  through += Drain(sink.read.get());
  EXPECT_FALSE((*pump)->source_ended());
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
  auto pump = SplicePump::Create(source.server.get(), sink.server.get(), nullptr, nullptr);
  ASSERT_TRUE(pump.ok()) << pump.status();
  shutdown(source.client.get(), SHUT_WR);
  PumpStep step = (*pump)->Step();
  EXPECT_EQ(step.status, PumpStatus::kFinished);
  EXPECT_TRUE((*pump)->source_ended());
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

}  // namespace
}  // namespace ktrust
