// One io_uring per thread. Threading model (also in docs/architecture.md):
//
// The engine runs one EventLoop per core, each on its own thread with its own
// listening sockets (SO_REUSEPORT spreads new connections across them). A
// connection lives on the loop that accepted it, from accept to close: its
// state is touched only by that thread, so it needs no locks. Other threads
// see connections only through the ConnectionTable and the engine's atomic
// counters, and hand a loop work (runtime listeners) with EventLoop::Post.
//
// Operations: accept and timeouts are io_uring operations; everything else is
// poll-gated: an io_uring POLL_ADD says a socket is ready, and the handler
// then does non-blocking splice/recv/send or OpenSSL calls directly. (An
// IORING_OP_SPLICE would run in io-wq worker threads, and SEND_ZC is refused
// on kTLS sockets.)
#pragma once

#include <liburing.h>

#include <atomic>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
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

  // Runs completions and posted tasks until Stop() is called from any thread;
  // after each batch of them, `after_batch` (if set) on the loop's thread.
  void Run(const std::function<void()>& after_batch = nullptr);
  void Stop();
  // Runs `task` on the loop's thread, as soon as the loop wakes for it (not
  // at some later tick). Any thread may post. Tasks posted before Run()
  // ended run, at the latest, as Run() returns; after that Post() refuses
  // the task and returns false.
  bool Post(std::function<void()> task);
  bool stopping() const { return stopping_.load(); }

  // A coarse clock, refreshed once per batch of completions: cheap enough to
  // read on every pump step.
  absl::Time now() const { return now_; }

 private:
  EventLoop() = default;
  io_uring_sqe* Sqe();
  void ArmWake();
  // On the loop thread: runs what was posted so far.
  void RunPosted();

  io_uring ring_{};
  // Written by Stop() and Post(), polled by Run().
  UniqueFd wake_fd_;
  absl::Mutex posted_mu_;
  std::vector<std::function<void()>> posted_ ABSL_GUARDED_BY(posted_mu_);
  bool posting_closed_ ABSL_GUARDED_BY(posted_mu_) = false;
  std::atomic<bool> stopping_{false};
  absl::Time now_ = absl::Now();
};

}  // namespace ktrust
