#include "unit/zerohop/filtered_child.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "ktrust/zerohop/proc_mem.h"
#include "ktrust/zerohop/seccomp_filter.h"

namespace ktrust::zerohop {
namespace {

int TimeoutMs() { return static_cast<int>(absl::ToInt64Milliseconds(kTestTimeout)); }

absl::Status WaitFor(int fd, short events, absl::string_view what) {
  pollfd p{fd, events, 0};
  int n;
  do {
    n = poll(&p, 1, TimeoutMs());
  } while (n < 0 && errno == EINTR);
  if (n < 0) return absl::ErrnoToStatus(errno, what);
  if (n == 0) return absl::DeadlineExceededError(absl::StrCat(what, ": timed out"));
  return absl::OkStatus();
}

// One int64 with room for one fd beside it, for sendmsg/recvmsg.
struct FdMessage {
  int64_t value = 0;
  iovec io{&value, sizeof(value)};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  FdMessage() {
    msg.msg_iov = &io;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
  }
  FdMessage(const FdMessage&) = delete;
  FdMessage& operator=(const FdMessage&) = delete;
};

void SendFd(int channel, int fd, int64_t value) {
  FdMessage m;
  m.value = value;
  cmsghdr* cm = CMSG_FIRSTHDR(&m.msg);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cm), &fd, sizeof(int));
  (void)!sendmsg(channel, &m.msg, 0);
}

absl::StatusOr<InstalledFilter> InstallWithoutWaitKillable() {
  std::vector<sock_filter> prog = BuildFilter();
  sock_fprog fprog{static_cast<unsigned short>(prog.size()), prog.data()};
  InstalledFilter installed;
  installed.set_no_new_privs = prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0;
  installed.listener.Reset(static_cast<int>(
      syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &fprog)));
  if (!installed.listener.valid()) return absl::ErrnoToStatus(errno, "seccomp");
  return installed;
}

}  // namespace

void ChildChannel::Report(int64_t value) const { (void)!send(fd_, &value, sizeof(value), 0); }

void ChildChannel::AwaitGo() const {
  char c;
  while (recv(fd_, &c, 1, 0) < 0 && errno == EINTR) {
  }
}

absl::StatusOr<std::unique_ptr<FilteredChild>> FilteredChild::Start(
    std::function<void(const ChildChannel&)> body, Signals signals) {
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
    return absl::ErrnoToStatus(errno, "socketpair");
  }
  UniqueFd parent_end(pair[0]), child_end(pair[1]);
  pid_t pid = fork();
  if (pid < 0) return absl::ErrnoToStatus(errno, "fork");
  if (pid == 0) {
    parent_end.Reset();
    absl::StatusOr<InstalledFilter> installed =
        signals == Signals::kHeld ? InstallFilter() : InstallWithoutWaitKillable();
    if (!installed.ok()) {
      ChildChannel(child_end.get()).Report(-1);
      _exit(1);
    }
    SendFd(child_end.get(), installed->listener.get(),
           (installed->wait_killable_recv ? 1 : 0) | (installed->set_no_new_privs ? 2 : 0));
    // The agent's copy is the only one, as in `ktrust exec`.
    installed->listener.Reset();
    body(ChildChannel(child_end.get()));
    _exit(0);
  }
  child_end.Reset();
  std::unique_ptr<FilteredChild> child(new FilteredChild(pid, std::move(parent_end)));
  if (absl::Status st = WaitFor(child->channel_.get(), POLLIN, "the child's listener"); !st.ok()) {
    return st;
  }
  FdMessage m;
  if (recvmsg(child->channel_.get(), &m.msg, MSG_CMSG_CLOEXEC) != sizeof(m.value) || m.value < 0) {
    return absl::InternalError("the child could not install the filter");
  }
  int64_t flags = m.value;
  cmsghdr* cm = CMSG_FIRSTHDR(&m.msg);
  if (cm == nullptr || cm->cmsg_type != SCM_RIGHTS) {
    return absl::InternalError("the child sent no listener");
  }
  int fd;
  std::memcpy(&fd, CMSG_DATA(cm), sizeof(int));
  absl::StatusOr<NotificationListener> listener = NotificationListener::Create(UniqueFd(fd));
  if (!listener.ok()) return listener.status();
  child->listener_.emplace(std::move(*listener));
  child->wait_killable_recv_ = (flags & 1) != 0;
  child->set_no_new_privs_ = (flags & 2) != 0;
  return child;
}

FilteredChild::~FilteredChild() {
  if (reaped_) return;
  kill(pid_, SIGKILL);
  while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
}

absl::StatusOr<Notification> FilteredChild::NextNotification() {
  if (!listener_) return absl::FailedPreconditionError("listener closed");
  if (absl::Status st = listener_->WaitReadable(kTestTimeout); !st.ok()) return st;
  return listener_->Receive();
}

absl::StatusOr<int64_t> FilteredChild::NextReport() {
  if (absl::Status st = WaitFor(channel_.get(), POLLIN, "the child's report"); !st.ok()) return st;
  int64_t value = 0;
  if (recv(channel_.get(), &value, sizeof(value), 0) != sizeof(value)) {
    return absl::InternalError("the child closed its channel without reporting");
  }
  return value;
}

absl::Status FilteredChild::Go() {
  char c = 'g';
  if (send(channel_.get(), &c, 1, MSG_NOSIGNAL) != 1) return absl::ErrnoToStatus(errno, "go");
  return absl::OkStatus();
}

absl::StatusOr<int> FilteredChild::Wait() {
  absl::StatusOr<int> status = WaitForExit(pid_);
  if (status.ok()) reaped_ = true;
  return status;
}

absl::StatusOr<int> WaitForExit(pid_t pid) {
  absl::StatusOr<UniqueFd> pidfd = PidfdOpen(pid);
  if (!pidfd.ok()) return pidfd.status();
  if (absl::Status st = WaitFor(pidfd->get(), POLLIN, "the child's exit"); !st.ok()) return st;
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return absl::ErrnoToStatus(errno, "waitpid");
  return status;
}

absl::StatusOr<TestListener> ListenOnLoopback(int family) {
  TestListener l;
  l.fd.Reset(socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!l.fd.valid()) return absl::ErrnoToStatus(errno, "socket");
  absl::StatusOr<SocketAddress> any =
      SocketAddress::Parse(family == AF_INET6 ? "[::1]:0" : "127.0.0.1:0");
  if (!any.ok()) return any.status();
  if (bind(l.fd.get(), any->get(), any->size()) != 0 || listen(l.fd.get(), 8) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("listen on ", any->ToString()));
  }
  absl::StatusOr<SocketAddress> bound = SocketAddress::LocalOf(l.fd.get());
  if (!bound.ok()) return bound.status();
  l.address = *bound;
  return l;
}

absl::StatusOr<UniqueFd> AcceptWithin(int listener_fd) {
  if (absl::Status st = WaitFor(listener_fd, POLLIN, "accept"); !st.ok()) return st;
  UniqueFd fd(accept4(listener_fd, nullptr, nullptr, SOCK_CLOEXEC));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "accept");
  // Reads on it fail instead of hanging if the other end never writes.
  timeval timeout = absl::ToTimeval(kTestTimeout);
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  return fd;
}

bool HasPendingConnection(int listener_fd) {
  pollfd p{listener_fd, POLLIN, 0};
  return poll(&p, 1, 0) == 1;
}

}  // namespace ktrust::zerohop
