#include "ktrust/zerohop/connection_registry.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "ktrust/common/files.h"
#include "ktrust/tls/traffic_keys.h"

namespace ktrust::zerohop {
namespace {

// The journal's first line names its format and the boot it belongs to:
// cookies and inodes mean nothing after a reboot.
constexpr absl::string_view kFormatKey = "ktrust_zero_hop_journal";
constexpr int kFormatVersion = 1;
// A line longer than this was not written by the agent.
constexpr size_t kMaxLine = 16 << 10;
// A bigger file was not written by the agent either (compaction keeps it
// near the live set): it is discarded whole.
constexpr size_t kMaxJournal = 64 << 20;
// Strings a journal line may carry (IDs, names, addresses).
constexpr size_t kMaxField = 2048;
// The peer's certificate chain (PEM) a line may carry.
constexpr size_t kMaxChain = 12 << 10;

std::string BootId() {
  absl::StatusOr<std::string> id = ReadFile("/proc/sys/kernel/random/boot_id", 128);
  if (!id.ok()) return "";
  return std::string(absl::StripAsciiWhitespace(*id));
}

std::string AddLine(const ZeroHopConnection& c) {
  nlohmann::ordered_json j = {{"op", "add"},
                              {"cookie", c.cookie},
                              {"inode", c.inode},
                              {"netns", c.netns},
                              {"owner", c.owner},
                              {"direction", c.direction},
                              {"workload", c.workload},
                              {"local_id", c.local_id},
                              {"peer_id", c.peer_id},
                              {"local", c.local},
                              {"peer", c.peer},
                              {"cipher", c.cipher},
                              {"port", c.port},
                              {"started_us", absl::ToUnixMicros(c.started)},
                              {"peer_chain", c.peer_chain_pem},
                              {"verified_us", absl::ToUnixMicros(c.verified_at)}};
  // Invalid UTF-8 in a name must not make the line unwritable.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

std::string RemoveLine(uint64_t cookie) {
  nlohmann::ordered_json j = {{"op", "remove"}, {"cookie", cookie}};
  return j.dump() + "\n";
}

std::string HeaderLine(const std::string& boot_id) {
  nlohmann::ordered_json j = {{std::string(kFormatKey), kFormatVersion}, {"boot_id", boot_id}};
  return j.dump() + "\n";
}

template <typename T>
bool GetUnsigned(const nlohmann::json& j, const char* key, T& out) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_unsigned()) return false;
  uint64_t v = it->get<uint64_t>();
  if (v > std::numeric_limits<T>::max()) return false;
  out = static_cast<T>(v);
  return true;
}

bool GetString(const nlohmann::json& j, const char* key, std::string& out) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return false;
  out = it->get<std::string>();
  return out.size() <= kMaxField;
}

// One "add" line, every field present and sane, or nothing.
std::optional<ZeroHopConnection> ParseAdd(const nlohmann::json& j) {
  ZeroHopConnection c;
  uint32_t owner = 0;
  int64_t started_us = 0;
  auto started = j.find("started_us");
  if (!GetUnsigned(j, "cookie", c.cookie) || c.cookie == 0 || !GetUnsigned(j, "inode", c.inode) ||
      c.inode == 0 || !GetUnsigned(j, "netns", c.netns) || c.netns == 0 ||
      !GetUnsigned(j, "owner", owner) || owner == 0 ||
      owner > static_cast<uint32_t>(std::numeric_limits<pid_t>::max()) ||
      !GetString(j, "direction", c.direction) ||
      (c.direction != "outbound" && c.direction != "inbound") ||
      !GetString(j, "workload", c.workload) || !GetString(j, "local_id", c.local_id) ||
      !GetString(j, "peer_id", c.peer_id) || !GetString(j, "local", c.local) ||
      !GetString(j, "peer", c.peer) || !GetString(j, "cipher", c.cipher) ||
      !GetUnsigned(j, "port", c.port) || started == j.end() || !started->is_number_integer()) {
    return std::nullopt;
  }
  started_us = started->get<int64_t>();
  c.owner = static_cast<pid_t>(owner);
  c.started = absl::FromUnixMicros(started_us);
  // Optional (a line without them cannot be checked again after a reload);
  // present but malformed is a bad line.
  if (auto chain = j.find("peer_chain"); chain != j.end()) {
    auto verified = j.find("verified_us");
    if (!chain->is_string() || verified == j.end() || !verified->is_number_integer()) {
      return std::nullopt;
    }
    c.peer_chain_pem = chain->get<std::string>();
    if (c.peer_chain_pem.size() > kMaxChain) return std::nullopt;
    c.verified_at = absl::FromUnixMicros(verified->get<int64_t>());
  }
  return c;
}

}  // namespace

