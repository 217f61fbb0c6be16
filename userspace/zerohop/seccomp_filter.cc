#include "ktrust/zerohop/seccomp_filter.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstddef>

#include "absl/status/status.h"

namespace ktrust::zerohop {
namespace {

#if defined(__x86_64__)
constexpr uint32_t kNativeArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
constexpr uint32_t kNativeArch = AUDIT_ARCH_AARCH64;
#else
#error "zero-hop knows the system call ABI of x86_64 and aarch64 only"
#endif

// Both architectures have a plain accept beside accept4.
constexpr uint32_t kNotified[] = {SYS_connect, SYS_accept, SYS_accept4};

sock_filter Stmt(uint16_t code, uint32_t k) { return BPF_STMT(code, k); }
sock_filter Jump(uint16_t code, uint32_t k, uint8_t jt, uint8_t jf) {
  return BPF_JUMP(code, k, jt, jf);
}

int Seccomp(unsigned op, unsigned flags, void* arg) {
  return static_cast<int>(syscall(SYS_seccomp, op, flags, arg));
}

}  // namespace

std::vector<sock_filter> BuildFilter() {
  std::vector<sock_filter> prog;
  prog.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)));
  prog.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, kNativeArch, 1, 0));
  prog.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
  prog.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)));
#if defined(__x86_64__)
  // x32 shares AUDIT_ARCH_X86_64 and marks its numbers with this bit.
  prog.push_back(Jump(BPF_JMP | BPF_JGE | BPF_K, __X32_SYSCALL_BIT, 0, 1));
  prog.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)));
#endif
  prog.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, SYS_io_uring_setup, 0, 1));
  prog.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)));
  // Each match jumps over the remaining matches and the ALLOW to USER_NOTIF.
  constexpr size_t n = std::size(kNotified);
  for (size_t i = 0; i < n; ++i) {
    prog.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, kNotified[i], static_cast<uint8_t>(n - i), 0));
  }
  prog.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  prog.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF));
  return prog;
}

absl::StatusOr<InstalledFilter> InstallFilter() {
  std::vector<sock_filter> prog = BuildFilter();
  sock_fprog fprog{static_cast<unsigned short>(prog.size()), prog.data()};
  InstalledFilter installed;
  unsigned flags = SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
  for (;;) {
    int fd = Seccomp(SECCOMP_SET_MODE_FILTER, flags, &fprog);
    if (fd >= 0) {
      installed.listener.Reset(fd);
      installed.wait_killable_recv = (flags & SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV) != 0;
      return installed;
    }
    int err = errno;
    // Without CAP_SYS_ADMIN the kernel wants no_new_privs, so that a setuid
    // program cannot be started under a filter that changes what it sees.
    if (err == EACCES && !installed.set_no_new_privs) {
      if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        return absl::ErrnoToStatus(errno, "seccomp filter: set no_new_privs");
      }
      installed.set_no_new_privs = true;
      continue;
    }
    // An unknown flag is EINVAL: a kernel before 5.19. Installed without it,
    // and reported, because outbound zero-hop is then unsafe.
    if (err == EINVAL && (flags & SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV) != 0) {
      flags &= ~SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
      continue;
    }
    if (err == EBUSY) {
      return absl::FailedPreconditionError(
          "seccomp filter: this process tree already has a seccomp listener (EBUSY); "
          "a zero-hop workload cannot run under another supervisor's filter");
    }
    return absl::ErrnoToStatus(err, "seccomp filter with a notification listener");
  }
}

}  // namespace ktrust::zerohop
