// What travels to and from the zero-hop fd holder (`ktrustd holder`,
// docs/dataplane.md "Zero-hop: the holder"), parsed and checked without
// touching the kernel, so every message format is unit-tested on its own.
//
// Three sockets in the holder's directory (default /run/ktrust):
//   zerohop.sock      SOCK_SEQPACKET, 0666: `ktrust exec` registers, one
//                     message {"v":1,"pid":N,"workload_hint":"NAME",
//                     "flags":["wait_killable_recv"]} + the listener fd;
//                     reply {"ok":true,"id":N} or {"ok":false,"error":"..."}.
//   oci-seccomp.sock  SOCK_STREAM, 0600: an OCI runtime's seccomp
//                     listenerPath (runc sends its ContainerProcessState JSON
//                     + the fds named in "fds", then closes).
//   holder.sock       SOCK_SEQPACKET, 0600: the agent. It receives every
//                     entry (JSON + SCM_RIGHTS {listener, pidfd}), then new
//                     ones live, and {"removed":ID} when a workload is gone.
//                     The agent sends {"held":{...}} for each notification
//                     it makes wait (a handshake, a held accept) and
//                     {"released":{...}} once it answered it; when the
//                     agent's connection ends the holder answers what is
//                     still held (docs/dataplane.md,
//                     "What waits for a dead agent").
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "ktrust/common/unique_fd.h"

namespace ktrust::zerohop {

inline constexpr char kDefaultHolderDir[] = "/run/ktrust";
inline constexpr char kRegistrationSocketName[] = "zerohop.sock";
inline constexpr char kOciSocketName[] = "oci-seccomp.sock";
inline constexpr char kAgentSocketName[] = "holder.sock";

// A registration is a few hundred bytes; anything longer is refused.
inline constexpr size_t kMaxRegistrationBytes = 4096;
// runc's state JSON carries the container's annotations: kilobytes.
inline constexpr size_t kMaxOciStateBytes = 64 * 1024;
// One holder-to-agent message.
inline constexpr size_t kMaxHolderMessageBytes = 16 * 1024;
// Control-message room: more fds than this in one message is MSG_CTRUNC,
// and refused.
inline constexpr int kMaxFdsPerMessage = 8;
// Names are bounded so log lines and the agent's tables stay bounded.
inline constexpr size_t kMaxHintBytes = 253;
inline constexpr size_t kMaxContainerIdBytes = 1024;
inline constexpr size_t kMaxCgroupBytes = 4096;

enum class ListenerSource { kExec, kOci };
// "exec" or "oci".
absl::string_view SourceName(ListenerSource source);

// What `ktrust exec` sends.
struct ExecRegistration {
  pid_t pid = 0;
  std::string workload_hint;  // may be empty
  // The filter was installed with SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV. A
  // claim of the registering process: it can only lower its own protection.
  bool wait_killable_recv = false;
};
std::string EncodeExecRegistration(const ExecRegistration& r);
absl::StatusOr<ExecRegistration> ParseExecRegistration(absl::string_view json);

// What an OCI runtime sends (runtime-spec ContainerProcessState).
struct OciRegistration {
  pid_t pid = 0;
  std::string container_id;
  std::string workload_hint;  // from "metadata" (linux.seccomp.listenerMetadata)
  // Index of "seccompFd" in "fds", which is its index in SCM_RIGHTS.
  size_t seccomp_fd_index = 0;
};
// `fds_received`: how many fds came with the message; "fds" must name
// exactly that many.
absl::StatusOr<OciRegistration> ParseOciState(absl::string_view json, size_t fds_received);

// A workload hint: 1..253 bytes of [A-Za-z0-9._:/-]. Only ever a hint: the
// agent derives identity from the cgroup, never from this.
absl::Status CheckWorkloadHint(absl::string_view hint);

// The cgroup v2 path ("0::/path") of a /proc/<pid>/cgroup text.
// FailedPrecondition when the process is in no v2 hierarchy.
absl::StatusOr<std::string> ParseCgroupV2(absl::string_view proc_cgroup);

// One listener the holder keeps, as the agent receives it.
struct ListenerRegistration {
  uint64_t id = 0;
  // The seccomp notification listener: answer its notifications.
  UniqueFd listener;
  // The registered process (the exec'd command, the container's init), taken
  // at registration. Not the identity of every notifying thread: children
  // and threads notify through the same listener; each notification carries
  // its own thread id, whose cgroup is what counts.
  UniqueFd pidfd;
  pid_t pid = 0;
  std::string cgroup;  // cgroup v2 path of `pid` at registration
  ListenerSource source = ListenerSource::kExec;
  std::string workload_hint;
  bool wait_killable_recv = false;
  std::string container_id;  // OCI only
};
struct ListenerRemoval {
  uint64_t id = 0;
};
using HolderMessage = std::variant<ListenerRegistration, ListenerRemoval>;

// The JSON part of an entry message (its fds travel as SCM_RIGHTS, listener
// first, then pidfd).
std::string EncodeEntry(const ListenerRegistration& entry);
std::string EncodeRemoval(uint64_t id);
// Takes the fds that came with the message; closes them on error.
absl::StatusOr<HolderMessage> DecodeHolderMessage(absl::string_view json,
                                                  std::vector<UniqueFd> fds);

// Agent to holder: a notification whose syscall waits for the agent (an
// outbound handshake, a held accept), and the errno the holder answers it
// with if the agent's connection ends first (the agent crashed or was
// killed): without that the workload's thread would wait forever, since a
// received notification is never delivered again. `entry` is the holder's
// listener id.
struct HeldNotification {
  uint64_t entry = 0;
  uint64_t id = 0;
  int fallback_errno = 0;  // ECONNREFUSED (a connect) or ECONNABORTED (an accept)
};
// The agent answered it: the holder forgets it.
struct ReleasedNotification {
  uint64_t entry = 0;
  uint64_t id = 0;
};
using AgentMessage = std::variant<HeldNotification, ReleasedNotification>;
inline constexpr size_t kMaxAgentMessageBytes = 256;
std::string EncodeAgentMessage(const AgentMessage& m);
// Refuses anything else, including a fallback errno other than the two
// above: the holder answers only with a failure a caller retries.
absl::StatusOr<AgentMessage> DecodeAgentMessage(absl::string_view json);

// connect(2) to the unix socket at `path` (SOCK_SEQPACKET, SOCK_STREAM),
// close-on-exec. The errno error says which path.
absl::StatusOr<UniqueFd> ConnectUnixSocket(const std::string& path, int type);
// SO_PEERCRED's uid is root or this process's: the peer may be trusted with
// (or as the source of) workload listeners.
absl::Status CheckPeerIsRootOrSelf(int sock, absl::string_view path);

// A unix-socket message with its SCM_RIGHTS fds.
struct ReceivedMessage {
  std::string data;
  std::vector<UniqueFd> fds;  // MSG_CMSG_CLOEXEC, owned: closed if unused
  bool eof = false;           // zero bytes and no fds: the peer closed
};
// sendmsg with the fds as SCM_RIGHTS (none: a plain send). MSG_NOSIGNAL.
absl::Status SendWithFds(int sock, absl::string_view data, absl::Span<const int> fds,
                         int flags = 0);
// One recvmsg of at most `max_bytes` and kMaxFdsPerMessage fds, close-on-exec.
// InvalidArgument (the fds received are closed) when the data or the control
// message was truncated; errno errors (EAGAIN: Unavailable) as they are.
absl::StatusOr<ReceivedMessage> ReceiveWithFds(int sock, size_t max_bytes, int flags = 0);

}  // namespace ktrust::zerohop
