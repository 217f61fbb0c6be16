#include "ktrust/control/control_server.h"

#include <gmock/gmock.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/control/control_client.h"
#include "ktrust/control/protocol.h"

namespace ktrust::control {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr absl::Duration kTimeout = absl::Seconds(5);

ControlServerOptions Options(const std::string& path, const std::string& group = "",
                             absl::Duration io_timeout = absl::Seconds(5), int max_clients = 16) {
  ControlServerOptions options;
  options.path = path;
  options.group = group;
  options.io_timeout = io_timeout;
  options.max_clients = max_clients;
  return options;
}

class ControlServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir_template[] = "/tmp/ktrust-control-test-XXXXXX";
    ASSERT_NE(::mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
    path_ = dir_ + "/control.sock";
    handlers_["echo"] = [](const json& params) -> absl::StatusOr<json> { return params; };
    handlers_["fail"] = [](const json&) -> absl::StatusOr<json> {
      return absl::NotFoundError("no workload named \"web\"");
    };
    handlers_["throw"] = [](const json& params) -> absl::StatusOr<json> {
      return params.at("missing");  // throws
    };
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<ControlServer> StartServer() { return StartServer(Options(path_)); }
  std::unique_ptr<ControlServer> StartServer(const ControlServerOptions& options) {
    auto server = ControlServer::Start(options, handlers_);
    EXPECT_TRUE(server.ok()) << server.status();
    return server.ok() ? std::move(*server) : nullptr;
  }

  // A raw client, for what CallControl would never send.
  UniqueFd Connect() {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    path_.copy(addr.sun_path, path_.size());
    EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
        << strerror(errno);
    return fd;
  }

  static void Send(const UniqueFd& fd, absl::string_view data) {
    ASSERT_EQ(::send(fd.get(), data.data(), data.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(data.size()));
  }

  // One line, or "EOF", or "TIMEOUT".
  static std::string ReadLine(const UniqueFd& fd, absl::Duration timeout = kTimeout) {
    std::string line;
    absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      pollfd p{fd.get(), POLLIN, 0};
      int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
      if (ms <= 0 || ::poll(&p, 1, ms) == 0) return "TIMEOUT";
      char c;
      ssize_t n = ::recv(fd.get(), &c, 1, 0);
      if (n <= 0) return line.empty() ? "EOF" : line;
      if (c == '\n') return line;
      line += c;
    }
  }

  static std::string ErrorOf(const std::string& line) {
    auto response = ParseControlResponse(line);
    if (!response.ok()) return absl::StrCat("unparsable: ", line);
    return response->ok ? "ok" : response->error;
  }

  std::string dir_, path_;
  std::map<std::string, ControlHandler> handlers_;
};

TEST_F(ControlServerTest, RoundTrip) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto result = CallControl(path_, "echo", {{"workload", "web"}, {"port", 80}}, kTimeout);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, json({{"workload", "web"}, {"port", 80}}));
}

TEST_F(ControlServerTest, SeveralRequestsOnOneConnection) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  UniqueFd fd = Connect();
  // Both lines in one write; CRLF is accepted too.
  Send(fd, FormatControlRequest("echo", {{"n", 1}}) + "{\"version\":1,\"method\":\"echo\"}\r\n");
  EXPECT_EQ(ReadLine(fd), R"({"ok":true,"result":{"n":1},"version":1})");
  EXPECT_EQ(ReadLine(fd), R"({"ok":true,"result":{},"version":1})");
}

TEST_F(ControlServerTest, UnknownMethodListsTheKnownOnes) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto result = CallControl(path_, "stats", json::object(), kTimeout);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(result.status().message(),
            "unknown method \"stats\" (this agent has: echo, fail, throw)");
}

TEST_F(ControlServerTest, HandlerErrorBecomesAnErrorResponse) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto result = CallControl(path_, "fail", json::object(), kTimeout);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(result.status().message(), "no workload named \"web\"");
}

TEST_F(ControlServerTest, HandlerExceptionIsContained) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto result = CallControl(path_, "throw", json::object(), kTimeout);
  EXPECT_THAT(std::string(result.status().message()), StartsWith("internal error in throw: "));
  EXPECT_TRUE(CallControl(path_, "echo", json::object(), kTimeout).ok());
}

TEST_F(ControlServerTest, GarbageLineIsAnsweredAndTheConnectionGoesOn) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  UniqueFd fd = Connect();
  Send(fd, "hello there\n");
  EXPECT_EQ(ErrorOf(ReadLine(fd)), "request is not JSON");
  Send(fd, "{\"version\":9,\"method\":\"echo\"}\n");
  EXPECT_EQ(ErrorOf(ReadLine(fd)), "unsupported protocol version 9 (this agent speaks 1)");
  Send(fd, FormatControlRequest("echo", json::object()));
  EXPECT_EQ(ErrorOf(ReadLine(fd)), "ok");
}

