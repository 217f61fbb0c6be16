// While one of these lives, the process may open no descriptor: its soft
// RLIMIT_NOFILE is its lowest free descriptor, so the next open, socket or
// pipe fails with EMFILE. For tests of what happens at the fd limit; the
// limit is put back by Restore() or the destructor.
#pragma once

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

namespace ktrust::testing {

class NoFreeDescriptors {
 public:
  NoFreeDescriptors() {
    if (getrlimit(RLIMIT_NOFILE, &saved_) != 0) return;
    int lowest = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (lowest < 0) return;
    close(lowest);
    rlimit tight = saved_;
    tight.rlim_cur = static_cast<rlim_t>(lowest);
    active_ = setrlimit(RLIMIT_NOFILE, &tight) == 0;
  }
  ~NoFreeDescriptors() { Restore(); }
  NoFreeDescriptors(const NoFreeDescriptors&) = delete;
  NoFreeDescriptors& operator=(const NoFreeDescriptors&) = delete;

  // False if the limit could not be lowered (the test must fail then).
  bool active() const { return active_; }
  void Restore() {
    if (active_) setrlimit(RLIMIT_NOFILE, &saved_);
    active_ = false;
  }

 private:
  rlimit saved_{};
  bool active_ = false;
};

}  // namespace ktrust::testing
