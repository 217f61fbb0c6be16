// ktrust: the operator's CLI: the embedded CA and certificate inspection
// offline, and the live agent through its control socket.
#include <exception>
#include <iostream>
#include <string>

#include "commands.h"
#include "ktrust/common/version.h"
#include "ktrust/control/control_client.h"

namespace {

int Run(int argc, char** argv) {
  CLI::App app{"ktrust: identity-enforced connections, from the command line"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("ktrust ") + ktrust::kVersion);
  int exit_code = ktrust::cli::kOk;
  ktrust::cli::AddCaCommands(app, exit_code);
  ktrust::cli::AddCertCommands(app, exit_code);
  std::string socket = ktrust::control::kDefaultControlSocket;
  app.add_option("--socket", socket, "The agent's control socket")
      ->envname("KTRUST_CONTROL_SOCKET")
      ->capture_default_str();
  // Accept --socket after the command name too: `ktrust conns --socket X`.
  app.fallthrough();
  ktrust::cli::AddAgentCommands(app, exit_code, socket);
  ktrust::cli::AddExecCommand(app, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help, --version
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "ktrust: usage error: " << e.what() << "\n(see 'ktrust --help')\n";
    return ktrust::cli::kUsage;
  }
  return exit_code;
}

}  // namespace

int main(int argc, char** argv) {
  // CLI11 reports through exceptions; none may escape as an abort.
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "ktrust: error: " << e.what() << "\n";
    return ktrust::cli::kFailed;
  }
}
