#include "ktrust/zerohop/sock_diag.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/tcp.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstring>
#include <optional>
#include <thread>

#include "absl/functional/function_ref.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "ktrust/common/error_text.h"
#include "ktrust/zerohop/proc_mem.h"

namespace ktrust::zerohop {
namespace {

// The kernel's TCP states (include/net/tcp_states.h; <netinet/tcp.h> has
// them too but cannot be included with <linux/tcp.h>, whose tcp_info is the
// one with the byte counters).
enum TcpState : uint32_t {
  kEstablished = 1,
  kSynSent = 2,
  kFinWait1 = 4,
  kFinWait2 = 5,
  kCloseWait = 8,
  kLastAck = 9,
  kClosing = 11,
};

// States a zero-hop connection can be in while the application holds it.
constexpr uint32_t kConnectedStates = (1u << kSynSent) | (1u << kEstablished) | (1u << kFinWait1) |
                                      (1u << kFinWait2) | (1u << kCloseWait) | (1u << kLastAck) |
                                      (1u << kClosing);

// A namespace full of sockets is the workload's to make; the agent's memory
// is not. Far above any real workload, far below exhausting the agent.
constexpr size_t kMaxSockets = 1 << 20;

// Room for one dump batch: the kernel fills at most max(page, 32 KiB) per
// recv by default, so MSG_TRUNC with this size means a reply we cannot trust.
constexpr size_t kReceiveBuffer = 64 << 10;

// One attribute (struct nlattr / rtattr: len, type, payload) walked with
// every length checked against what is left.
struct Attr {
  uint16_t type;
  absl::string_view payload;
};

// Walks the attributes in `data`; false on a malformed one (the caller
// rejects the whole message).
template <typename Fn>
bool WalkAttrs(absl::string_view data, Fn&& fn) {
  while (!data.empty()) {
    if (data.size() < sizeof(nlattr)) return false;
    nlattr header;
    std::memcpy(&header, data.data(), sizeof(header));
    if (header.nla_len < sizeof(nlattr) || header.nla_len > data.size()) return false;
    Attr attr{static_cast<uint16_t>(header.nla_type & NLA_TYPE_MASK),
              data.substr(sizeof(nlattr), header.nla_len - sizeof(nlattr))};
    if (!fn(attr)) return false;
    size_t aligned = NLA_ALIGN(header.nla_len);
    if (aligned >= data.size()) break;  // the last one may omit its padding
    data.remove_prefix(aligned);
  }
  return true;
}

template <typename T>
T Read(absl::string_view payload) {
  T value{};
  std::memcpy(&value, payload.data(), std::min(sizeof(T), payload.size()));
  return value;
}

SocketAddress AddressOf(int family, const __be32 addr[4], __be16 port) {
  if (family == AF_INET) {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = port;
    std::memcpy(&sin.sin_addr, addr, sizeof(sin.sin_addr));
    return SocketAddress::FromSockaddr(reinterpret_cast<const sockaddr*>(&sin), sizeof(sin));
  }
  sockaddr_in6 sin6{};
  sin6.sin6_family = AF_INET6;
  sin6.sin6_port = port;
  std::memcpy(&sin6.sin6_addr, addr, sizeof(sin6.sin6_addr));
  return SocketAddress::FromSockaddr(reinterpret_cast<const sockaddr*>(&sin6), sizeof(sin6));
}

// The inverse of AddressOf, for a request (family AF_INET or AF_INET6).
void FillDiagAddress(const SocketAddress& address, __be32 out[4], __be16& port) {
  if (address.family() == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(address.get());
    std::memcpy(out, &sin->sin_addr, sizeof(sin->sin_addr));
    port = sin->sin_port;
  } else {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(address.get());
    std::memcpy(out, &sin6->sin6_addr, sizeof(sin6->sin6_addr));
    port = sin6->sin6_port;
  }
}

// INET_DIAG_ULP_INFO: a nest of INET_ULP_INFO_NAME and, for tls,
// INET_ULP_INFO_TLS (itself a nest of TLS_INFO_*).
bool ParseUlp(absl::string_view payload, TcpSocketInfo& info) {
  return WalkAttrs(payload, [&](const Attr& a) {
    if (a.type == INET_ULP_INFO_NAME) {
      // A NUL-terminated string; keep what comes before the NUL.
      absl::string_view name = a.payload.substr(0, a.payload.find('\0'));
      if (name.size() > 16) return false;  // TCP_ULP_NAME_MAX
      info.ulp = std::string(name);
    } else if (a.type == INET_ULP_INFO_TLS) {
      return WalkAttrs(a.payload, [&](const Attr& t) {
        if (t.type == TLS_INFO_VERSION || t.type == TLS_INFO_CIPHER || t.type == TLS_INFO_TXCONF ||
            t.type == TLS_INFO_RXCONF) {
          if (t.payload.size() < sizeof(uint16_t)) return false;
          uint16_t value = Read<uint16_t>(t.payload);
          if (t.type == TLS_INFO_VERSION) info.tls_version = value;
          if (t.type == TLS_INFO_CIPHER) info.tls_cipher = value;
          if (t.type == TLS_INFO_TXCONF) info.tls_tx_conf = value;
          if (t.type == TLS_INFO_RXCONF) info.tls_rx_conf = value;
        }
        return true;
      });
    }
    return true;
  });
}

absl::Status ParseSocket(absl::string_view payload, TcpSocketInfo& info) {
  if (payload.size() < sizeof(inet_diag_msg)) {
    return absl::DataLossError("sock_diag: inet_diag_msg shorter than its header");
  }
  inet_diag_msg msg;
  std::memcpy(&msg, payload.data(), sizeof(msg));
  if (msg.idiag_family != AF_INET && msg.idiag_family != AF_INET6) {
    return absl::DataLossError(absl::StrCat("sock_diag: unexpected family ", msg.idiag_family));
  }
  info.cookie = uint64_t{msg.id.idiag_cookie[0]} | (uint64_t{msg.id.idiag_cookie[1]} << 32);
  info.inode = msg.idiag_inode;
  info.state = msg.idiag_state;
  info.uid = msg.idiag_uid;
  info.write_queue = msg.idiag_wqueue;
  info.local = AddressOf(msg.idiag_family, msg.id.idiag_src, msg.id.idiag_sport);
  info.peer = AddressOf(msg.idiag_family, msg.id.idiag_dst, msg.id.idiag_dport);
  bool ok = WalkAttrs(payload.substr(NLMSG_ALIGN(sizeof(inet_diag_msg))), [&](const Attr& a) {
    switch (a.type) {
      case INET_DIAG_INFO: {
        // Older kernels send a shorter tcp_info: take the counters only
        // if the payload reaches them.
        constexpr size_t kNeeded =
            offsetof(tcp_info, tcpi_bytes_received) + sizeof(tcp_info::tcpi_bytes_received);
        if (a.payload.size() < kNeeded) return true;
        tcp_info tcp = Read<tcp_info>(a.payload);
        info.has_tcp_info = true;
        info.bytes_acked = tcp.tcpi_bytes_acked;
        info.bytes_received = tcp.tcpi_bytes_received;
        return true;
      }
      case INET_DIAG_MARK:
        // Sent only to a CAP_NET_ADMIN caller, who is also sent ULPs.
        info.ulp_visible = true;
        return true;
      case INET_DIAG_ULP_INFO:
        info.ulp_visible = true;
        return ParseUlp(a.payload, info);
      default:
        return true;
    }
  });
  if (!ok) return absl::DataLossError("sock_diag: malformed attribute in a socket's reply");
  return absl::OkStatus();
}

// A netlink sock_diag socket made inside `netns_fd` by a thread of its own.
absl::StatusOr<UniqueFd> DiagSocketIn(int netns_fd) {
  auto make = [] {
    return UniqueFd(socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  };
  if (netns_fd < 0) {
    UniqueFd fd = make();
    if (!fd.valid()) return absl::ErrnoToStatus(errno, "socket(NETLINK_SOCK_DIAG)");
    return fd;
  }
  absl::Status status;
  UniqueFd fd;
  // The thread ends in the other namespace; nothing else ever runs on it.
  std::thread([&] {
    if (setns(netns_fd, CLONE_NEWNET) != 0) {
      status = absl::ErrnoToStatus(errno, "enter the workload's network namespace");
      return;
    }
    fd = make();
    if (!fd.valid()) status = absl::ErrnoToStatus(errno, "socket(NETLINK_SOCK_DIAG)");
  }).join();
  if (!status.ok()) return status;
  return fd;
}

// Calls `fn(header, payload)` for each netlink message in a receive buffer
// that answers `seq` (others are stale replies to earlier requests), every
// length checked against what is there, until `fn` says it is done (true).
// Returns whether it did.
template <typename Fn>
absl::StatusOr<bool> ForEachReply(const void* data, size_t len, uint32_t seq, Fn&& fn) {
  absl::string_view rest(static_cast<const char*>(data), len);
  while (!rest.empty()) {
    if (rest.size() < sizeof(nlmsghdr)) return absl::DataLossError("sock_diag: truncated header");
    nlmsghdr header;
    std::memcpy(&header, rest.data(), sizeof(header));
    if (header.nlmsg_len < sizeof(nlmsghdr) || header.nlmsg_len > rest.size()) {
      return absl::DataLossError("sock_diag: a message length beyond the reply");
    }
    absl::string_view payload = rest.substr(sizeof(nlmsghdr), header.nlmsg_len - sizeof(nlmsghdr));
    rest.remove_prefix(std::min<size_t>(NLMSG_ALIGN(header.nlmsg_len), rest.size()));
    if (header.nlmsg_seq != seq) continue;
    absl::StatusOr<bool> done = fn(header, payload);
    if (!done.ok() || *done) return done;
  }
  return false;
}

// The (negative) errno of an NLMSG_ERROR message; 0 is an acknowledgement.
int NetlinkError(absl::string_view payload) {
  int error = 0;
  if (payload.size() >= sizeof(int)) std::memcpy(&error, payload.data(), sizeof(int));
  return error;
}

// The request of a dump (NLM_F_DUMP) or of one lookup, for `family`'s TCP
// sockets with tcp_info and (for a CAP_NET_ADMIN caller) the ULP.
struct DiagRequest {
  nlmsghdr header;
  inet_diag_req_v2 request;
};
DiagRequest MakeDiagRequest(uint8_t family, uint16_t flags, uint32_t seq) {
  DiagRequest message{};
  message.header.nlmsg_len = sizeof(message);
  message.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  message.header.nlmsg_flags = flags;
  message.header.nlmsg_seq = seq;
  message.request.sdiag_family = family;
  message.request.sdiag_protocol = IPPROTO_TCP;
  message.request.idiag_ext = 1 << (INET_DIAG_INFO - 1);
  return message;
}

// Sends `message` to the kernel, then hands each buffer the kernel sends
// back to `take` until it says the answer is complete (or fails).
absl::Status Exchange(int sock, const DiagRequest& message, absl::string_view what,
                      absl::FunctionRef<absl::StatusOr<bool>(const char*, size_t)> take) {
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (sendto(sock, &message, sizeof(message), 0, reinterpret_cast<const sockaddr*>(&kernel),
             sizeof(kernel)) != static_cast<ssize_t>(sizeof(message))) {
    return absl::ErrnoToStatus(errno, absl::StrCat("sock_diag: send the ", what));
  }
  std::vector<char> buffer(kReceiveBuffer);
  for (;;) {
    sockaddr_nl from{};
    socklen_t from_len = sizeof(from);
    ssize_t n = recvfrom(sock, buffer.data(), buffer.size(), MSG_TRUNC,
                         reinterpret_cast<sockaddr*>(&from), &from_len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("sock_diag: receive the ", what));
    }
    if (static_cast<size_t>(n) > buffer.size()) {
      return absl::DataLossError("sock_diag: a reply larger than the receive buffer");
    }
    // Only the kernel (port 0) answers.
    if (from_len < sizeof(from) || from.nl_pid != 0) continue;
    absl::StatusOr<bool> complete = take(buffer.data(), static_cast<size_t>(n));
    if (!complete.ok()) return complete.status();
    if (*complete) return absl::OkStatus();
  }
}

absl::Status DumpFamily(int sock, uint8_t family, uint32_t seq, std::vector<TcpSocketInfo>& out) {
  DiagRequest message = MakeDiagRequest(family, NLM_F_REQUEST | NLM_F_DUMP, seq);
  message.request.idiag_states = kConnectedStates;
  return Exchange(sock, message, "dump", [&](const char* data, size_t len) {
    return ParseInetDiagDump(data, len, seq, out);
  });
}

absl::StatusOr<uint64_t> InodeOfFd(int fd, bool want_socket) {
  struct stat st {};
  if (fstat(fd, &st) != 0) return absl::ErrnoToStatus(errno, "fstat");
  if (want_socket && !S_ISSOCK(st.st_mode)) return absl::NotFoundError("not a socket");
  return static_cast<uint64_t>(st.st_ino);
}

}  // namespace

bool TcpSocketInfo::connected() const {
  return state > 0 && state < 32 && ((kConnectedStates >> state) & 1u) != 0;
}

absl::StatusOr<bool> ParseInetDiagDump(const void* data, size_t len, uint32_t seq,
                                       std::vector<TcpSocketInfo>& out) {
  return ForEachReply(
      data, len, seq,
      [&](const nlmsghdr& header, absl::string_view payload) -> absl::StatusOr<bool> {
        if (header.nlmsg_flags & NLM_F_DUMP_INTR) {
          // The tables changed during the dump: sockets may be missing, and a
          // missing socket would read as a closed connection.
          return absl::UnavailableError("sock_diag: dump interrupted by a concurrent change");
        }
        if (header.nlmsg_type == NLMSG_DONE) return true;
        if (header.nlmsg_type == NLMSG_ERROR) {
          int error = NetlinkError(payload);
          if (error == 0) return absl::DataLossError("sock_diag: an acknowledgement inside a dump");
          return absl::ErrnoToStatus(-error, "sock_diag: the kernel refused the dump");
        }
        if (header.nlmsg_type != SOCK_DIAG_BY_FAMILY) return false;
        if (out.size() >= kMaxSockets) {
          return absl::ResourceExhaustedError(
              absl::StrCat("sock_diag: more than ", kMaxSockets, " sockets in one namespace"));
        }
        TcpSocketInfo info;
        if (absl::Status st = ParseSocket(payload, info); !st.ok()) return st;
        out.push_back(std::move(info));
        return false;
      });
}

absl::StatusOr<std::vector<TcpSocketInfo>> ListTcpSockets(int netns_fd) {
  absl::StatusOr<UniqueFd> sock = DiagSocketIn(netns_fd);
  if (!sock.ok()) return sock.status();
  return ListTcpSocketsVia(sock->get());
}

absl::StatusOr<UniqueFd> OpenDiagSocket(int netns_fd) { return DiagSocketIn(netns_fd); }

// Sequence numbers go on across requests on one socket (dumps and lookups):
// a late reply to an earlier request can never be taken for a later one's.
namespace {
std::atomic<uint32_t> next_diag_seq{1};
}  // namespace

absl::StatusOr<std::vector<TcpSocketInfo>> ListTcpSocketsVia(int diag_socket) {
  std::vector<TcpSocketInfo> out;
  for (uint8_t family : {AF_INET, AF_INET6}) {
    if (absl::Status st = DumpFamily(diag_socket, family, next_diag_seq++, out); !st.ok()) {
      return st;
    }
  }
  return out;
}

absl::StatusOr<std::optional<TcpSocketInfo>> ParseInetDiagLookUp(const void* data, size_t len,
                                                                 uint32_t seq, bool& answered) {
  std::optional<TcpSocketInfo> found;
  absl::StatusOr<bool> done = ForEachReply(
      data, len, seq,
      [&](const nlmsghdr& header, absl::string_view payload) -> absl::StatusOr<bool> {
        if (header.nlmsg_type == NLMSG_ERROR) {
          int error = NetlinkError(payload);
          // ENOENT: no socket with these addresses; ESTALE: one, but another
          // socket (a different cookie) than the one asked for.
          if (error == -ENOENT || error == -ESTALE) return true;
          if (error == 0) return absl::DataLossError("sock_diag: an acknowledgement, not a socket");
          return absl::ErrnoToStatus(-error, "sock_diag: the kernel refused the lookup");
        }
        if (header.nlmsg_type != SOCK_DIAG_BY_FAMILY) return false;
        TcpSocketInfo info;
        if (absl::Status st = ParseSocket(payload, info); !st.ok()) return st;
        found = std::move(info);
        return true;
      });
  answered = done.ok() && *done;
  if (!done.ok()) return done.status();
  return found;
}

absl::StatusOr<std::optional<TcpSocketInfo>> LookUpTcpSocketVia(int diag_socket,
                                                                const SocketAddress& local,
                                                                const SocketAddress& peer,
                                                                uint64_t cookie) {
  int family = local.family();
  if ((family != AF_INET && family != AF_INET6) || peer.family() != family) {
    return absl::InvalidArgumentError("sock_diag: a lookup needs two IPv4 or two IPv6 addresses");
  }
  uint32_t seq = next_diag_seq++;
  DiagRequest message =
      MakeDiagRequest(static_cast<uint8_t>(family), NLM_F_REQUEST /* one socket */, seq);
  inet_diag_req_v2& r = message.request;
  r.idiag_states = ~0u;
  FillDiagAddress(local, r.id.idiag_src, r.id.idiag_sport);
  FillDiagAddress(peer, r.id.idiag_dst, r.id.idiag_dport);
  // The kernel answers ESTALE unless the socket found has this cookie.
  r.id.idiag_cookie[0] = static_cast<uint32_t>(cookie);
  r.id.idiag_cookie[1] = static_cast<uint32_t>(cookie >> 32);
  std::optional<TcpSocketInfo> result;
  absl::Status st = Exchange(diag_socket, message, "lookup",
                             [&](const char* data, size_t len) -> absl::StatusOr<bool> {
                               bool answered = false;
                               absl::StatusOr<std::optional<TcpSocketInfo>> found =
                                   ParseInetDiagLookUp(data, len, seq, answered);
                               if (!found.ok()) return found.status();
                               if (answered) result = *std::move(found);
                               return answered;
                             });
  if (!st.ok()) return st;
  return result;
}

namespace {

// The fd number under which `process` holds socket:[inode], or -1.
absl::StatusOr<int> FdOfSocket(pid_t process, uint64_t inode) {
  std::string dir_path = absl::StrCat("/proc/", process, "/fd");
  DIR* dir = opendir(dir_path.c_str());
  if (dir == nullptr) return absl::ErrnoToStatus(errno, absl::StrCat("open ", dir_path));
  const std::string wanted = absl::StrCat("socket:[", inode, "]");
  int found = -1;
  while (dirent* entry = readdir(dir)) {
    int fd_number = 0;
    if (!absl::SimpleAtoi(entry->d_name, &fd_number) || fd_number < 0) continue;
    char link[64];
    ssize_t n = readlinkat(dirfd(dir), entry->d_name, link, sizeof(link));
    if (n <= 0 || static_cast<size_t>(n) >= sizeof(link)) continue;
    if (absl::string_view(link, static_cast<size_t>(n)) == wanted) {
      found = fd_number;
      break;
    }
  }
  closedir(dir);
  return found;
}

}  // namespace

absl::StatusOr<absl::flat_hash_map<uint64_t, pid_t>> FindSocketHolders(
    const absl::flat_hash_set<uint64_t>& inodes) {
  absl::flat_hash_map<uint64_t, pid_t> holders;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return absl::ErrnoToStatus(errno, "open /proc");
  errno = 0;
  while (dirent* entry = readdir(proc)) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(entry->d_name, &pid) || pid <= 0) continue;
    std::string dir_path = absl::StrCat("/proc/", pid, "/fd");
    DIR* fds = opendir(dir_path.c_str());
    if (fds == nullptr) continue;  // ended, or a kernel thread: not a holder
    while (dirent* fd = readdir(fds)) {
      char link[64];
      ssize_t n = readlinkat(dirfd(fds), fd->d_name, link, sizeof(link));
      uint64_t inode = 0;
      absl::string_view target(link, n > 0 ? static_cast<size_t>(n) : 0);
      if (n > 0 && static_cast<size_t>(n) < sizeof(link) &&
          absl::ConsumePrefix(&target, "socket:[") && absl::ConsumeSuffix(&target, "]") &&
          absl::SimpleAtoi(target, &inode) && inodes.contains(inode)) {
        holders.emplace(inode, pid);
      }
    }
    closedir(fds);
    errno = 0;
  }
  // A listing cut short could miss a holder: not evidence there is none.
  int listing_errno = errno;
  closedir(proc);
  if (listing_errno != 0) return absl::ErrnoToStatus(listing_errno, "read /proc");
  return holders;
}

