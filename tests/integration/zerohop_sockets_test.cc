// sock_diag listing, TakeSocket and ResetSocket against real sockets of a
// child process in a network namespace of its own (root). The child holds
// a loopback connection the way a zero-hop workload would; the test, like
// the agent, holds no fd of it except for the moment it acts on it.
//
// On the host (no CONFIG_TLS) TCP_ULP "tls" is refused with ENOENT and the
// test asserts exactly that; in the VM (KTRUST_VM=1) it must succeed and the
// listing must show the ULP and the installed key.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <linux/tls.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "absl/time/clock.h"
#include "ktrust/zerohop/connection_registry.h"
#include "ktrust/zerohop/sock_diag.h"

namespace ktrust::zerohop {
namespace {

using Reply = std::array<int64_t, 6>;

bool InVm() { return getenv("KTRUST_VM") != nullptr; }

int64_t CookieOf(int fd) {
  uint64_t cookie = 0;
  socklen_t len = sizeof(cookie);
  if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) != 0) return -1;
  return static_cast<int64_t>(cookie);
}

int64_t InodeOf(int fd) {
  struct stat st {};
  return fstat(fd, &st) == 0 ? static_cast<int64_t>(st.st_ino) : -1;
}

int64_t PortOf(int fd) {
  sockaddr_in sin{};
  socklen_t len = sizeof(sin);
  getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len);
  return ntohs(sin.sin_port);
}

bool WriteAll(int fd, const char* data, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, data, len);
    if (n <= 0) return false;
    data += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

bool ReadAll(int fd, size_t len) {
  char buffer[4096];
  while (len > 0) {
    ssize_t n = read(fd, buffer, std::min(len, sizeof(buffer)));
    if (n <= 0) return false;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// One read with a deadline: {bytes or -1, errno}; {-2, 0} if nothing came.
Reply ReadOnce(int fd) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, 10000) != 1) return {-2, 0};
  char byte;
  ssize_t n = read(fd, &byte, 1);
  return {n, n < 0 ? errno : 0};
}

// The child: a fresh network namespace with lo up, and one loopback TCP
// connection (client c, server s) it keeps until told otherwise.
[[noreturn]] void Child(int control) {
  auto reply = [&](Reply r) {
    if (write(control, r.data(), sizeof(r)) != sizeof(r)) _exit(3);
  };
  if (unshare(CLONE_NEWNET) != 0) _exit(2);
  int ioctl_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ifreq ifr{};
  std::strcpy(ifr.ifr_name, "lo");
  ifr.ifr_flags = IFF_UP | IFF_LOOPBACK | IFF_RUNNING;
  if (ioctl(ioctl_fd, SIOCSIFFLAGS, &ifr) != 0) _exit(2);
  close(ioctl_fd);
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sin);
  if (bind(l, reinterpret_cast<sockaddr*>(&sin), len) != 0 || listen(l, 4) != 0 ||
      getsockname(l, reinterpret_cast<sockaddr*>(&sin), &len) != 0) {
    _exit(2);
  }
  int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (connect(c, reinterpret_cast<sockaddr*>(&sin), len) != 0) _exit(2);
  int s = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
  if (s < 0) _exit(2);
  reply({CookieOf(c), CookieOf(s), InodeOf(c), InodeOf(s), PortOf(c), PortOf(s)});
  char command;
  while (read(control, &command, 1) == 1) {
    switch (command) {
      case 'x': {  // 1000 bytes client -> server, 300 back
        std::string out(1000, 'a');
        bool ok = WriteAll(c, out.data(), 1000) && ReadAll(s, 1000) &&
                  WriteAll(s, out.data(), 300) && ReadAll(c, 300);
        reply({ok ? 0 : 1});
        break;
      }
      case 'u':  // kernel TLS ULP on the client
        reply({setsockopt(c, SOL_TCP, TCP_ULP, "tls", sizeof("tls")) == 0 ? 0 : errno});
        break;
      case 'k': {  // a TX key (any bytes: only the kernel's state matters here)
        tls12_crypto_info_aes_gcm_128 info{};
        info.info.version = TLS_1_3_VERSION;
        info.info.cipher_type = TLS_CIPHER_AES_GCM_128;
        reply({setsockopt(c, SOL_TLS, TLS_TX, &info, sizeof(info)) == 0 ? 0 : errno});
        break;
      }
      case 'r':  // the server's next read, then the client's
      {
        Reply server = ReadOnce(s), client = ReadOnce(c);
        reply({server[0], server[1], client[0], client[1]});
        break;
      }
      case 'c':
        reply({close(c)});
        break;
      case 'C':
        reply({close(s)});
        break;
      default:
        _exit(0);
    }
  }
  _exit(0);
}

class ZeroHopSocketsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "needs root: network namespaces, setns, pidfd_getfd";
    int pair[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair), 0);
    child_ = fork();
    ASSERT_GE(child_, 0);
    if (child_ == 0) {
      close(pair[0]);
      Child(pair[1]);
    }
    close(pair[1]);
    control_.Reset(pair[0]);
    Reply hello = Receive();
    ASSERT_GT(hello[0], 0) << "the child could not set up its connection";
    client_cookie_ = static_cast<uint64_t>(hello[0]);
    server_cookie_ = static_cast<uint64_t>(hello[1]);
    client_inode_ = static_cast<uint64_t>(hello[2]);
    server_inode_ = static_cast<uint64_t>(hello[3]);
    client_port_ = static_cast<uint16_t>(hello[4]);
    server_port_ = static_cast<uint16_t>(hello[5]);
    netns_.Reset(open(("/proc/" + std::to_string(child_) + "/ns/net").c_str(), O_RDONLY));
    ASSERT_TRUE(netns_.valid());
  }
  void TearDown() override {
    control_.Reset();  // the child's read sees EOF and it exits
    if (child_ > 0) waitpid(child_, nullptr, 0);
  }
  Reply Receive() {
    Reply r{-100};
    EXPECT_EQ(read(control_.get(), r.data(), sizeof(r)), static_cast<ssize_t>(sizeof(r)));
    return r;
  }
  Reply Ask(char command) {
    EXPECT_EQ(write(control_.get(), &command, 1), 1);
    return Receive();
  }
  std::vector<TcpSocketInfo> List() {
    absl::StatusOr<std::vector<TcpSocketInfo>> list = ListTcpSockets(netns_.get());
    EXPECT_TRUE(list.ok()) << list.status();
    return list.ok() ? *list : std::vector<TcpSocketInfo>{};
  }
  // A registry entry for one of the child's sockets, as the agent records it.
  ZeroHopConnection Entry(uint64_t cookie, uint64_t inode, uint64_t netns) const {
    ZeroHopConnection c;
    c.cookie = cookie;
    c.inode = inode;
    c.netns = netns;
    c.owner = child_;
    c.direction = "outbound";
    return c;
  }
  std::optional<TcpSocketInfo> Find(uint64_t cookie) {
    for (TcpSocketInfo& s : List()) {
      if (s.cookie == cookie) return s;
    }
    return std::nullopt;
  }

  pid_t child_ = -1;
  UniqueFd control_, netns_;
  uint64_t client_cookie_ = 0, server_cookie_ = 0, client_inode_ = 0, server_inode_ = 0;
  uint16_t client_port_ = 0, server_port_ = 0;
};

