// Test helper for zerohop_holder_test: registers a real seccomp listener with
// the holder while claiming any pid, as a hostile local user would try.
//   zerohop_register_helper SOCKET CLAIMED_PID
// Prints the holder's answer; exit 0 if one arrived.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "ktrust/zerohop/holder_protocol.h"
#include "ktrust/zerohop/seccomp_filter.h"

int main(int argc, char** argv) {
  using namespace ktrust::zerohop;
  if (argc != 3) return 2;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, argv[1], sizeof(addr.sun_path) - 1);
  ktrust::UniqueFd sock(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (::connect(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    std::perror("connect");
    return 1;
  }
  auto filter = InstallFilter();
  if (!filter.ok()) {
    std::fprintf(stderr, "%s\n", std::string(filter.status().message()).c_str());
    return 1;
  }
  ExecRegistration reg;
  reg.pid = static_cast<pid_t>(std::atoi(argv[2]));
  int fds[1] = {filter->listener.get()};
  if (!SendWithFds(sock.get(), EncodeExecRegistration(reg), fds).ok()) return 1;
  pollfd p{sock.get(), POLLIN, 0};
  if (::poll(&p, 1, 10000) != 1) return 1;
  auto reply = ReceiveWithFds(sock.get(), 4096);
  if (!reply.ok()) return 1;
  std::printf("%s\n", reply->data.c_str());
  return 0;
}