ZeroHopConnections::ZeroHopConnections() = default;

namespace {

// `text` at the end of `fd` (O_APPEND) in one write, or an error.
absl::Status AppendWhole(int fd, absl::string_view text, const std::string& path) {
  ssize_t n;
  do {
    n = write(fd, text.data(), text.size());
  } while (n < 0 && errno == EINTR);
  if (n < 0) return absl::ErrnoToStatus(errno, absl::StrCat("append to ", path));
  if (static_cast<size_t>(n) != text.size()) {
    return absl::DataLossError(absl::StrCat("short append to ", path));
  }
  return absl::OkStatus();
}

// The journal at `path`, as a map by cookie: what Open and Rejoin start
// from. NotFound when there is no file; `load` counts what was skipped.
absl::StatusOr<absl::flat_hash_map<uint64_t, ZeroHopConnection>> ReadJournal(
    const std::string& path, JournalLoad& load) {
  const std::string boot_id = BootId();
  UniqueFd in(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!in.valid()) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("no journal at ", path));
    return absl::ErrnoToStatus(errno, absl::StrCat("open the zero-hop journal ", path));
  }
  std::string content;
  char buffer[64 << 10];
  for (;;) {
    ssize_t n = read(in.get(), buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::ErrnoToStatus(errno, absl::StrCat("read ", path));
    if (n == 0) break;
    content.append(buffer, static_cast<size_t>(n));
    if (content.size() > kMaxJournal) break;
  }
  absl::flat_hash_map<uint64_t, ZeroHopConnection> connections;
  if (content.size() > kMaxJournal) {
    load.malformed = 1;  // the whole file, unread
    content.clear();
  }
  if (!content.empty() && content.back() != '\n') {
    // A write cut short (the agent died mid-line): that line never counted.
    load.truncated_tail = true;
    content.erase(content.rfind('\n') == std::string::npos ? 0 : content.rfind('\n') + 1);
  }
  bool header_seen = false;
  for (absl::string_view line : absl::StrSplit(content, '\n', absl::SkipEmpty())) {
    ++load.lines;
    nlohmann::json j;
    if (line.size() <= kMaxLine) j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_object()) {
      ++load.malformed;
      continue;
    }
    if (!header_seen) {
      // Without a header naming this boot nothing in the file can be trusted
      // to name today's sockets.
      auto format = j.find(kFormatKey);
      auto boot = j.find("boot_id");
      if (format == j.end() || *format != kFormatVersion || boot == j.end() || !boot->is_string() ||
          boot_id.empty() || boot->get<std::string>() != boot_id) {
        load.other_boot = format != j.end();
        if (!load.other_boot) ++load.malformed;
        connections.clear();
        break;
      }
      header_seen = true;
      continue;
    }
    auto op = j.find("op");
    if (op != j.end() && *op == "add") {
      std::optional<ZeroHopConnection> c = ParseAdd(j);
      if (!c) {
        ++load.malformed;
        continue;
      }
      uint64_t cookie = c->cookie;
      connections[cookie] = std::move(*c);
    } else if (op != j.end() && *op == "remove") {
      uint64_t cookie = 0;
      if (!GetUnsigned(j, "cookie", cookie)) {
        ++load.malformed;
        continue;
      }
      connections.erase(cookie);
    } else {
      ++load.malformed;
    }
  }
  if (!header_seen) load.header_missing = true;
  return connections;
}

}  // namespace

std::string EncodeZeroHopConnection(const ZeroHopConnection& connection) {
  std::string line = AddLine(connection);
  line.pop_back();  // the newline
  return line;
}

absl::StatusOr<ZeroHopConnection> DecodeZeroHopConnection(absl::string_view text) {
  nlohmann::json j;
  if (text.size() <= kMaxLine) j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object()) return absl::InvalidArgumentError("a zero-hop connection is a JSON object");
  auto op = j.find("op");
  std::optional<ZeroHopConnection> c;
  if (op != j.end() && *op == "add") c = ParseAdd(j);
  if (!c) {
    return absl::InvalidArgumentError(
        "a zero-hop connection needs every field, each of its type and in range");
  }
  return *std::move(c);
}