absl::StatusOr<pid_t> FindSocketHolder(uint64_t inode) {
  auto holders = FindSocketHolders({inode});
  if (!holders.ok()) return holders.status();
  auto it = holders->find(inode);
  if (it == holders->end()) {
    return absl::NotFoundError(absl::StrCat("no process holds socket:[", inode, "]"));
  }
  return it->second;
}

absl::StatusOr<UniqueFd> TakeSocket(pid_t process, uint64_t inode, std::optional<uint64_t> cookie) {
  if (process <= 0) return absl::InvalidArgumentError(absl::StrCat("no process ", process));
  // Opened first: from here on `process` names this process or nothing.
  absl::StatusOr<UniqueFd> pidfd = PidfdOpen(process);
  if (!pidfd.ok()) return pidfd.status();
  const std::string wanted = absl::StrCat("socket:[", inode, "]");
  absl::StatusOr<int> fd_of = FdOfSocket(process, inode);
  if (!fd_of.ok()) return fd_of.status();
  int found = *fd_of;
  // A pid recycled during the scan would have shown another process's fds.
  if (syscall(SYS_pidfd_send_signal, pidfd->get(), 0, nullptr, 0) != 0) {
    return absl::NotFoundError(absl::StrCat("process ", process, " exited"));
  }
  if (found < 0) {
    return absl::NotFoundError(absl::StrCat("process ", process, " holds no ", wanted));
  }
  absl::StatusOr<UniqueFd> fd = PidfdGetfd(pidfd->get(), found);
  if (!fd.ok()) return fd.status();
  // fd `found` may have been closed and reused between readlink and getfd.
  absl::StatusOr<uint64_t> taken = InodeOfFd(fd->get(), /*want_socket=*/true);
  if (!taken.ok() || *taken != inode) {
    return absl::NotFoundError(
        absl::StrCat("process ", process, " closed ", wanted, " while it was being taken"));
  }
  if (cookie.has_value()) {
    uint64_t value = 0;
    socklen_t value_len = sizeof(value);
    if (getsockopt(fd->get(), SOL_SOCKET, SO_COOKIE, &value, &value_len) != 0) {
      return absl::ErrnoToStatus(errno, "getsockopt(SO_COOKIE)");
    }
    if (value != *cookie) {
      return absl::NotFoundError(absl::StrCat(wanted, " of process ", process, " has cookie ",
                                              value, ", not ", *cookie, " (inode reused)"));
    }
  }
  return fd;
}

