#include "ktrust/zerohop/features.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "ktrust/common/error_text.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/tls/ktls.h"
#include "ktrust/zerohop/seccomp_filter.h"

namespace ktrust::zerohop {
namespace {

constexpr int kProbeTimeoutMs = 2000;

// What the child found: 0 or an errno per step.
struct ChildReport {
  int action_avail = 0;       // SECCOMP_GET_ACTION_AVAIL(USER_NOTIF)
  int listener_killable = 0;  // NEW_LISTENER | WAIT_KILLABLE_RECV
  int listener = 0;           // NEW_LISTENER alone (only tried after the above failed)
  int addfd_send = 0;         // ADDFD{SEND} for an id that does not exist: ENOENT if known
};

int Seccomp(unsigned op, unsigned flags, void* arg) {
  return static_cast<int>(syscall(SYS_seccomp, op, flags, arg));
}

// Runs in the forked child: system calls only, no allocation, so it is safe
// even if the caller had other threads.
[[noreturn]] void ProbeInChild(sock_fprog* prog, int report_fd, int hold_fd, int hold_write) {
  // Our copy of the write end would keep the read below from seeing EOF.
  close(hold_write);
  ChildReport r;
  uint32_t action = SECCOMP_RET_USER_NOTIF;
  if (Seccomp(SECCOMP_GET_ACTION_AVAIL, 0, &action) != 0) r.action_avail = errno;
  int listener = -1;
  if (r.action_avail == 0 && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0) {
    listener =
        Seccomp(SECCOMP_SET_MODE_FILTER,
                SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, prog);
    if (listener < 0) {
      r.listener_killable = errno;
      listener = Seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, prog);
      if (listener < 0) r.listener = errno;
    }
  } else if (r.action_avail == 0) {
    r.listener_killable = r.listener = errno;
  }
  if (listener >= 0) {
    // Nothing is pending, so a kernel that knows the flag looks the id up
    // and fails with ENOENT; one that does not rejects the flag (EINVAL).
    seccomp_notif_addfd addfd{};
    addfd.id = 0;
    addfd.flags = SECCOMP_ADDFD_FLAG_SEND;
    addfd.srcfd = static_cast<uint32_t>(report_fd);
    r.addfd_send = ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd) == 0 ? 0 : errno;
  }
  (void)!write(report_fd, &r, sizeof(r));
  // Stay alive (the parent takes an fd of ours with pidfd_getfd) until the
  // parent closes its end or dies.
  char c;
  while (read(hold_fd, &c, 1) < 0 && errno == EINTR) {
  }
  _exit(0);
}

// Reaps `child`, killing it if it has not exited in time.
void Reap(pid_t child, int pidfd) {
  if (pidfd >= 0) {
    pollfd p{pidfd, POLLIN, 0};
    if (poll(&p, 1, kProbeTimeoutMs) != 1) kill(child, SIGKILL);
  } else {
    kill(child, SIGKILL);
  }
  while (waitpid(child, nullptr, 0) < 0 && errno == EINTR) {
  }
}

std::string CouldNotProbe(absl::string_view why) {
  return absl::StrCat("could not probe zero-hop support (", why, ")");
}

ZeroHopFeature Missing(std::string reason) { return {false, std::move(reason)}; }

ZeroHopFeature FromKtls() {
  KtlsSupport ktls = ProbeKtls();
  // ProbeKtls speaks of the proxy's fallback; for zero-hop the fallback is
  // proxy mode, which the caller says.
  return {ktls.available,
          std::string(absl::StripSuffix(ktls.reason, "; using the userspace record layer"))};
}

}  // namespace

namespace {

std::string FirstMissing(std::initializer_list<const ZeroHopFeature*> needed) {
  for (const ZeroHopFeature* f : needed) {
    if (!f->available) return f->reason;
  }
  return "";
}

}  // namespace

// Kernel TLS first: on most kernels without zero-hop it is the one missing.
std::string ZeroHopFeatures::outbound_missing() const {
  return FirstMissing({&ktls, &user_notif, &wait_killable_recv, &pidfd_getfd});
}

std::string ZeroHopFeatures::inbound_missing() const {
  return FirstMissing({&ktls, &user_notif, &addfd_send, &pidfd_getfd});
}

