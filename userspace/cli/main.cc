// ktrust: the operator's CLI. Today: the embedded CA and certificate inspection.
#include <iostream>

#include "commands.h"

int main(int argc, char** argv) {
  CLI::App app{"ktrust: identity-enforced connections, from the command line"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "ktrust 0.1.0");
  int exit_code = ktrust::cli::kOk;
  ktrust::cli::AddCaCommands(app, exit_code);
  ktrust::cli::AddCertCommands(app, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "ktrust: usage error: " << e.what() << "\n(see 'ktrust --help')\n";
    return ktrust::cli::kUsage;
  }
  return exit_code;
}
