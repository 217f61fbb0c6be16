#include "bpf/bpf_test_env.h"

#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "ktrust/bpf/cgroup2.h"

namespace ktrust::testing {

absl::StatusOr<std::unique_ptr<ScopedBpffs>> ScopedBpffs::Create() {
  char templ[] = "/tmp/ktrust-bpffs-XXXXXX";
  if (!mkdtemp(templ)) return absl::ErrnoToStatus(errno, "mkdtemp");
  if (mount("bpf", templ, "bpf", 0, nullptr) != 0) {
    int err = errno;
    rmdir(templ);
    return absl::ErrnoToStatus(err, absl::StrCat("mounting bpffs on ", templ));
  }
  return std::unique_ptr<ScopedBpffs>(new ScopedBpffs(templ));
}

ScopedBpffs::~ScopedBpffs() {
  // Dropping the mount drops its pins, and with them any link left attached.
  umount2(path_.c_str(), MNT_DETACH);
  rmdir(path_.c_str());
}

absl::StatusOr<std::unique_ptr<TestCgroup>> TestCgroup::Create(absl::string_view name,
                                                               const TestCgroup* parent) {
  std::string path;
  if (parent) {
    path = absl::StrCat(parent->path(), "/", name);
  } else {
    auto mount = Cgroup2Mount();
    if (!mount.ok()) return mount.status();
    path = absl::StrCat(*mount, "/ktrust-test-", getpid(), "-", name);
  }
  if (mkdir(path.c_str(), 0755) != 0) return absl::ErrnoToStatus(errno, "mkdir " + path);
  auto id = CgroupIdOf(path);
  if (!id.ok()) {
    rmdir(path.c_str());
    return id.status();
  }
  return std::unique_ptr<TestCgroup>(new TestCgroup(path, *id));
}

TestCgroup::~TestCgroup() { rmdir(path_.c_str()); }

absl::StatusOr<std::unique_ptr<TestNetns>> TestNetns::Create() {
  absl::Status status;
  UniqueFd fd;
  // unshare() moves only the calling thread, so a short-lived one does it.
  std::thread([&] {
    if (unshare(CLONE_NEWNET) != 0) {
      status = absl::ErrnoToStatus(errno, "unshare(CLONE_NEWNET)");
      return;
    }
    fd.Reset(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) {
      status = absl::ErrnoToStatus(errno, "opening the new netns");
      return;
    }
    UniqueFd sock(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    if (ioctl(sock.get(), SIOCGIFFLAGS, &ifr) != 0) {
      status = absl::ErrnoToStatus(errno, "SIOCGIFFLAGS lo");
      return;
    }
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
    if (ioctl(sock.get(), SIOCSIFFLAGS, &ifr) != 0) {
      status = absl::ErrnoToStatus(errno, "SIOCSIFFLAGS lo up");
    }
  }).join();
  if (!status.ok()) return status;
  return std::unique_ptr<TestNetns>(new TestNetns(std::move(fd)));
}

std::string TestNetns::path() const { return absl::StrCat("/proc/self/fd/", fd_.get()); }

void TestNetns::Run(const std::function<void()>& fn) const {
  std::thread([&] {
    if (setns(fd_.get(), CLONE_NEWNET) != 0) {
      ADD_FAILURE() << "setns: " << std::strerror(errno);
      return;
    }
    fn();
  }).join();
}

absl::StatusOr<std::unique_ptr<CgroupChild>> CgroupChild::Start(const TestCgroup& cgroup,
                                                                const Body& body) {
  int to_child[2], from_child[2];
  if (pipe2(to_child, O_CLOEXEC) != 0) return absl::ErrnoToStatus(errno, "pipe2");
  if (pipe2(from_child, O_CLOEXEC) != 0) {
    close(to_child[0]);
    close(to_child[1]);
    return absl::ErrnoToStatus(errno, "pipe2");
  }
  pid_t pid = fork();
  if (pid < 0) return absl::ErrnoToStatus(errno, "fork");
  if (pid == 0) {
    close(to_child[1]);
    close(from_child[0]);
    // Wait until the parent has moved us into the cgroup.
    char go = 0;
    if (read(to_child[0], &go, 1) != 1) _exit(120);
    _exit(body(to_child[0], from_child[1]));
  }
  std::unique_ptr<CgroupChild> child(new CgroupChild());
  child->pid_ = pid;
  child->to_child_.Reset(to_child[1]);
  child->from_child_.Reset(from_child[0]);
  close(to_child[0]);
  close(from_child[1]);

  std::string procs = cgroup.path() + "/cgroup.procs";
  UniqueFd fd(open(procs.c_str(), O_WRONLY | O_CLOEXEC));
  std::string pid_text = std::to_string(pid);
  if (!fd.valid() || write(fd.get(), pid_text.data(), pid_text.size()) < 0) {
    return absl::ErrnoToStatus(errno, "moving the child into " + procs);
  }
  if (auto st = child->Signal(); !st.ok()) return st;
  return child;
}

CgroupChild::~CgroupChild() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

absl::Status CgroupChild::ReadFrom(void* data, size_t size, absl::Duration timeout) {
  auto* out = static_cast<char*>(data);
  absl::Time deadline = absl::Now() + timeout;
  size_t done = 0;
  while (done < size) {
    pollfd pfd{.fd = from_child_.get(), .events = POLLIN, .revents = 0};
    int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (ms <= 0 || poll(&pfd, 1, ms) <= 0) {
      return absl::DeadlineExceededError("the child did not report in time");
    }
    ssize_t n = read(from_child_.get(), out + done, size - done);
    if (n <= 0) return absl::ErrnoToStatus(n < 0 ? errno : EPIPE, "reading from the child");
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status CgroupChild::Signal() {
  char go = 1;
  if (write(to_child_.get(), &go, 1) != 1) return absl::ErrnoToStatus(errno, "signalling child");
  return absl::OkStatus();
}

absl::StatusOr<int> CgroupChild::Wait() {
  int status = 0;
  if (waitpid(pid_, &status, 0) != pid_) return absl::ErrnoToStatus(errno, "waitpid");
  pid_ = -1;
  if (!WIFEXITED(status)) return absl::InternalError("the child did not exit normally");
  return WEXITSTATUS(status);
}

UniqueFd ListenTcp(const SocketAddress& address) {
  UniqueFd fd(socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid() || bind(fd.get(), address.get(), address.size()) != 0 ||
      listen(fd.get(), 128) != 0) {
    ADD_FAILURE() << "listening on " << address.ToString() << ": " << std::strerror(errno);
    return UniqueFd();
  }
  return fd;
}

UniqueFd AcceptWithin(int listen_fd, absl::Duration timeout) {
  pollfd pfd{.fd = listen_fd, .events = POLLIN, .revents = 0};
  if (poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout))) <= 0) return UniqueFd();
  return UniqueFd(accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
}

bool HasPendingConnection(int listen_fd) {
  pollfd pfd{.fd = listen_fd, .events = POLLIN, .revents = 0};
  return poll(&pfd, 1, 0) > 0;
}

SocketAddress Address(absl::string_view text) {
  auto address = SocketAddress::Parse(text);
  if (!address.ok()) {
    ADD_FAILURE() << address.status();
    std::abort();
  }
  return *address;
}

uint64_t SocketCookie(int fd) {
  uint64_t cookie = 0;
  socklen_t len = sizeof(cookie);
  if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) != 0) {
    ADD_FAILURE() << "SO_COOKIE: " << std::strerror(errno);
  }
  return cookie;
}

}  // namespace ktrust::testing
