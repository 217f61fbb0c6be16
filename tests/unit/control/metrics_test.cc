#include "ktrust/control/metrics.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <limits>
#include <vector>

namespace ktrust::control {
namespace {

using ::testing::HasSubstr;

TEST(PrometheusText, GroupsFamiliesWithHelpAndTypeOnce) {
  PrometheusText text;
  text.Gauge("ktrust_connections_active", "Connections open now.", {}, 3);
  text.Counter("ktrust_denials_total", "Refused connections, by result.", {{"result", "denied"}},
               7);
  // Out of order: lands with its family, and a different help is ignored.
  text.Counter("ktrust_denials_total", "ignored", {{"result", "handshake_failed"}}, 2);
  text.Gauge("ktrust_ready", "1 when the agent is ready.", {}, 1);
  EXPECT_EQ(text.Finish(),
            "# HELP ktrust_connections_active Connections open now.\n"
            "# TYPE ktrust_connections_active gauge\n"
            "ktrust_connections_active 3\n"
            "# HELP ktrust_denials_total Refused connections, by result.\n"
            "# TYPE ktrust_denials_total counter\n"
            "ktrust_denials_total{result=\"denied\"} 7\n"
            "ktrust_denials_total{result=\"handshake_failed\"} 2\n"
            "# HELP ktrust_ready 1 when the agent is ready.\n"
            "# TYPE ktrust_ready gauge\n"
            "ktrust_ready 1\n");
}

TEST(PrometheusText, EscapesLabelValuesAndHelp) {
  PrometheusText text;
  text.Counter("ktrust_x_total", "Back\\slash and\nnewline.",
               {{"workload", "a\"b\\c\nd"}, {"peer", "spiffe://td/ns/é"}}, 1);
  EXPECT_EQ(text.Finish(),
            "# HELP ktrust_x_total Back\\\\slash and\\nnewline.\n"
            "# TYPE ktrust_x_total counter\n"
            "ktrust_x_total{workload=\"a\\\"b\\\\c\\nd\",peer=\"spiffe://td/ns/é\"} 1\n");
}

TEST(PrometheusText, DropsInvalidNamesAndTypeConflicts) {
  PrometheusText text;
  text.Gauge("9bad", "h", {}, 1);
  text.Gauge("ktrust_ok", "h", {{"bad-label", "v"}}, 1);
  text.Gauge("ktrust_ok", "h", {{"__reserved", "v"}}, 1);
  text.Gauge("ktrust_ok", "h", {}, 1);
  text.Counter("ktrust_ok", "h", {}, 2);
  EXPECT_EQ(text.Finish(), "# HELP ktrust_ok h\n# TYPE ktrust_ok gauge\nktrust_ok 1\n");
}

TEST(PrometheusText, SampleValues) {
  EXPECT_EQ(FormatSampleValue(0), "0");
  EXPECT_EQ(FormatSampleValue(1234567890123), "1234567890123");
  EXPECT_EQ(FormatSampleValue(0.25), "0.25");
  EXPECT_EQ(FormatSampleValue(0.1), "0.1");
  EXPECT_EQ(FormatSampleValue(-2.5), "-2.5");
  EXPECT_EQ(FormatSampleValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatSampleValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatSampleValue(std::numeric_limits<double>::quiet_NaN()), "NaN");
  EXPECT_EQ(PrometheusText().Finish(), "");
}

class HttpEndpointTest : public ::testing::Test {
 protected:
  std::unique_ptr<HttpEndpoint> StartEndpoint() {
    auto endpoint = HttpEndpoint::Start(
        "127.0.0.1:0", {.metrics =
                            [this] {
                              ++scrapes_;
                              PrometheusText text;
                              text.Gauge("ktrust_up", "Always 1.", {}, 1);
                              return text.Finish();
                            },
                        .ready =
                            [this] {
                              return ready_ ? std::make_pair(true, std::string())
                                            : std::make_pair(false,
                                                             std::string("no SVID for web yet"));
                            }});
    EXPECT_TRUE(endpoint.ok()) << endpoint.status();
    return endpoint.ok() ? std::move(*endpoint) : nullptr;
  }
  std::atomic<int> scrapes_{0};
  std::atomic<bool> ready_{false};
};

TEST_F(HttpEndpointTest, ServesMetricsHealthAndReadiness) {
  auto endpoint = StartEndpoint();
  ASSERT_NE(endpoint, nullptr);
  ASSERT_GT(endpoint->port(), 0);
  httplib::Client client("127.0.0.1", endpoint->port());
  client.set_connection_timeout(5);
  client.set_read_timeout(5);

  auto metrics = client.Get("/metrics");
  ASSERT_TRUE(metrics) << httplib::to_string(metrics.error());
  EXPECT_EQ(metrics->status, 200);
  EXPECT_EQ(metrics->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(metrics->body, "# HELP ktrust_up Always 1.\n# TYPE ktrust_up gauge\nktrust_up 1\n");
  EXPECT_EQ(scrapes_, 1);

  auto health = client.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, "ok\n");

  auto ready = client.Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 503);
  EXPECT_EQ(ready->body, "not ready: no SVID for web yet\n");
  ready_ = true;
  ready = client.Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200);
  EXPECT_EQ(ready->body, "ready\n");