TEST_F(ZeroHopSocketsTest, ListsTheConnectionWithCookieAddressesAndBytes) {
  ASSERT_EQ(Ask('x')[0], 0);
  std::vector<TcpSocketInfo> all = List();
  // Exactly the two ends: the listener and the test's own namespace's
  // sockets are not there.
  ASSERT_EQ(all.size(), 2u);
  std::optional<TcpSocketInfo> client = Find(client_cookie_);
  std::optional<TcpSocketInfo> server = Find(server_cookie_);
  ASSERT_TRUE(client.has_value());
  ASSERT_TRUE(server.has_value());
  EXPECT_EQ(client->inode, client_inode_);
  EXPECT_EQ(server->inode, server_inode_);
  EXPECT_EQ(client->local.ToString(), "127.0.0.1:" + std::to_string(client_port_));
  EXPECT_EQ(client->peer.ToString(), "127.0.0.1:" + std::to_string(server_port_));
  EXPECT_EQ(server->local.ToString(), client->peer.ToString());
  EXPECT_EQ(client->state, TCP_ESTABLISHED);
  ASSERT_TRUE(client->has_tcp_info);
  // The server's 300-byte answer carried the ACK of the 1000. The kernel
  // counts the connecting end's SYN (one sequence number) as acknowledged
  // too: an upper bound is all the record estimate needs.
  EXPECT_EQ(client->bytes_acked, 1001u);
  EXPECT_EQ(client->bytes_received, 300u);
  EXPECT_EQ(server->bytes_received, 1000u);
  EXPECT_TRUE(client->ulp_visible);  // root: the kernel shows ULPs
  EXPECT_EQ(client->ulp, "");
  EXPECT_FALSE(client->tls_ulp());
}

TEST_F(ZeroHopSocketsTest, TlsUlpIsReportedWhereTheKernelHasIt) {
  int64_t err = Ask('u')[0];
  if (!InVm()) {
    // This host's kernel has no CONFIG_TLS: the ULP does not exist.
    ASSERT_EQ(err, ENOENT) << "expected the host kernel to refuse TCP_ULP tls";
    std::optional<TcpSocketInfo> client = Find(client_cookie_);
    ASSERT_TRUE(client.has_value());
    EXPECT_FALSE(client->tls_ulp());
    return;
  }
  ASSERT_EQ(err, 0) << "TCP_ULP tls in the VM: " << strerror(static_cast<int>(err));
  std::optional<TcpSocketInfo> client = Find(client_cookie_);
  ASSERT_TRUE(client.has_value());
  EXPECT_TRUE(client->tls_ulp());
  EXPECT_EQ(client->tls_tx_conf, TLS_CONF_BASE);  // attached, no key yet
  EXPECT_FALSE(Find(server_cookie_)->tls_ulp());
  ASSERT_EQ(Ask('k')[0], 0);
  client = Find(client_cookie_);
  ASSERT_TRUE(client.has_value());
  EXPECT_EQ(client->tls_tx_conf, TLS_CONF_SW);
  EXPECT_EQ(client->tls_rx_conf, TLS_CONF_BASE);
  EXPECT_EQ(client->tls_version, TLS_1_3_VERSION);
  EXPECT_EQ(client->tls_cipher, TLS_CIPHER_AES_GCM_128);
  // The kernel refuses to disconnect a kTLS socket: ResetSocket says so,
  // and the peer saw FIN (an end of stream), which is why the agent must
  // use DestroySocket on kTLS sockets.
  absl::StatusOr<UniqueFd> fd = TakeSocket(child_, client_inode_, client_cookie_);
  ASSERT_TRUE(fd.ok()) << fd.status();
  absl::Status reset = ResetSocket(fd->get());
  EXPECT_EQ(reset.code(), absl::StatusCode::kFailedPrecondition) << reset;
  fd->Reset();
  Reply reads = Ask('r');
  EXPECT_EQ(reads[0], 0);  // the server read end of stream
}