absl::Status ResetSocket(int fd) {
  linger abort_on_close{1, 0};
  if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof(abort_on_close)) != 0) {
    return absl::ErrnoToStatus(errno, "setsockopt(SO_LINGER)");
  }
  sockaddr unspec{};
  unspec.sa_family = AF_UNSPEC;
  if (connect(fd, &unspec, sizeof(unspec)) == 0) return absl::OkStatus();
  int disconnect_errno = errno;
  // Traffic must stop even so: a FIN both ways, and the linger above turns
  // the application's own close() into a reset.
  if (shutdown(fd, SHUT_RDWR) != 0 && errno != ENOTCONN) {
    return absl::ErrnoToStatus(errno, absl::StrCat("shutdown after a refused disconnect (",
                                                   ErrnoText(disconnect_errno), ")"));
  }
  return absl::FailedPreconditionError(absl::StrCat("the kernel refused to reset the connection (",
                                                    ErrnoText(disconnect_errno),
                                                    "); it was shut down with FIN instead"));
}

absl::Status DestroySocket(int netns_fd, const TcpSocketInfo& socket) {
  if (socket.local.family() != socket.peer.family() ||
      (socket.local.family() != AF_INET && socket.local.family() != AF_INET6)) {
    return absl::InvalidArgumentError("DestroySocket: not a listed TCP socket");
  }
  absl::StatusOr<UniqueFd> sock = DiagSocketIn(netns_fd);
  if (!sock.ok()) return sock.status();
  struct {
    nlmsghdr header;
    inet_diag_req_v2 request;
  } message{};
  message.header.nlmsg_len = sizeof(message);
  message.header.nlmsg_type = SOCK_DESTROY;
  message.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  message.header.nlmsg_seq = 1;
  inet_diag_req_v2& r = message.request;
  r.sdiag_family = static_cast<uint8_t>(socket.local.family());
  r.sdiag_protocol = IPPROTO_TCP;
  r.idiag_states = ~0u;
  FillDiagAddress(socket.local, r.id.idiag_src, r.id.idiag_sport);
  FillDiagAddress(socket.peer, r.id.idiag_dst, r.id.idiag_dport);
  r.id.idiag_cookie[0] = static_cast<uint32_t>(socket.cookie);
  r.id.idiag_cookie[1] = static_cast<uint32_t>(socket.cookie >> 32);
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (sendto(sock->get(), &message, sizeof(message), 0, reinterpret_cast<sockaddr*>(&kernel),
             sizeof(kernel)) != static_cast<ssize_t>(sizeof(message))) {
    return absl::ErrnoToStatus(errno, "sock_diag: send SOCK_DESTROY");
  }
  char buffer[4096];
  for (;;) {
    ssize_t n = recv(sock->get(), buffer, sizeof(buffer), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::ErrnoToStatus(errno, "sock_diag: receive the SOCK_DESTROY answer");
    absl::string_view rest(buffer, static_cast<size_t>(n));
    while (rest.size() >= sizeof(nlmsghdr)) {
      nlmsghdr header;
      std::memcpy(&header, rest.data(), sizeof(header));
      if (header.nlmsg_len < sizeof(nlmsghdr) || header.nlmsg_len > rest.size()) {
        return absl::DataLossError("sock_diag: malformed SOCK_DESTROY answer");
      }
      if (header.nlmsg_seq == 1 && header.nlmsg_type == NLMSG_ERROR) {
        int error = 0;
        if (header.nlmsg_len < sizeof(nlmsghdr) + sizeof(int)) {
          return absl::DataLossError("sock_diag: short SOCK_DESTROY answer");
        }
        std::memcpy(&error, rest.data() + sizeof(nlmsghdr), sizeof(int));
        if (error == 0) return absl::OkStatus();
        if (error == -ENOENT || error == -ESTALE) {
          return absl::NotFoundError("the connection is already gone");
        }
        if (error == -EOPNOTSUPP) {
          return absl::UnimplementedError(
              "the kernel has no SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY)");
        }
        return absl::ErrnoToStatus(-error, "sock_diag: SOCK_DESTROY");
      }
      rest.remove_prefix(std::min<size_t>(NLMSG_ALIGN(header.nlmsg_len), rest.size()));
    }
  }
}

absl::StatusOr<uint64_t> NamespaceInode(int ns_fd) { return InodeOfFd(ns_fd, false); }

absl::StatusOr<UniqueFd> OpenNetnsOf(pid_t process, uint64_t netns_inode) {
  std::string path = absl::StrCat("/proc/", process, "/ns/net");
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT || errno == ESRCH) {
      return absl::NotFoundError(absl::StrCat("process ", process, " exited"));
    }
    return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
  }
  absl::StatusOr<uint64_t> inode = NamespaceInode(fd.get());
  if (!inode.ok()) return inode.status();
  if (*inode != netns_inode) {
    return absl::NotFoundError(absl::StrCat("process ", process, " is in network namespace ",
                                            *inode, ", not ", netns_inode));
  }
  return fd;
}

}  // namespace ktrust::zerohop
