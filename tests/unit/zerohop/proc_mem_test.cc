#include "ktrust/zerohop/proc_mem.h"

#include <arpa/inet.h>
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

// Starts a child under a filter without WAIT_KILLABLE_RECV (as on a kernel
// before 5.19), receives the notification of `call` (a notified syscall
// returning -1/errno on failure) and takes the thread out of it with a
// signal, while the child stays alive with its memory and fds. Then the
// child runs `after`.
void StartAndInterrupt(std::function<int()> call, std::function<void(const ChildChannel&)> after,
                       std::unique_ptr<FilteredChild>* out, Notification* notification) {
  auto child = FilteredChild::Start(
      [call, after](const ChildChannel& ch) {
        struct sigaction sa = {};
        sa.sa_handler = [](int) {};  // no SA_RESTART: the call fails with EINTR
        sigaction(SIGUSR1, &sa, nullptr);
        ch.Report(0);
        ch.Report(call() < 0 ? errno : 0);
        ch.AwaitGo();
        after(ch);
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
  *out = std::move(*child);
  *notification = *n;
}

// The rule "read, then IdValid, then trust": once the thread has left the
// syscall, what can still be read from its process is not its connect's.
TEST(ProcMemTest, NothingReadIsTrustedOnceTheThreadLeftTheSyscall) {
  absl::StatusOr<TestListener> server = ListenOnLoopback(AF_INET);
  ASSERT_TRUE(server.ok()) << server.status();
  SocketAddress to = server->address;
  std::unique_ptr<FilteredChild> child;
  Notification n;
  ASSERT_NO_FATAL_FAILURE(StartAndInterrupt(
      [to] { return connect(socket(AF_INET, SOCK_STREAM, 0), to.get(), to.size()); },
      [](const ChildChannel&) {}, &child, &n));
  EXPECT_EQ(ReadConnectTarget(child->listener(), n).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(TakeNotifiedFd(child->listener(), n).status().code(), absl::StatusCode::kNotFound);
}

// Writing is checked before, not after: the bytes must never land.
TEST(ProcMemTest, NothingIsWrittenOnceTheThreadLeftAccept) {
  static sockaddr_storage addr;  // the child's copy is what counts
  static socklen_t len;
  std::unique_ptr<FilteredChild> child;
  Notification n;
  ASSERT_NO_FATAL_FAILURE(StartAndInterrupt(
      [] {
        std::memset(&addr, 0xab, sizeof(addr));
        len = sizeof(addr);
        return accept(socket(AF_INET, SOCK_STREAM, 0), reinterpret_cast<sockaddr*>(&addr), &len);
      },
      [](const ChildChannel& ch) {
        ch.Report(len);
        ch.Report(reinterpret_cast<const unsigned char*>(&addr)[0]);
      },
      &child, &n));
  absl::StatusOr<SocketAddress> peer = SocketAddress::Parse("127.0.0.1:9");
  ASSERT_TRUE(peer.ok());
  EXPECT_EQ(WriteAcceptPeer(child->listener(), n, *peer).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(child->Go().ok());
  EXPECT_EQ(child->NextReport().value_or(-1), static_cast<int64_t>(sizeof(sockaddr_storage)));
  EXPECT_EQ(child->NextReport().value_or(-1), 0xab);
}

// A child that calls accept(l, &addr, &len) with `offered` as len, addr
// filled with 0xab, and reports len, the port in addr and whether the bytes
// past `offered` are untouched.
std::function<void(const ChildChannel&)> AcceptWithAddress(socklen_t offered) {
  return [offered](const ChildChannel& ch) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_storage addr;
    std::memset(&addr, 0xab, sizeof(addr));
    socklen_t len = offered;
    if (accept(l, reinterpret_cast<sockaddr*>(&addr), &len) < 0) {
      ch.Report(-errno);
      return;
    }
    ch.Report(len);
    ch.Report(ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port));
    const auto* bytes = reinterpret_cast<const unsigned char*>(&addr);
    bool untouched = true;
    for (size_t i = offered; i < sizeof(addr); ++i) untouched = untouched && bytes[i] == 0xab;
    ch.Report(untouched);
  };
}

// Answers the child's accept with a real TCP connection's server side and
// its peer's address; returns the peer's port.
void AnswerAcceptWithPeer(FilteredChild& child, uint16_t* peer_port) {
  absl::StatusOr<Notification> n = child.NextNotification();
  ASSERT_TRUE(n.ok()) << n.status();
  absl::StatusOr<TestListener> server = ListenOnLoopback(AF_INET);
  ASSERT_TRUE(server.ok()) << server.status();
  UniqueFd client(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(connect(client.get(), server->address.get(), server->address.size()), 0);
  absl::StatusOr<UniqueFd> accepted = AcceptWithin(server->fd.get());
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  absl::StatusOr<SocketAddress> peer = SocketAddress::PeerOf(accepted->get());
  ASSERT_TRUE(peer.ok()) << peer.status();
  *peer_port = peer->port();
  ASSERT_TRUE(WriteAcceptPeer(child.listener(), *n, *peer).ok());
  ASSERT_TRUE(child.listener().AddFdSend(n->id, accepted->get(), 0).ok());
}

TEST(ProcMemTest, AcceptGetsThePeerAddressTheAgentWrites) {
  auto child = FilteredChild::Start(AcceptWithAddress(sizeof(sockaddr_storage)));
  ASSERT_TRUE(child.ok()) << child.status();
  uint16_t port = 0;
  ASSERT_NO_FATAL_FAILURE(AnswerAcceptWithPeer(**child, &port));
  EXPECT_EQ((*child)->NextReport().value_or(-1), static_cast<int64_t>(sizeof(sockaddr_in)));
  EXPECT_EQ((*child)->NextReport().value_or(-1), port);
}

// As accept(2): a short buffer gets the start of the address, nothing past
// it, and addrlen says how long the whole address is.
TEST(ProcMemTest, AShortAcceptBufferGetsATruncatedAddressAndTheFullLength) {
  auto child = FilteredChild::Start(AcceptWithAddress(4));  // family and port only
  ASSERT_TRUE(child.ok()) << child.status();
  uint16_t port = 0;
  ASSERT_NO_FATAL_FAILURE(AnswerAcceptWithPeer(**child, &port));
  EXPECT_EQ((*child)->NextReport().value_or(-1), static_cast<int64_t>(sizeof(sockaddr_in)));
  EXPECT_EQ((*child)->NextReport().value_or(-1), port);
  EXPECT_EQ((*child)->NextReport().value_or(-1), 1);
}

TEST(ProcMemTest, RefusesToReadANotificationThatIsNotAConnect) {
  Notification n;
  n.syscall_nr = SYS_accept;
  auto child = FilteredChild::Start([](const ChildChannel&) {});
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_EQ(ReadConnectTarget((*child)->listener(), n).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// pid 0: a thread in a pid namespace the agent cannot see. Any pid call with
// 0 would act on the agent itself.
TEST(ProcMemTest, RefusesAThreadOutsideTheAgentsPidNamespace) {
  Notification n;
  n.syscall_nr = SYS_connect;
  n.pid = 0;
  auto child = FilteredChild::Start([](const ChildChannel&) {});
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_EQ(ReadConnectTarget((*child)->listener(), n).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(TakeNotifiedFd((*child)->listener(), n).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace ktrust::zerohop