// SOCK_DESTROY aborts a connection without any fd: the peer gets a reset and
// the application ECONNABORTED; a kTLS socket (in the VM) included.
TEST_F(ZeroHopSocketsTest, DestroySocketResetsWithoutAnyFd) {
  ASSERT_EQ(Ask('x')[0], 0);
  if (InVm()) {
    ASSERT_EQ(Ask('u')[0], 0);
    ASSERT_EQ(Ask('k')[0], 0);
  }
  std::optional<TcpSocketInfo> client = Find(client_cookie_);
  ASSERT_TRUE(client.has_value());
  EXPECT_EQ(client->tls_ulp(), InVm());
  // A stale listing entry (another cookie on the same addresses) hits nothing.
  TcpSocketInfo stale = *client;
  stale.cookie += 1000;
  EXPECT_TRUE(absl::IsNotFound(DestroySocket(netns_.get(), stale)));
  absl::Status destroyed = DestroySocket(netns_.get(), *client);
  ASSERT_TRUE(destroyed.ok()) << destroyed;
  Reply reads = Ask('r');
  EXPECT_EQ(reads[0], -1);
  EXPECT_EQ(reads[1], ECONNRESET);  // the peer
  EXPECT_EQ(reads[2], -1);
  EXPECT_EQ(reads[3], ECONNABORTED);  // the application
  EXPECT_FALSE(Find(client_cookie_).has_value());
  EXPECT_TRUE(absl::IsNotFound(DestroySocket(netns_.get(), *client)));
}

TEST_F(ZeroHopSocketsTest, TakeAndResetGiveBothEndsAReset) {
  ASSERT_EQ(Ask('x')[0], 0);
  absl::StatusOr<UniqueFd> fd = TakeSocket(child_, client_inode_, client_cookie_);
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_EQ(static_cast<uint64_t>(CookieOf(fd->get())), client_cookie_);
  absl::Status reset = ResetSocket(fd->get());
  ASSERT_TRUE(reset.ok()) << reset;
  fd->Reset();  // the test keeps nothing
  Reply reads = Ask('r');
  // The peer sees a reset, not an end of stream (a zero-hop FIN would read
  // as a clean end); the application's own next read fails too.
  EXPECT_EQ(reads[0], -1);
  EXPECT_EQ(reads[1], ECONNRESET);
  EXPECT_EQ(reads[2], -1);
  EXPECT_EQ(reads[3], ECONNRESET);
  EXPECT_FALSE(Find(client_cookie_).has_value());
  EXPECT_FALSE(Find(server_cookie_).has_value());
}

TEST_F(ZeroHopSocketsTest, TakeSocketRefusesWhatTheProcessDoesNotHold) {
  EXPECT_TRUE(absl::IsNotFound(TakeSocket(child_, 1, std::nullopt).status()));
  // The right inode with another cookie: an inode recycled since.
  EXPECT_TRUE(absl::IsNotFound(TakeSocket(child_, client_inode_, client_cookie_ + 1).status()));
  // The connection is untouched by the failed attempts.
  ASSERT_EQ(Ask('x')[0], 0);
}

TEST_F(ZeroHopSocketsTest, RegistryForgetsAConnectionOnceTheApplicationClosesIt) {
  absl::StatusOr<uint64_t> netns = NamespaceInode(netns_.get());
  ASSERT_TRUE(netns.ok());
  ZeroHopConnections registry;
  for (auto [cookie, inode] :
       {std::pair{client_cookie_, client_inode_}, std::pair{server_cookie_, server_inode_}}) {
    ASSERT_TRUE(registry.Add(Entry(cookie, inode, *netns)).ok());
  }
  ASSERT_EQ(Ask('x')[0], 0);
  RefreshResult first = registry.Refresh(ListSocketsOfNetns);
  EXPECT_THAT(first.errors, ::testing::IsEmpty());
  EXPECT_THAT(first.ended, ::testing::IsEmpty());
  EXPECT_EQ(registry.Snapshot()[0].bytes_sent, 1001u);  // 1000 + the SYN
  // The client end closes: it is orphaned (FIN_WAIT2, inode 0) or gone.
  ASSERT_EQ(Ask('c')[0], 0);
  RefreshResult second = registry.Refresh(ListSocketsOfNetns);
  ASSERT_EQ(second.ended.size(), 1u);
  EXPECT_EQ(second.ended[0].connection.cookie, client_cookie_);
  EXPECT_EQ(registry.size(), 1u);
  ASSERT_EQ(Ask('C')[0], 0);
  RefreshResult third = registry.Refresh(ListSocketsOfNetns);
  ASSERT_EQ(third.ended.size(), 1u);
  EXPECT_EQ(third.ended[0].connection.cookie, server_cookie_);
  // Gone, or still in LAST_ACK without an owner if the last ACK is in flight.
  EXPECT_THAT(third.ended[0].reason, ::testing::AnyOf("closed", "closed by the application"));
  EXPECT_EQ(registry.size(), 0u);
}

