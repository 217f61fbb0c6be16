// The agent's end of the fd holder (holder.h): connects to its agent socket
// and receives every listener the holder keeps, then new ones and removals
// as they happen.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/zerohop/holder_protocol.h"

namespace ktrust::zerohop {

class HolderClient {
 public:
  // Connects to the holder's agent socket (DIR/holder.sock). Refuses a peer
  // that is neither root nor this process's user: the listeners and pidfds
  // it would hand over must come from the real holder.
  static absl::StatusOr<HolderClient> Connect(const std::string& path);

  // Readable (poll POLLIN) when Receive() has a message.
  int fd() const { return fd_.get(); }

  // Waits up to `timeout` (InfiniteDuration: forever) for the next message.
  // DeadlineExceeded on timeout; Unavailable once the holder closed the
  // connection (connect again: it sends every entry again). A malformed
  // message is InvalidArgument, its fds closed; the next may be fine.
  // Every received listener is checked to be a seccomp listener.
  absl::StatusOr<HolderMessage> Receive(absl::Duration timeout = absl::InfiniteDuration()) const;

 private:
  explicit HolderClient(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

}  // namespace ktrust::zerohop