absl::StatusOr<std::unique_ptr<ZeroHopConnections>> ZeroHopConnections::Open(
    const std::string& path) {
  auto registry = std::make_unique<ZeroHopConnections>();
  auto read = ReadJournal(path, registry->journal_load_);
  if (!read.ok() && !absl::IsNotFound(read.status())) return read.status();
  absl::MutexLock lock(&registry->mu_);
  if (read.ok()) registry->connections_ = *std::move(read);
  registry->journal_load_.loaded = registry->connections_.size();
  if (absl::Status st = registry->Compact(path); !st.ok()) return st;
  return registry;
}

absl::StatusOr<size_t> ZeroHopConnections::Rejoin() {
  absl::MutexLock lock(&mu_);
  if (journal_path_.empty()) return 0;  // in memory only
  JournalLoad load;
  auto read = ReadJournal(journal_path_, load);
  if (!read.ok() && !absl::IsNotFound(read.status())) return read.status();
  size_t learned = 0;
  if (read.ok()) {
    // What the other agent knew and this one did not; this one's own entry
    // for a cookie is as new as the other's or newer.
    for (auto& [cookie, c] : *read) {
      if (connections_.emplace(cookie, std::move(c)).second) ++learned;
    }
  }
  if (!read.ok() || load.header_missing || load.other_boot) {
    // Nothing to append to: a file of our own.
    if (absl::Status st = Compact(journal_path_); !st.ok()) return st;
    return learned;
  }
  // Appended, not renamed over: another agent may still be writing this
  // file, and must not be left writing to an unlinked one.
  UniqueFd fd(open(journal_path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) {
    return absl::ErrnoToStatus(errno, absl::StrCat("open ", journal_path_, " to append"));
  }
  journal_ = std::move(fd);
  journal_lines_ = load.lines + connections_.size();
  std::string content;
  for (const auto& [cookie, c] : connections_) content += AddLine(c);
  // One write: lines land whole even beside the other agent's appends.
  if (absl::Status st = AppendWhole(journal_.get(), content, journal_path_); !st.ok()) return st;
  return learned;
}

size_t ZeroHopConnections::Release(const std::vector<uint64_t>& cookies) {
  absl::MutexLock lock(&mu_);
  size_t released = 0;
  for (uint64_t cookie : cookies) released += connections_.erase(cookie);
  return released;
}

absl::Status ZeroHopConnections::Compact(const std::string& path) {
  std::string content = HeaderLine(BootId());
  for (const auto& [cookie, c] : connections_) content += AddLine(c);
  if (absl::Status st = WriteFileAtomically(path, content, 0600); !st.ok()) return st;
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path, " to append"));
  journal_ = std::move(fd);
  journal_path_ = path;
  journal_lines_ = connections_.size();
  return absl::OkStatus();
}

absl::Status ZeroHopConnections::Append(const std::string& line) {
  if (!journal_.valid()) return absl::OkStatus();
  // Removals make the file grow while the live set does not: rewrite it
  // once it is mostly history (it lives in tmpfs, i.e. memory).
  if (++journal_lines_ > 4 * connections_.size() + 4096) return Compact(journal_path_);
  // One write per line: O_APPEND makes it land whole at the end, so a crash
  // leaves at most one torn last line, which loading ignores.
  return AppendWhole(journal_.get(), line, journal_path_);
}

absl::Status ZeroHopConnections::Add(ZeroHopConnection connection) {
  absl::MutexLock lock(&mu_);
  std::string line = AddLine(connection);
  uint64_t cookie = connection.cookie;
  connections_[cookie] = std::move(connection);
  return Append(line);
}

std::optional<ZeroHopConnection> ZeroHopConnections::Remove(uint64_t cookie) {
  absl::MutexLock lock(&mu_);
  auto it = connections_.find(cookie);
  if (it == connections_.end()) return std::nullopt;
  ZeroHopConnection removed = std::move(it->second);
  connections_.erase(it);
  // A failed removal line only leaves a stale entry for a restarted agent,
  // which its first Refresh drops.
  (void)Append(RemoveLine(cookie));
  return removed;
}

