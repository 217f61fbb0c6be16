#include "ktrust/zerohop/seccomp_filter.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/io_uring.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
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
// The program's verdict for one system call, run by a small evaluator of the
// instructions BuildFilter uses: a foreign ABI cannot be entered on every
// kernel (int 0x80 needs IA32 emulation), but the verdict can be read on any.
uint32_t Verdict(const std::vector<sock_filter>& prog, uint32_t arch, uint32_t nr) {
  seccomp_data data{};
  data.arch = arch;
  data.nr = static_cast<int>(nr);
  uint32_t acc = 0;
  for (size_t pc = 0; pc < prog.size(); ++pc) {
    const sock_filter& ins = prog[pc];
    switch (ins.code) {
      case BPF_LD | BPF_W | BPF_ABS:
        std::memcpy(&acc, reinterpret_cast<const char*>(&data) + ins.k, sizeof(acc));
        break;
      case BPF_JMP | BPF_JEQ | BPF_K:
        pc += acc == ins.k ? ins.jt : ins.jf;
        break;
      case BPF_JMP | BPF_JGE | BPF_K:
        pc += acc >= ins.k ? ins.jt : ins.jf;
        break;
      case BPF_RET | BPF_K:
        return ins.k;
      default:
        ADD_FAILURE() << "instruction " << pc
                      << " has an opcode this evaluator lacks: " << ins.code;
        return 0;
    }
  }
  ADD_FAILURE() << "the program ran off its end";
  return 0;
}

TEST(SeccompFilterTest, ForeignAbiKillsTheProcess) {
  std::vector<sock_filter> prog = BuildFilter();
  // i386's socketcall (102) and connect (362) would carry a connect past the
  // native numbers.
  EXPECT_EQ(Verdict(prog, AUDIT_ARCH_I386, 102), SECCOMP_RET_KILL_PROCESS);
  EXPECT_EQ(Verdict(prog, AUDIT_ARCH_I386, 362), SECCOMP_RET_KILL_PROCESS);
  EXPECT_EQ(Verdict(prog, AUDIT_ARCH_X86_64, SYS_connect), SECCOMP_RET_USER_NOTIF);
  EXPECT_EQ(Verdict(prog, AUDIT_ARCH_X86_64, SYS_getpid), SECCOMP_RET_ALLOW);
}

TEST(SeccompFilterTest, X32NumbersGetEnosys) {
  // x32's connect is the native number with __X32_SYSCALL_BIT set.
  EXPECT_EQ(Verdict(BuildFilter(), AUDIT_ARCH_X86_64, __X32_SYSCALL_BIT | SYS_connect),
            SECCOMP_RET_ERRNO | ENOSYS);
}
#endif

}  // namespace
}  // namespace ktrust::zerohop
