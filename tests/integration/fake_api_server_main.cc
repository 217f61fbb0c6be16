// fake_api_server: FakeApiServer (tests/unit/kubernetes/fake_api_server.h),
// a fake Kubernetes API server replaying recorded objects, as a process for
// the integration tests' simulated nodes. It serves over HTTPS on
// 127.0.0.1 of the network namespace it runs in, with a certificate of a
// CA it makes, and writes what an agent needs to DIR: ca.crt, token (mode
// 0600). Then it reads commands from COMMANDS (a FIFO the test writes; a
// shell's background job cannot keep a stdin), one per line, and answers
// each on stdout with "done <command>" once applied:
//
//   add <pods|namespaces> FILE     an object (JSON), streamed as ADDED
//   modify <pods|namespaces> FILE  the same, as MODIFIED
//   delete <pods|namespaces> KEY   a pod's uid or a namespace's name, as DELETED
//   hold                           lists of both wait, so nothing syncs...
//   release                        ...until this
//
// A FILE holding a list ({"items": [...]}) adds each item.
//
// It exits when COMMANDS ends (no writer left).
//
// Usage: fake_api_server DIR COMMANDS
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "ktrust/common/files.h"
#include "ktrust/identity/x509.h"
#include "unit/kubernetes/fake_api_server.h"
#include "unit/test_pki.h"

namespace {

using ktrust::testing::FakeApiServer;
using nlohmann::json;

bool Apply(FakeApiServer& server, const std::string& line) {
  std::istringstream words(line);
  std::string verb, resource, argument;
  words >> verb >> resource >> argument;
  if (verb == "hold") {
    server.HoldLists("pods");
    server.HoldLists("namespaces");
    return true;
  }
  if (verb == "release") {
    server.ReleaseLists();
    return true;
  }
  if (resource != "pods" && resource != "namespaces") return false;
  if (verb == "delete") return !server.Delete(resource, argument).empty();
  std::ifstream file(argument);
  json object = json::parse(file, nullptr, /*allow_exceptions=*/false);
  if (object.is_discarded() || !object.is_object()) return false;
  json items = object.contains("items") ? object["items"] : json::array({object});
  for (json& item : items) {
    if (verb == "add") {
      server.Add(resource, item);
    } else if (verb == "modify") {
      server.Modify(resource, item);
    } else {
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: fake_api_server DIR COMMANDS\n";
    return 2;
  }
  const std::string dir = argv[1];
  auto root = ktrust::testing::MintRoot("cluster.local");
  ktrust::testing::CertSpec spec;
  spec.common_name = "kube-apiserver";
  spec.ip_sans = {"127.0.0.1"};
  spec.extended_key_usage = "serverAuth";
  auto identity = ktrust::testing::Mint(spec, &root);
  const std::string token = "fake-api-server-token";
  if (!ktrust::WriteFileAtomically(dir + "/ca.crt", ktrust::ToPem(root.cert.get()), 0644).ok() ||
      !ktrust::WriteFileAtomically(dir + "/token", token, 0600).ok()) {
    std::cerr << "cannot write to " << dir << "\n";
    return 1;
  }
  FakeApiServer server(identity, token);
  std::cout << "listening " << server.port() << std::endl;
  std::ifstream commands(argv[2]);
  if (!commands) {
    std::cerr << "cannot open " << argv[2] << "\n";
    return 1;
  }
  std::string line;
  while (std::getline(commands, line)) {
    if (line.empty()) continue;
    bool applied = Apply(server, line);
    std::cout << (applied ? "done " : "failed ") << line << std::endl;
  }
  return 0;
}