  auto other = client.Get("/");
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 404);
  auto post = client.Post("/metrics", "x", "text/plain");
  ASSERT_TRUE(post);
  EXPECT_EQ(post->status, 404);

  endpoint->Stop();
  endpoint->Stop();  // idempotent
  httplib::Client after("127.0.0.1", endpoint->port());
  after.set_connection_timeout(1);
  EXPECT_FALSE(after.Get("/healthz")) << "stopped means no longer listening";
}

// Out of descriptors, a scrape waits in the listen queue, the endpoint
// neither spins on the failing accept nor stops, and the scrape is answered
// once descriptors are free again.
TEST_F(HttpEndpointTest, OutOfDescriptorsAScrapeWaitsAndIsThenServed) {
  auto endpoint = StartEndpoint();
  ASSERT_NE(endpoint, nullptr);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(endpoint->port()));
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  // Sockets made beforehand: connecting needs no descriptor.
  int clients[2] = {socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0),
                    socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  ASSERT_GE(clients[0], 0);
  ASSERT_GE(clients[1], 0);
  // The first keeps its connection (and the server's descriptor for it)
  // open: HTTP/1.1 keep-alive, 5 s here.
  auto scrape = [&](int fd) {
    std::string request = fd == clients[0]
                              ? "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                              : "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    return connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)) == 0 &&
           send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
               static_cast<ssize_t>(request.size());
  };
  auto answered_within = [](int fd, int ms) {
    pollfd pfd{fd, POLLIN, 0};
    return poll(&pfd, 1, ms) == 1;
  };
  auto cpu_seconds = [] {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  };
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  rlimit low = saved;
  low.rlim_cur = 256;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  std::vector<int> filler;
  for (int fd; (fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;) filler.push_back(fd);
  int filled_with = errno;
  // An accept already waiting holds the descriptor it reserved before the
  // process ran out: the first scrape may take it. The one after cannot.
  int waiting = clients[0];
  bool first_sent = scrape(clients[0]);
  if (first_sent && answered_within(clients[0], 1000)) waiting = clients[1];
  bool sent = waiting == clients[0] ? first_sent : scrape(clients[1]);
  double cpu0 = cpu_seconds();
  bool answered_at_limit = answered_within(waiting, 500);
  double cpu = cpu_seconds() - cpu0;
  for (int fd : filler) close(fd);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
  ASSERT_EQ(filled_with, EMFILE);
  ASSERT_TRUE(sent) << strerror(errno);
  EXPECT_FALSE(answered_at_limit) << "answered while out of descriptors";
  // A spin on the failing accept would take the half second whole.
  std::printf("CPU while at the limit for 0.5 s: %.3f s\n", cpu);
  EXPECT_LT(cpu, 0.2);
  // Descriptors free again: the waiting scrape is served.
  ASSERT_TRUE(answered_within(waiting, 10000)) << "no answer after the descriptors came back";
  char reply[512] = {};
  ssize_t n = recv(waiting, reply, sizeof(reply) - 1, 0);
  for (int fd : clients) close(fd);
  ASSERT_GT(n, 0);
  EXPECT_THAT(std::string(reply, static_cast<size_t>(n)), HasSubstr("200 OK"));
  httplib::Client after("127.0.0.1", endpoint->port());
  after.set_connection_timeout(5);
  auto health = after.Get("/healthz");
  ASSERT_TRUE(health) << "the endpoint stopped serving";
  EXPECT_EQ(health->status, 200);
}

TEST_F(HttpEndpointTest, PortInUseIsAnError) {
  auto first = StartEndpoint();
  ASSERT_NE(first, nullptr);
  std::string address = "127.0.0.1:" + std::to_string(first->port());
  auto second =
      HttpEndpoint::Start(address, {.metrics = [] { return std::string(); },
                                    .ready = [] { return std::make_pair(true, std::string()); }});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().message(),
            "cannot serve metrics on " + address + ": Address already in use");
}

TEST_F(HttpEndpointTest, BadAddressIsAnError) {
  auto endpoint = HttpEndpoint::Start(
      "localhost", {.metrics = [] { return std::string(); },
                    .ready = [] { return std::make_pair(true, std::string()); }});
  EXPECT_FALSE(endpoint.ok());
}

TEST_F(HttpEndpointTest, StopsRightAfterStart) {
  for (int i = 0; i < 20; ++i) {
    auto endpoint = StartEndpoint();
    ASSERT_NE(endpoint, nullptr);
  }  // each destructor must return promptly
}

}  // namespace
}  // namespace ktrust::control
