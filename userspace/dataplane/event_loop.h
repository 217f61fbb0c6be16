// One io_uring per thread. Threading model (also in docs/architecture.md):
//
// The engine runs one EventLoop per core, each on its own thread with its own
// listening sockets (SO_REUSEPORT spreads new connections across them). A
// connection lives on the loop that accepted it, from accept to close: its
// state is touched only by that thread, so it needs no locks. Other threads
// see connections only through the ConnectionTable and the engine's atomic
// counters.
//
// Operations: accept and timeouts are io_uring operations; everything else is
// poll-gated: an io_uring POLL_ADD says a socket is ready, and the handler
// then does non-blocking splice/recv/send or OpenSSL calls directly. (An
// IORING_OP_SPLICE would run in io-wq worker threads, and SEND_ZC is refused
// on kTLS sockets.)
#pragma once

#include <liburing.h>

#include <atomic>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ktrust/common/unique_fd.h"

namespace ktrust {

class EventLoop {
 public:
  // Something waiting for one io_uring completion. It must stay alive until
  // OnComplete has run (a cancelled operation completes with -ECANCELED).
  class Op {
   public:
    virtual ~Op() = default;
    virtual void OnComplete(int result) = 0;
  };

  static absl::StatusOr<std::unique_ptr<EventLoop>> Create(unsigned entries = 4096);
  ~EventLoop();

  void PollAdd(Op* op, int fd, short events);
  // Cancels a pending PollAdd of `op`; `op` still completes (with -ECANCELED).
  void PollRemove(Op* op);
  void Accept(Op* op, int listen_fd);
  // `ts` must stay alive until the next Run() iteration has submitted it.
  void Timeout(Op* op, __kernel_timespec* ts);
  // Cancels a pending Timeout of `op`; `op` still completes (with
  // -ECANCELED, or -ETIME if it had already expired).
  void TimeoutRemove(Op* op);

  // Runs completions until Stop() is called from any thread.
  void Run();
  void Stop();
  bool stopping() const { return stopping_.load(); }

  // A coarse clock, refreshed once per batch of completions: cheap enough to
  // read on every pump step.
  absl::Time now() const { return now_; }

 private:
  EventLoop() = default;
  io_uring_sqe* Sqe();

  io_uring ring_{};
  UniqueFd wake_fd_;
  std::atomic<bool> stopping_{false};
  absl::Time now_ = absl::Now();
};

}  // namespace ktrust
