// ktrust exec [--workload NAME] [--holder-socket PATH] -- CMD ARGS...
//
// Runs CMD as a zero-hop workload (docs/dataplane.md, "Zero-hop"): installs
// the seccomp filter whose listener lets the agent answer CMD's connects and
// accepts, hands the listener to the fd holder, and execs CMD only once the
// holder has taken it. Whatever fails, CMD does not run: a workload whose
// listener nobody holds would see every connect and accept fail with ENOSYS.
#include <elf.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "commands.h"
#include "ktrust/zerohop/holder_protocol.h"
#include "ktrust/zerohop/seccomp_filter.h"

namespace ktrust::cli {
namespace {

#if defined(__x86_64__)
constexpr uint16_t kNativeMachine = EM_X86_64;
constexpr char kNativeName[] = "x86-64";
#elif defined(__aarch64__)
constexpr uint16_t kNativeMachine = EM_AARCH64;
constexpr char kNativeName[] = "aarch64";
#else
#error "ktrust exec: add this architecture's ELF machine"
#endif

// How long the holder may take to answer: it answers at once unless it is
// wedged, and then systemd should restart the service, not wait forever.
constexpr int kAckTimeoutMs = 10000;

// Where execvp would find `name`.
absl::StatusOr<std::string> Resolve(const std::string& name) {
  if (name.empty()) return absl::InvalidArgumentError("empty command");
  if (name.find('/') != std::string::npos) return name;
  const char* env = ::getenv("PATH");
  std::string path = env != nullptr ? env : "/usr/local/bin:/usr/bin:/bin";
  for (absl::string_view dir : absl::StrSplit(path, ':')) {
    std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", name);
    struct stat st {};
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        ::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return absl::NotFoundError(absl::StrCat(name, ": command not found in PATH"));
}

// The filter kills a process that makes a system call through another ABI
// (32-bit, x32), so such a program would die at its first system call: say
// so now instead. A #! script is judged by its interpreter.
absl::Status CheckNative(const std::string& path, int depth = 0) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  char head[256] = {};
  in.read(head, sizeof(head));
  size_t n = static_cast<size_t>(in.gcount());
  if (n >= 2 && head[0] == '#' && head[1] == '!') {
    if (depth >= 4) return absl::InvalidArgumentError(path + ": #! interpreters nest too deep");
    std::string_view line(head + 2, n - 2);
    line = line.substr(0, line.find('\n'));
    size_t start = line.find_first_not_of(" \t");
    if (start == std::string_view::npos) {
      return absl::InvalidArgumentError(path + ": #! names no interpreter");
    }
    line = line.substr(start);
    std::string interpreter(line.substr(0, line.find_first_of(" \t\r")));
    return CheckNative(interpreter, depth + 1);
  }
  if (n < sizeof(Elf64_Ehdr) || std::memcmp(head, ELFMAG, SELFMAG) != 0) {
    return absl::InvalidArgumentError(path + ": not an ELF executable or a #! script");
  }
  Elf64_Ehdr eh;
  std::memcpy(&eh, head, sizeof(eh));
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB ||
      eh.e_machine != kNativeMachine) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": not a 64-bit ", kNativeName,
        " program; zero-hop workloads must use the native system call ABI (the seccomp filter "
        "kills any other)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> ConnectHolder(const std::string& path) {
  auto fd = zerohop::ConnectUnixSocket(path, SOCK_SEQPACKET);
  if (!fd.ok()) {
    return absl::UnavailableError(
        absl::StrCat("cannot reach the ktrust holder: ", fd.status().message(),
                     " (is ktrust-holder.service running?)"));
  }
  // The listener lets its holder answer this process's connects and put
  // fds into it: only root (or this user, who gains nothing) may get it.
  if (auto st = zerohop::CheckPeerIsRootOrSelf(fd->get(), path); !st.ok()) return st;
  return fd;
}

// Installs the filter, registers its listener and waits for the holder's
// answer. On success the caller may exec.
absl::Status Register(const std::string& holder_socket, const std::string& workload) {
  auto sock = ConnectHolder(holder_socket);  // before the filter: connect is what it stops
  if (!sock.ok()) return sock.status();
  auto filter = zerohop::InstallFilter();
  if (!filter.ok()) return filter.status();
  zerohop::ExecRegistration reg;
  reg.pid = ::getpid();
  reg.workload_hint = workload;
  reg.wait_killable_recv = filter->wait_killable_recv;
  int fds[1] = {filter->listener.get()};
  if (auto st = zerohop::SendWithFds(sock->get(), zerohop::EncodeExecRegistration(reg), fds);
      !st.ok()) {
    return absl::UnavailableError(
        absl::StrCat("sending the listener to the holder: ", st.message()));
  }
  pollfd p{sock->get(), POLLIN, 0};
  int n;
  do {
    n = ::poll(&p, 1, kAckTimeoutMs);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return absl::DeadlineExceededError("the holder did not answer the registration");
  auto reply = zerohop::ReceiveWithFds(sock->get(), 4096);
  if (!reply.ok()) return reply.status();
  if (reply->eof)
    return absl::UnavailableError("the holder closed the connection without an answer");
  auto j = nlohmann::json::parse(reply->data, nullptr, false);
  // `filter` goes out of scope with its listener: only the holder's copy stays.
  if (j.is_object() && j.value("ok", false) == true) return absl::OkStatus();
  std::string why = j.is_object() && j.contains("error") && j["error"].is_string()
                        ? j["error"].get<std::string>()
                        : "malformed answer";
  return absl::PermissionDeniedError(absl::StrCat("the holder refused the registration: ", why));
}

int RunExec(const std::string& holder_socket, const std::string& workload,
            const std::vector<std::string>& command) {
  if (!workload.empty()) {
    if (auto st = zerohop::CheckWorkloadHint(workload); !st.ok()) {
      std::cerr << "ktrust: usage error: --workload: " << st.message() << "\n";
      return kUsage;
    }
  }
  auto program = Resolve(command[0]);
  if (!program.ok()) return ReportError(program.status());
  if (auto st = CheckNative(*program); !st.ok()) return ReportError(st);
  if (auto st = Register(holder_socket, workload); !st.ok()) return ReportError(st);
  std::vector<char*> argv;
  for (const std::string& a : command) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  ::execv(program->c_str(), argv.data());
  int err = errno;
  std::cerr << "ktrust: error: exec " << *program << ": " << std::strerror(err) << "\n";
  // As env(1) and shells do: 127 not found, 126 found but not runnable.
  return err == ENOENT ? 127 : 126;
}

}  // namespace

void AddExecCommand(CLI::App& app, int& exit_code) {
  CLI::App* c = app.add_subcommand(
      "exec", "Run a command as a zero-hop workload (its listener kept by the ktrust holder)");
  auto holder_socket = std::make_shared<std::string>(
      absl::StrCat(zerohop::kDefaultHolderDir, "/", zerohop::kRegistrationSocketName));
  auto workload = std::make_shared<std::string>();
  auto command = std::make_shared<std::vector<std::string>>();
  c->add_option("--workload", *workload,
                "A name hint for the agent (identity comes from the cgroup)");
  c->add_option("--holder-socket", *holder_socket, "The holder's registration socket")
      ->capture_default_str();
  c->add_option("command", *command, "The command and its arguments, after --")->required();
  c->callback([&exit_code, holder_socket, workload, command] {
    exit_code = RunExec(*holder_socket, *workload, *command);
  });
}

}  // namespace ktrust::cli
