#include "ktrust/zerohop/seccomp_filter.h"

#include <errno.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "unit/zerohop/filtered_child.h"

namespace ktrust::zerohop {
namespace {

bool HasEffectiveCapSysAdmin() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("CapEff:", 0) == 0) {
      return (std::stoull(line.substr(7), nullptr, 16) >> 21) & 1;  // CAP_SYS_ADMIN
    }
  }
  return false;
}

TEST(SeccompFilterTest, IoUringSetupFailsWithEperm) {
  auto child = FilteredChild::Start([](const ChildChannel& ch) {
    io_uring_params params{};
    long fd = syscall(SYS_io_uring_setup, 1, &params);
    ch.Report(fd >= 0 ? 0 : errno);
  });
  ASSERT_TRUE(child.ok()) << child.status();
  absl::StatusOr<int64_t> err = (*child)->NextReport();
  ASSERT_TRUE(err.ok()) << err.status();
  EXPECT_EQ(*err, EPERM);
}

// The design's probe of a dead agent: with the listener's last copy gone,
// connect fails with ENOSYS rather than connecting unsupervised.
TEST(SeccompFilterTest, ClosingTheListenerFailsTheNextConnectWithEnosys) {
  absl::StatusOr<TestListener> server = ListenOnLoopback(AF_INET);
  ASSERT_TRUE(server.ok()) << server.status();
  SocketAddress to = server->address;
  auto child = FilteredChild::Start([&to](const ChildChannel& ch) {
    ch.AwaitGo();
    int s = socket(AF_INET, SOCK_STREAM, 0);
    ch.Report(connect(s, to.get(), to.size()) == 0 ? 0 : errno);
  });
  ASSERT_TRUE(child.ok()) << child.status();
  (*child)->CloseListener();
  ASSERT_TRUE((*child)->Go().ok());
  absl::StatusOr<int64_t> err = (*child)->NextReport();
  ASSERT_TRUE(err.ok()) << err.status();
  EXPECT_EQ(*err, ENOSYS);
  EXPECT_FALSE(HasPendingConnection(server->fd.get()));
}

TEST(SeccompFilterTest, SetsNoNewPrivsOnlyWithoutCapSysAdmin) {
  auto child = FilteredChild::Start(
      [](const ChildChannel& ch) { ch.Report(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)); });
  ASSERT_TRUE(child.ok()) << child.status();
  absl::StatusOr<int64_t> nnp = (*child)->NextReport();
  ASSERT_TRUE(nnp.ok()) << nnp.status();
  EXPECT_EQ(*nnp == 1, (*child)->set_no_new_privs());
  EXPECT_EQ((*child)->set_no_new_privs(), !HasEffectiveCapSysAdmin());
  // This kernel (5.19+) has the flag outbound zero-hop depends on.
  EXPECT_TRUE((*child)->wait_killable_recv());
}

#if defined(__x86_64__)
// getpid through the i386 entry point; the exit status is the child's fate.
int ExitOfI386Getpid(bool filtered) {
  pid_t pid = fork();
  if (pid == 0) {
    if (filtered && !InstallFilter().ok()) _exit(2);
    long nr = 20;  // i386 getpid
    // The 64-bit kernel clears r8-r11 on this entry.
    asm volatile("int $0x80" : "+a"(nr) : : "r8", "r9", "r10", "r11", "memory");
    _exit(0);
  }
  absl::StatusOr<int> status = WaitForExit(pid);
  if (!status.ok()) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    return -1;
  }
  return *status;
}

TEST(SeccompFilterTest, ForeignAbiKillsTheProcess) {
  int plain = ExitOfI386Getpid(false);
  if (!WIFEXITED(plain) || WEXITSTATUS(plain) != 0) {
    GTEST_SKIP() << "this kernel runs no i386 system calls (int 0x80 status " << plain << ")";
  }
  int filtered = ExitOfI386Getpid(true);
  ASSERT_TRUE(WIFSIGNALED(filtered)) << "status " << filtered;
  EXPECT_EQ(WTERMSIG(filtered), SIGSYS);
}
#endif

}  // namespace
}  // namespace ktrust::zerohop
