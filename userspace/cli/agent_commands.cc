// ktrust status | conns | workloads | policy check | denials | ready | health:
// the live agent, through its control socket (docs/control-api.md).
#include <signal.h>

#include <atomic>
#include <iostream>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "commands.h"
#include "ktrust/control/control_client.h"
#include "ktrust/control/methods.h"
#include "ktrust/control/views.h"
#include "render.h"

namespace ktrust::cli {

namespace {

using nlohmann::json;

constexpr absl::Duration kCallTimeout = absl::Seconds(5);

std::atomic<bool> interrupted{false};

void OnInterrupt(int) { interrupted = true; }

absl::StatusOr<json> Call(const std::string& socket, const std::string& method,
                          const json& params) {
  return control::CallControl(socket, method, params, kCallTimeout);
}

// The agent's errors may quote what a peer or a caller sent: escaped like
// everything else this file prints.
int ReportAgentError(const absl::Status& status) {
  return ReportError(absl::Status(status.code(), EscapeForTerminal(status.message())));
}

void PrintJson(const json& result) {
  std::cout << result.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
}

// Calls `method` and prints its result as JSON or, through `render`, as text.
template <typename View>
int CallAndPrint(const std::string& socket, const std::string& method, const json& params,
                 bool as_json, const std::function<std::string(const View&)>& render) {
  auto result = Call(socket, method, params);
  if (!result.ok()) return ReportAgentError(result.status());
  if (as_json) {
    PrintJson(*result);
    return kOk;
  }
  auto view = control::ViewFromJson<View>(*result);
  if (!view.ok()) return ReportAgentError(view.status());
  std::cout << render(*view);
  return kOk;
}

struct ConnsFlags {
  control::ConnectionsParams filter;
  bool json = false, watch = false;
};

int RunConns(const std::string& socket, const ConnsFlags& f) {
  auto render = [](const control::ConnectionListView& list) {
    return RenderConnections(list.connections);
  };
  if (!f.watch) {
    return CallAndPrint<control::ConnectionListView>(socket, control::kMethodConnections,
                                                     ToParams(f.filter), f.json, render);
  }
  // Redraw every second until Ctrl-C; an unreachable agent is shown, not fatal,
  // so the view survives an agent restart.
  struct sigaction action {};
  action.sa_handler = OnInterrupt;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  while (!interrupted) {
    auto result = Call(socket, control::kMethodConnections, ToParams(f.filter));
    std::string screen;
    if (!result.ok()) {
      screen = absl::StrCat("ktrust: error: ", EscapeForTerminal(result.status().message()), "\n");
    } else if (f.json) {
      screen = result->dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    } else if (auto list = control::ViewFromJson<control::ConnectionListView>(*result); list.ok()) {
      screen = render(*list);
    } else {
      screen = absl::StrCat("ktrust: error: ", EscapeForTerminal(list.status().message()), "\n");
    }
    if (f.json) {
      std::cout << screen << std::flush;  // one JSON line per second, for scripts
    } else {
      std::cout << "\x1b[H\x1b[2J"
                << absl::FormatTime("%H:%M:%S", absl::Now(), absl::LocalTimeZone())
                << "  every 1s, Ctrl-C to stop\n\n"
                << screen << std::flush;
    }
    for (int i = 0; i < 10 && !interrupted; ++i) absl::SleepFor(absl::Milliseconds(100));
  }
  return kOk;
}

struct DenialsFlags {
  std::string since;
  bool json = false;
};

int RunDenials(const std::string& socket, const DenialsFlags& f) {
  control::DenialsParams params;
  if (!f.since.empty()) {
    auto since = ParseAllowance(f.since);
    if (!since.ok()) return ReportAgentError(since.status());
    params.since_seconds = absl::ToDoubleSeconds(*since);
  }
  return CallAndPrint<control::DenialListView>(
      socket, control::kMethodDenials, ToParams(params), f.json,
      [](const control::DenialListView& list) { return RenderDenials(list.denials); });
}

struct PolicyFlags {
  control::PolicyCheckParams query;
  int port = 0;
  bool json = false;
};

// Exit 0 when allowed, 1 when denied, so scripts can branch on it.
int RunPolicyCheck(const std::string& socket, PolicyFlags f) {
  f.query.port = static_cast<uint16_t>(f.port);
  auto result = Call(socket, control::kMethodPolicyCheck, ToParams(f.query));
  if (!result.ok()) return ReportAgentError(result.status());
  auto verdict = control::ViewFromJson<control::PolicyCheckView>(*result);
  if (!verdict.ok()) return ReportAgentError(verdict.status());
  if (f.json) {
    PrintJson(*result);
  } else {
    std::cout << RenderPolicyCheck(f.query, *verdict);
  }
  return verdict->allowed ? kOk : kFailed;
}

// ready and health: the Kubernetes probes (exec, docs/kubernetes.md). They
// ask the agent at `socket`, the pod's own, never a TCP port, which during
// a surge belongs to the other agent and, while no agent runs, to whoever
// binds it first.
struct ProbeFlags {
  std::string timeout = "3s";
};

enum class Probe { kReady, kHealth };

int RunProbe(const std::string& socket, const ProbeFlags& f, Probe probe) {
  auto timeout = ParseTtl(f.timeout);
  if (!timeout.ok()) return ReportError(timeout.status());
  auto result = control::CallControl(socket, control::kMethodStatus, json::object(), *timeout);
  if (!result.ok()) {
    std::cout << (probe == Probe::kReady ? "not ready" : "unhealthy") << ": "
              << EscapeForTerminal(result.status().message()) << "\n";
    return kFailed;
  }
  auto status = control::ViewFromJson<control::StatusView>(*result);
  if (!status.ok()) {
    std::cout << (probe == Probe::kReady ? "not ready" : "unhealthy")
              << ": the agent's answer is not a status: "
              << EscapeForTerminal(status.status().message()) << "\n";
    return kFailed;
  }
  std::string readiness = status->ready ? "ready" : "not ready: " + status->not_ready_reason;
  if (probe == Probe::kReady) {
    std::cout << EscapeForTerminal(readiness) << "\n";
    return status->ready ? kOk : kFailed;
  }
  // Alive is answering: a restart would not make a not-ready agent ready.
  std::cout << "healthy: ktrustd " << EscapeForTerminal(status->version) << " on "
            << EscapeForTerminal(status->node) << " answers at " << EscapeForTerminal(socket)
            << " (" << EscapeForTerminal(readiness) << ")\n";
  return kOk;
}

}  // namespace

void AddAgentCommands(CLI::App& app, int& exit_code, const std::string& socket) {
  CLI::App* c = app.add_subcommand("status", "Show the agent's health, data path and counts");
  auto status_json = std::make_shared<bool>(false);
  c->add_flag("--json", *status_json, "Print the agent's raw result");
  c->callback([&socket, &exit_code, status_json] {
    exit_code = CallAndPrint<control::StatusView>(
        socket, control::kMethodStatus, json::object(), *status_json,
        [](const control::StatusView& s) { return RenderStatus(s, absl::Now()); });
  });

  auto conns = std::make_shared<ConnsFlags>();
  c = app.add_subcommand("conns", "List the connections the agent carries");
  c->add_option("--workload", conns->filter.workload, "Only this workload's connections");
  c->add_option("--peer", conns->filter.peer, "Only connections with this peer SPIFFE ID");
  c->add_flag("--json", conns->json, "Print the agent's raw result");
  c->add_flag("--watch", conns->watch, "Redraw every second until Ctrl-C");
  c->callback([&socket, &exit_code, conns] { exit_code = RunConns(socket, *conns); });

  auto workloads_json = std::make_shared<bool>(false);
  c = app.add_subcommand("workloads", "List the enrolled workloads and their SVIDs");
  c->add_flag("--json", *workloads_json, "Print the agent's raw result");
  c->callback([&socket, &exit_code, workloads_json] {
    exit_code = CallAndPrint<control::WorkloadListView>(
        socket, control::kMethodWorkloads, json::object(), *workloads_json,
        [](const control::WorkloadListView& list) {
          return RenderWorkloads(list.workloads, absl::Now());
        });
  });

  auto policy = std::make_shared<PolicyFlags>();
  CLI::App* p = app.add_subcommand("policy", "Ask the agent's policy");
  p->require_subcommand(1);
  c = p->add_subcommand("check", "Would a connection be allowed? Exit 0 if so, 1 if not");
  c->add_option("--from", policy->query.from, "The client's SPIFFE ID")->required();
  c->add_option("--to", policy->query.to, "The destination workload")->required();
  c->add_option("--port", policy->port, "The destination port")
      ->required()
      ->check(CLI::Range(1, 65535));
  c->add_flag("--json", policy->json, "Print the agent's raw result");
  c->callback([&socket, &exit_code, policy] { exit_code = RunPolicyCheck(socket, *policy); });

  auto denials = std::make_shared<DenialsFlags>();
  c = app.add_subcommand("denials", "List recently refused connections, oldest first");
  c->add_option("--since", denials->since, "Only the last DURATION, e.g. 10m (default: all kept)");
  c->add_flag("--json", denials->json, "Print the agent's raw result");
  c->callback([&socket, &exit_code, denials] { exit_code = RunDenials(socket, *denials); });

  for (auto [name, probe, help] :
       {std::tuple{"ready", Probe::kReady,
                   "Exit 0 if the agent at --socket is ready, 1 (with the reason) if not"},
        std::tuple{"health", Probe::kHealth,
                   "Exit 0 if the agent at --socket answers, 1 (with the reason) if not"}}) {
    auto flags = std::make_shared<ProbeFlags>();
    c = app.add_subcommand(name, help);
    c->add_option("--timeout", flags->timeout, "How long to wait for its answer (default 3s)");
    c->callback(
        [&socket, &exit_code, flags, probe] { exit_code = RunProbe(socket, *flags, probe); });
  }
}

}  // namespace ktrust::cli
