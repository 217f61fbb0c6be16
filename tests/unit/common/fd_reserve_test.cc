#include "ktrust/common/fd_reserve.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace ktrust {
namespace {

using ::testing::HasSubstr;

// A loopback listener (blocking, as the engine's are) and a client
// connected to it, waiting in its queue.
struct Queued {
  UniqueFd listener;
  UniqueFd client;
};

Queued ListenAndConnect() {
  Queued q;
  q.listener.Reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(q.listener.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      listen(q.listener.get(), 8) != 0 ||
      getsockname(q.listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return {};
  }
  q.client.Reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (connect(q.client.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0) return {};
  return q;
}

// In a child (the limit is the process's): with every descriptor taken,
// accept fails with EMFILE and leaves the client queued; the reserve takes
// it, and is held again afterwards.
void AcceptAtTheLimit() {
  Queued q = ListenAndConnect();
  if (!q.client.valid()) std::_Exit(2);
  FdReserve reserve;
  if (!reserve.held()) std::_Exit(3);
  rlimit limit{64, 64};
  if (setrlimit(RLIMIT_NOFILE, &limit) != 0) std::_Exit(4);
  std::vector<UniqueFd> filler;
  for (;;) {
    UniqueFd fd(dup(0));
    if (!fd.valid()) break;
    filler.push_back(std::move(fd));
  }
  if (accept4(q.listener.get(), nullptr, nullptr, SOCK_NONBLOCK) >= 0 || errno != EMFILE) {
    std::fprintf(stderr, "accept did not fail with EMFILE\n");
    std::_Exit(5);
  }
  auto taken = reserve.AcceptWithReserve(q.listener.get());
  if (!taken.ok()) {
    std::fprintf(stderr, "%s\n", taken.status().ToString().c_str());
    std::_Exit(6);
  }
  // The taken connection holds the reserve's descriptor until it is closed;
  // the next call takes the reserve back.
  taken->Reset();
  auto nothing = reserve.AcceptWithReserve(q.listener.get());
  if (!absl::IsUnavailable(nothing.status()) || !reserve.held()) {
    std::fprintf(stderr, "after closing: %s, held %d\n", nothing.status().ToString().c_str(),
                 reserve.held());
    std::_Exit(7);
  }
  std::_Exit(0);
}

TEST(FdReserveTest, TakesAQueuedConnectionAtTheFdLimit) {
  EXPECT_EXIT(AcceptAtTheLimit(), ::testing::ExitedWithCode(0), "");
}

// Nothing queued: Unavailable at once, even on a blocking listener (the
// engine's loop must never wait in accept).
TEST(FdReserveTest, NothingQueuedIsUnavailableWithoutBlocking) {
  Queued q = ListenAndConnect();
  ASSERT_TRUE(q.client.valid());
  FdReserve reserve;
  auto first = reserve.AcceptWithReserve(q.listener.get());
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = reserve.AcceptWithReserve(q.listener.get());
  EXPECT_TRUE(absl::IsUnavailable(second.status())) << second.status();
  EXPECT_TRUE(reserve.held());
}

TEST(FdReserveTest, SaysWhichLimitWasReached) {
  EXPECT_EQ(DescriptorErrorOf(absl::ErrnoToStatus(EMFILE, "socket")), EMFILE);
  EXPECT_EQ(DescriptorErrorOf(absl::ErrnoToStatus(ENFILE, "socket")), ENFILE);
  EXPECT_EQ(DescriptorErrorOf(absl::ErrnoToStatus(ENOMEM, "socket")), 0);
  EXPECT_EQ(MemoryErrorOf(absl::ErrnoToStatus(ENOMEM, "socket")), ENOMEM);
  EXPECT_EQ(MemoryErrorOf(absl::ErrnoToStatus(ENOBUFS, "socket")), ENOBUFS);
  EXPECT_EQ(MemoryErrorOf(absl::ResourceExhaustedError("create SSL: error:...:malloc failure")),
            ENOMEM);
  EXPECT_EQ(MemoryErrorOf(absl::ErrnoToStatus(EMFILE, "socket")), 0);
  EXPECT_EQ(MemoryErrorOf(absl::InternalError("create SSL: malloc failure")), 0);
  EXPECT_EQ(DescriptorErrorOf(absl::ErrnoToStatus(ECONNREFUSED, "connect")), 0);
  EXPECT_THAT(
      OutOfDescriptorsReason(EMFILE),
      HasSubstr("the agent is out of file descriptors (Too many open files, RLIMIT_NOFILE"));
  EXPECT_THAT(OutOfDescriptorsReason(ENFILE), HasSubstr("the system is out of file descriptors"));
}

}  // namespace
}  // namespace ktrust
