// Socket helpers the engine's loops and connections share.
#pragma once

#include "absl/status/statusor.h"
#include "ktrust/common/unique_fd.h"

namespace ktrust {

// The network namespace a socket is made in.
struct SocketNetns {
  int fd = -1;    // the namespace; -1: the engine's own, made without any setns
  int home = -1;  // the engine's own namespace, where the thread returns
};

// A TCP socket (non-blocking, close-on-exec) made in `netns`. The thread
// enters the namespace only for the socket() call (RunInNetns): if it cannot
// return to its own namespace, every later socket of the engine would be
// made in the wrong one, so the process logs that and aborts (the kernel
// then refuses the enrolled traffic instead of the engine carrying it
// wrongly).
absl::StatusOr<UniqueFd> SocketIn(SocketNetns netns, int family);

// close() after this sends RST instead of FIN: the other side must not take
// an aborted or refused stream for a complete one. -1 is ignored.
void ArmReset(int fd);

// A workload's own socket that must never carry its bytes (a failed
// zero-hop handshake): ArmReset, then shutdown(SHUT_RDWR), so every send the
// workload tries fails with EPIPE, also on a socket that never connected,
// and its close resets the peer. -1 is ignored.
void KillSocket(int fd);

// Closes `fd` with RST, for a connection refused at accept.
inline void CloseWithReset(UniqueFd fd) { ArmReset(fd.get()); }

}  // namespace ktrust
