// The ktrust CLI's command groups. Each Add* registers its subcommands on the
// app; a command's callback stores its exit code in `exit_code`.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ktrust::cli {

// Documented in docs/cli.md.
enum ExitCode : int {
  kOk = 0,
  kFailed = 1,  // the operation failed, (inspect) the certificate does not verify, or
                // (policy check) the connection would be denied
  kUsage = 2,   // bad flags or arguments
};

void AddCaCommands(CLI::App& app, int& exit_code);
void AddCertCommands(CLI::App& app, int& exit_code);
// status, conns, workloads, policy check, denials, ready, health: they talk to the agent at
// `socket`, which must outlive the parse (its value is read when a command runs).
void AddAgentCommands(CLI::App& app, int& exit_code, const std::string& socket);
// exec: runs a command as a zero-hop workload (exec.cc); does not return on success.
void AddExecCommand(CLI::App& app, int& exit_code);

// "1h", "90m", "30d": absl durations plus whole days. A lifetime must be
// positive; an allowance (clock skew) may be zero.
absl::StatusOr<absl::Duration> ParseTtl(const std::string& text);
absl::StatusOr<absl::Duration> ParseAllowance(const std::string& text);

// Prints "ktrust: error: <message>" to stderr and returns kFailed.
int ReportError(const absl::Status& status);

}  // namespace ktrust::cli
