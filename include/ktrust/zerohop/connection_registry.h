// The live zero-hop connections, known without holding them.
//
// The agent hands a zero-hop socket to the application and keeps no fd of
// it. What it keeps is this registry: who the connection is between (which
// the socket cannot tell a restarted agent) and where to find it again (netns
// inode, socket cookie and inode, a process holding it). Refresh() asks the
// kernel (sock_diag) which of them still exist; an optional journal file lets
// an agent that was killed and restarted list the ones that outlived it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ktrust/common/unique_fd.h"
#include "ktrust/zerohop/sock_diag.h"

namespace ktrust::zerohop {

struct ZeroHopConnection {
  uint64_t cookie = 0;    // SO_COOKIE of the application's socket: the key
  uint64_t inode = 0;     // its socket inode
  uint64_t netns = 0;     // inode of its network namespace
  pid_t owner = 0;        // a process holding it (the workload process served)
  std::string direction;  // "outbound" or "inbound"
  std::string workload;
  std::string local_id, peer_id;  // SPIFFE IDs
  std::string local, peer;        // addresses, "10.0.0.1:80"
  std::string cipher;             // TLS 1.3 suite name, e.g. TLS_AES_128_GCM_SHA256
  uint16_t port = 0;              // inbound: the local workload's port
  absl::Time started;
  // The peer's chain as the handshake verified it (PEM, leaf first) and
  // when: checked again when the trust bundle or a revocation list changes.
  // Empty for an entry journaled without it, which then cannot be checked.
  std::string peer_chain_pem;
  absl::Time verified_at;
  // From the latest Refresh (not journaled). Upper bounds of the bytes each
  // direction's TLS layer has handled, handshake included.
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  bool kernel_tls = false;  // the "tls" ULP was seen on it
};

// A connection that left the registry, and why, in words.
struct EndedConnection {
  ZeroHopConnection connection;
  std::string reason;
};

// What a network namespace is asked for: its inode and the processes that
// held connections there, any of which leads into it.
struct NetnsRef {
  uint64_t inode = 0;
  std::vector<pid_t> processes;
  // The registry's connections there. A lister may look these up one by
  // one instead of listing the namespace, but it must still list every
  // socket there is whenever one of them is not found as it was recorded.
  struct Wanted {
    uint64_t cookie = 0;
    std::string local, peer;
  };
  std::vector<Wanted> sockets;
};

// Lists the TCP sockets of a namespace. NotFound means the namespace can no
// longer be reached (no listed process is alive in it): its connections are
// taken as ended. Any other error leaves its entries as they are.
using SocketLister = std::function<absl::StatusOr<std::vector<TcpSocketInfo>>(const NetnsRef&)>;

// The real lister: enters the namespace through /proc/<pid>/ns/net of the
// first listed process still in it (OpenNetnsOf), then ListTcpSockets.
absl::StatusOr<std::vector<TcpSocketInfo>> ListSocketsOfNetns(const NetnsRef& netns);

// ListSocketsOfNetns with one sock_diag socket kept per namespace: making
// one takes a thread that enters the namespace, which a refresh every
// second should not pay each time. The namespace is still found through a
// listed process first (it must be alive there). A kept socket keeps its
// namespace alive: Retain closes those of namespaces no longer asked for.
//
// Up to kLookUpAtMost wanted sockets are looked up one by one
// (LookUpTcpSocketVia: a hash lookup each), and only they are returned
// while every one is found as recorded; otherwise, and beyond that many,
// the namespace is dumped (a walk of the kernel's whole connection table).
// So the dump, which says authoritatively what ended, runs only when
// something may have.
class NetnsSocketLister {
 public:
  static constexpr size_t kLookUpAtMost = 64;