RefreshResult ZeroHopConnections::Refresh(const SocketLister& lister,
                                          const HolderSearch& holders_of) {
  // What to ask, taken under the lock; the listing runs without it.
  absl::flat_hash_map<uint64_t, NetnsRef> namespaces;
  absl::flat_hash_set<uint64_t> asked;
  absl::flat_hash_set<uint64_t> orphaned;  // socket inodes whose owner is gone
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [cookie, c] : connections_) {
      NetnsRef& ref = namespaces[c.netns];
      ref.inode = c.netns;
      if (std::find(ref.processes.begin(), ref.processes.end(), c.owner) == ref.processes.end()) {
        ref.processes.push_back(c.owner);
      }
      ref.sockets.push_back({cookie, c.local, c.peer});
      asked.insert(cookie);
      if (holders_of.alive && !holders_of.alive(c.owner)) orphaned.insert(c.inode);
    }
  }
  // Who holds the sockets whose owner is gone: it may have exited while a
  // child it forked still holds the socket. Such a connection is live, and
  // stays enforced under its new holder. One search for all of them.
  absl::StatusOr<absl::flat_hash_map<uint64_t, pid_t>> holders =
      absl::flat_hash_map<uint64_t, pid_t>();
  if (!orphaned.empty()) holders = holders_of.find(orphaned);
  RefreshResult result;
  struct Listing {
    absl::Status status;
    absl::flat_hash_map<uint64_t, TcpSocketInfo> by_cookie;
  };
  absl::flat_hash_map<uint64_t, Listing> listings;
  for (auto& [netns, ref] : namespaces) {
    std::sort(ref.processes.begin(), ref.processes.end());
    absl::StatusOr<std::vector<TcpSocketInfo>> sockets = lister(ref);
    Listing& listing = listings[netns];
    if (!sockets.ok()) {
      listing.status = sockets.status();
      continue;
    }
    for (TcpSocketInfo& s : *sockets) listing.by_cookie[s.cookie] = std::move(s);
  }
  absl::MutexLock lock(&mu_);
  for (const auto& [netns, listing] : listings) {
    if (!listing.status.ok() && !absl::IsNotFound(listing.status)) {
      result.errors.push_back(
          absl::Status(listing.status.code(),
                       absl::StrCat("network namespace ", netns, ": ", listing.status.message())));
    }
  }
  std::vector<uint64_t> ended;
  for (auto& [cookie, c] : connections_) {
    if (!asked.contains(cookie)) continue;  // added during the listing
    const Listing& listing = listings.at(c.netns);
    std::string reason;
    if (orphaned.contains(c.inode)) {
      if (!holders.ok()) continue;  // the search failed: unknown, keep it
      if (auto holder = holders->find(c.inode); holder != holders->end()) {
        result.new_holders.push_back({c, holder->second});
        c.owner = holder->second;
        (void)Append(AddLine(c));            // a restarted agent looks for it there
        if (!listing.status.ok()) continue;  // listed through the new holder next time
      }
    }
    if (!listing.status.ok()) {
      if (!absl::IsNotFound(listing.status)) continue;  // unknown: keep it
      // No process it was registered with is alive in its namespace.
      reason = absl::StrCat("its processes are gone (", listing.status.message(), ")");
    } else {
      auto it = listing.by_cookie.find(cookie);
      if (it == listing.by_cookie.end()) {
        reason = "closed";
      } else if (it->second.inode != c.inode) {
        reason = "closed by the application";  // orphaned, TCP still ending
      } else {
        c.bytes_sent = it->second.bytes_sent_upper();
        c.bytes_received = it->second.bytes_received;
        c.kernel_tls = it->second.tls_ulp();
        continue;
      }
    }
    result.ended.push_back({c, std::move(reason)});
    ended.push_back(cookie);
  }
  for (uint64_t cookie : ended) {
    connections_.erase(cookie);
    (void)Append(RemoveLine(cookie));
  }
  std::sort(result.ended.begin(), result.ended.end(),
            [](const EndedConnection& a, const EndedConnection& b) {
              return a.connection.started < b.connection.started;
            });
  return result;
}

absl::flat_hash_set<uint64_t> ZeroHopConnections::Namespaces() const {
  absl::flat_hash_set<uint64_t> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [cookie, c] : connections_) out.insert(c.netns);
  return out;
}

std::vector<ZeroHopConnection> ZeroHopConnections::Snapshot() const {
  std::vector<ZeroHopConnection> out;
  {
    absl::MutexLock lock(&mu_);
    out.reserve(connections_.size());
    for (const auto& [cookie, c] : connections_) out.push_back(c);
  }
  std::sort(out.begin(), out.end(), [](const ZeroHopConnection& a, const ZeroHopConnection& b) {
    return a.started != b.started ? a.started < b.started : a.cookie < b.cookie;
  });
  return out;
}

size_t ZeroHopConnections::size() const {
  absl::MutexLock lock(&mu_);
  return connections_.size();
}

