#include "ktrust/identity/spiffe_id.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ktrust {
namespace {

using ::testing::HasSubstr;

TEST(SpiffeIdTest, ParsesTrustDomainAndPath) {
  auto id = SpiffeId::Parse("spiffe://example.org/ns/prod/sa/web");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->trust_domain().name(), "example.org");
  EXPECT_EQ(id->path(), "/ns/prod/sa/web");
  EXPECT_EQ(id->ToString(), "spiffe://example.org/ns/prod/sa/web");
}

TEST(SpiffeIdTest, AcceptsEveryAllowedCharacter) {
  EXPECT_TRUE(SpiffeId::Parse("spiffe://a-b_c.0-9/AZaz09.-_/x").ok());
  EXPECT_TRUE(
      SpiffeId::Parse("spiffe://example.org/...x/.a").ok());  // dots inside a segment are fine
}

TEST(SpiffeIdTest, TrustDomainIdHasEmptyPath) {
  auto id = SpiffeId::Parse("spiffe://example.org");
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(id->path(), "");
  auto workload = SpiffeId::ParseWorkload("spiffe://example.org");
  EXPECT_FALSE(workload.ok());
  EXPECT_THAT(workload.status().message(), HasSubstr("needs a path"));
}

struct BadId {
  const char* text;
  const char* why;
};

class SpiffeIdRejectTest : public ::testing::TestWithParam<BadId> {};

TEST_P(SpiffeIdRejectTest, RefusesWithReason) {
  auto id = SpiffeId::Parse(GetParam().text);
  ASSERT_FALSE(id.ok()) << GetParam().text;
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(id.status().message(), HasSubstr(GetParam().why)) << GetParam().text;
}

INSTANTIATE_TEST_SUITE_P(
    Spec, SpiffeIdRejectTest,
    ::testing::Values(
        BadId{"", "empty"}, BadId{"http://example.org/a", "scheme"},
        BadId{"SPIFFE://example.org/a", "scheme"}, BadId{"spiffe:/example.org/a", "scheme"},
        BadId{"example.org/a", "scheme"}, BadId{"spiffe:///a", "trust domain is missing"},
        BadId{"spiffe://", "trust domain is missing"}, BadId{"spiffe://Example.org/a", "lowercase"},
        BadId{"spiffe://example.org:8443/a", "port"},
        BadId{"spiffe://user@example.org/a", "user info"},
        BadId{"spiffe://exa$mple.org/a", "not allowed in the trust domain"},
        BadId{"spiffe://example.org/", "must not end with '/'"},
        BadId{"spiffe://example.org/a/", "must not end with '/'"},
        BadId{"spiffe://example.org//a", "empty segments"},
        BadId{"spiffe://example.org/a/./b", "'.' or '..'"},
        BadId{"spiffe://example.org/a/../b", "'.' or '..'"},
        BadId{"spiffe://example.org/..", "'.' or '..'"},
        BadId{"spiffe://example.org/a?x=1", "query"}, BadId{"spiffe://example.org?x=1", "query"},
        BadId{"spiffe://example.org/a#frag", "fragment"},
        BadId{"spiffe://example.org/a%20b", "percent-encoding"},
        BadId{"spiffe://example.org/a b", "not allowed in the path"},
        BadId{"spiffe://example.org/caf\xc3\xa9", "not allowed in the path"}));

TEST(SpiffeIdTest, EnforcesLengthLimits) {
  std::string td(255, 'a');
  EXPECT_TRUE(SpiffeId::Parse("spiffe://" + td + "/x").ok());
  auto long_td = SpiffeId::Parse("spiffe://" + td + "a/x");
  EXPECT_THAT(long_td.status().message(), HasSubstr("longer than 255"));

  std::string prefix = "spiffe://example.org/";
  std::string at_limit = prefix + std::string(SpiffeId::kMaxLength - prefix.size(), 'p');
  EXPECT_TRUE(SpiffeId::Parse(at_limit).ok());
  auto too_long = SpiffeId::Parse(at_limit + "p");
  EXPECT_THAT(too_long.status().message(), HasSubstr("the limit is 2048"));
}

TEST(TrustDomainTest, AcceptsNameOrIdForm) {
  EXPECT_EQ(TrustDomain::Parse("example.org")->name(), "example.org");
  EXPECT_EQ(TrustDomain::Parse("spiffe://example.org")->name(), "example.org");
  EXPECT_EQ(TrustDomain::Parse("example.org")->IdString(), "spiffe://example.org");
  EXPECT_FALSE(TrustDomain::Parse("spiffe://example.org/a").ok());
  EXPECT_FALSE(TrustDomain::Parse("Example.org").ok());
  EXPECT_FALSE(TrustDomain::Parse("https://example.org").ok());
  EXPECT_FALSE(TrustDomain::Parse("").ok());
}

TEST(SpiffeIdPatternTest, ExactMatchesOnlyThatId) {
  auto p = SpiffeIdPattern::Parse("spiffe://example.org/ns/prod/web");
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->Matches(*SpiffeId::Parse("spiffe://example.org/ns/prod/web")));
  EXPECT_FALSE(p->Matches(*SpiffeId::Parse("spiffe://example.org/ns/prod/web/x")));
  EXPECT_FALSE(p->Matches(*SpiffeId::Parse("spiffe://example.org/ns/prod/webx")));
  EXPECT_FALSE(p->Matches(*SpiffeId::Parse("spiffe://other.org/ns/prod/web")));
}

TEST(SpiffeIdPatternTest, PrefixMatchesWholeSegmentsBelowOnly) {
  auto p = SpiffeIdPattern::Parse("spiffe://example.org/ns/prod/*");
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->is_prefix());
  EXPECT_EQ(p->ToString(), "spiffe://example.org/ns/prod/*");
  EXPECT_TRUE(p->Matches(*SpiffeId::Parse("spiffe://example.org/ns/prod/web")));
  EXPECT_TRUE(p->Matches(*SpiffeId::Parse("spiffe://example.org/ns/prod/web/v2")));
  EXPECT_FALSE(p->Matches(*SpiffeId::Parse("spiffe://example.org/ns/prod")));
  EXPECT_FALSE(p->Matches(*SpiffeId::Parse("spiffe://example.org/ns/production/web")));
  EXPECT_FALSE(p->Matches(*SpiffeId::Parse("spiffe://evil.org/ns/prod/web")));
}

TEST(SpiffeIdPatternTest, WholeTrustDomainPrefix) {
  auto p = SpiffeIdPattern::Parse("spiffe://example.org/*");
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->Matches(*SpiffeId::Parse("spiffe://example.org/a")));
  EXPECT_FALSE(p->Matches(*SpiffeId::Parse("spiffe://example.org")));
  EXPECT_FALSE(p->Matches(*SpiffeId::Parse("spiffe://example.org.evil/a")));
}

TEST(SpiffeIdPatternTest, RefusesImplicitOrPartialWildcards) {
  for (const char* bad :
       {"spiffe://example.org/ns/pro*", "spiffe://example.org/*/web", "spiffe://*.example.org/a",
        "spiffe://example.org/ns/**", "spiffe://example.org/ns/prod/"}) {
    EXPECT_FALSE(SpiffeIdPattern::Parse(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace ktrust