  absl::StatusOr<std::vector<TcpSocketInfo>> operator()(const NetnsRef& netns);
  // Closes the sockets of every namespace not in `keep`.
  void Retain(const absl::flat_hash_set<uint64_t>& keep);
  size_t open_sockets() const;

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, UniqueFd> sockets_ ABSL_GUARDED_BY(mu_);  // netns inode ->
};

// A TLS 1.3 record is at least 22 bytes on the wire (5 header + 1 content
// type + 16 tag), so bytes / 22 bounds the records sent or received.
inline constexpr uint64_t kMinTls13RecordBytes = 22;

// A live connection whose socket another process holds now.
struct NewHolder {
  ZeroHopConnection connection;  // as it was, with the old owner
  pid_t holder = 0;
};

// How Refresh finds who holds a socket now: `alive` checks an owner (once
// a second per connection: cheap), `find` searches for the holders of the
// sockets of owners that are gone (FindSocketHolders: all of /proc, once).
struct HolderSearch {
  std::function<bool(pid_t)> alive;
  std::function<absl::StatusOr<absl::flat_hash_map<uint64_t, pid_t>>(
      const absl::flat_hash_set<uint64_t>& inodes)>
      find;
};

// kill(pid, 0) and FindSocketHolders.
HolderSearch ProcessHolderSearch();

struct RefreshResult {
  std::vector<EndedConnection> ended;
  // Connections that moved to another holder (Refresh updated `owner`).
  std::vector<NewHolder> new_holders;
  // Namespaces that could not be listed (their entries kept), one each.
  std::vector<absl::Status> errors;
};

// What loading the journal found.
struct JournalLoad {
  size_t lines = 0;
  size_t loaded = 0;            // connections restored
  size_t malformed = 0;         // lines ignored (bad JSON, missing or bad fields)
  bool truncated_tail = false;  // the last line had no newline (a write cut short)
  bool other_boot = false;      // written before the last reboot: discarded
  bool header_missing = false;  // no header naming this boot was read
};

// One connection as the journal writes it (a JSON object, one line), and
// back: for passing connections to another agent. Decoding refuses what
// loading a journal would skip (a missing field, a wrong type, a zero
// cookie, an unknown direction, an over-long string).
std::string EncodeZeroHopConnection(const ZeroHopConnection& connection);
absl::StatusOr<ZeroHopConnection> DecodeZeroHopConnection(absl::string_view text);

class ZeroHopConnections {
 public:
  // In memory only.
  ZeroHopConnections();
  // With a journal at `path` (created 0600 if missing): loads it, rewrites
  // it compacted (only the connections it still holds), and appends one
  // line per Add and removal from then on. Bad lines are counted in
  // journal_load() and skipped, never an error; an error only when the file
  // cannot be opened or rewritten.
  static absl::StatusOr<std::unique_ptr<ZeroHopConnections>> Open(const std::string& path);

  ZeroHopConnections(const ZeroHopConnections&) = delete;
  ZeroHopConnections& operator=(const ZeroHopConnections&) = delete;

  // Registers (or replaces, by cookie) a connection. The registry holds it
  // in memory whatever happens; an error means the journal line was not
  // written (a restarted agent would not know it).
  absl::Status Add(ZeroHopConnection connection);
  // Removes one by cookie (the agent ended it), returning it if it was there.
  std::optional<ZeroHopConnection> Remove(uint64_t cookie);
  // Forgets these (another agent took them over: docs/operations.md,
  // handover) without a journal line: the journal at the path is the other
  // agent's now, and a later reader should rather know one too many (its
  // first Refresh drops what ended) than one too few. How many were here.
  size_t Release(const std::vector<uint64_t>& cookies);
  // Makes the file at the journal's path this registry's journal again
  // after another agent replaced it (a handover that failed or stopped
  // half-way): learns the connections that file holds and this registry
  // does not, and appends every connection of this registry to it, so that
  // whichever agent reads it next knows them all. Appended, never renamed
  // over: the other agent may still be writing to it. How many it learned.
  // In memory only: 0, nothing to do.
  absl::StatusOr<size_t> Rejoin();

  // Lists every namespace holding entries and drops those whose socket is
  // gone (cookie absent), closed by the application (inode 0 or another
  // inode), or whose namespace is gone; updates the byte counters of the
  // rest. Entries added while it runs are kept. With `holders_of`, an entry
  // whose owner is gone but whose socket another process holds gets that
  // process as its owner (journaled), and is kept even when no registered
  // process is left in its namespace.
  RefreshResult Refresh(const SocketLister& lister, const HolderSearch& holders_of = {});

  // Every connection, oldest first.
  std::vector<ZeroHopConnection> Snapshot() const;
  // The namespaces that hold connections (no copy of the connections).
  absl::flat_hash_set<uint64_t> Namespaces() const;
  size_t size() const;

  // Connections whose estimated records in either direction
  // (bytes / kMinTls13RecordBytes, an upper bound) reached their
  // RecordBudget: read their real record sequences (RecordSequence on a
  // TakeSocket fd) before deciding. `limit_override`, when not 0, lowers
  // every cipher's limit (tests).
  std::vector<ZeroHopConnection> RecordLimitDue(uint64_t limit_override = 0) const;

  const JournalLoad& journal_load() const { return journal_load_; }

 private:
  absl::Status Append(const std::string& line) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Compact(const std::string& path) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, ZeroHopConnection> connections_ ABSL_GUARDED_BY(mu_);
  UniqueFd journal_ ABSL_GUARDED_BY(mu_);
  std::string journal_path_ ABSL_GUARDED_BY(mu_);
  size_t journal_lines_ ABSL_GUARDED_BY(mu_) = 0;  // add/remove lines in the file
  JournalLoad journal_load_;
};

// How many records a zero-hop connection of `cipher` may carry in one
// direction before the agent ends it: three quarters of the cipher's AEAD
// limit (RecordLimit; `limit_override`, when lower and not 0, instead). The
// agent looks once a second, and no socket writes the remaining quarter
// (4M records under AES-GCM) in a second.
uint64_t RecordBudget(absl::string_view cipher, uint64_t limit_override = 0);

// Estimated records: the ceiling of bytes / kMinTls13RecordBytes is not
// needed, a partial record is not a record yet.
inline uint64_t EstimatedRecords(uint64_t bytes) { return bytes / kMinTls13RecordBytes; }

}  // namespace ktrust::zerohop