ZeroHopFeatures ProbeZeroHopFeatures() {
  ZeroHopFeatures f;
  f.ktls = FromKtls();
  auto all_missing = [&f](const std::string& why) {
    f.user_notif = f.wait_killable_recv = f.addfd_send = f.pidfd_getfd = Missing(why);
    return f;
  };
  // Built before fork: the child must not allocate.
  std::vector<sock_filter> filter = BuildFilter();
  sock_fprog prog{static_cast<unsigned short>(filter.size()), filter.data()};
  int report[2], hold[2];
  if (pipe2(report, O_CLOEXEC) != 0) {
    return all_missing(CouldNotProbe(absl::StrCat("pipe: ", ErrnoText(errno))));
  }
  UniqueFd report_read(report[0]), report_write(report[1]);
  if (pipe2(hold, O_CLOEXEC) != 0) {
    return all_missing(CouldNotProbe(absl::StrCat("pipe: ", ErrnoText(errno))));
  }
  UniqueFd hold_read(hold[0]), hold_write(hold[1]);
  pid_t child = fork();
  if (child < 0) {
    return all_missing(CouldNotProbe(absl::StrCat("fork: ", ErrnoText(errno))));
  }
  if (child == 0) ProbeInChild(&prog, report_write.get(), hold_read.get(), hold_write.get());
  int child_report_fd = report_write.get();
  report_write.Reset();
  hold_read.Reset();

  // Raw calls here: the errno decides the reason.
  UniqueFd pidfd(static_cast<int>(syscall(SYS_pidfd_open, child, 0)));
  int getfd_error = pidfd.valid() ? 0 : errno;
  ChildReport r;
  pollfd p{report_read.get(), POLLIN, 0};
  bool reported = poll(&p, 1, kProbeTimeoutMs) == 1 &&
                  read(report_read.get(), &r, sizeof(r)) == static_cast<ssize_t>(sizeof(r));
  // The child is alive until hold_write closes: take one of its fds, as the
  // agent takes a workload's socket.
  if (pidfd.valid()) {
    UniqueFd dup(static_cast<int>(syscall(SYS_pidfd_getfd, pidfd.get(), child_report_fd, 0)));
    if (!dup.valid()) getfd_error = errno;
  }
  hold_write.Reset();
  Reap(child, pidfd.get());
  if (!reported) return all_missing(CouldNotProbe("the probe child did not report"));

  if (r.action_avail != 0) {
    return all_missing(absl::StrCat(
        "the kernel has no seccomp user notification (SECCOMP_RET_USER_NOTIF, Linux 5.0): ",
        ErrnoText(r.action_avail)));
  }
  if (r.listener_killable != 0 && r.listener != 0) {
    return all_missing(
        absl::StrCat("the kernel refuses a seccomp filter with a notification listener: ",
                     ErrnoText(r.listener)));
  }
  f.user_notif = {true, "seccomp user notification works"};
  f.wait_killable_recv =
      r.listener_killable == 0
          ? ZeroHopFeature{true, "seccomp filters can hold notified syscalls against signals"}
          : Missing(absl::StrCat(
                "the kernel lacks SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (Linux 5.19, ",
                ErrnoText(r.listener_killable),
                "): a signal could let a workload write plaintext during the agent's handshake"));
  f.addfd_send =
      r.addfd_send == ENOENT
          ? ZeroHopFeature{true, "the agent can answer accept with a socket"}
          : Missing(absl::StrCat(
                "the kernel lacks SECCOMP_ADDFD_FLAG_SEND (Linux 5.14): ",
                r.addfd_send == 0 ? "an unknown id was accepted" : ErrnoText(r.addfd_send)));
  if (getfd_error == 0) {
    f.pidfd_getfd = {true, "pidfd_getfd works (on other users' processes it needs CAP_SYS_PTRACE)"};
  } else if (getfd_error == ENOSYS) {
    f.pidfd_getfd = Missing("the kernel has no pidfd_open/pidfd_getfd (Linux 5.6)");
  } else if (getfd_error == EPERM) {
    f.pidfd_getfd = Missing("pidfd_getfd is not permitted (EPERM): the agent needs CAP_SYS_PTRACE");
  } else {
    f.pidfd_getfd = Missing(absl::StrCat("pidfd_getfd fails: ", ErrnoText(getfd_error)));
  }
  return f;
}

}  // namespace ktrust::zerohop
