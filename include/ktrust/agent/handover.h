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
//   ready                        ->    stops accepting; then, for each
//                                      established connection on kernel TLS
//                                      or plain sockets, quiesced:
//                                <-    move {id, connection} + SCM_RIGHTS
//                                      [application socket, wire socket]
//   (checks the sockets)
//   took {id}  or  declined {id, reason} ->
//                                <-    yours {id}   (then closes its copies)
//   (adopts it into its engine and pumps)
//                                <-    zero_hop {id, zero_hop: [rows]}
//                                      (the zero-hop connections it made,
//                                      which the successor's journal load
//                                      missed; no descriptors: the agent
//                                      holds none of their sockets)
//   (adds them to its registry, journaled)
//   took {id}  or  declined {id, reason} ->  (then it forgets them)
//   ... the predecessor drains what could not move (agent.drain_timeout);
//   the connection stays open until it exits. Zero-hop rows go again each
//   second and a last time once it has stopped answering notifications.
//
// A successor that goes away before `ready` (a bad configuration, a crash,
// a kill) leaves the predecessor serving as before: it points the steering
// back at its own listeners and takes its control socket back. Nothing is
// moved before `ready`. A moving connection has one owner throughout: the
// successor carries it only after `yours`, and the predecessor sends
// `yours` only after `took`; a successor that declines, goes away or does
// not answer in time leaves it with the predecessor (which then closes the
// handover connection, so that a late `took` can never count).
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
#include "ktrust/dataplane/engine.h"
#include "ktrust/zerohop/connection_registry.h"

namespace ktrust {

// <control socket's directory>/handover.sock
std::string HandoverSocketPath(const std::string& control_socket);

// A message is a few hundred bytes, a move a few kilobytes (the peer's
// certificate chain); anything longer is refused.
inline constexpr size_t kMaxHandoverMessageBytes = 64 * 1024;

struct HandoverMessage {
  // "hello", "welcome", "refused", "started", "released", "ready", "move",
  // "took", "declined", "yours", "zero_hop"
  std::string type;
  int64_t pid = 0;             // hello, welcome
  std::string reason;          // refused, declined
  std::string control_socket;  // released
  uint64_t id = 0;             // move, took, declined, yours: the predecessor's connection id
                               // (zero_hop and its answer: the batch's number)
  std::optional<MovedConnection> connection;         // move
  std::vector<zerohop::ZeroHopConnection> zero_hop;  // zero_hop: at least one
};

// The predecessor's zero-hop connections in messages that fit
// kMaxHandoverMessageBytes, in order.
std::vector<std::vector<zerohop::ZeroHopConnection>> ZeroHopBatches(
    std::vector<zerohop::ZeroHopConnection> connections);

std::string EncodeHandoverMessage(const HandoverMessage& message);
// Fails on malformed JSON, a wrong version, an unknown type, a field of
// the wrong type, or a move without its connection, saying which.
absl::StatusOr<HandoverMessage> DecodeHandoverMessage(absl::string_view text);
// How many descriptors a message of `type` carries (SCM_RIGHTS): a move
// its two sockets, any other none. A message with any other number is
// refused, and what it carried closed.
size_t HandoverFdCount(absl::string_view type);

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

  // The descriptors to poll for POLLIN: the listener, the connections
  // whose hello has not come yet, and the successor's connection while
  // there is one.
  std::vector<int> fds() const;
  // Accepts and answers what is ready, without blocking: a newcomer whose
  // hello has not come yet waits beside the caller's loop, and is refused
  // at kHelloDeadline after `now` of its accept; a successor that is not
  // ready within kSuccessorDeadline of its hello is dropped (resume).
  void Service(absl::Time now);
  // Handed over (the successor said ready).
  bool handed_over() const { return state_ == State::kHandedOver; }
  // Handed over, and the successor is still connected: it can take
  // connections.
  bool can_move() const { return handed_over() && successor_.valid(); }