TEST_F(ControlServerTest, OversizedLineIsRefusedAndTheAgentAnswersTheNextClient) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  UniqueFd fd = Connect();
  std::string huge(kMaxRequestBytes + 100, 'a');
  // The server may hang up before taking all of it: ignore send errors.
  (void)!::send(fd.get(), huge.data(), huge.size(), MSG_NOSIGNAL);
  EXPECT_EQ(ErrorOf(ReadLine(fd)), "request is longer than 65536 bytes");
  EXPECT_EQ(ReadLine(fd), "EOF");
  EXPECT_TRUE(CallControl(path_, "echo", json::object(), kTimeout).ok());
}

TEST_F(ControlServerTest, ALineOfExactlyTheLimitIsServed) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  std::string request = FormatControlRequest("echo", {{"pad", ""}});
  std::string pad(kMaxRequestBytes - request.size() + 1, 'x');  // +1: the newline
  request = FormatControlRequest("echo", {{"pad", pad}});
  ASSERT_EQ(request.size(), kMaxRequestBytes + 1);
  UniqueFd fd = Connect();
  Send(fd, request);
  EXPECT_EQ(ErrorOf(ReadLine(fd)), "ok");
}

TEST_F(ControlServerTest, StalledClientDoesNotBlockAnotherAndIsDropped) {
  auto server = StartServer(Options(path_, "", absl::Seconds(2)));
  ASSERT_NE(server, nullptr);
  UniqueFd stalled = Connect();
  Send(stalled, "{\"version\":1,\"meth");
  absl::Time start = absl::Now();
  auto result = CallControl(path_, "echo", json::object(), kTimeout);
  EXPECT_TRUE(result.ok()) << result.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(1)) << "waited for the stalled client";
  EXPECT_EQ(ReadLine(stalled, absl::Seconds(5)), "EOF");
}

TEST_F(ControlServerTest, HalfClosedClientStillGetsItsAnswer) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  UniqueFd fd = Connect();
  Send(fd, R"({"version":1,"method":"echo","params":{"a":1}})");  // no newline
  ::shutdown(fd.get(), SHUT_WR);
  EXPECT_EQ(ReadLine(fd), R"({"ok":true,"result":{"a":1},"version":1})");
  EXPECT_EQ(ReadLine(fd), "EOF");
}

TEST_F(ControlServerTest, ClientsBeyondTheLimitAreTurnedAway) {
  auto server = StartServer(Options(path_, "", absl::Seconds(5), 1));
  ASSERT_NE(server, nullptr);
  UniqueFd first = Connect();
  Send(first, FormatControlRequest("echo", json::object()));
  EXPECT_EQ(ErrorOf(ReadLine(first)), "ok");  // now surely accepted
  UniqueFd second = Connect();
  EXPECT_EQ(ErrorOf(ReadLine(second)), "too many control clients (1); try again");
  EXPECT_EQ(ReadLine(second), "EOF");
  first.Reset();
  // The slot frees once the server sees the first client go.
  absl::Time deadline = absl::Now() + kTimeout;
  absl::StatusOr<json> result;
  do {
    result = CallControl(path_, "echo", json::object(), kTimeout);
  } while (!result.ok() && absl::Now() < deadline);
  EXPECT_TRUE(result.ok()) << result.status();
}

TEST_F(ControlServerTest, SocketIsRootOnlyByDefault) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  struct stat st {};
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

TEST_F(ControlServerTest, GroupGetsTheSocketWithMode0660) {
  const group* own = ::getgrgid(::getegid());
  ASSERT_NE(own, nullptr);
  auto server = StartServer(Options(path_, own->gr_name));
  ASSERT_NE(server, nullptr);
  struct stat st {};
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  EXPECT_EQ(st.st_gid, ::getegid());
}

TEST_F(ControlServerTest, UnknownGroupIsAnError) {
  auto server = ControlServer::Start(Options(path_, "no-such-group-ktrust-test"), handlers_);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().message(),
            "control socket group \"no-such-group-ktrust-test\" does not exist");
  EXPECT_FALSE(std::filesystem::exists(path_)) << "a failed start leaves no socket";
}

TEST_F(ControlServerTest, RefusesToUnlinkARegularFile) {
  std::ofstream(path_) << "precious";
  auto server = ControlServer::Start(Options(path_), handlers_);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(server.status().message(),
            absl::StrCat("refusing to replace ", path_, ": it exists and is not a socket"));
  std::ifstream in(path_);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "precious");
}

