#include "ktrust/zerohop/notify.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "gtest/gtest.h"
#include "ktrust/zerohop/proc_mem.h"
#include "unit/zerohop/filtered_child.h"

namespace ktrust::zerohop {
namespace {

constexpr char kMarker[] = "ktrust-zero-hop";  // 15 bytes + NUL

// A child that connects a blocking TCP socket to `to`, reports connect's
// errno (0 on success) and, if connected, writes kMarker on it.
std::function<void(const ChildChannel&)> ConnectAndWrite(SocketAddress to) {
  return [to](const ChildChannel& ch) {
    int s = socket(to.family(), SOCK_STREAM, 0);
    int rc = connect(s, to.get(), to.size());
    ch.Report(rc == 0 ? 0 : errno);
    if (rc == 0) (void)!write(s, kMarker, sizeof(kMarker));
    ch.AwaitGo();
  };
}

// A child connecting to a listener of the test's, and its connect's
// notification, received.
struct ConnectingChild {
  TestListener server;
  std::unique_ptr<FilteredChild> child;
  Notification notification;
};
absl::StatusOr<ConnectingChild> StartConnectingChild() {
  ConnectingChild c;
  absl::StatusOr<TestListener> server = ListenOnLoopback(AF_INET);
  if (!server.ok()) return server.status();
  c.server = std::move(*server);
  auto child = FilteredChild::Start(ConnectAndWrite(c.server.address));
  if (!child.ok()) return child.status();
  c.child = std::move(*child);
  absl::StatusOr<Notification> n = c.child->NextNotification();
  if (!n.ok()) return n.status();
  c.notification = *n;
  return c;
}

TEST(NotifyTest, RefusedConnectFailsWithTheAnsweredErrnoAndNeverConnects) {
  absl::StatusOr<ConnectingChild> c = StartConnectingChild();
  ASSERT_TRUE(c.ok()) << c.status();
  const Notification& n = c->notification;
  FilteredChild& child = *c->child;
  EXPECT_EQ(n.syscall_nr, SYS_connect);
  // Not an error number: refused rather than turned into a success.
  EXPECT_EQ(child.listener().RespondError(n.id, 0).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(child.listener().RespondError(n.id, ECONNREFUSED).ok());
  absl::StatusOr<int64_t> err = child.NextReport();
  ASSERT_TRUE(err.ok()) << err.status();
  EXPECT_EQ(*err, ECONNREFUSED);
  EXPECT_FALSE(HasPendingConnection(c->server.fd.get()));
}

// The outbound flow without TLS: the agent connects the workload's own
// socket and answers 0; the workload's connect returns a connected socket.
TEST(NotifyTest, ConnectOnTheTakenSocketConnectsTheWorkloadsSocket) {
  absl::StatusOr<ConnectingChild> c = StartConnectingChild();
  ASSERT_TRUE(c.ok()) << c.status();
  const Notification& n = c->notification;
  FilteredChild& child = *c->child;
  NotificationListener& listener = child.listener();
  absl::StatusOr<ConnectTarget> target = ReadConnectTarget(listener, n);
  ASSERT_TRUE(target.ok()) << target.status();
  ASSERT_TRUE(target->is_inet());
  absl::StatusOr<UniqueFd> dup = TakeNotifiedFd(listener, n);
  ASSERT_TRUE(dup.ok()) << dup.status();
  ASSERT_EQ(connect(dup->get(), target->address->get(), target->address->size()), 0)
      << strerror(errno);
  ASSERT_TRUE(listener.RespondValue(n.id, 0).ok());
  dup->Reset();
  absl::StatusOr<int64_t> err = child.NextReport();
  ASSERT_TRUE(err.ok()) << err.status();
  EXPECT_EQ(*err, 0);
  absl::StatusOr<UniqueFd> accepted = AcceptWithin(c->server.fd.get());
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  char got[sizeof(kMarker)] = {};
  ASSERT_EQ(recv(accepted->get(), got, sizeof(got), MSG_WAITALL), sizeof(got));
  EXPECT_STREQ(got, kMarker);
}

// A child that accepts on a listener of its own (accept, or accept4 with
// SOCK_CLOEXEC), then reports the fd's close-on-exec bit and whether it
// read kMarker from it.
std::function<void(const ChildChannel&)> AcceptAndRead(bool use_accept4) {
  return [use_accept4](const ChildChannel& ch) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in any{};
    any.sin_family = AF_INET;
    any.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(l, reinterpret_cast<sockaddr*>(&any), sizeof(any)) != 0 || listen(l, 1) != 0) {
      ch.Report(-errno);
      return;
    }
    int fd = use_accept4 ? accept4(l, nullptr, nullptr, SOCK_CLOEXEC) : accept(l, nullptr, nullptr);
    if (fd < 0) {
      ch.Report(-errno);
      return;
    }
    ch.Report((fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
    char got[sizeof(kMarker)] = {};
    ssize_t n = recv(fd, got, sizeof(got), MSG_WAITALL);
    ch.Report(n == sizeof(got) && std::memcmp(got, kMarker, sizeof(got)) == 0);
  };
}

void ExpectAcceptGetsTheAddedSocket(bool use_accept4) {
  auto child = FilteredChild::Start(AcceptAndRead(use_accept4));
  ASSERT_TRUE(child.ok()) << child.status();
  absl::StatusOr<Notification> n = (*child)->NextNotification();
  ASSERT_TRUE(n.ok()) << n.status();
  ASSERT_EQ(n->syscall_nr, use_accept4 ? SYS_accept4 : SYS_accept);
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  UniqueFd ours(pair[0]), theirs(pair[1]);
  ASSERT_EQ(write(ours.get(), kMarker, sizeof(kMarker)), sizeof(kMarker));
  bool cloexec = use_accept4 && (n->args[3] & SOCK_CLOEXEC) != 0;
  absl::StatusOr<int> target =
      (*child)->listener().AddFdSend(n->id, theirs.get(), cloexec ? O_CLOEXEC : 0);
  ASSERT_TRUE(target.ok()) << target.status();
  EXPECT_GE(*target, 0);
  absl::StatusOr<int64_t> child_cloexec = (*child)->NextReport();
  ASSERT_TRUE(child_cloexec.ok()) << child_cloexec.status();
  EXPECT_EQ(*child_cloexec, use_accept4 ? 1 : 0);
  absl::StatusOr<int64_t> read_marker = (*child)->NextReport();
  ASSERT_TRUE(read_marker.ok()) << read_marker.status();
  EXPECT_EQ(*read_marker, 1);
}

TEST(NotifyTest, AcceptReturnsTheSocketTheAgentAdds) { ExpectAcceptGetsTheAddedSocket(false); }

TEST(NotifyTest, Accept4ReturnsTheSocketTheAgentAddsWithItsFlags) {
  ExpectAcceptGetsTheAddedSocket(true);
}

TEST(NotifyTest, ANotificationOfAKilledThreadIsNoLongerValid) {
  absl::StatusOr<ConnectingChild> c = StartConnectingChild();
  ASSERT_TRUE(c.ok()) << c.status();
  const Notification& n = c->notification;
  FilteredChild& child = *c->child;
  ASSERT_TRUE(child.listener().IdValid(n.id).ok());
  ASSERT_EQ(kill(child.pid(), SIGKILL), 0);
  ASSERT_TRUE(child.Wait().ok());
  EXPECT_EQ(child.listener().IdValid(n.id).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(child.listener().RespondValue(n.id, 0).code(), absl::StatusCode::kNotFound);
  // With no task left under the filter, the listener says so.
  EXPECT_EQ(child.listener().WaitReadable(kTestTimeout).code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace ktrust::zerohop
