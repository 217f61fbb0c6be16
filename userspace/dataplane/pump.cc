#include "pump.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "ktrust/common/error_text.h"

namespace ktrust {

CopyPump::CopyPump(StreamEnd& source, StreamEnd& sink, char* scratch)
    : source_(source), sink_(sink), scratch_(scratch) {}

bool CopyPump::Drain(const char* data, size_t len, PumpStep& step) {
  size_t done = 0;
  while (done < len) {
    StreamEnd::Io io = sink_.Write(data + done, len - done);
    if (io.kind == StreamEnd::Io::kOk) {
      done += io.n;
      step.bytes += io.n;
      continue;
    }
    if (io.kind == StreamEnd::Io::kWouldBlock) {
      // The sink is behind: keep the rest (OpenSSL accepts a retry from
      // another address, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER). Scratch is
      // the thread's, so it is copied; held_ is already this pump's.
      if (data == scratch_) {
        held_.reset(new char[len - done]);
        std::memcpy(held_.get(), data + done, len - done);
        begin_ = 0;
        end_ = len - done;
      } else {
        begin_ += done;
      }
      step.wait = {sink_.fd(), io.wait};
      return false;
    }
    step.status = PumpStatus::kFailed;
    step.error = io.kind == StreamEnd::Io::kError ? io.error : "the receiving end closed";
    return false;
  }
  // All taken: an idle pump holds no memory.
  held_.reset();
  begin_ = end_ = 0;
  return true;
}

PumpStep CopyPump::Step() {
  PumpStep step;
  while (true) {
    if (begin_ < end_ && !Drain(held_.get() + begin_, end_ - begin_, step)) return step;
    if (source_done_) {
      StreamEnd::Io io = sink_.ShutdownWrite();
      if (io.kind == StreamEnd::Io::kWouldBlock) {
        step.wait = {sink_.fd(), io.wait};
        return step;
      }
      if (io.kind == StreamEnd::Io::kError) {
        step.status = PumpStatus::kFailed;
        step.error = io.error;
        return step;
      }
      step.status = PumpStatus::kFinished;
      return step;
    }
    StreamEnd::Io io = source_.Read(scratch_, kBufferSize);
    switch (io.kind) {
      case StreamEnd::Io::kOk:
        if (!Drain(scratch_, io.n, step)) return step;
        if (io.drained || step.bytes >= kStepBudget) {
          step.wait = {source_.fd(), POLLIN};
          return step;
        }
        break;
      case StreamEnd::Io::kEof:
        source_done_ = true;
        break;
      case StreamEnd::Io::kWouldBlock:
        step.wait = {source_.fd(), io.wait};
        return step;
      case StreamEnd::Io::kError:
        step.status = PumpStatus::kFailed;
        step.error = io.error;
        return step;
    }
  }
}

absl::StatusOr<PipePool::Pipe> PipePool::Take() {
  if (!idle_.empty()) {
    Pipe pipe = std::move(idle_.back());
    idle_.pop_back();
    ++lent_;
    return pipe;
  }
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return absl::ErrnoToStatus(errno, "pipe2");
  Pipe pipe{UniqueFd(fds[0]), UniqueFd(fds[1])};
  // A bigger pipe means fewer splice calls per megabyte; fall back to the
  // default if the limit (/proc/sys/fs/pipe-max-size) says no.
  int size = fcntl(pipe.write.get(), F_SETPIPE_SZ, 256 * 1024);
  if (size < 0) size = fcntl(pipe.write.get(), F_GETPIPE_SZ);
  if (size <= 0) return absl::ErrnoToStatus(errno, "pipe size");
  pipe.size = static_cast<size_t>(size);
  ++lent_;
  return pipe;
}

void PipePool::Give(Pipe pipe, bool empty) {
  --lent_;
  // A pipe with bytes left in it would hand them to the next connection.
  if (empty && idle_.size() < kMaxIdle) idle_.push_back(std::move(pipe));
}

SplicePump::SplicePump(int source, int sink, PipePool& pipes, ControlRecordReader reader,
                       SinkCloser closer, bool fin_ends_source)
    : source_(source),
      sink_(sink),
      pipes_(pipes),
      on_control_record_(std::move(reader)),
      close_sink_(std::move(closer)),
      fin_ends_source_(fin_ends_source) {}

SplicePump::~SplicePump() {
  if (pipe_) pipes_.Give(*std::move(pipe_), in_pipe_ == 0);
}

void SplicePump::GiveBackEmptyPipe() {
  if (pipe_ && in_pipe_ == 0) {
    pipes_.Give(*std::move(pipe_), true);
    pipe_.reset();
  }
}

PumpStep Pump::Flush() {
  PumpStep step;
  step.status = PumpStatus::kFailed;
  step.error = "this pump cannot be quiesced for a handover";
  return step;
}

bool SplicePump::EmptyPipe(PumpStep& step) {
  while (in_pipe_ > 0) {
    ssize_t n = splice(pipe_->read.get(), nullptr, sink_, nullptr, in_pipe_,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      in_pipe_ -= static_cast<size_t>(n);
      step.bytes += static_cast<uint64_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      step.wait = {sink_, POLLOUT};
      return false;
    }
    step.status = PumpStatus::kFailed;
    step.error = absl::StrCat("splice to the receiving socket: ", ErrnoText(errno));
    return false;
  }
  return true;
}

bool SplicePump::CloseSink(PumpStep& step) {
  if (close_sink_) {
    absl::Status st = close_sink_(sink_);
    if (absl::IsUnavailable(st)) {  // the socket buffer is full: retry on POLLOUT
      step.wait = {sink_, POLLOUT};
      return false;
    }
    if (!st.ok()) {
      step.status = PumpStatus::kFailed;
      step.error = std::string(st.message());
      return false;
    }
  } else if (shutdown(sink_, SHUT_WR) != 0 && errno != ENOTCONN) {
    step.status = PumpStatus::kFailed;
    step.error = absl::StrCat("shutdown: ", ErrnoText(errno));
    return false;
  }
  return true;
}

PumpStep SplicePump::Flush() {
  PumpStep step;
  if (!EmptyPipe(step)) return step;
  if (source_done_ && !CloseSink(step)) return step;
  step.status = PumpStatus::kFinished;
  GiveBackEmptyPipe();
  return step;
}

PumpStep SplicePump::Step() {
  PumpStep step = Move();
  GiveBackEmptyPipe();  // until bytes come again
  return step;
}

PumpStep SplicePump::Move() {
  PumpStep step;
  auto fail = [&](std::string error) {
    step.status = PumpStatus::kFailed;
    step.error = std::move(error);
    return step;
  };
  while (true) {
    if (!EmptyPipe(step)) return step;
    if (source_done_) {
      if (CloseSink(step)) step.status = PumpStatus::kFinished;
      return step;
    }
    if (step.bytes >= kStepBudget) {
      step.wait = {source_, POLLIN};  // its share for now (kStepBudget)
      return step;
    }
    if (!pipe_) {
      absl::StatusOr<PipePool::Pipe> taken = pipes_.Take();
      if (!taken.ok()) {
        step.status = PumpStatus::kStarved;
        step.error = absl::StrCat("no pipe to splice through: ", taken.status().message());
        return step;
      }
      pipe_ = *std::move(taken);
    }
    ssize_t n = splice(source_, nullptr, pipe_->write.get(), nullptr, pipe_->size,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      in_pipe_ = static_cast<size_t>(n);
      continue;
    }
    if (n == 0) {
      // A kTLS stream must end with close_notify; a bare FIN could be an
      // attacker truncating it, so it is an error, never a clean end.
      // Except under the zero-hop end rule, where both ends agreed that a
      // FIN is the end (docs/security.md: the same exposure as plain TCP).
      if (on_control_record_ && !fin_ends_source_) {
        return fail("the peer closed without close_notify (truncated)");
      }
      source_done_ = true;
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      step.wait = {source_, POLLIN};
      return step;
    }
    // kTLS refuses to splice a non-data record (EINVAL) or a record it could
    // not process (EIO): read it as what it is.
    if (on_control_record_ && (errno == EINVAL || errno == EIO)) {
      absl::StatusOr<bool> clean_end = on_control_record_(source_);
      if (!clean_end.ok()) return fail(std::string(clean_end.status().message()));
      if (*clean_end) source_done_ = true;
      continue;
    }
    return fail(absl::StrCat("splice from the sending socket: ", ErrnoText(errno)));
  }
}

}  // namespace ktrust