TEST_F(ControlServerTest, ReplacesAStaleSocketButNotALiveOne) {
  {
    // A dead agent's socket: bound, then its process went away.
    UniqueFd old(::socket(AF_UNIX, SOCK_STREAM, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    path_.copy(addr.sun_path, path_.size());
    ASSERT_EQ(::bind(old.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  }
  auto server = StartServer();
  ASSERT_NE(server, nullptr);

  auto second = ControlServer::Start(Options(path_), handlers_);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(CallControl(path_, "echo", json::object(), kTimeout).ok());
}

TEST_F(ControlServerTest, CreatesItsDirectoryAndRemovesItsSocketAtStop) {
  path_ = dir_ + "/run/ktrust/control.sock";
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  struct stat st {};
  ASSERT_EQ(::stat((dir_ + "/run/ktrust").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  server->Stop();
  EXPECT_FALSE(std::filesystem::exists(path_));
  server->Stop();  // idempotent
  server.reset();
}

TEST_F(ControlServerTest, StopLeavesASocketThatIsNoLongerOurs) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  // Another agent took over the path (it found ours unresponsive, say).
  ASSERT_EQ(::unlink(path_.c_str()), 0);
  std::ofstream(path_) << "someone else's";
  server.reset();
  EXPECT_TRUE(std::filesystem::exists(path_));
}

TEST(CallControl, SaysWhenTheAgentIsNotRunning) {
  auto result = CallControl("/nonexistent/ktrust/control.sock", "status", json::object(), kTimeout);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(result.status().message(),
            "cannot reach ktrustd at /nonexistent/ktrust/control.sock: no such file (is ktrustd "
            "running?)");
}

TEST_F(ControlServerTest, CallControlTimesOutOnASilentAgent) {
  // Listening, never accepting: the connect succeeds, no answer comes.
  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  path_.copy(addr.sun_path, path_.size());
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(listener.get(), 4), 0);
  absl::Time start = absl::Now();
  auto result = CallControl(path_, "status", json::object(), absl::Milliseconds(200));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("did not answer within 200ms"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

// An agent at its fd limit answers a client with the reason and hangs up
// without reading the request (control_server.cc). Whether the client's
// request went out before or after that hang-up (EPIPE), the user reads the
// agent's reason, not a broken pipe.
TEST_F(ControlServerTest, CallControlReadsTheAnswerOfAnAgentThatHungUpOnItsRequest) {
  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  path_.copy(addr.sun_path, path_.size());
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(listener.get(), 64), 0);
  constexpr int kTries = 50;
  std::thread refuser([&] {
    std::string answer = FormatErrorResponse("the agent is out of file descriptors");
    for (int i = 0; i < kTries; ++i) {
      UniqueFd c(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!c.valid()) return;
      (void)!::send(c.get(), answer.data(), answer.size(), MSG_NOSIGNAL);
    }  // closed unread
  });
  int answered = 0;
  std::string last;
  for (int i = 0; i < kTries; ++i) {
    auto result = CallControl(path_, "status", json::object(), kTimeout);
    last = std::string(result.status().message());
    if (!result.ok() && absl::StrContains(last, "out of file descriptors")) ++answered;
  }
  refuser.join();
  EXPECT_EQ(answered, kTries) << "last: " << last;
}

TEST_F(ControlServerTest, CallControlExplainsPermissionDenied) {
  auto server = StartServer();  // root only
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0);
  std::string message;
  if (::geteuid() != 0) {
    ASSERT_EQ(::chmod(path_.c_str(), 0), 0);
    message = std::string(CallControl(path_, "echo", json::object(), kTimeout).status().message());
  } else {
    // Root may connect to anything: ask as nobody, from a child process.
    int pipe_fds[2];
    ASSERT_EQ(::pipe(pipe_fds), 0);
    UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(2);
      std::string m(CallControl(path_, "echo", json::object(), kTimeout).status().message());
      (void)!::write(write_end.get(), m.data(), m.size());
      ::_exit(0);
    }
    write_end.Reset();
    char buffer[512];
    ssize_t n;
    while ((n = ::read(read_end.get(), buffer, sizeof(buffer))) > 0)
      message.append(buffer, static_cast<size_t>(n));
    int wait_status = 0;
    ::waitpid(child, &wait_status, 0);
    ASSERT_TRUE(WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0);
  }
  EXPECT_EQ(message, absl::StrCat("cannot reach ktrustd at ", path_,
                                  ": permission denied (run as root or as a member of the "
                                  "agent's control group)"));
}

}  // namespace
}  // namespace ktrust::control
