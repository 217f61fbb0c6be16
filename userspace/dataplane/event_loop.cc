#include "event_loop.h"

#include <poll.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <thread>

#include "absl/strings/str_cat.h"
#include "ktrust/common/error_text.h"
#include "ktrust/common/log_limiter.h"

namespace ktrust {
namespace {

// The wake-up eventfd's completion carries this tag instead of an Op.
constexpr uint64_t kWakeTag = 1;

}  // namespace

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create(unsigned entries) {
  std::unique_ptr<EventLoop> loop(new EventLoop());
  // COOP_TASKRUN (5.19): a completion does not interrupt the loop while it
  // runs in userspace; it is taken at its next entry into the kernel, which
  // comes soon (every step makes system calls, and it waits in
  // io_uring_enter). Without it, each poll that fires on a busy loop costs an
  // interrupt (docs/performance.md, per-request cost). It suits a ring whose
  // one thread both submits and waits, as this one. Older kernels: without.
  int rc = io_uring_queue_init(entries, &loop->ring_, IORING_SETUP_COOP_TASKRUN);
  if (rc == -EINVAL) rc = io_uring_queue_init(entries, &loop->ring_, 0);
  if (rc < 0) return absl::ErrnoToStatus(-rc, "io_uring_queue_init");
  loop->wake_fd_.Reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!loop->wake_fd_.valid()) return absl::ErrnoToStatus(errno, "eventfd");
  loop->ArmWake();
  return loop;
}

void EventLoop::ArmWake() {
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_poll_add(sqe, wake_fd_.get(), POLLIN);
  io_uring_sqe_set_data64(sqe, kWakeTag);
}

EventLoop::~EventLoop() { io_uring_queue_exit(&ring_); }

io_uring_sqe* EventLoop::Sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    // The submission queue is full: hand it to the kernel and retry.
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void EventLoop::PollAdd(Op* op, int fd, short events) {
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_poll_add(sqe, fd, static_cast<unsigned>(events));
  io_uring_sqe_set_data(sqe, op);
}

void EventLoop::PollRemove(Op* op) {
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_poll_remove(sqe, reinterpret_cast<uint64_t>(op));
  // The removal's own completion is of no interest.
  io_uring_sqe_set_data(sqe, nullptr);
}

void EventLoop::Accept(Op* op, int listen_fd) {
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_accept(sqe, listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  io_uring_sqe_set_data(sqe, op);
}

void EventLoop::Timeout(Op* op, __kernel_timespec* ts) {
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_timeout(sqe, ts, 0, 0);
  io_uring_sqe_set_data(sqe, op);
}

void EventLoop::TimeoutRemove(Op* op) {
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_timeout_remove(sqe, reinterpret_cast<uint64_t>(op), 0);
  io_uring_sqe_set_data(sqe, nullptr);
}

void EventLoop::Run(const std::function<void()>& after_batch) {
  while (!stopping_.load()) {
    int rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc == -ENOMEM || rc == -ENOBUFS) {
      // The kernel has no memory for the submissions: they stay queued and
      // go with the next try; meanwhile the loop neither spins nor ends
      // (which would freeze every connection on it).
      LogRefusal(
          spdlog::level::err,
          {{"event", "event_loop_short_of_memory"},
           {"reason", absl::StrCat("io_uring_enter: ", ErrnoText(-rc), "; retried every 10 ms")}},
          "memory");
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    } else if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
      break;
    now_ = absl::Now();
    io_uring_cqe* cqe = nullptr;
    unsigned head = 0;
    unsigned seen = 0;
    bool woken = false;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++seen;
      uint64_t data = io_uring_cqe_get_data64(cqe);
      if (data == kWakeTag) woken = true;
      if (data == 0 || data == kWakeTag) continue;
      reinterpret_cast<Op*>(data)->OnComplete(cqe->res);
    }
    io_uring_cq_advance(&ring_, seen);
    if (woken && !stopping_.load()) {
      // Reset the eventfd before taking the tasks: a Post() after this
      // point makes it readable again, and the re-armed poll fires at once.
      uint64_t count = 0;
      (void)!read(wake_fd_.get(), &count, sizeof(count));
      ArmWake();
      RunPosted();
    }
    if (after_batch) after_batch();
  }
  // Whatever was posted before the end still runs: a poster may wait for it.
  {
    absl::MutexLock lock(&posted_mu_);
    posting_closed_ = true;
  }
  RunPosted();
}

void EventLoop::RunPosted() {
  std::vector<std::function<void()>> tasks;
  {
    absl::MutexLock lock(&posted_mu_);
    tasks.swap(posted_);
  }
  for (auto& task : tasks) task();
}

bool EventLoop::Post(std::function<void()> task) {
  {
    absl::MutexLock lock(&posted_mu_);
    if (posting_closed_) return false;
    posted_.push_back(std::move(task));
  }
  uint64_t one = 1;
  (void)!write(wake_fd_.get(), &one, sizeof(one));
  return true;
}

void EventLoop::Stop() {
  stopping_.store(true);
  uint64_t one = 1;
  // Wakes Run() from io_uring_submit_and_wait.
  (void)!write(wake_fd_.get(), &one, sizeof(one));
}

}  // namespace ktrust
