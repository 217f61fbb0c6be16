// The zero-hop fd holder, `ktrustd holder` (docs/dataplane.md, "Zero-hop:
// the holder"): a small process of its own that keeps every workload's
// seccomp listener, so that the agent can crash, restart or be upgraded
// without a workload's connects failing with ENOSYS (they do once the last
// copy of its listener is closed), and so that a workload can start while
// the agent is down.
//
// It registers listeners from `ktrust exec` and from OCI runtimes
// (holder_protocol.h), checks each (who sent it, which process, its cgroup,
// that the fd really is a seccomp listener), hands all of them to every
// connected agent, and drops one when every task using its filter has
// exited. It holds no key, loads no BPF program and answers no notification.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ktrust/zerohop/holder_protocol.h"

namespace ktrust::zerohop {

struct HolderOptions {
  // Must exist or be creatable, owned by the holder's user and writable by
  // no one else: whoever could replace the sockets there could receive the
  // workloads' listeners.
  std::string socket_dir = kDefaultHolderDir;
  // A registration must arrive this soon after its connection.
  absl::Duration registration_timeout = absl::Seconds(5);
  // Bounds, so that no local user can exhaust the holder's fds.
  size_t max_entries = 16384;
  size_t max_entries_per_uid = 256;  // for users other than the holder's own
  size_t max_pending = 256;          // connections that have not sent yet
  size_t max_pending_per_uid = 16;
  // Messages queued for an agent that does not read; beyond that it is
  // disconnected (it gets every entry again when it reconnects).
  size_t max_agent_queue = 65536;
  // Notifications one agent may have held at once (one per workload thread
  // waiting in connect or accept); past it, new ones go unprotected.
  size_t max_held_per_agent = 65536;
};

// OK if `fd` is a seccomp notification listener ("anon_inode:seccomp notify").
absl::Status CheckSeccompListener(int fd);

class Holder {
 public:
  // Creates the directory if needed and binds the three sockets. Fails if
  // another holder already answers on the registration socket.
  static absl::StatusOr<std::unique_ptr<Holder>> Create(HolderOptions options);
  ~Holder();
  Holder(const Holder&) = delete;
  Holder& operator=(const Holder&) = delete;

  // Serves until `stop_fd` becomes readable (a signalfd, an eventfd).
  absl::Status Run(int stop_fd);

  size_t entries() const;

 private:
  struct State;
  explicit Holder(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// `ktrustd holder --socket-dir DIR`: logs, SIGINT/SIGTERM stop it.
int RunHolderCommand(const std::string& socket_dir, const std::string& log_level);

}  // namespace ktrust::zerohop