TEST(FindSocketHolderTest, FindsTheChildThatStillHoldsASocketItsParentClosed) {
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(s, 0);
  struct stat st {};
  ASSERT_EQ(fstat(s, &st), 0);
  int release[2];
  ASSERT_EQ(pipe2(release, O_CLOEXEC), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    char byte;
    (void)!read(release[0], &byte, 1);  // holds `s` until told
    _exit(0);
  }
  close(s);  // the parent's copy: only the child holds the socket now
  absl::StatusOr<pid_t> holder = FindSocketHolder(st.st_ino);
  EXPECT_TRUE(holder.ok()) << holder.status();
  EXPECT_EQ(holder.value_or(0), child);
  (void)!write(release[1], "x", 1);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  close(release[0]);
  close(release[1]);
  // Nobody holds it any more: closed.
  EXPECT_TRUE(absl::IsNotFound(FindSocketHolder(st.st_ino).status()));
}

TEST_F(ZeroHopSocketsTest, TheListerKeepsOneDiagSocketPerNamespaceUntilItIsNoLongerAskedFor) {
  absl::StatusOr<uint64_t> netns = NamespaceInode(netns_.get());
  ASSERT_TRUE(netns.ok());
  NetnsSocketLister lister;
  NetnsRef ref{*netns, {child_}, {}};
  for (int round = 0; round < 3; ++round) {
    absl::StatusOr<std::vector<TcpSocketInfo>> sockets = lister(ref);
    ASSERT_TRUE(sockets.ok()) << sockets.status();
    bool found = false;
    for (const TcpSocketInfo& s : *sockets) found |= s.cookie == client_cookie_;
    EXPECT_TRUE(found) << "round " << round << ": the kept socket lists the namespace";
    EXPECT_EQ(lister.open_sockets(), 1u);
  }
  // Not asked for any more: closed, so the namespace is not kept alive.
  lister.Retain({});
  EXPECT_EQ(lister.open_sockets(), 0u);
  // A namespace that no listed process leads into is not listed at all.
  EXPECT_TRUE(absl::IsNotFound(lister(NetnsRef{*netns + 1, {child_}, {}}).status()));
}

