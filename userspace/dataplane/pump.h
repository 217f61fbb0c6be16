// Moves one direction of a connection's bytes until the source ends, with a
// bounded buffer: a slow reader stalls the writer instead of growing memory.
//
//   CopyPump    through userspace memory, at most 64 KiB at a time; used
//               when one end is an OpenSSL session (the userspace record
//               layer). It reads into its loop's scratch buffer and holds
//               memory of its own only while the sink refuses part of what
//               was read, so an idle connection holds none.
//   SplicePump  socket -> pipe -> socket with splice(2), no copy to
//               userspace; used when the kernel does the crypto (kTLS).
//               It borrows the pipe from its loop's PipePool while bytes
//               move, so an idle connection holds no pipe either.
//
// Both are non-blocking: Step() makes all the progress it can and then says
// which fd and poll event it waits for.
#pragma once

#include <poll.h>
#include <sys/types.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ktrust/common/unique_fd.h"

namespace ktrust {

// The poll event a pump waits for before Step() can continue.
struct PumpWait {
  int fd = -1;
  short events = 0;  // POLLIN or POLLOUT
};

enum class PumpStatus {
  kBlocked,   // waiting for `wait`
  kFinished,  // the source ended cleanly and the sink was shut down for writing
  kFailed,    // see error; the connection must be aborted
  // No pipe to move bytes through (out of descriptors or memory, see
  // error): nothing was lost, the bytes wait in the source socket. Step()
  // again later (the connection's tick); no poll would say when.
  kStarved,
};

struct PumpStep {
  PumpStatus status = PumpStatus::kBlocked;
  PumpWait wait;
  uint64_t bytes = 0;  // moved during this step
  std::string error;
};

// One end of a byte stream, as CopyPump sees it.
class StreamEnd {
 public:
  struct Io {
    enum Kind { kOk, kEof, kWouldBlock, kError } kind = kOk;
    size_t n = 0;       // bytes, with kOk
    short wait = 0;     // POLLIN or POLLOUT, with kWouldBlock
    std::string error;  // with kError: what failed, in words
    // With kOk: the source had no more for now (a short read). Reading again
    // would cost a system call to hear EAGAIN; the pump waits for POLLIN
    // instead, which fires at once if more has arrived meanwhile.
    bool drained = false;
  };
  virtual ~StreamEnd() = default;
  virtual int fd() const = 0;
  virtual Io Read(char* buf, size_t len) = 0;
  virtual Io Write(const char* buf, size_t len) = 0;
  // Half-close: FIN, or close_notify then FIN. kWouldBlock means call again.
  virtual Io ShutdownWrite() = 0;
};

class Pump {
 public:
  // At most this much (give or take a read's or a pipe's worth) per Step: a
  // stream that arrives as fast as the loop moves it never runs dry, and
  // would hold its loop, and every other connection, timer and task on it,
  // for as long as it lasts. Past this the step waits for POLLIN on the
  // source, which, readable, completes at once, after what else is ready.
  static constexpr uint64_t kStepBudget = 256 * 1024;

  virtual ~Pump() = default;
  virtual PumpStep Step() = 0;
  // Handover: writes what the pump holds to the sink without reading the
  // source again. kFinished once it holds nothing (and, if the source had
  // ended, the sink is shut down: see source_ended()). A pump that cannot
  // be quiesced this way fails.
  virtual PumpStep Flush();
  // The source ended; once Step() or Flush() finished, the sink was shut down.
  virtual bool source_ended() const = 0;
};

class CopyPump : public Pump {
 public:
  static constexpr size_t kBufferSize = size_t{64} * 1024;
  // `scratch`: kBufferSize bytes, shared by the pumps of one thread (their
  // Step() calls never overlap); it holds nothing between steps.
  CopyPump(StreamEnd& source, StreamEnd& sink, char* scratch);
  PumpStep Step() override;
  bool source_ended() const override { return source_done_; }

  // Bytes read and not yet taken by the sink, held by this pump (0 when
  // idle).
  size_t held() const { return end_ - begin_; }

 private:
  // Writes [data, data + len) to the sink until it refuses; keeps what is
  // left in held_. False with `step` filled when the step must end.
  bool Drain(const char* data, size_t len, PumpStep& step);

  StreamEnd& source_;
  StreamEnd& sink_;
  char* scratch_;
  std::unique_ptr<char[]> held_;  // only while the sink is behind
  size_t begin_ = 0;
  size_t end_ = 0;
  bool source_done_ = false;
};

// Pipes lent to SplicePumps while they move bytes. A pump gives its pipe
// back as soon as the pipe is empty, so only pumps whose sink is behind
// hold one; a loop's steps never overlap, so a few idle pipes serve all of
// its connections. One per event loop thread (no locking).
class PipePool {
 public:
  struct Pipe {
    UniqueFd read;
    UniqueFd write;
    size_t size = 0;  // capacity in bytes
  };
  // Idle pipes kept for reuse; more are closed when given back.
  static constexpr size_t kMaxIdle = 16;

  // An idle pipe, or a new one; the error keeps pipe2's errno (EMFILE...).
  absl::StatusOr<Pipe> Take();
  // `empty`: nothing is left in it (it may be lent again); else closed.
  void Give(Pipe pipe, bool empty);

  size_t lent() const { return lent_; }
  size_t idle() const { return idle_.size(); }

 private:
  std::vector<Pipe> idle_;
  size_t lent_ = 0;
};

class SplicePump : public Pump {
 public:
  // Called when splice from a kTLS source stops at a non-data record:
  // returns true for close_notify (a clean end), or an error.
  using ControlRecordReader = std::function<absl::StatusOr<bool>(int fd)>;
  // Half-closes a kTLS sink: close_notify then FIN. Unavailable means the
  // socket buffer is full: it is called again once the sink is writable.
  using SinkCloser = std::function<absl::Status(int fd)>;

  // `fin_ends_source`: a kTLS source may end with a bare FIN (the zero-hop
  // end rule); otherwise a FIN without close_notify is a truncation.
  // `pipes` must outlive the pump.
  SplicePump(int source, int sink, PipePool& pipes, ControlRecordReader on_control_record,
             SinkCloser close_sink, bool fin_ends_source = false);
  ~SplicePump() override;
  PumpStep Step() override;
  PumpStep Flush() override;
  bool source_ended() const override { return source_done_; }

  // Holds a pipe from the pool (only while its sink is behind).
  bool holds_pipe() const { return pipe_.has_value(); }

 private:
  PumpStep Move();
  // Empties the pipe into the sink; false with `step` filled (blocked on
  // the sink, or failed) if it could not.
  bool EmptyPipe(PumpStep& step);
  // The source has ended: half-closes the sink. False with `step` filled
  // (blocked or failed) if it could not yet.
  bool CloseSink(PumpStep& step);
  // An empty pipe goes back to the pool.
  void GiveBackEmptyPipe();

  int source_;
  int sink_;
  PipePool& pipes_;
  std::optional<PipePool::Pipe> pipe_;
  size_t in_pipe_ = 0;  // bytes in pipe_
  bool source_done_ = false;
  ControlRecordReader on_control_record_;  // null: the source is a plain socket
  SinkCloser close_sink_;                  // null: shutdown(SHUT_WR) only
  bool fin_ends_source_;
};

}  // namespace ktrust