  // After the handover: offers `connection` (detached from this agent's
  // engine) to the successor and waits up to `timeout` for its answer. OK:
  // the successor took it and was told it is its own; the caller closes its
  // copies of the sockets (without a reset or a shutdown). An error: the
  // connection is still the caller's to carry on. A declined one leaves the
  // successor connected; a successor that is gone, answers out of turn or
  // not in time is dropped (can_move() is false then).
  absl::Status Move(const DetachedConnection& connection, absl::Duration timeout);
  // After the handover: tells the successor of zero-hop connections this
  // agent made (one ZeroHopBatches batch) and waits up to `timeout` for its
  // answer. OK: it took them (journaled): the caller forgets them. An error:
  // they are still only the caller's. As Move, a successor that declines
  // stays connected; one that is gone, out of turn or late is dropped.
  absl::Status PassZeroHop(const std::vector<zerohop::ZeroHopConnection>& batch,
                           absl::Duration timeout);

  static constexpr absl::Duration kSuccessorDeadline = absl::Minutes(2);
  // A successor says hello as soon as it connects.
  static constexpr absl::Duration kHelloDeadline = absl::Seconds(5);
  // Connections waiting for their hello at most; more are refused at once.
  static constexpr size_t kMaxWaitingForHello = 4;

 private:
  enum class State { kIdle, kPaused, kReleased, kHandedOver };
  // A connection accepted, its peer checked, its hello not read yet.
  struct Newcomer {
    UniqueFd conn;
    pid_t pid = 0;
    absl::Status allowed;  // CheckPeer's verdict, said once the hello is read
    absl::Time deadline;
  };
  HandoverServer(std::string path, UniqueFd listener, Hooks hooks, dev_t dev, ino_t ino);
  // Reads the newcomers' hellos that came and answers them; refuses the
  // ones past their deadline.
  void ServiceNewcomers(absl::Time now);
  // Answers a newcomer whose hello (or its failure) came.
  void Admit(Newcomer newcomer, const absl::StatusOr<HandoverMessage>& hello);
  void Refuse(const Newcomer& newcomer, const absl::Status& why);
  void OnMessage(absl::Time now);
  void Abandon(const std::string& why);
  // The successor misbehaved after the handover: no more moves.
  void DropSuccessor(const std::string& why);

  std::string path_;
  UniqueFd listener_;
  Hooks hooks_;
  dev_t dev_;
  ino_t ino_;
  std::vector<Newcomer> newcomers_;
  UniqueFd successor_;
  pid_t successor_pid_ = 0;
  State state_ = State::kIdle;
  absl::Time deadline_ = absl::InfiniteFuture();
  uint64_t zero_hop_batches_ = 0;  // numbers the zero_hop messages
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

  // After Ready: the predecessor's connections as it offers them.
  struct Adoption {
    // Whether this agent can carry it (CheckMovedSockets); an error declines it.
    std::function<absl::Status(const DetachedConnection&)> check;
    // It is this agent's now (the predecessor said yours): carry it.
    std::function<void(DetachedConnection)> adopt;
    // Zero-hop connections the predecessor made: add them to this agent's
    // registry. OK answers took (the predecessor forgets them), an error
    // declined (it keeps them).
    std::function<absl::Status(std::vector<zerohop::ZeroHopConnection>)> zero_hop;
  };
  // Handles what the predecessor has sent, without blocking. Bad input (a
  // message that does not decode, a wrong number of descriptors, a message
  // out of turn) is logged and answered with `declined`; it changes
  // nothing. A connection taken and not yet ours when the predecessor goes
  // away is closed here without a reset (the predecessor kept it).
  void ServiceMoves(const Adoption& adoption);
  // For poll: readable when the predecessor sent something (or went away).
  int fd() const { return fd_.get(); }

 private:
  explicit HandoverClient(UniqueFd fd) : fd_(std::move(fd)) {}
  // A connection dropped here: its sockets closed without a reset or a
  // shutdown, the predecessor keeps its own copies.
  void Drop(DetachedConnection connection, const std::string& why);

  UniqueFd fd_;
  pid_t predecessor_ = 0;
  std::optional<DetachedConnection> taken_;  // took, awaiting yours
  bool gone_ = false;
};

}  // namespace ktrust
