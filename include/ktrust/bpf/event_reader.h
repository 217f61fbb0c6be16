// Reads the kernel's interception events (struct ktrust_event) from the ring
// buffer: what was redirected, denied or bypassed, for whom and why.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ktrust/bpf/libbpf_ptr.h"
#include "ktrust/common/socket_address.h"

namespace ktrust {

struct InterceptionEvent {
  uint32_t type = 0;    // enum ktrust_event_type
  uint32_t reason = 0;  // enum ktrust_reason
  uint64_t timestamp_ns = 0;
  uint64_t cgroup_id = 0;  // 0 where the hook cannot know (sk_lookup)
  uint64_t socket_cookie = 0;
  uint32_t pid = 0;
  uint32_t workload = 0;
  uint32_t protocol = 0;
  SocketAddress source;  // port 0 and :: before the socket is bound
  SocketAddress destination;
};

// A ring buffer record (struct ktrust_event) as an InterceptionEvent;
// nullopt when it is too short to be one. Longer records, from a newer ABI,
// are read for the fields this one knows.
std::optional<InterceptionEvent> DecodeInterceptionEvent(const void* data, size_t size);

// Stable names for logs and metrics: "connect_redirected", "udp_denied", ...
absl::string_view ReasonName(uint32_t reason);
// "redirected", "denied", "bypassed".
absl::string_view EventTypeName(uint32_t type);

class InterceptionEventReader {
 public:
  using Handler = std::function<void(const InterceptionEvent&)>;

  // ring_buffer_fd: BpfLoader::events_fd(); borrowed.
  static absl::StatusOr<std::unique_ptr<InterceptionEventReader>> Create(int ring_buffer_fd,
                                                                         Handler handler);

  // Handles what is already there without waiting (after epoll_fd() was
  // readable: the agent polls it beside its stop eventfd).
  absl::StatusOr<int> Drain();
  // Readable when events are waiting: for an event loop's poll.
  int epoll_fd() const;

 private:
  explicit InterceptionEventReader(Handler handler) : handler_(std::move(handler)) {}
  static int OnRecord(void* self, void* data, size_t size);

  Handler handler_;
  RingBufferPtr ring_;
};

}  // namespace ktrust
