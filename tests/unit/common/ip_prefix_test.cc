#include "ktrust/common/ip_prefix.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ktrust {
namespace {

TEST(IpPrefixTest, Ipv4IsStoredMappedWithItsLengthShiftedBy96) {
  auto prefix = IpPrefix::Parse("10.1.0.0/16");
  ASSERT_TRUE(prefix.ok()) << prefix.status();
  EXPECT_TRUE(prefix->is_v4());
  EXPECT_EQ(prefix->mapped_length(), 112u);
  EXPECT_THAT(prefix->address(),
              ::testing::ElementsAre(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 0, 0));
  EXPECT_EQ(prefix->ToString(), "10.1.0.0/16");
}

TEST(IpPrefixTest, Ipv6KeepsItsLength) {
  auto prefix = IpPrefix::Parse("fd00:77::/32");
  ASSERT_TRUE(prefix.ok()) << prefix.status();
  EXPECT_FALSE(prefix->is_v4());
  EXPECT_EQ(prefix->mapped_length(), 32u);
  EXPECT_EQ(prefix->address()[0], 0xfd);
  EXPECT_EQ(prefix->address()[3], 0x77);
  EXPECT_EQ(prefix->ToString(), "fd00:77::/32");
}

TEST(IpPrefixTest, BareAddressIsAHostPrefix) {
  auto v4 = IpPrefix::Parse("192.0.2.7");
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_EQ(v4->mapped_length(), 128u);
  EXPECT_EQ(v4->ToString(), "192.0.2.7/32");
  auto v6 = IpPrefix::Parse("::1");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->mapped_length(), 128u);
}

TEST(IpPrefixTest, ZeroLengthCoversEverything) {
  auto any4 = IpPrefix::Parse("0.0.0.0/0");
  ASSERT_TRUE(any4.ok()) << any4.status();
  EXPECT_EQ(any4->mapped_length(), 96u);  // every IPv4 address, no IPv6 one
  auto any6 = IpPrefix::Parse("::/0");
  ASSERT_TRUE(any6.ok()) << any6.status();
  EXPECT_EQ(any6->mapped_length(), 0u);
}

TEST(IpPrefixTest, RefusesHostBitsAndNonsense) {
  for (const char* text : {"10.0.0.1/8", "fd00::1/64", "10.0.0.0/33", "::/129", "10.0.0.0/",
                           "10.0.0.0/x", "example.org/8", "", "/8"}) {
    auto prefix = IpPrefix::Parse(text);
    EXPECT_FALSE(prefix.ok()) << text;
    EXPECT_EQ(prefix.status().code(), absl::StatusCode::kInvalidArgument) << text;
  }
  EXPECT_THAT(std::string(IpPrefix::Parse("10.0.0.1/8").status().message()),
              ::testing::HasSubstr("host bits"));
}

IpPrefix P(const char* text) {
  auto prefix = IpPrefix::Parse(text);
  EXPECT_TRUE(prefix.ok()) << text << ": " << prefix.status();
  return *prefix;
}

TEST(IpPrefixTest, ContainsItsSubnetsAndHostsAndNothingOutside) {
  EXPECT_TRUE(P("10.0.0.0/8").Contains(P("10.1.0.0/16")));
  EXPECT_TRUE(P("10.0.0.0/8").Contains(P("10.255.255.255")));
  EXPECT_TRUE(P("10.0.0.0/8").Contains(P("10.0.0.0/8")));
  EXPECT_FALSE(P("10.1.0.0/16").Contains(P("10.0.0.0/8")));  // wider, not inside
  EXPECT_FALSE(P("10.0.0.0/16").Contains(P("10.0.0.0/8")));  // wider, though the bits agree
  EXPECT_FALSE(P("10.0.0.0/8").Contains(P("11.0.0.1")));
  // The last bit of the prefix decides: 10.0.0.0/9 ends at 10.127.255.255.
  EXPECT_TRUE(P("10.0.0.0/9").Contains(P("10.127.255.255")));
  EXPECT_FALSE(P("10.0.0.0/9").Contains(P("10.128.0.0")));
  EXPECT_TRUE(P("fd00::/8").Contains(P("fd00:77::/32")));
  EXPECT_FALSE(P("fd00::/8").Contains(P("fe80::1")));
}

TEST(IpPrefixTest, FamiliesMeetOnlyThroughTheMappedForm) {
  EXPECT_TRUE(P("0.0.0.0/0").Contains(P("192.0.2.7")));
  EXPECT_FALSE(P("0.0.0.0/0").Contains(P("::1")));
  EXPECT_FALSE(P("0.0.0.0/0").Contains(P("::/0")));
  EXPECT_TRUE(P("::/0").Contains(P("192.0.2.0/24")));  // ::/0 covers ::ffff:0:0/96
  EXPECT_FALSE(P("fd00::/8").Contains(P("10.0.0.0/8")));
}

}  // namespace
}  // namespace ktrust
