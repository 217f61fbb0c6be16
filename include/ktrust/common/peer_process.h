// The process at the other end of a connected unix socket, for checks that
// read its /proc entry (uid, capabilities, cgroup): a pid alone may name
// another process by the time it is read.
#pragma once

#include <sys/types.h>

#include "absl/status/statusor.h"
#include "ktrust/common/unique_fd.h"

namespace ktrust {

// A pidfd of the peer of `sock`, whose SO_PEERCRED pid is `pid`:
//   SO_PEERPIDFD (Linux 6.5+): the very process that connected, even if it
//     has exited since (its pidfd then polls readable) and its pid was
//     reused. A check that reads /proc/<pid> and then finds this pidfd not
//     exited has read that process.
//   before 6.5, pidfd_open(pid): whichever process has the pid now. If the
//     peer exited and its pid was reused between its connect and this call
//     (a wrap of the pid space in that window), it is another process: the
//     check is as good as the pid, no better.
// `exact` (if given) says which of the two it is.
absl::StatusOr<UniqueFd> PeerPidfd(int sock, pid_t pid, bool* exact = nullptr);

// True once the process behind `pidfd` has exited (a pidfd polls readable).
bool PidfdExited(int pidfd);

}  // namespace ktrust
