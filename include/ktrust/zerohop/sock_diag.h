// Seeing and ending a workload's TCP connections without holding them.
//
// A zero-hop connection lives on the application's own socket; the agent
// keeps no fd of it (a dup would keep the connection open after the app's
// close(): the peer would never see FIN). It watches the connections through
// sock_diag (NETLINK_SOCK_DIAG) in the workload's network namespace, and
// takes an fd only for the moment it must act on one (TakeSocket), e.g. to
// reset it (ResetSocket) after a reload denied its peer or before the AEAD
// record limit.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "ktrust/common/socket_address.h"
#include "ktrust/common/unique_fd.h"

namespace ktrust::zerohop {

// One TCP socket as the kernel's inet_diag reports it.
struct TcpSocketInfo {
  // The socket cookie (idiag_cookie): the value getsockopt(SO_COOKIE) gives,
  // unique for the boot; never reused, unlike inodes and ports.
  uint64_t cookie = 0;
  // The socket inode ("socket:[inode]" in /proc/<pid>/fd). 0 when no process
  // holds the socket any more (orphaned: closed by the app, TCP still ending).
  uint64_t inode = 0;
  SocketAddress local;
  SocketAddress peer;
  int state = 0;  // TCP_ESTABLISHED ... as in <netinet/tcp.h>
  uint32_t uid = 0;
  // The upper-layer protocol attached with TCP_ULP ("tls" for kernel TLS),
  // empty for none. The kernel reports ULPs only to a caller with
  // CAP_NET_ADMIN over the namespace; ulp_visible says whether it did (a
  // false `ulp` without it proves nothing).
  std::string ulp;
  bool ulp_visible = false;
  // For the "tls" ULP: TLS_CONF_* (linux/tls.h) of each direction
  // (TLS_CONF_BASE: no key installed yet, TLS_CONF_SW/HW: kTLS active) and
  // the TLS version and cipher type from the kernel; 0 when not reported.
  uint16_t tls_tx_conf = 0;
  uint16_t tls_rx_conf = 0;
  uint16_t tls_version = 0;
  uint16_t tls_cipher = 0;
  // From struct tcp_info (INET_DIAG_INFO); has_tcp_info is false when the
  // kernel sent none or one too short to hold these fields.
  bool has_tcp_info = false;
  uint64_t bytes_acked = 0;     // sent and acknowledged by the peer
  uint64_t bytes_received = 0;  // received in order
  // Bytes written to TCP and not yet acknowledged (idiag_wqueue): with
  // bytes_acked, everything the socket's TX path has produced.
  uint32_t write_queue = 0;

