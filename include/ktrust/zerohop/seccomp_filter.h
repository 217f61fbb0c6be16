// The seccomp filter a zero-hop workload runs under (docs/dataplane.md,
// "Zero-hop"): connect, accept and accept4 wait for the agent's answer
// (SECCOMP_RET_USER_NOTIF), io_uring_setup fails with EPERM because io_uring
// would connect and accept without a syscall seccomp sees, and anything that
// is not the native system call ABI kills the process, so a 32-bit or x32
// caller cannot reach connect under another number.
#pragma once

#include <linux/filter.h>

#include <vector>

#include "absl/status/statusor.h"
#include "ktrust/common/unique_fd.h"

namespace ktrust::zerohop {

// The classic-BPF program for the architecture ktrust is built for, with the
// system call numbers of <sys/syscall.h>.
std::vector<sock_filter> BuildFilter();

struct InstalledFilter {
  // The notification listener: whoever holds it answers the workload's
  // connects and accepts. Once every copy is closed they fail with ENOSYS.
  UniqueFd listener;
  // False when the kernel lacks SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
  // (before Linux 5.19) and the filter was installed without it. A signal
  // then lets the workload leave a connect the agent is still working on and
  // write on its half-made socket in plaintext, so outbound zero-hop must not
  // be used for this workload (answer its connects with Continue instead).
  bool wait_killable_recv = false;
  // True if this call set PR_SET_NO_NEW_PRIVS: the caller lacked
  // CAP_SYS_ADMIN, and from now on execve() grants no setuid/file
  // capabilities to this process and its children.
  bool set_no_new_privs = false;
};

// Installs BuildFilter() on the calling thread (and so on everything it
// execs or forks later) with SECCOMP_FILTER_FLAG_NEW_LISTENER and
// WAIT_KILLABLE_RECV. Sets no_new_privs only when the kernel refuses the
// filter without it. Other threads of the process are not covered: call it
// while single-threaded, before exec. A second filter with a listener in the
// same process tree fails (EBUSY).
absl::StatusOr<InstalledFilter> InstallFilter();

}  // namespace ktrust::zerohop
