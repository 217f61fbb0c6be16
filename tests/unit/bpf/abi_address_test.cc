#include "ktrust/bpf/abi_address.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>

namespace ktrust {
namespace {

using ::testing::ElementsAre;

SocketAddress Address(absl::string_view text) {
  auto address = SocketAddress::Parse(text);
  EXPECT_TRUE(address.ok()) << address.status();
  return *address;
}

TEST(AbiAddressTest, Ipv4IsMappedIntoSixteenBytes) {
  auto abi = ToAbiAddress(Address("10.1.2.3:8080"));
  ASSERT_TRUE(abi.ok()) << abi.status();
  EXPECT_THAT(*abi, ElementsAre(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3));
}

TEST(AbiAddressTest, Ipv6IsCopied) {
  auto abi = ToAbiAddress(Address("[fd00::1:2]:443"));
  ASSERT_TRUE(abi.ok()) << abi.status();
  EXPECT_THAT(*abi, ElementsAre(0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2));
}

TEST(AbiAddressTest, OtherFamiliesAreRefused) {
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  auto abi = ToAbiAddress(
      SocketAddress::FromSockaddr(reinterpret_cast<const sockaddr*>(&sun), sizeof(sun)));
  EXPECT_EQ(abi.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(AbiAddressTest, AMappedAddressComesBackAsIpv4WithItsPort) {
  const uint8_t raw[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 7, 9};
  SocketAddress address = FromAbiAddress(raw, 5432);
  EXPECT_EQ(address.family(), AF_INET);
  EXPECT_EQ(address.ToString(), "192.168.7.9:5432");
}

TEST(AbiAddressTest, AnythingElseComesBackAsIpv6) {
  // ::a.b.c.d (IPv4-compatible, not mapped) stays IPv6.
  const uint8_t compatible[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1};
  SocketAddress address = FromAbiAddress(compatible, 80);
  EXPECT_EQ(address.family(), AF_INET6);
  EXPECT_EQ(address.port(), 80);
}

TEST(AbiAddressTest, RoundTripsBothFamilies) {
  for (absl::string_view text : {"127.0.0.6:15001", "[2001:db8::7]:15001", "0.0.0.0:1"}) {
    SocketAddress in = Address(text);
    auto abi = ToAbiAddress(in);
    ASSERT_TRUE(abi.ok()) << abi.status();
    EXPECT_EQ(FromAbiAddress(abi->data(), in.port()).ToString(), in.ToString()) << text;
  }
}

}  // namespace
}  // namespace ktrust
