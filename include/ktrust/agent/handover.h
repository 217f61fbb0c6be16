// Agent upgrades without a refused connection (docs/operations.md
// "Stopping and upgrading"): a new `ktrustd run` with the same configuration
// finds the running agent on its handover socket, beside the control socket,
// and takes over from it in steps. One SOCK_SEQPACKET connection, one JSON
// object per message:
//
//   successor                          running agent (predecessor)
//   hello {pid}                  ->    checks SO_PEERCRED: same uid, at least
//                                <-    welcome {pid}  or  refused {reason}
//                                      (pauses: no enrolment, no map writes)
//   (starts: its own listeners, then points the kernel's steering at them)
//   started                      ->    gives up the control socket and metrics
//                                <-    released {control_socket: where its
//                                      status stays while it drains}
//   (serves its control socket)
//   ready                        ->    stops accepting, drains (agent.drain_timeout)
//   ... the connection stays open until the predecessor exits.
//
// A successor that goes away before `ready` (a bad configuration, a crash,
// a kill) leaves the predecessor serving as before: it points the steering
// back at its own listeners and takes its control socket back. Nothing is
// moved before `ready`, so every connection has one owner throughout.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ktrust/common/unique_fd.h"

namespace ktrust {

// <control socket's directory>/handover.sock
std::string HandoverSocketPath(const std::string& control_socket);

// A message is a few hundred bytes; anything longer is refused.
inline constexpr size_t kMaxHandoverMessageBytes = 4096;

struct HandoverMessage {
  // "hello", "welcome", "refused", "started", "released", "ready"
  std::string type;
  int64_t pid = 0;             // hello, welcome
  std::string reason;          // refused
  std::string control_socket;  // released
};

std::string EncodeHandoverMessage(const HandoverMessage& message);
// Fails on malformed JSON, a wrong version, an unknown type or a field of
// the wrong type, saying which.
absl::StatusOr<HandoverMessage> DecodeHandoverMessage(absl::string_view text);

// CapEff of a /proc/<pid>/status text.
absl::StatusOr<uint64_t> ParseEffectiveCapabilities(absl::string_view status_text);

// Who may take over: the same uid, and every capability the running agent
// has (a successor with fewer could not serve what it takes). The error
// says why not, in words.
absl::Status CheckSuccessor(uid_t own_uid, uint64_t own_caps, uid_t peer_uid, uint64_t peer_caps);

// The running agent's side. Single-threaded: the caller polls fds() and
// calls Service(); the hooks run inside Service, on the caller's thread.
class HandoverServer {
 public:
  struct Hooks {
    // A successor was admitted: stop changing the kernel's maps.
    std::function<void(pid_t successor)> pause;
    // It has started and steered the kernel to itself: give up the control
    // socket and metrics; returns where this agent's status is served now.
    std::function<absl::StatusOr<std::string>()> release;
    // It is serving: stop accepting and drain.
    std::function<void(pid_t successor)> handed_over;
    // It went away before ready (`released`: release had run): serve again.
    std::function<void(const std::string& why, bool released)> resume;
  };
  // Binds `path` (0600; a stale socket is replaced, a live one is an error).
  static absl::StatusOr<std::unique_ptr<HandoverServer>> Listen(const std::string& path,
                                                                Hooks hooks);
  ~HandoverServer();

  // The descriptors to poll for POLLIN: the listener, and the successor's
  // connection while there is one.
  std::vector<int> fds() const;
  // Accepts and answers what is ready, without blocking; a successor that
  // is not ready within `deadline` of its hello is dropped (resume).
  void Service(absl::Time now);
  // Handed over (the successor said ready).
  bool handed_over() const { return state_ == State::kHandedOver; }

  static constexpr absl::Duration kSuccessorDeadline = absl::Minutes(2);

 private:
  enum class State { kIdle, kPaused, kReleased, kHandedOver };
  HandoverServer(std::string path, UniqueFd listener, Hooks hooks, dev_t dev, ino_t ino);
  void Admit(UniqueFd conn);
  void OnMessage(absl::Time now);
  void Abandon(const std::string& why);

  std::string path_;
  UniqueFd listener_;
  Hooks hooks_;
  dev_t dev_;
  ino_t ino_;
  UniqueFd successor_;
  pid_t successor_pid_ = 0;
  State state_ = State::kIdle;
  absl::Time deadline_ = absl::InfiniteFuture();
};

// The successor's side.
class HandoverClient {
 public:
  // Nothing when no agent listens at `path` (absent, or a stale socket):
  // start as usual. An error when one answers and refuses, or does not
  // answer within `timeout`: do not start alongside it.
  static absl::StatusOr<std::unique_ptr<HandoverClient>> Connect(const std::string& path,
                                                                 absl::Duration timeout);
  pid_t predecessor() const { return predecessor_; }
  // Says `started` and waits for `released`; returns where the predecessor's
  // status is served while it drains.
  absl::StatusOr<std::string> Started(absl::Duration timeout);
  absl::Status Ready();
  // The predecessor exited (its end of the connection closed).
  bool PredecessorGone();

 private:
  explicit HandoverClient(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
  pid_t predecessor_ = 0;
};

}  // namespace ktrust
