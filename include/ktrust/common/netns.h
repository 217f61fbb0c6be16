// Work done inside another network namespace by the calling thread.
#pragma once

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace ktrust {

// Runs fn with the calling thread in the network namespace `netns_fd`, then
// moves the thread back to `home_fd` (-1: the namespace it is in now, opened
// for the call). setns(CLONE_NEWNET) moves only the calling thread, and what
// fn makes there (a socket) stays in that namespace.
//
// `target` and `home` name the namespaces for the messages ("the pod's
// network namespace"). Entering fails: an error, and fn does not run.
// Returning fails: every later socket of the thread would be made in the
// wrong namespace, so the process logs netns_return_failed and aborts.
absl::Status RunInNetns(int netns_fd, int home_fd, absl::string_view target, absl::string_view home,
                        absl::FunctionRef<absl::Status()> fn);

}  // namespace ktrust