TEST_F(ZeroHopSocketsTest, ALookUpFindsOneSocketByItsAddressesAndCookieOnly) {
  ASSERT_EQ(Ask('x')[0], 0);
  absl::StatusOr<UniqueFd> diag = OpenDiagSocket(netns_.get());
  ASSERT_TRUE(diag.ok()) << diag.status();
  std::string client = "127.0.0.1:" + std::to_string(client_port_);
  std::string server = "127.0.0.1:" + std::to_string(server_port_);
  auto look_up = [&](const std::string& local, const std::string& peer, uint64_t cookie) {
    absl::StatusOr<std::optional<TcpSocketInfo>> found = LookUpTcpSocketVia(
        diag->get(), *SocketAddress::Parse(local), *SocketAddress::Parse(peer), cookie);
    EXPECT_TRUE(found.ok()) << found.status();
    return found.value_or(std::nullopt);
  };
  std::optional<TcpSocketInfo> found = look_up(client, server, client_cookie_);
  ASSERT_TRUE(found.has_value());
  // What the dump says of it, from a hash lookup.
  EXPECT_EQ(found->cookie, client_cookie_);
  EXPECT_EQ(found->inode, client_inode_);
  EXPECT_TRUE(found->connected());
  ASSERT_TRUE(found->has_tcp_info);
  EXPECT_EQ(found->bytes_acked, 1001u);
  EXPECT_EQ(found->bytes_received, 300u);
  EXPECT_TRUE(found->ulp_visible);
  // The same addresses with another socket's cookie: not this socket.
  EXPECT_FALSE(look_up(client, server, server_cookie_).has_value());
  // No socket with these addresses.
  EXPECT_FALSE(look_up(client, "127.0.0.1:1", client_cookie_).has_value());
  // The other end, from its own side.
  std::optional<TcpSocketInfo> other = look_up(server, client, server_cookie_);
  ASSERT_TRUE(other.has_value());
  EXPECT_EQ(other->inode, server_inode_);
}

TEST_F(ZeroHopSocketsTest, TheListerLooksUpWhatItIsAskedForAndListsAllWhenOneIsMissing) {
  ASSERT_EQ(Ask('x')[0], 0);
  absl::StatusOr<uint64_t> netns = NamespaceInode(netns_.get());
  ASSERT_TRUE(netns.ok());
  std::string client = "127.0.0.1:" + std::to_string(client_port_);
  std::string server = "127.0.0.1:" + std::to_string(server_port_);
  NetnsSocketLister lister;
  // Every socket asked for is there as recorded: only they come back (a
  // dump would list both ends).
  absl::StatusOr<std::vector<TcpSocketInfo>> asked =
      lister(NetnsRef{*netns, {child_}, {{client_cookie_, client, server}}});
  ASSERT_TRUE(asked.ok()) << asked.status();
  ASSERT_EQ(asked->size(), 1u);
  EXPECT_EQ((*asked)[0].cookie, client_cookie_);
  EXPECT_EQ((*asked)[0].inode, client_inode_);
  // One is not found as recorded (its cookie is another's): the whole
  // namespace is listed, so the registry learns from the dump what ended.
  absl::StatusOr<std::vector<TcpSocketInfo>> missing =
      lister(NetnsRef{*netns,
                      {child_},
                      {{client_cookie_, client, server}, {client_cookie_ + 1000, server, client}}});
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_EQ(missing->size(), 2u);
  // The client closes (orphaned or gone): the registry, refreshed through
  // the lister, ends it as it does with a dump.
  ZeroHopConnections registry;
  ZeroHopConnection c = Entry(client_cookie_, client_inode_, *netns);
  c.local = client;
  c.peer = server;
  ASSERT_TRUE(registry.Add(c).ok());
  auto via_lister = [&lister](const NetnsRef& n) { return lister(n); };
  EXPECT_THAT(registry.Refresh(via_lister).ended, ::testing::IsEmpty());
  EXPECT_EQ(registry.Snapshot()[0].bytes_sent, 1001u);
  ASSERT_EQ(Ask('c')[0], 0);
  RefreshResult after = registry.Refresh(via_lister);
  ASSERT_EQ(after.ended.size(), 1u);
  EXPECT_EQ(after.ended[0].connection.cookie, client_cookie_);
}

TEST_F(ZeroHopSocketsTest, AnUnprivilegedCallerCannotTakeTheSocket) {
  // What the agent does as root, a local user must not: pidfd_getfd needs
  // ptrace access to the workload.
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0) _exit(2);
    absl::StatusOr<UniqueFd> fd = TakeSocket(child_, client_inode_, client_cookie_);
    _exit(fd.ok() ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  ASSERT_EQ(Ask('x')[0], 0);
}

}  // namespace
}  // namespace ktrust::zerohop