uint64_t RecordBudget(absl::string_view cipher, uint64_t limit_override) {
  uint64_t limit = RecordLimit(cipher);
  if (limit_override != 0) limit = std::min(limit, limit_override);
  return limit - limit / 4;
}

std::vector<ZeroHopConnection> ZeroHopConnections::RecordLimitDue(uint64_t limit_override) const {
  std::vector<ZeroHopConnection> out;
  for (ZeroHopConnection& c : Snapshot()) {
    uint64_t estimated =
        std::max(EstimatedRecords(c.bytes_sent), EstimatedRecords(c.bytes_received));
    if (estimated >= RecordBudget(c.cipher, limit_override)) out.push_back(std::move(c));
  }
  return out;
}

HolderSearch ProcessHolderSearch() {
  return {[](pid_t pid) { return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM); },
          FindSocketHolders};
}

namespace {

// The namespace, entered through the first listed process still in it.
absl::StatusOr<UniqueFd> OpenNetnsThrough(const NetnsRef& netns) {
  absl::Status last = absl::NotFoundError("no process to enter it through");
  for (pid_t process : netns.processes) {
    absl::StatusOr<UniqueFd> fd = OpenNetnsOf(process, netns.inode);
    // NotFound (exited, or moved elsewhere): try the next one. Anything
    // else (permission) is not evidence the namespace is gone.
    if (fd.ok() || !absl::IsNotFound(fd.status())) return fd;
    last = fd.status();
  }
  return last;
}

// Each wanted socket looked up; nullopt unless every one was found, live
// and held (inode not 0) as recorded. The caller then lists the namespace.
std::optional<std::vector<TcpSocketInfo>> LookUpAll(int diag,
                                                    const std::vector<NetnsRef::Wanted>& wanted) {
  std::vector<TcpSocketInfo> found;
  for (const NetnsRef::Wanted& w : wanted) {
    absl::StatusOr<SocketAddress> local = SocketAddress::Parse(w.local);
    absl::StatusOr<SocketAddress> peer = SocketAddress::Parse(w.peer);
    if (!local.ok() || !peer.ok()) return std::nullopt;
    absl::StatusOr<std::optional<TcpSocketInfo>> socket =
        LookUpTcpSocketVia(diag, *local, *peer, w.cookie);
    if (!socket.ok() || !socket->has_value() || (*socket)->inode == 0 ||
        (*socket)->cookie != w.cookie || !(*socket)->connected()) {
      return std::nullopt;
    }
    found.push_back(**std::move(socket));
  }
  return found;
}

}  // namespace

absl::StatusOr<std::vector<TcpSocketInfo>> NetnsSocketLister::operator()(const NetnsRef& netns) {
  absl::StatusOr<UniqueFd> fd = OpenNetnsThrough(netns);
  if (!fd.ok()) return fd.status();
  UniqueFd diag;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = sockets_.find(netns.inode); it != sockets_.end()) diag = std::move(it->second);
  }
  if (!diag.valid()) {
    absl::StatusOr<UniqueFd> opened = OpenDiagSocket(fd->get());
    if (!opened.ok()) return opened.status();
    diag = *std::move(opened);
  }
  if (!netns.sockets.empty() && netns.sockets.size() <= kLookUpAtMost) {
    if (std::optional<std::vector<TcpSocketInfo>> found = LookUpAll(diag.get(), netns.sockets)) {
      absl::MutexLock lock(&mu_);
      sockets_[netns.inode] = std::move(diag);
      return *std::move(found);
    }
  }
  absl::StatusOr<std::vector<TcpSocketInfo>> sockets = ListTcpSocketsVia(diag.get());
  // After a failed dump its replies may still be pending: a new socket next time.
  if (sockets.ok()) {
    absl::MutexLock lock(&mu_);
    sockets_[netns.inode] = std::move(diag);
  }
  return sockets;
}

void NetnsSocketLister::Retain(const absl::flat_hash_set<uint64_t>& keep) {
  absl::MutexLock lock(&mu_);
  absl::erase_if(sockets_, [&keep](const auto& entry) { return !keep.contains(entry.first); });
}

size_t NetnsSocketLister::open_sockets() const {
  absl::MutexLock lock(&mu_);
  return sockets_.size();
}

absl::StatusOr<std::vector<TcpSocketInfo>> ListSocketsOfNetns(const NetnsRef& netns) {
  absl::StatusOr<UniqueFd> fd = OpenNetnsThrough(netns);
  if (!fd.ok()) return fd.status();
  return ListTcpSockets(fd->get());
}

}  // namespace ktrust::zerohop
