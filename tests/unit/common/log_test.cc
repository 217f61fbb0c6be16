// The two log formats, as an operator reads them: the text line's shape and
// quoting, and the full line as ktrustd writes it to stderr.
#include "ktrust/common/log.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

namespace ktrust {
namespace {

using nlohmann::ordered_json;

TEST(LogFormatTest, ParsesTheConfiguredNames) {
  EXPECT_EQ(*ParseLogFormat("json"), LogFormat::kJson);
  EXPECT_EQ(*ParseLogFormat("text"), LogFormat::kText);
  EXPECT_FALSE(ParseLogFormat("yaml").ok());
}

TEST(TextFormatTest, EventNameFirstThenKeysInTheirOrder) {
  ordered_json event = {{"result", "denied"},
                        {"reason", "SPIFFE ID spiffe://example.org/batch is not allowed"},
                        {"event", "connection_failed"},
                        {"peer_id", "spiffe://example.org/batch"},
                        {"bytes_to_wire", 0}};
  EXPECT_EQ(FormatEvent(event, LogFormat::kText),
            "connection_failed result=denied "
            "reason=\"SPIFFE ID spiffe://example.org/batch is not allowed\" "
            "peer_id=spiffe://example.org/batch bytes_to_wire=0");
}

TEST(TextFormatTest, QuotesWhatWouldBeAmbiguous) {
  auto text = [](const ordered_json& v) {
    return FormatEvent({{"event", "e"}, {"k", v}}, LogFormat::kText);
  };
  EXPECT_EQ(text("plain"), "e k=plain");
  EXPECT_EQ(text(""), "e k=\"\"");
  EXPECT_EQ(text("two words"), "e k=\"two words\"");
  EXPECT_EQ(text("say \"hi\""), "e k=\"say \\\"hi\\\"\"");
  EXPECT_EQ(text("a=b"), "e k=\"a=b\"");
  EXPECT_EQ(text("back\\slash"), "e k=\"back\\\\slash\"");
  // A value can never start a line of its own (log injection).
  EXPECT_EQ(text("one\nINFO forged=1"), "e k=\"one\\nINFO forged=1\"");
  EXPECT_EQ(text("tab\there"), "e k=\"tab\\there\"");
  // Invalid UTF-8 is replaced, not passed through.
  EXPECT_EQ(text(std::string("bad\xff")), "e k=\"bad\xEF\xBF\xBD\"");
}

TEST(TextFormatTest, NumbersBooleansArraysAndObjects) {
  ordered_json event = {{"event", "ready"},
                        {"workloads", 2},
                        {"ratio", 0.5},
                        {"ok", true},
                        {"none", nullptr},
                        {"outbound", {"127.0.0.1:15001", "[::1]:15001"}},
                        {"empty", ordered_json::array()},
                        {"who", {{"pid", 42}, {"uid", 0}}}};
  EXPECT_EQ(FormatEvent(event, LogFormat::kText),
            "ready workloads=2 ratio=0.5 ok=true none=null "
            "outbound=127.0.0.1:15001,[::1]:15001 empty=\"\" "
            "who=\"{\\\"pid\\\":42,\\\"uid\\\":0}\"");
}

TEST(TextFormatTest, AnEventWithoutAName) {
  EXPECT_EQ(FormatEvent({{"a", 1}, {"b", "x y"}}, LogFormat::kText), "a=1 b=\"x y\"");
}

TEST(JsonFormatTest, OneObjectEventFirstInInsertionOrder) {
  ordered_json event = {{"result", "ok"}, {"event", "connection_closed"}, {"id", 7}};
  EXPECT_EQ(FormatEvent(event, LogFormat::kJson),
            R"({"event":"connection_closed","result":"ok","id":7})");
  // A nlohmann::json (keys sorted) still leads with its name.
  nlohmann::json sorted = {{"result", "ok"}, {"event", "x"}, {"a", 1}};
  EXPECT_EQ(FormatEvent(sorted, LogFormat::kJson), R"({"event":"x","a":1,"result":"ok"})");
  EXPECT_EQ(FormatEvent({{"event", "e"}, {"k", "one\ntwo"}}, LogFormat::kJson),
            R"({"event":"e","k":"one\ntwo"})");
}

// stderr, captured in a file for the duration of a test.
class StderrCapture {
 public:
  StderrCapture() {
    std::fflush(stderr);
    saved_ = dup(STDERR_FILENO);
    FILE* f = std::tmpfile();
    file_ = f;
    dup2(fileno(f), STDERR_FILENO);
  }
  ~StderrCapture() { Restore(); }
  std::string Restore() {
    if (saved_ < 0) return text_;
    std::fflush(stderr);
    dup2(saved_, STDERR_FILENO);
    close(saved_);
    saved_ = -1;
    std::rewind(file_);
    char buf[4096];
    size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof(buf), file_)) > 0) text_.append(buf, n);
    std::fclose(file_);
    return text_;
  }

 private:
  int saved_ = -1;
  FILE* file_ = nullptr;
  std::string text_;
};

TEST(SetUpLoggingTest, TextLinesAsKtrustdWritesThem) {
  StderrCapture capture;
  SetUpLogging(spdlog::level::info, LogFormat::kText);
  LogEvent(spdlog::level::warn, {{"event", "connection_failed"},
                                 {"result", "denied"},
                                 {"reason", "not allowed"},
                                 {"peer_id", "spiffe://example.org/batch"}});
  LogEvent(spdlog::level::debug, {{"event", "too_detailed"}});  // below the level
  LogEvent(spdlog::level::err, {{"event", "svid_renewal_failed"}});
  LogEvent(spdlog::level::info, {{"event", "ready"}});
  spdlog::default_logger()->flush();
  std::string out = capture.Restore();
  SetUpLogging(spdlog::level::info, LogFormat::kJson);
  EXPECT_THAT(out,
              ::testing::MatchesRegex("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z WARN "
                                      "connection_failed result=denied reason=\"not allowed\" "
                                      "peer_id=spiffe://example.org/batch\n"
                                      "[0-9T:Z-]+ ERROR svid_renewal_failed\n"
                                      "[0-9T:Z-]+ INFO ready\n"));
}

TEST(SetUpLoggingTest, JsonLinesAsKtrustdWritesThem) {
  StderrCapture capture;
  SetUpLogging(spdlog::level::warn, LogFormat::kJson);
  LogEvent(spdlog::level::warn, {{"event", "connection_failed"}, {"result", "denied"}});
  LogEvent(spdlog::level::info, {{"event", "below_the_level"}});
  spdlog::default_logger()->flush();
  std::string out = capture.Restore();
  SetUpLogging(spdlog::level::info, LogFormat::kJson);
  EXPECT_THAT(out, ::testing::MatchesRegex(
                       "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z warning "
                       "\\{\"event\":\"connection_failed\",\"result\":\"denied\"\\}\n"));
}

}  // namespace
}  // namespace ktrust