  bool tls_ulp() const { return ulp == "tls"; }
  // In a state a dump lists (SYN_SENT to CLOSING: the application may still
  // use the connection); not TIME_WAIT, CLOSE or LISTEN.
  bool connected() const;
  // Upper bounds of what went through each direction's TLS layer.
  uint64_t bytes_sent_upper() const { return bytes_acked + write_queue; }
};

// Lists the TCP sockets (IPv4 and IPv6) of the network namespace `netns_fd`
// (an nsfs fd, e.g. /proc/<pid>/ns/net; -1: the caller's own namespace) in
// every connected state: SYN_SENT, ESTABLISHED, FIN_WAIT1/2, CLOSE_WAIT,
// LAST_ACK, CLOSING. Listeners, TIME_WAIT and request sockets are left out.
//
// The netlink socket is made inside the namespace by a short-lived thread
// (setns moves only that thread), so the caller's threads never change
// namespace. Needs CAP_SYS_ADMIN for setns into another namespace, and
// CAP_NET_ADMIN to see ULPs. Every length the kernel sends is checked; a
// malformed reply is an error, never a partial list.
absl::StatusOr<std::vector<TcpSocketInfo>> ListTcpSockets(int netns_fd);
// The two halves of ListTcpSockets, for a caller that lists a namespace
// often: the NETLINK_SOCK_DIAG socket made inside it (it stays bound to that
// namespace, and keeps it alive while open), and a dump through it. After a
// failed dump, open a new socket: replies of the old one may be pending.
absl::StatusOr<UniqueFd> OpenDiagSocket(int netns_fd);
absl::StatusOr<std::vector<TcpSocketInfo>> ListTcpSocketsVia(int diag_socket);

// One TCP socket of the namespace of `diag_socket` (OpenDiagSocket), found by
// its addresses and checked against `cookie`: a hash lookup in the kernel,
// where a dump walks every bucket of the whole connection table, sockets or
// not (milliseconds on a machine with much memory, each time). nullopt when
// no socket has these addresses, or the one that has is another socket (a
// different cookie). Unlike a dump it also finds a TIME_WAIT socket (inode 0).
absl::StatusOr<std::optional<TcpSocketInfo>> LookUpTcpSocketVia(int diag_socket,
                                                                const SocketAddress& local,
                                                                const SocketAddress& peer,
                                                                uint64_t cookie);
// Parses one receive buffer of a lookup's answer; `answered` says whether
// the answer (a socket, or an error) to `seq` was in it. Exposed for the
// unit tests: a hostile or corrupt buffer yields an error.
absl::StatusOr<std::optional<TcpSocketInfo>> ParseInetDiagLookUp(const void* data, size_t len,
                                                                 uint32_t seq, bool& answered);

// Parses one sock_diag dump reply buffer (one recv()'s worth of netlink
// messages) into `out`. Returns true once NLMSG_DONE was seen. Exposed for
// the unit tests and the fuzzer: a hostile or corrupt buffer yields an error.
absl::StatusOr<bool> ParseInetDiagDump(const void* data, size_t len, uint32_t seq,
                                       std::vector<TcpSocketInfo>& out);

// Duplicates into this process the fd by which `process` holds the socket
// with inode `inode` (the first one in /proc/<process>/fd), with
// pidfd_getfd. The pidfd is opened before the scan and the process is
// checked alive after it, so a recycled pid cannot hand over another
// process's socket; the taken fd's inode (and `cookie`, when given) are
// checked again afterwards, since the fd number may have been closed and
// reused meanwhile. NotFound when the process holds no such socket (any
// more). Needs PTRACE_MODE_ATTACH on the process (CAP_SYS_PTRACE).
//
// Close the result as soon as possible: while held, it keeps the connection
// open after the application's close().
absl::StatusOr<UniqueFd> TakeSocket(pid_t process, uint64_t inode,
                                    std::optional<uint64_t> cookie = std::nullopt);

// A process holding socket:[inode], found by reading every process's fds:
// the one a connection was registered with may have exited or closed it
// while a child it forked (or a process it passed the fd to) still holds
// the socket. NotFound when none does: the socket is closed. Slow (all of
// /proc): for when the registered holder no longer answers.
absl::StatusOr<pid_t> FindSocketHolder(uint64_t inode);
// The same for many sockets in one pass: inode -> a holder, for those held.
absl::StatusOr<absl::flat_hash_map<uint64_t, pid_t>> FindSocketHolders(
    const absl::flat_hash_set<uint64_t>& inodes);

// Ends the connection of `fd` (a socket shared with the application) with a
// TCP reset: the peer's next read fails with ECONNRESET, so neither end can
// mistake it for a clean end of stream (zero-hop peers end streams with a
// bare FIN). connect(AF_UNSPEC) is what resets a socket the caller does not
// own alone: shutdown() would send FIN, and SO_LINGER{1,0} only acts on the
// last close(), which is the application's. SO_LINGER{1,0} is set first so
// that, should the disconnect be refused, the application's own close()
// resets; shutdown(SHUT_RDWR) then still stops all traffic at once, and the
// result says the peer saw FIN (FailedPrecondition). Debian's 6.1 refuses
// the disconnect on every kTLS socket: prefer DestroySocket, which needs no
// fd; this is the fallback where SOCK_DESTROY is missing.
absl::Status ResetSocket(int fd);

// Aborts the connection `socket` (as listed by ListTcpSockets in the same
// namespace) with SOCK_DESTROY: the kernel sends the peer a reset and the
// application's next call fails with ECONNABORTED. No fd is taken, and it
// works on kTLS sockets, where the kernel refuses connect(AF_UNSPEC). The
// cookie is part of the request, so a recycled address pair is never hit
// (the kernel answers ESTALE: NotFound here, as for a socket already gone).
// Needs CAP_NET_ADMIN over the namespace and CONFIG_INET_DIAG_DESTROY
// (Unimplemented without it: fall back to TakeSocket + ResetSocket).
absl::Status DestroySocket(int netns_fd, const TcpSocketInfo& socket);

// The inode of a namespace fd (its identity: /proc/<pid>/ns/net -> net:[N]).
absl::StatusOr<uint64_t> NamespaceInode(int ns_fd);

// Opens /proc/<process>/ns/net and checks it is the namespace `netns_inode`
// (the process may have moved, or its pid been recycled).
absl::StatusOr<UniqueFd> OpenNetnsOf(pid_t process, uint64_t netns_inode);

}  // namespace ktrust::zerohop
