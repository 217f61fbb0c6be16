#include "ktrust/bpf/event_reader.h"

#include <gtest/gtest.h>
#include <netinet/in.h>

#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "ktrust/bpf/abi.h"

namespace ktrust {
namespace {

ktrust_event SampleEvent() {
  ktrust_event raw{};
  raw.timestamp_ns = 123456789;
  raw.cgroup_id = 4242;
  raw.socket_cookie = 77;
  const uint8_t src[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 5};
  const uint8_t dst[16] = {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9};
  std::memcpy(raw.src_addr, src, sizeof(src));
  std::memcpy(raw.dst_addr, dst, sizeof(dst));
  raw.pid = 31337;
  raw.workload = 3;
  raw.src_port = 40000;
  raw.dst_port = 443;
  raw.type = KTRUST_EVENT_DENIED;
  raw.protocol = IPPROTO_UDP;
  raw.reason = KTRUST_REASON_UDP_DENIED;
  return raw;
}

TEST(EventReaderTest, DecodesEveryFieldOfARecord) {
  ktrust_event raw = SampleEvent();
  auto event = DecodeInterceptionEvent(&raw, sizeof(raw));
  ASSERT_TRUE(event.has_value());
  EXPECT_EQ(event->type, KTRUST_EVENT_DENIED);
  EXPECT_EQ(event->reason, KTRUST_REASON_UDP_DENIED);
  EXPECT_EQ(event->timestamp_ns, 123456789u);
  EXPECT_EQ(event->cgroup_id, 4242u);
  EXPECT_EQ(event->socket_cookie, 77u);
  EXPECT_EQ(event->pid, 31337u);
  EXPECT_EQ(event->workload, 3u);
  EXPECT_EQ(event->protocol, static_cast<uint32_t>(IPPROTO_UDP));
  EXPECT_EQ(event->source.ToString(), "10.0.0.5:40000");
  EXPECT_EQ(event->destination.ToString(), "[fd00::9]:443");
  EXPECT_EQ(ReasonName(event->reason), "udp_denied");
  EXPECT_EQ(EventTypeName(event->type), "denied");
}

TEST(EventReaderTest, ARecordTooShortIsSkipped) {
  ktrust_event raw = SampleEvent();
  EXPECT_FALSE(DecodeInterceptionEvent(&raw, sizeof(raw) - 1).has_value());
  EXPECT_FALSE(DecodeInterceptionEvent(&raw, 0).has_value());
}

TEST(EventReaderTest, ALongerRecordIsReadForTheFieldsThisAbiKnows) {
  std::vector<unsigned char> bytes(sizeof(ktrust_event) + 16, 0xee);
  ktrust_event raw = SampleEvent();
  std::memcpy(bytes.data(), &raw, sizeof(raw));
  auto event = DecodeInterceptionEvent(bytes.data(), bytes.size());
  ASSERT_TRUE(event.has_value());
  EXPECT_EQ(event->socket_cookie, 77u);
  EXPECT_EQ(event->destination.ToString(), "[fd00::9]:443");
}

// Logs and metrics label by these names: every reason the programs can send
// has one of its own.
TEST(EventReaderTest, EveryReasonHasADistinctName) {
  std::set<std::string> names;
  for (uint32_t reason = 0; reason < KTRUST_REASON_MAX; ++reason) {
    std::string name(ReasonName(reason));
    EXPECT_NE(name, "unknown") << "reason " << reason;
    EXPECT_TRUE(names.insert(name).second) << name << " names two reasons";
  }
  EXPECT_EQ(ReasonName(KTRUST_REASON_MAX), "unknown");
}

TEST(EventReaderTest, EventTypesAreNamed) {
  EXPECT_EQ(EventTypeName(KTRUST_EVENT_REDIRECTED), "redirected");
  EXPECT_EQ(EventTypeName(KTRUST_EVENT_DENIED), "denied");
  EXPECT_EQ(EventTypeName(KTRUST_EVENT_BYPASSED), "bypassed");
  EXPECT_EQ(EventTypeName(0), "unknown");
}

}  // namespace
}  // namespace ktrust
