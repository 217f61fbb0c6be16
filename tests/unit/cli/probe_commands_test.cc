// `ktrust ready` and `ktrust health`, the DaemonSet's exec probes, run as the
// kubelet runs them (the built binary, its exit code and output) against a
// control socket that answers as the agent would, or not at all.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/control/control_server.h"
#include "ktrust/control/methods.h"
#include "ktrust/control/views.h"

namespace ktrust::cli {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::StartsWith;

struct CliRun {
  int exit_code = -1;
  std::string output;  // stdout and stderr, as the kubelet records them
  absl::Duration took;
};

CliRun RunKtrust(const std::string& args) {
  CliRun run;
  absl::Time start = absl::Now();
  FILE* pipe = ::popen(absl::StrCat(KTRUST_CLI, " ", args, " 2>&1").c_str(), "r");
  if (pipe == nullptr) return run;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) run.output.append(buf, n);
  int status = ::pclose(pipe);
  run.took = absl::Now() - start;
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return run;
}

class ProbeCommandsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir_template[] = "/tmp/ktrust-probe-test-XXXXXX";
    ASSERT_NE(::mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
    socket_ = dir_ + "/control.sock";
  }
  void TearDown() override {
    if (!release_.HasBeenNotified()) release_.Notify();
    if (server_) server_->Stop();
    std::filesystem::remove_all(dir_);
  }

  // Serves "status" as the agent does, with this readiness.
  void ServeStatus(bool ready, const std::string& reason) {
    control::StatusView view;
    view.version = "0.test";
    view.node = "node-a";
    view.ready = ready;
    view.not_ready_reason = reason;
    Serve([view](const json&) -> absl::StatusOr<json> { return json(view); });
  }
  void Serve(control::ControlHandler status) {
    control::ControlServerOptions options;
    options.path = socket_;
    auto server = control::ControlServer::Start(options, {{control::kMethodStatus, status}});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }
  CliRun Probe(const std::string& command, const std::string& extra = "") {
    CliRun run = RunKtrust(absl::StrCat("--socket ", socket_, " ", command, " ", extra));
    std::cout << "ktrust " << command << " " << extra << ": exit " << run.exit_code << ", "
              << run.output;
    return run;
  }

  std::string dir_, socket_;
  std::unique_ptr<control::ControlServer> server_;
  absl::Notification release_;
};

TEST_F(ProbeCommandsTest, ReadyAgentPassesBoth) {
  ServeStatus(true, "");
  CliRun ready = Probe("ready");
  EXPECT_EQ(ready.exit_code, 0);
  EXPECT_EQ(ready.output, "ready\n");
  CliRun health = Probe("health");
  EXPECT_EQ(health.exit_code, 0);
  EXPECT_EQ(health.output,
            absl::StrCat("healthy: ktrustd 0.test on node-a answers at ", socket_, " (ready)\n"));
}

// Startup: the agent answers but is not ready. Not ready keeps it out of
// the rollout; it is alive, so the kubelet must not restart it.
TEST_F(ProbeCommandsTest, StartingAgentIsAliveButNotReadyAndSaysWhy) {
  ServeStatus(false, "workload web serves ports but none of its cgroups exists yet");
  CliRun ready = Probe("ready");
  EXPECT_EQ(ready.exit_code, 1);
  EXPECT_EQ(ready.output,
            "not ready: workload web serves ports but none of its cgroups exists yet\n");
  CliRun health = Probe("health");
  EXPECT_EQ(health.exit_code, 0);
  EXPECT_THAT(health.output, HasSubstr("(not ready: workload web serves ports"));
}

TEST_F(ProbeCommandsTest, NoAgentFailsBothWithTheReason) {
  CliRun ready = Probe("ready");
  EXPECT_EQ(ready.exit_code, 1);
  EXPECT_THAT(ready.output,
              StartsWith(absl::StrCat("not ready: cannot reach ktrustd at ", socket_)));
  EXPECT_THAT(ready.output, HasSubstr("no such file (is ktrustd running?)"));
  CliRun health = Probe("health");
  EXPECT_EQ(health.exit_code, 1);
  EXPECT_THAT(health.output,
              StartsWith(absl::StrCat("unhealthy: cannot reach ktrustd at ", socket_)));
}

// What a crashed agent leaves in the pod's emptyDir: the socket file, and
// no one listening.
TEST_F(ProbeCommandsTest, SocketLeftByADeadAgentFailsBoth) {
  {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    socket_.copy(addr.sun_path, socket_.size());
    ASSERT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  }
  ASSERT_TRUE(std::filesystem::exists(socket_));
  CliRun ready = Probe("ready");
  EXPECT_EQ(ready.exit_code, 1);
  EXPECT_THAT(ready.output, HasSubstr("connection refused (the socket is left over"));
  CliRun health = Probe("health");
  EXPECT_EQ(health.exit_code, 1);
  EXPECT_THAT(health.output, HasSubstr("connection refused (the socket is left over"));
}

// A wedged agent accepts but never answers: the probe gives up at its own
// --timeout, with a reason, before the kubelet's timeoutSeconds kills it.
TEST_F(ProbeCommandsTest, AgentThatDoesNotAnswerFailsAtTheTimeout) {
  Serve([this](const json&) -> absl::StatusOr<json> {
    release_.WaitForNotificationWithTimeout(absl::Seconds(10));
    return absl::UnavailableError("released");
  });
  CliRun health = Probe("health", "--timeout 1s");
  release_.Notify();
  EXPECT_EQ(health.exit_code, 1);
  EXPECT_THAT(health.output, StartsWith("unhealthy: "));
  EXPECT_LT(health.took, absl::Seconds(3));
}

TEST_F(ProbeCommandsTest, BadTimeoutIsAnErrorNotAPass) {
  ServeStatus(true, "");
  CliRun ready = Probe("ready", "--timeout soon");
  EXPECT_EQ(ready.exit_code, 1);
  EXPECT_THAT(ready.output, HasSubstr("\"soon\" is not a duration"));
}

}  // namespace
}  // namespace ktrust::cli
