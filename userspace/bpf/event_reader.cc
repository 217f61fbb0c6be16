#include "ktrust/bpf/event_reader.h"

#include <cerrno>
#include <cstring>

#include "ktrust/bpf/abi.h"
#include "ktrust/bpf/abi_address.h"

namespace ktrust {

absl::string_view ReasonName(uint32_t reason) {
  switch (reason) {
    case KTRUST_REASON_CONNECT_REDIRECTED:
      return "connect_redirected";
    case KTRUST_REASON_CONNECT_BYPASS_RULE:
      return "connect_bypass_rule";
    case KTRUST_REASON_CONNECT_NOT_MESH:
      return "connect_not_mesh";
    case KTRUST_REASON_CONNECT_AGENT_MARK:
      return "connect_agent_mark";
    case KTRUST_REASON_CONNECT_NO_AGENT:
      return "connect_no_agent";
    case KTRUST_REASON_CONNECT_RECORD_FAILED:
      return "connect_record_failed";
    case KTRUST_REASON_UDP_DENIED:
      return "udp_denied";
    case KTRUST_REASON_UDP_BYPASS_RULE:
      return "udp_bypass_rule";
    case KTRUST_REASON_UDP_PERMISSIVE:
      return "udp_permissive";
    case KTRUST_REASON_SOCKOPS_REKEYED:
      return "sockops_rekeyed";
    case KTRUST_REASON_SOCKOPS_REKEY_FAILED:
      return "sockops_rekey_failed";
    case KTRUST_REASON_SOCKOPS_CLOSED:
      return "sockops_closed";
    case KTRUST_REASON_GETPEERNAME_REWRITTEN:
      return "getpeername_rewritten";
    case KTRUST_REASON_SK_LOOKUP_STEERED:
      return "sk_lookup_steered";
    case KTRUST_REASON_SK_LOOKUP_UPSTREAM:
      return "sk_lookup_upstream";
    case KTRUST_REASON_SK_LOOKUP_NO_LISTENER:
      return "sk_lookup_no_listener";
    case KTRUST_REASON_SK_LOOKUP_PERMISSIVE:
      return "sk_lookup_permissive";
    case KTRUST_REASON_SK_LOOKUP_ASSIGN_FAILED:
      return "sk_lookup_assign_failed";
    case KTRUST_REASON_SK_LOOKUP_UNSERVED_NETNS:
      return "sk_lookup_unserved_netns";
    case KTRUST_REASON_CONNECT_UNCLASSIFIED:
      return "connect_unclassified";
    case KTRUST_REASON_EVENTS_LOST:
      return "events_lost";
    case KTRUST_REASON_CONNECT_UNSERVED_NETNS:
      return "connect_unserved_netns";
    case KTRUST_REASON_SK_LOOKUP_UDP_REFUSED:
      return "sk_lookup_udp_refused";
    case KTRUST_REASON_SOCKOPS_AGENT_RECORD_FAILED:
      return "sockops_agent_record_failed";
    default:
      return "unknown";
  }
}

absl::string_view EventTypeName(uint32_t type) {
  switch (type) {
    case KTRUST_EVENT_REDIRECTED:
      return "redirected";
    case KTRUST_EVENT_DENIED:
      return "denied";
    case KTRUST_EVENT_BYPASSED:
      return "bypassed";
    default:
      return "unknown";
  }
}

absl::StatusOr<std::unique_ptr<InterceptionEventReader>> InterceptionEventReader::Create(
    int ring_buffer_fd, Handler handler) {
  std::unique_ptr<InterceptionEventReader> reader(new InterceptionEventReader(std::move(handler)));
  reader->ring_.reset(ring_buffer__new(ring_buffer_fd, &OnRecord, reader.get(), nullptr));
  if (!reader->ring_) return absl::ErrnoToStatus(errno, "opening the interception ring buffer");
  return reader;
}

std::optional<InterceptionEvent> DecodeInterceptionEvent(const void* data, size_t size) {
  if (size < sizeof(ktrust_event)) return std::nullopt;
  ktrust_event raw;
  std::memcpy(&raw, data, sizeof(raw));
  InterceptionEvent event;
  event.type = raw.type;
  event.reason = raw.reason;
  event.timestamp_ns = raw.timestamp_ns;
  event.cgroup_id = raw.cgroup_id;
  event.socket_cookie = raw.socket_cookie;
  event.pid = raw.pid;
  event.workload = raw.workload;
  event.protocol = raw.protocol;
  event.source = FromAbiAddress(raw.src_addr, raw.src_port);
  event.destination = FromAbiAddress(raw.dst_addr, raw.dst_port);
  return event;
}

int InterceptionEventReader::OnRecord(void* self, void* data, size_t size) {
  std::optional<InterceptionEvent> event = DecodeInterceptionEvent(data, size);
  if (!event) return 0;  // too short to be an event: skip it, keep reading
  static_cast<InterceptionEventReader*>(self)->handler_(*event);
  return 0;
}

absl::StatusOr<int> InterceptionEventReader::Drain() {
  int n = ring_buffer__consume(ring_.get());
  if (n < 0) return absl::ErrnoToStatus(-n, "reading the interception ring buffer");
  return n;
}

int InterceptionEventReader::epoll_fd() const { return ring_buffer__epoll_fd(ring_.get()); }

}  // namespace ktrust
