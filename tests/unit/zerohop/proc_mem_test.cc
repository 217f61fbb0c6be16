#include "ktrust/zerohop/proc_mem.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "gtest/gtest.h"
#include "unit/zerohop/filtered_child.h"

namespace ktrust::zerohop {
namespace {

// A child that calls connect(socket(family), addr, len) once and reports
// connect's errno (0 on success).
std::function<void(const ChildChannel&)> ConnectRaw(int family, sockaddr_storage addr,
                                                    socklen_t len) {
  return [family, addr, len](const ChildChannel& ch) {
    int s = socket(family, SOCK_STREAM, 0);
    int rc = connect(s, reinterpret_cast<const sockaddr*>(&addr), len);
    ch.Report(rc == 0 ? 0 : errno);
  };
}

std::function<void(const ChildChannel&)> ConnectTo(const SocketAddress& to) {
  sockaddr_storage addr{};
  std::memcpy(&addr, to.get(), to.size());
  return ConnectRaw(to.family(), addr, to.size());
}

void ExpectReadsTheDestination(int family) {
  absl::StatusOr<TestListener> server = ListenOnLoopback(family);
  if (!server.ok() && family == AF_INET6) GTEST_SKIP() << "no IPv6 loopback: " << server.status();
  ASSERT_TRUE(server.ok()) << server.status();
  auto child = FilteredChild::Start(ConnectTo(server->address));
  ASSERT_TRUE(child.ok()) << child.status();
  absl::StatusOr<Notification> n = (*child)->NextNotification();
  ASSERT_TRUE(n.ok()) << n.status();
  absl::StatusOr<ConnectTarget> target = ReadConnectTarget((*child)->listener(), *n);
  ASSERT_TRUE(target.ok()) << target.status();
  EXPECT_EQ(target->family, family);
  ASSERT_TRUE(target->is_inet());
  EXPECT_EQ(target->address->ToString(), server->address.ToString());
  ASSERT_TRUE((*child)->listener().RespondError(n->id, ECONNREFUSED).ok());
  absl::StatusOr<int64_t> err = (*child)->NextReport();
  ASSERT_TRUE(err.ok()) << err.status();
  EXPECT_EQ(*err, ECONNREFUSED);
}

TEST(ProcMemTest, ReadsAnIpv4Destination) { ExpectReadsTheDestination(AF_INET); }
TEST(ProcMemTest, ReadsAnIpv6Destination) { ExpectReadsTheDestination(AF_INET6); }

// The child's connect reads as `family_read` and not mesh; answered with
// Continue, the kernel judges it and fails it with `errno_after_continue`.
void ExpectNotMesh(int family, sockaddr_storage addr, socklen_t len, int family_read,
                   int errno_after_continue) {
  auto child = FilteredChild::Start(ConnectRaw(family, addr, len));
  ASSERT_TRUE(child.ok()) << child.status();
  absl::StatusOr<Notification> n = (*child)->NextNotification();
  ASSERT_TRUE(n.ok()) << n.status();
  absl::StatusOr<ConnectTarget> target = ReadConnectTarget((*child)->listener(), *n);
  ASSERT_TRUE(target.ok()) << target.status();
  EXPECT_EQ(target->family, family_read);
  EXPECT_FALSE(target->is_inet());
  ASSERT_TRUE((*child)->listener().Continue(n->id).ok());
  absl::StatusOr<int64_t> err = (*child)->NextReport();
  ASSERT_TRUE(err.ok()) << err.status();
  EXPECT_EQ(*err, errno_after_continue);
}

TEST(ProcMemTest, AnAfUnixDestinationIsNotMesh) {
  sockaddr_storage addr{};
  auto* un = reinterpret_cast<sockaddr_un*>(&addr);
  un->sun_family = AF_UNIX;
  // An abstract name nobody listens on: Continue lets the kernel refuse it.
  constexpr char kName[] = "\0ktrust-zerohop-test-nobody";
  std::memcpy(un->sun_path, kName, sizeof(kName) - 1);
  ExpectNotMesh(AF_UNIX, addr, offsetof(sockaddr_un, sun_path) + sizeof(kName) - 1, AF_UNIX,
                ECONNREFUSED);
}

// 127.0.0.1:9 as a sockaddr_in in a sockaddr_storage.
sockaddr_storage Loopback4Discard() {
  sockaddr_storage addr{};
  auto* in = reinterpret_cast<sockaddr_in*>(&addr);
  in->sin_family = AF_INET;
  in->sin_port = htons(9);
  in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

TEST(ProcMemTest, AnIpv4AddressTooShortIsNotMesh) {
  sockaddr_storage addr = Loopback4Discard();
  ExpectNotMesh(AF_INET, addr, 8, AF_INET, EINVAL);
}

TEST(ProcMemTest, AnAddressLongerThanTheKernelTakesIsNotMesh) {
  sockaddr_storage addr = Loopback4Discard();
  // The child's buffer is only sizeof(sockaddr_storage): reading the whole
  // claimed length would fail; the kernel refuses the length itself.
  ExpectNotMesh(AF_INET, addr, 4096, AF_INET, EINVAL);
}

// A connect from a thread that is not the process's first: the socket is
// still taken (pidfd_open wants the process, not the thread).
TEST(ProcMemTest, TakesTheSocketOfASecondThread) {
  absl::StatusOr<TestListener> server = ListenOnLoopback(AF_INET);
  ASSERT_TRUE(server.ok()) << server.status();
  struct Args {
    SocketAddress to;
    const ChildChannel* ch;
  };
  SocketAddress to = server->address;
  auto child = FilteredChild::Start([to](const ChildChannel& ch) {
    Args args{to, &ch};
    pthread_t thread;
    auto run = [](void* p) -> void* {
      auto* a = static_cast<Args*>(p);
      a->ch->Report(static_cast<int64_t>(syscall(SYS_gettid)));
      int s = socket(AF_INET, SOCK_STREAM, 0);
      a->ch->Report(connect(s, a->to.get(), a->to.size()) == 0 ? 0 : errno);
      return nullptr;
    };
    if (pthread_create(&thread, nullptr, run, &args) == 0) pthread_join(thread, nullptr);
  });
  ASSERT_TRUE(child.ok()) << child.status();
  absl::StatusOr<int64_t> tid = (*child)->NextReport();
  ASSERT_TRUE(tid.ok()) << tid.status();
  ASSERT_NE(*tid, (*child)->pid());
  absl::StatusOr<Notification> n = (*child)->NextNotification();
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->pid, *tid);
  absl::StatusOr<UniqueFd> dup = TakeNotifiedFd((*child)->listener(), *n);
  ASSERT_TRUE(dup.ok()) << dup.status();
  ASSERT_EQ(connect(dup->get(), server->address.get(), server->address.size()), 0)
      << strerror(errno);
  ASSERT_TRUE((*child)->listener().RespondValue(n->id, 0).ok());
  absl::StatusOr<int64_t> err = (*child)->NextReport();
  ASSERT_TRUE(err.ok()) << err.status();
  EXPECT_EQ(*err, 0);
  absl::StatusOr<UniqueFd> accepted = AcceptWithin(server->fd.get());
  EXPECT_TRUE(accepted.ok()) << accepted.status();
}

// The rule "read, then IdValid, then trust": once the thread has left the
// syscall, what can still be read from its process is not its connect's.
// Without WAIT_KILLABLE_RECV a signal is what takes it out.
TEST(ProcMemTest, NothingReadIsTrustedOnceTheThreadLeftTheSyscall) {
  absl::StatusOr<TestListener> server = ListenOnLoopback(AF_INET);
  ASSERT_TRUE(server.ok()) << server.status();
  SocketAddress to = server->address;
  auto child = FilteredChild::Start(
      [to](const ChildChannel& ch) {
        struct sigaction sa = {};
        sa.sa_handler = [](int) {};  // no SA_RESTART: connect fails with EINTR
        sigaction(SIGUSR1, &sa, nullptr);
        ch.Report(0);
        int s = socket(AF_INET, SOCK_STREAM, 0);
        ch.Report(connect(s, to.get(), to.size()) == 0 ? 0 : errno);
        ch.AwaitGo();  // alive, its memory and socket still there
      },
      FilteredChild::Signals::kSignalsInterrupt);
  ASSERT_TRUE(child.ok()) << child.status();
  ASSERT_TRUE((*child)->NextReport().ok());  // handler installed
  absl::StatusOr<Notification> n = (*child)->NextNotification();
  ASSERT_TRUE(n.ok()) << n.status();
  ASSERT_EQ(kill((*child)->pid(), SIGUSR1), 0);
  absl::StatusOr<int64_t> err = (*child)->NextReport();
  ASSERT_TRUE(err.ok()) << err.status();
  ASSERT_EQ(*err, EINTR);
  EXPECT_EQ(ReadConnectTarget((*child)->listener(), *n).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(TakeNotifiedFd((*child)->listener(), *n).status().code(), absl::StatusCode::kNotFound);
}

TEST(ProcMemTest, RefusesToReadANotificationThatIsNotAConnect) {
  Notification n;
  n.syscall_nr = SYS_accept;
  auto child = FilteredChild::Start([](const ChildChannel&) {});
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_EQ(ReadConnectTarget((*child)->listener(), n).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ktrust::zerohop
