// What the bpf tier's tests stand on: a private BPF filesystem, throwaway
// cgroups under the cgroup v2 mount, network namespaces, and child processes
// placed in a cgroup. Everything is created per test and removed after, and
// programs are only ever attached to these cgroups and namespaces, never to
// the machine's root cgroup or namespace (other people share this machine).
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>
#include <unistd.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ktrust/common/socket_address.h"
#include "ktrust/common/unique_fd.h"

// The tier needs root: loading programs, mounting bpffs, creating cgroups.
#define KTRUST_REQUIRE_ROOT()                                                              \
  do {                                                                                     \
    if (geteuid() != 0) {                                                                  \
      GTEST_SKIP() << "the bpf tier needs root (CAP_BPF, CAP_NET_ADMIN, mount and cgroup " \
                      "rights); run it as root, as CI does";                               \
    }                                                                                      \
  } while (0)

namespace ktrust::testing {

// A bpffs mounted on a fresh directory under /tmp; unmounted when dropped.
class ScopedBpffs {
 public:
  static absl::StatusOr<std::unique_ptr<ScopedBpffs>> Create();
  ~ScopedBpffs();
  const std::string& path() const { return path_; }
  // Where a loader under test pins (it creates the directory).
  std::string pin_dir() const { return path_ + "/ktrust"; }

 private:
  explicit ScopedBpffs(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// A cgroup v2 directory: "ktrust-test-<pid>-<name>" under the mount, or
// <name> under a parent. Removed when dropped (its processes must be gone).
class TestCgroup {
 public:
  static absl::StatusOr<std::unique_ptr<TestCgroup>> Create(absl::string_view name,
                                                            const TestCgroup* parent = nullptr);
  ~TestCgroup();
  const std::string& path() const { return path_; }
  uint64_t id() const { return id_; }

 private:
  TestCgroup(std::string path, uint64_t id) : path_(std::move(path)), id_(id) {}
  std::string path_;
  uint64_t id_;
};

// A network namespace with lo up, kept alive by an fd.
class TestNetns {
 public:
  static absl::StatusOr<std::unique_ptr<TestNetns>> Create();
  // For BpfLoader::AttachNetns.
  std::string path() const;
  // Runs fn on a thread inside the namespace. Sockets it creates stay in the
  // namespace when used from other threads.
  void Run(const std::function<void()>& fn) const;

 private:
  explicit TestNetns(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

// A forked child moved into a cgroup before it runs body. body gets two fds:
// `out` to report results to the parent (ReadFrom), `in` to wait for the
// parent (Signal). It must stick to system calls: the parent has threads.
class CgroupChild {
 public:
  using Body = std::function<int(int in, int out)>;
  static absl::StatusOr<std::unique_ptr<CgroupChild>> Start(const TestCgroup& cgroup,
                                                            const Body& body);
  // Kills and reaps the child if it is still running.
  ~CgroupChild();

  pid_t pid() const { return pid_; }
  // Reads exactly size bytes the child wrote, waiting up to timeout.
  absl::Status ReadFrom(void* data, size_t size, absl::Duration timeout = absl::Seconds(5));
  // Wakes a child blocked reading `in`.
  absl::Status Signal();
  // Waits for the child's exit code.
  absl::StatusOr<int> Wait();

 private:
  CgroupChild() = default;
  pid_t pid_ = -1;
  UniqueFd to_child_;
  UniqueFd from_child_;
};

// Sockets on loopback, with waits bounded so a broken redirect fails a test
// instead of hanging it.
UniqueFd ListenTcp(const SocketAddress& address);
// Accepts one connection, or returns an invalid fd after timeout.
UniqueFd AcceptWithin(int listen_fd, absl::Duration timeout);
// Whether a connection is waiting in the accept queue right now.
bool HasPendingConnection(int listen_fd);
SocketAddress Address(absl::string_view text);  // aborts the test binary on a typo
uint64_t SocketCookie(int fd);

}  // namespace ktrust::testing
