// Test support: a forked child under the zero-hop seccomp filter, with the
// test process as its agent. Every wait has a deadline, so a bug fails the
// test instead of hanging it, and the child is always reaped.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ktrust/common/socket_address.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/zerohop/notify.h"

namespace ktrust::zerohop {

// Long enough for a loaded 2-core CI machine; only a failing test waits it out.
inline constexpr absl::Duration kTestTimeout = absl::Seconds(5);

// The child's end of the channel to the test.
class ChildChannel {
 public:
  explicit ChildChannel(int fd) : fd_(fd) {}
  // Sends one value to the test (an errno, a result).
  void Report(int64_t value) const;
  // Waits for the test's go-ahead (or for the test to go away).
  void AwaitGo() const;

 private:
  int fd_;
};

class FilteredChild {
 public:
  // Forks a child that installs InstallFilter(), sends the listener here and
  // runs `body`, then exits. Its filter's reported flags are the first two
  // reports, consumed here. kSignalsInterrupt installs BuildFilter() without
  // WAIT_KILLABLE_RECV instead, as a kernel before 5.19 would: a signal then
  // takes the thread out of a notified syscall.
  enum class Signals { kHeld, kSignalsInterrupt };
  static absl::StatusOr<std::unique_ptr<FilteredChild>> Start(
      std::function<void(const ChildChannel&)> body, Signals signals = Signals::kHeld);
  ~FilteredChild();

  NotificationListener& listener() { return *listener_; }
  void CloseListener() { listener_.reset(); }
  bool wait_killable_recv() const { return wait_killable_recv_; }
  bool set_no_new_privs() const { return set_no_new_privs_; }
  pid_t pid() const { return pid_; }

  // The next notification, within kTestTimeout.
  absl::StatusOr<Notification> NextNotification();
  // The child's next report, within kTestTimeout.
  absl::StatusOr<int64_t> NextReport();
  absl::Status Go();
  // Waits for the child to exit; its wait status.
  absl::StatusOr<int> Wait();

 private:
  FilteredChild(pid_t pid, UniqueFd channel) : pid_(pid), channel_(std::move(channel)) {}

  pid_t pid_;
  UniqueFd channel_;
  std::optional<NotificationListener> listener_;
  bool wait_killable_recv_ = false;
  bool set_no_new_privs_ = false;
  bool reaped_ = false;
};

// Waits for child `pid` to exit, within kTestTimeout, and reaps it; its wait
// status.
absl::StatusOr<int> WaitForExit(pid_t pid);

// A TCP listener of the test's on loopback, port chosen by the kernel.
struct TestListener {
  UniqueFd fd;
  SocketAddress address;
};
absl::StatusOr<TestListener> ListenOnLoopback(int family);
// Accepts within kTestTimeout; reads on the result time out the same.
absl::StatusOr<UniqueFd> AcceptWithin(int listener_fd);
// True if a connection waits in `listener_fd`'s queue now.
bool HasPendingConnection(int listener_fd);

}  // namespace ktrust::zerohop
