// PeerPidfd: the process at the other end of a unix socket, never a live
// process in place of one that has gone.
#include "ktrust/common/peer_process.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

namespace ktrust {
namespace {

pid_t PeerPid(int sock) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  EXPECT_EQ(::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len), 0);
  return cred.pid;
}

TEST(PeerPidfdTest, NamesTheLivePeer) {
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair), 0);
  UniqueFd a(pair[0]), b(pair[1]);
  bool exact = false;
  auto pidfd = PeerPidfd(a.get(), PeerPid(a.get()), &exact);
  ASSERT_TRUE(pidfd.ok()) << pidfd.status();
  EXPECT_FALSE(PidfdExited(pidfd->get())) << "this process is alive";
  // Which one the kernel gave, for the record: SO_PEERPIDFD is 6.5+.
  RecordProperty("exact", exact ? "SO_PEERPIDFD" : "pidfd_open");
}

// A peer that connected and is gone (reaped) before it is checked: the
// check never gets a live process in its place.
TEST(PeerPidfdTest, APeerThatIsGoneIsNeverALiveProcess) {
  char dir[] = "/tmp/peer_process_test.XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::string path = std::string(dir) + "/s";
  path.copy(addr.sun_path, sizeof(addr.sun_path) - 1);
  UniqueFd listener(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(listener.get(), 1), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int fd = ::socket(AF_UNIX, SOCK_SEQPACKET, 0);
    ::_exit(::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0 ? 0 : 1);
  }
  int status = -1;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the child did not connect";
  UniqueFd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(conn.valid());
  EXPECT_EQ(PeerPid(conn.get()), child);
  bool exact = false;
  auto pidfd = PeerPidfd(conn.get(), child, &exact);
  if (pidfd.ok()) {
    // SO_PEERPIDFD: the child itself, exited. (Before 6.5: pid reused.)
    EXPECT_TRUE(PidfdExited(pidfd->get()))
        << (exact ? "SO_PEERPIDFD named a live process" : "the pid was reused meanwhile");
  } else {
    EXPECT_FALSE(exact);
    EXPECT_NE(pidfd.status().message().find("pidfd_open"), std::string::npos) << pidfd.status();
  }
  ::unlink(path.c_str());
  ::rmdir(dir);
}

}  // namespace
}  // namespace ktrust
