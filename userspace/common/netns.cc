#include "ktrust/common/netns.h"

#include <fcntl.h>
#include <sched.h>

#include <cerrno>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "ktrust/common/error_text.h"
#include "ktrust/common/log.h"
#include "ktrust/common/unique_fd.h"

namespace ktrust {

absl::Status RunInNetns(int netns_fd, int home_fd, absl::string_view target, absl::string_view home,
                        absl::FunctionRef<absl::Status()> fn) {
  UniqueFd opened_home;
  if (home_fd < 0) {
    opened_home.Reset(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
    if (!opened_home.valid()) {
      return absl::ErrnoToStatus(errno, absl::StrCat("open ", home, " (/proc/thread-self/ns/net)"));
    }
    home_fd = opened_home.get();
  }
  if (setns(netns_fd, CLONE_NEWNET) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("enter ", target));
  }
  absl::Status result = fn();
  if (setns(home_fd, CLONE_NEWNET) != 0) {
    LogEvent(spdlog::level::critical,
             {{"event", "netns_return_failed"},
              {"reason", absl::StrCat("cannot return to ", home, " (", ErrnoText(errno),
                                      "); aborting rather than making sockets in the wrong one")}});
    spdlog::default_logger()->flush();
    std::abort();
  }
  return result;
}

}  // namespace ktrust
