// ZeroHopConnections with a fake lister: no root, no sockets.
#include "ktrust/zerohop/connection_registry.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "ktrust/tls/traffic_keys.h"

namespace ktrust::zerohop {
namespace {

using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::IsEmpty;
using ::testing::SizeIs;

ZeroHopConnection Conn(uint64_t cookie, uint64_t netns = 4026531840, pid_t owner = 100) {
  ZeroHopConnection c;
  c.cookie = cookie;
  c.inode = 1000 + cookie;
  c.netns = netns;
  c.owner = owner;
  c.direction = "outbound";
  c.workload = "web";
  c.local_id = "spiffe://example.org/web";
  c.peer_id = "spiffe://example.org/db";
  c.local = "10.0.0.1:40000";
  c.peer = "10.0.0.2:5432";
  c.cipher = "TLS_AES_128_GCM_SHA256";
  c.started = absl::FromUnixSeconds(1700000000 + static_cast<int64_t>(cookie));
  c.peer_chain_pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
  c.verified_at = c.started - absl::Milliseconds(3);
  return c;
}

TcpSocketInfo Sock(uint64_t cookie, uint64_t inode, uint64_t acked = 0, uint64_t received = 0) {
  TcpSocketInfo s;
  s.cookie = cookie;
  s.inode = inode;
  s.ulp = "tls";
  s.ulp_visible = true;
  s.has_tcp_info = true;
  s.bytes_acked = acked;
  s.bytes_received = received;
  return s;
}

// A kernel in a map: netns inode -> its sockets, or an error.
struct FakeKernel {
  std::map<uint64_t, absl::StatusOr<std::vector<TcpSocketInfo>>> namespaces;
  std::vector<NetnsRef> asked;
  SocketLister lister() {
    return [this](const NetnsRef& ref) -> absl::StatusOr<std::vector<TcpSocketInfo>> {
      asked.push_back(ref);
      auto it = namespaces.find(ref.inode);
      if (it == namespaces.end()) return absl::NotFoundError("no such namespace");
      return it->second;
    };
  }
};

std::vector<uint64_t> Cookies(const std::vector<ZeroHopConnection>& v) {
  std::vector<uint64_t> out;
  for (const auto& c : v) out.push_back(c.cookie);
  return out;
}

class ZeroHopJournalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/zh-journal-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/connections.journal";
  }
  void TearDown() override {
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }
  std::string ReadJournal() {
    std::ifstream in(path_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  void WriteJournal(const std::string& content) {
    std::ofstream out(path_, std::ios::trunc);
    out << content;
  }
  // The header line of a journal written on this boot, taken from a fresh one.
  std::string Header() {
    unlink(path_.c_str());
    EXPECT_NE(OpenOrDie(), nullptr);
    std::string content = ReadJournal();
    return content.substr(0, content.find('\n') + 1);
  }
  std::unique_ptr<ZeroHopConnections> OpenOrDie() {
    auto r = ZeroHopConnections::Open(path_);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::move(*r) : nullptr;
  }
  std::string dir_, path_;
};

TEST(ZeroHopConnectionsTest, AddSnapshotRemove) {
  ZeroHopConnections registry;
  ASSERT_TRUE(registry.Add(Conn(2)).ok());
  ASSERT_TRUE(registry.Add(Conn(1)).ok());
  EXPECT_THAT(Cookies(registry.Snapshot()), ElementsAre(1, 2));  // oldest first
  ZeroHopConnection replaced = Conn(2);
  replaced.peer_id = "spiffe://example.org/other";
  ASSERT_TRUE(registry.Add(replaced).ok());
  EXPECT_EQ(registry.size(), 2u);
  std::optional<ZeroHopConnection> removed = registry.Remove(2);
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->peer_id, "spiffe://example.org/other");
  EXPECT_FALSE(registry.Remove(2).has_value());
  EXPECT_THAT(Cookies(registry.Snapshot()), ElementsAre(1));
}

TEST(ZeroHopConnectionsTest, RefreshDropsClosedAndOrphanedAndUpdatesCounters) {
  ZeroHopConnections registry;
  for (uint64_t cookie : {1, 2, 3}) ASSERT_TRUE(registry.Add(Conn(cookie)).ok());
  FakeKernel kernel;
  // 1 alive with traffic, 2 gone, 3 orphaned (the app closed it, FIN_WAIT).
  kernel.namespaces[4026531840] =
      std::vector<TcpSocketInfo>{Sock(1, 1001, 500, 700), Sock(3, 0), Sock(99, 5000)};
  RefreshResult result = registry.Refresh(kernel.lister());
  EXPECT_THAT(result.errors, IsEmpty());
  ASSERT_THAT(result.ended, SizeIs(2));
  EXPECT_EQ(result.ended[0].connection.cookie, 2u);
  EXPECT_EQ(result.ended[0].reason, "closed");
  EXPECT_EQ(result.ended[1].connection.cookie, 3u);
  EXPECT_EQ(result.ended[1].reason, "closed by the application");
  std::vector<ZeroHopConnection> live = registry.Snapshot();
  ASSERT_THAT(live, SizeIs(1));
  EXPECT_EQ(live[0].cookie, 1u);
  EXPECT_EQ(live[0].bytes_sent, 500u);
  EXPECT_EQ(live[0].bytes_received, 700u);
  EXPECT_TRUE(live[0].kernel_tls);
  // One listing per namespace, through the owner.
  ASSERT_THAT(kernel.asked, SizeIs(1));
  EXPECT_THAT(kernel.asked[0].processes, ElementsAre(100));
}

TEST(ZeroHopConnectionsTest, RefreshKeepsEntriesOfANamespaceItCouldNotList) {
  ZeroHopConnections registry;
  ASSERT_TRUE(registry.Add(Conn(1, /*netns=*/7)).ok());
  ASSERT_TRUE(registry.Add(Conn(2, /*netns=*/8)).ok());
  FakeKernel kernel;
  kernel.namespaces[7] = absl::PermissionDeniedError("setns: EPERM");
  // 8 absent: NotFound, no process left to enter it through.
  RefreshResult result = registry.Refresh(kernel.lister());
  ASSERT_THAT(result.errors, SizeIs(1));
  EXPECT_EQ(result.errors[0].code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(result.errors[0].message(), ::testing::HasSubstr("network namespace 7"));
  ASSERT_THAT(result.ended, SizeIs(1));
  EXPECT_EQ(result.ended[0].connection.cookie, 2u);
  EXPECT_THAT(result.ended[0].reason, ::testing::HasSubstr("processes are gone"));
  EXPECT_THAT(Cookies(registry.Snapshot()), ElementsAre(1));
}

// Processes in a map: who is alive, and which process holds which socket.
struct FakeProcesses {
  std::set<pid_t> alive;
  std::map<uint64_t, pid_t> holders;  // socket inode -> holder
  absl::Status search = absl::OkStatus();
  std::vector<absl::flat_hash_set<uint64_t>> searched;
  HolderSearch search_fn() {
    return {[this](pid_t pid) { return alive.count(pid) > 0; },
            [this](const absl::flat_hash_set<uint64_t>& inodes)
                -> absl::StatusOr<absl::flat_hash_map<uint64_t, pid_t>> {
              searched.push_back(inodes);
              if (!search.ok()) return search;
              absl::flat_hash_map<uint64_t, pid_t> out;
              for (uint64_t inode : inodes) {
                if (auto it = holders.find(inode); it != holders.end()) out[inode] = it->second;
              }
              return out;
            }};
  }
};

TEST(ZeroHopConnectionsTest, AConnectionWhoseOwnerExitedStaysUnderTheChildHoldingIt) {
  // The served process forked, then exited: only its child holds the
  // socket. The connection is live and must stay enforced, not forgotten.
  ZeroHopConnections registry;
  ASSERT_TRUE(registry.Add(Conn(1, /*netns=*/7, /*owner=*/100)).ok());
  FakeKernel kernel;  // namespace 7 cannot be entered through pid 100 any more
  FakeProcesses processes;
  processes.alive = {200};
  processes.holders[1001] = 200;
  RefreshResult first = registry.Refresh(kernel.lister(), processes.search_fn());
  EXPECT_THAT(first.ended, IsEmpty());
  ASSERT_THAT(first.new_holders, SizeIs(1));
  EXPECT_EQ(first.new_holders[0].connection.owner, 100);
  EXPECT_EQ(first.new_holders[0].holder, 200);
  ASSERT_THAT(registry.Snapshot(), SizeIs(1));
  EXPECT_EQ(registry.Snapshot()[0].owner, 200);
  // From now on the namespace is listed through the child, with no search.
  kernel.namespaces[7] = std::vector<TcpSocketInfo>{Sock(1, 1001, 10, 20)};
  RefreshResult second = registry.Refresh(kernel.lister(), processes.search_fn());
  EXPECT_THAT(second.ended, IsEmpty());
  EXPECT_THAT(second.new_holders, IsEmpty());
  EXPECT_THAT(kernel.asked.back().processes, ElementsAre(200));
  EXPECT_THAT(processes.searched, SizeIs(1));
  EXPECT_EQ(registry.Snapshot()[0].bytes_received, 20u);
}

TEST(ZeroHopConnectionsTest, AnOwnerGoneWithNoHolderLeftEndsTheConnection) {
  ZeroHopConnections registry;
  ASSERT_TRUE(registry.Add(Conn(1, /*netns=*/7)).ok());
  ASSERT_TRUE(registry.Add(Conn(2, /*netns=*/7)).ok());
  FakeKernel kernel;
  FakeProcesses processes;  // nobody alive, nobody holds either socket
  RefreshResult result = registry.Refresh(kernel.lister(), processes.search_fn());
  ASSERT_THAT(result.ended, SizeIs(2));
  EXPECT_THAT(result.ended[0].reason, ::testing::HasSubstr("processes are gone"));
  // Both sockets were looked for in one search, not one search each.
  ASSERT_THAT(processes.searched, SizeIs(1));
  EXPECT_THAT(processes.searched[0], ::testing::UnorderedElementsAre(1001, 1002));
}

TEST(ZeroHopConnectionsTest, AFailedHolderSearchKeepsTheConnection) {
  // /proc could not be read to the end: no evidence the socket is closed.
  ZeroHopConnections registry;
  ASSERT_TRUE(registry.Add(Conn(1, /*netns=*/7)).ok());
  FakeKernel kernel;
  FakeProcesses processes;
  processes.search = absl::ResourceExhaustedError("read /proc: Too many open files");
  RefreshResult result = registry.Refresh(kernel.lister(), processes.search_fn());
  EXPECT_THAT(result.ended, IsEmpty());
  EXPECT_THAT(Cookies(registry.Snapshot()), ElementsAre(1));
}

TEST(ZeroHopConnectionsTest, RefreshKeepsConnectionsAddedWhileListing) {
  ZeroHopConnections registry;
  ASSERT_TRUE(registry.Add(Conn(1)).ok());
  RefreshResult result = registry.Refresh([&](const NetnsRef&) {
    // The agent registers a new connection while the dump runs; the dump
    // does not show it yet.
    EXPECT_TRUE(registry.Add(Conn(2)).ok());
    return absl::StatusOr<std::vector<TcpSocketInfo>>(std::vector<TcpSocketInfo>{});
  });
  ASSERT_THAT(result.ended, SizeIs(1));
  EXPECT_EQ(result.ended[0].connection.cookie, 1u);
  EXPECT_THAT(Cookies(registry.Snapshot()), ElementsAre(2));
}

TEST(ZeroHopConnectionsTest, RecordLimitArithmetic) {
  // Three quarters of AES-GCM's 2^24 records: 4M records of headroom.
  const uint64_t budget = RecordBudget("TLS_AES_128_GCM_SHA256");
  EXPECT_EQ(budget, kAesGcmRecordLimit - (uint64_t{1} << 22));
  EXPECT_EQ(RecordBudget("TLS_CHACHA20_POLY1305_SHA256"),
            kChaCha20Poly1305RecordLimit - kChaCha20Poly1305RecordLimit / 4);
  // An unknown suite gets the strictest limit; an override only lowers it.
  EXPECT_EQ(RecordBudget("TLS_SOMETHING_NEW"), budget);
  EXPECT_EQ(RecordBudget("TLS_AES_128_GCM_SHA256", 1000), 750u);
  EXPECT_EQ(RecordBudget("TLS_AES_128_GCM_SHA256", uint64_t{1} << 40), budget);

  ZeroHopConnections registry;
  const uint64_t threshold_bytes = budget * kMinTls13RecordBytes;
  ZeroHopConnection below = Conn(1), at_tx = Conn(2), at_rx = Conn(3);
  for (auto* c : {&below, &at_tx, &at_rx}) ASSERT_TRUE(registry.Add(*c).ok());
  FakeKernel kernel;
  kernel.namespaces[4026531840] = std::vector<TcpSocketInfo>{
      Sock(1, 1001, threshold_bytes - 1, threshold_bytes - 1), Sock(2, 1002, threshold_bytes, 0),
      Sock(3, 1003, 0, threshold_bytes + kMinTls13RecordBytes - 1)};
  registry.Refresh(kernel.lister());
  EXPECT_THAT(Cookies(registry.RecordLimitDue()), ElementsAre(2, 3));
  // Per cipher: ChaCha20-Poly1305's 2^62 is nowhere near.
  ZeroHopConnection chacha = Conn(2);
  chacha.cipher = "TLS_CHACHA20_POLY1305_SHA256";
  ASSERT_TRUE(registry.Add(chacha).ok());
  registry.Refresh(kernel.lister());
  EXPECT_THAT(Cookies(registry.RecordLimitDue()), ElementsAre(3));
  // A lowered limit: everything past 3/4 of it is due.
  EXPECT_THAT(Cookies(registry.RecordLimitDue(4)), ElementsAre(1, 2, 3));
}

TEST(ZeroHopConnectionsTest, WriteQueueCountsAsSent) {
  TcpSocketInfo s = Sock(1, 1, 100, 0);
  s.write_queue = 50;
  EXPECT_EQ(s.bytes_sent_upper(), 150u);
  ZeroHopConnections registry;
  ASSERT_TRUE(registry.Add(Conn(1)).ok());
  ZeroHopConnection c = Conn(1);
  c.inode = 1;
  ASSERT_TRUE(registry.Add(c).ok());
  registry.Refresh([&](const NetnsRef&) {
    return absl::StatusOr<std::vector<TcpSocketInfo>>(std::vector<TcpSocketInfo>{s});
  });
  // 150 bytes = 6 records of 22 at most: due under a limit of 8 (budget 6),
  // not of 9 (budget 7).
  EXPECT_THAT(Cookies(registry.RecordLimitDue(8)), ElementsAre(1));
  EXPECT_THAT(Cookies(registry.RecordLimitDue(9)), IsEmpty());
}

TEST_F(ZeroHopJournalTest, SurvivesARestart) {
  {
    auto registry = OpenOrDie();
    ASSERT_NE(registry, nullptr);
    EXPECT_EQ(registry->journal_load().loaded, 0u);
    for (uint64_t cookie : {1, 2, 3}) ASSERT_TRUE(registry->Add(Conn(cookie)).ok());
    ASSERT_TRUE(registry->Remove(2).has_value());
    FakeKernel kernel;
    kernel.namespaces[4026531840] = std::vector<TcpSocketInfo>{Sock(1, 1001)};  // 3 closed
    ASSERT_THAT(registry->Refresh(kernel.lister()).ended, SizeIs(1));
  }  // the agent dies: nothing flushed on the way out
  auto restarted = OpenOrDie();
  ASSERT_NE(restarted, nullptr);
  EXPECT_EQ(restarted->journal_load().loaded, 1u);
  EXPECT_EQ(restarted->journal_load().malformed, 0u);
  std::vector<ZeroHopConnection> live = restarted->Snapshot();
  ASSERT_THAT(live, SizeIs(1));
  ZeroHopConnection want = Conn(1);
  EXPECT_EQ(live[0].cookie, want.cookie);
  EXPECT_EQ(live[0].inode, want.inode);
  EXPECT_EQ(live[0].netns, want.netns);
  EXPECT_EQ(live[0].owner, want.owner);
  EXPECT_EQ(live[0].direction, want.direction);
  EXPECT_EQ(live[0].workload, want.workload);
  EXPECT_EQ(live[0].local_id, want.local_id);
  EXPECT_EQ(live[0].peer_id, want.peer_id);
  EXPECT_EQ(live[0].local, want.local);
  EXPECT_EQ(live[0].peer, want.peer);
  EXPECT_EQ(live[0].cipher, want.cipher);
  EXPECT_EQ(live[0].port, want.port);
  EXPECT_EQ(live[0].started, want.started);
  EXPECT_EQ(live[0].peer_chain_pem, want.peer_chain_pem);
  EXPECT_EQ(live[0].verified_at, want.verified_at);
  // Compacted on load: the header and the one live connection.
  std::string content = ReadJournal();
  EXPECT_EQ(std::count(content.begin(), content.end(), '\n'), 2);
  struct stat st {};
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // And the restarted registry keeps journaling.
  ASSERT_TRUE(restarted->Add(Conn(4)).ok());
  restarted.reset();
  auto again = OpenOrDie();
  EXPECT_THAT(Cookies(again->Snapshot()), ElementsAre(1, 4));
}

TEST_F(ZeroHopJournalTest, MalformedLinesAreCountedAndSkipped) {
  std::string header = Header();
  std::string good = [&] {
    WriteJournal(header);
    auto r = OpenOrDie();
    EXPECT_TRUE(r->Add(Conn(5)).ok());
    std::string content = ReadJournal();
    return content.substr(content.find('\n') + 1);
  }();
  std::string bad_direction = good;
  bad_direction.replace(bad_direction.find("outbound"), 8, "sideways");
  std::string zero_cookie = good;
  zero_cookie.replace(zero_cookie.find("\"cookie\":5"), 10, "\"cookie\":0");
  nlohmann::json line = nlohmann::json::parse(good);
  line["peer_chain"] = 12;
  std::string bad_chain = line.dump() + "\n";
  // A line without the chain (it cannot be checked again, but is live).
  line.erase("peer_chain");
  line.erase("verified_us");
  line["cookie"] = 6;
  std::string no_chain = line.dump() + "\n";
  WriteJournal(header + "not json\n" + "{\"op\":\"add\",\"cookie\":7}\n" + bad_direction +
               zero_cookie + "[1,2,3]\n" + "{\"op\":\"explode\"}\n" +
               "{\"op\":\"remove\",\"cookie\":\"5\"}\n" + std::string(20000, 'x') + "\n" +
               bad_chain + good + no_chain);
  auto registry = OpenOrDie();
  ASSERT_NE(registry, nullptr);
  EXPECT_EQ(registry->journal_load().malformed, 9u);
  EXPECT_EQ(registry->journal_load().loaded, 2u);
  EXPECT_FALSE(registry->journal_load().truncated_tail);
  EXPECT_THAT(Cookies(registry->Snapshot()), ElementsAre(5, 6));
  EXPECT_EQ(registry->Snapshot()[1].peer_chain_pem, "");
}

TEST_F(ZeroHopJournalTest, TruncatedLastLineIsIgnored) {
  {
    auto registry = OpenOrDie();
    ASSERT_TRUE(registry->Add(Conn(1)).ok());
    ASSERT_TRUE(registry->Add(Conn(2)).ok());
  }
  std::string content = ReadJournal();
  // The agent died in the middle of the last write.
  WriteJournal(content.substr(0, content.size() - 10));
  auto registry = OpenOrDie();
  ASSERT_NE(registry, nullptr);
  EXPECT_TRUE(registry->journal_load().truncated_tail);
  EXPECT_EQ(registry->journal_load().malformed, 0u);
  EXPECT_THAT(Cookies(registry->Snapshot()), ElementsAre(1));
  // Rewritten whole: the torn line is gone, later appends start clean.
  ASSERT_TRUE(registry->Add(Conn(3)).ok());
  registry.reset();
  auto again = OpenOrDie();
  EXPECT_FALSE(again->journal_load().truncated_tail);
  EXPECT_THAT(Cookies(again->Snapshot()), ElementsAre(1, 3));
}

TEST_F(ZeroHopJournalTest, AJournalFromAnotherBootOrWithoutHeaderIsDiscarded) {
  std::string header = Header();
  std::string body = [&] {
    auto r = OpenOrDie();
    EXPECT_TRUE(r->Add(Conn(1)).ok());
    std::string content = ReadJournal();
    return content.substr(content.find('\n') + 1);
  }();
  WriteJournal("{\"ktrust_zero_hop_journal\":1,\"boot_id\":\"another-boot\"}\n" + body);
  auto other = OpenOrDie();
  EXPECT_TRUE(other->journal_load().other_boot);
  EXPECT_EQ(other->size(), 0u);
  other.reset();
  WriteJournal(body);  // no header at all
  auto headless = OpenOrDie();
  EXPECT_EQ(headless->size(), 0u);
  EXPECT_EQ(headless->journal_load().malformed, 1u);
}

TEST_F(ZeroHopJournalTest, CompactsWhileRunning) {
  auto registry = OpenOrDie();
  for (uint64_t cookie = 1; cookie <= 6000; ++cookie) {
    ASSERT_TRUE(registry->Add(Conn(cookie)).ok());
    ASSERT_TRUE(registry->Remove(cookie).has_value());
  }
  ASSERT_TRUE(registry->Add(Conn(7000)).ok());
  std::string content = ReadJournal();
  // 12001 lines appended; rewritten on the way, so far fewer remain.
  EXPECT_LT(std::count(content.begin(), content.end(), '\n'), 6000);
  registry.reset();
  EXPECT_THAT(Cookies(OpenOrDie()->Snapshot()), ElementsAre(7000));
}

// A handover: the successor loads the journal and renames a compacted one
// over it, so what the predecessor appends afterwards lands in a file
// nobody will read. The connections themselves pass over the handover
// socket (Release on the predecessor); when that stops half-way, Rejoin
// makes the predecessor's connections readable at the path again, without
// cutting the successor off from the file it appends to.
TEST_F(ZeroHopJournalTest, APredecessorRejoinsTheJournalItsSuccessorReplaced) {
  auto predecessor = OpenOrDie();
  ASSERT_TRUE(predecessor->Add(Conn(1)).ok());
  auto successor = OpenOrDie();  // starts: loads 1, compacts
  ASSERT_THAT(Cookies(successor->Snapshot()), ElementsAre(1));
  ASSERT_TRUE(successor->Add(Conn(2)).ok());
  ASSERT_TRUE(predecessor->Add(Conn(3)).ok());  // made by the old agent meanwhile
  // The gap: an agent reading the journal now never hears of 3.
  std::string before = ReadJournal();
  EXPECT_EQ(before.find("\"cookie\":3,"), std::string::npos) << before;
  EXPECT_NE(before.find("\"cookie\":2,"), std::string::npos) << before;

  absl::StatusOr<size_t> learned = predecessor->Rejoin();
  ASSERT_TRUE(learned.ok()) << learned.status();
  EXPECT_EQ(*learned, 1u) << "the successor's 2";
  EXPECT_THAT(Cookies(predecessor->Snapshot()), ElementsAre(1, 2, 3));
  // Both append to the same file now: the successor was not cut off.
  ASSERT_TRUE(successor->Add(Conn(4)).ok());
  ASSERT_TRUE(predecessor->Add(Conn(5)).ok());
  EXPECT_TRUE(predecessor->Remove(1).has_value());
  EXPECT_THAT(Cookies(OpenOrDie()->Snapshot()), ElementsAre(2, 3, 4, 5));
}

TEST_F(ZeroHopJournalTest, RejoiningAMissingOrForeignJournalWritesItsOwn) {
  auto registry = OpenOrDie();
  ASSERT_TRUE(registry->Add(Conn(1)).ok());
  ASSERT_EQ(unlink(path_.c_str()), 0);
  absl::StatusOr<size_t> learned = registry->Rejoin();
  ASSERT_TRUE(learned.ok()) << learned.status();
  EXPECT_EQ(*learned, 0u);
  EXPECT_THAT(Cookies(OpenOrDie()->Snapshot()), ElementsAre(1));
  // A file that is not a journal of this boot is not appended to.
  auto again = OpenOrDie();
  ASSERT_TRUE(again->Add(Conn(2)).ok());
  WriteJournal("{\"ktrust_zero_hop_journal\":1,\"boot_id\":\"another-boot\"}\n");
  learned = again->Rejoin();
  ASSERT_TRUE(learned.ok()) << learned.status();
  EXPECT_EQ(*learned, 0u);
  EXPECT_THAT(Cookies(OpenOrDie()->Snapshot()), ElementsAre(1, 2));
  EXPECT_EQ(ReadJournal().find("another-boot"), std::string::npos);
  // In memory only: nothing to rejoin.
  ZeroHopConnections memory;
  EXPECT_EQ(memory.Rejoin().value_or(99), 0u);
}

TEST_F(ZeroHopJournalTest, ReleasedConnectionsAreForgottenWithoutAJournalLine) {
  auto registry = OpenOrDie();
  ASSERT_TRUE(registry->Add(Conn(1)).ok());
  ASSERT_TRUE(registry->Add(Conn(2)).ok());
  EXPECT_EQ(registry->Release({1, 9}), 1u) << "9 was never here";
  EXPECT_THAT(Cookies(registry->Snapshot()), ElementsAre(2));
  // Whoever reads the file next rather knows one too many: its first
  // Refresh drops what ended.
  EXPECT_THAT(Cookies(OpenOrDie()->Snapshot()), ElementsAre(1, 2));
}

TEST(ZeroHopConnectionCodingTest, RoundTripsAndRefusesWhatAJournalWouldSkip) {
  ZeroHopConnection c = Conn(42);
  c.direction = "inbound";
  c.port = 8443;
  absl::StatusOr<ZeroHopConnection> back = DecodeZeroHopConnection(EncodeZeroHopConnection(c));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->cookie, 42u);
  EXPECT_EQ(back->inode, c.inode);
  EXPECT_EQ(back->netns, c.netns);
  EXPECT_EQ(back->owner, c.owner);
  EXPECT_EQ(back->direction, "inbound");
  EXPECT_EQ(back->port, 8443);
  EXPECT_EQ(back->peer_id, c.peer_id);
  EXPECT_EQ(back->started, c.started);
  EXPECT_EQ(back->peer_chain_pem, c.peer_chain_pem);
  EXPECT_EQ(back->verified_at, c.verified_at);
  nlohmann::json good = nlohmann::json::parse(EncodeZeroHopConnection(c));
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, nlohmann::json>>{{"cookie", 0},
                                                           {"cookie", -1},
                                                           {"inode", "1"},
                                                           {"owner", 0},
                                                           {"direction", "sideways"},
                                                           {"peer_id", std::string(4096, 'x')},
                                                           {"op", "remove"}}) {
    nlohmann::json bad = good;
    bad[key] = value;
    EXPECT_FALSE(DecodeZeroHopConnection(bad.dump()).ok()) << key << "=" << value;
  }
  nlohmann::json missing = good;
  missing.erase("netns");
  EXPECT_FALSE(DecodeZeroHopConnection(missing.dump()).ok());
  EXPECT_FALSE(DecodeZeroHopConnection("not json").ok());
  EXPECT_FALSE(DecodeZeroHopConnection("[1]").ok());
}

TEST_F(ZeroHopJournalTest, ASymlinkIsNotFollowed) {
  std::string target = dir_ + "/elsewhere";
  ASSERT_EQ(symlink(target.c_str(), path_.c_str()), 0);
  EXPECT_FALSE(ZeroHopConnections::Open(path_).ok());
  EXPECT_NE(access(target.c_str(), F_OK), 0);
}

// The dump parser against hostile buffers: errors, never a crash or a
// partial list presented as complete.
std::string Message(uint16_t type, uint32_t seq, const std::string& payload, uint16_t flags = 0) {
  nlmsghdr h{};
  h.nlmsg_len = static_cast<uint32_t>(sizeof(h) + payload.size());
  h.nlmsg_type = type;
  h.nlmsg_flags = flags;
  h.nlmsg_seq = seq;
  std::string out(reinterpret_cast<const char*>(&h), sizeof(h));
  out += payload;
  out.resize(NLMSG_ALIGN(out.size()), '\0');
  return out;
}

std::string DiagMsg(uint64_t cookie, const std::string& attrs = "") {
  inet_diag_msg m{};
  m.idiag_family = AF_INET;
  m.idiag_state = 1;
  m.id.idiag_cookie[0] = static_cast<uint32_t>(cookie);
  m.id.idiag_cookie[1] = static_cast<uint32_t>(cookie >> 32);
  m.idiag_inode = 77;
  return std::string(reinterpret_cast<const char*>(&m), sizeof(m)) + attrs;
}

std::string Attr(uint16_t type, const std::string& payload, int extra_len = 0) {
  nlattr a{};
  a.nla_len = static_cast<uint16_t>(sizeof(a) + payload.size() + extra_len);
  a.nla_type = type;
  std::string out(reinterpret_cast<const char*>(&a), sizeof(a));
  out += payload;
  out.resize(NLA_ALIGN(out.size()), '\0');
  return out;
}

TEST(ParseInetDiagDumpTest, ReadsCookieUlpAndStopsAtDone) {
  std::string ulp = Attr(INET_DIAG_ULP_INFO, Attr(INET_ULP_INFO_NAME, std::string("tls\0", 4)));
  std::string buffer = Message(SOCK_DIAG_BY_FAMILY, 3, DiagMsg(0x1122334455667788, ulp)) +
                       Message(SOCK_DIAG_BY_FAMILY, 2, DiagMsg(9)) +  // stale seq: skipped
                       Message(NLMSG_DONE, 3, std::string(4, '\0'));
  std::vector<TcpSocketInfo> out;
  absl::StatusOr<bool> done = ParseInetDiagDump(buffer.data(), buffer.size(), 3, out);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_TRUE(*done);
  ASSERT_THAT(out, SizeIs(1));
  EXPECT_EQ(out[0].cookie, 0x1122334455667788u);
  EXPECT_EQ(out[0].inode, 77u);
  EXPECT_TRUE(out[0].tls_ulp());
  EXPECT_TRUE(out[0].ulp_visible);
  EXPECT_FALSE(out[0].has_tcp_info);
}

TEST(ParseInetDiagDumpTest, RejectsLiesAboutLengths) {
  std::vector<std::string> bad = {
      // nlmsg_len beyond the buffer
      Message(SOCK_DIAG_BY_FAMILY, 1, DiagMsg(1)).substr(0, 40),
      // payload shorter than inet_diag_msg
      Message(SOCK_DIAG_BY_FAMILY, 1, DiagMsg(1).substr(0, 20)),
      // an attribute longer than what is left
      Message(SOCK_DIAG_BY_FAMILY, 1, DiagMsg(1, Attr(INET_DIAG_INFO, "abcd", 100))),
      // an attribute shorter than its own header
      Message(SOCK_DIAG_BY_FAMILY, 1, DiagMsg(1, std::string("\x02\x00\x02\x00", 4))),
      // a nested ULP attribute lying about its length
      Message(SOCK_DIAG_BY_FAMILY, 1,
              DiagMsg(1, Attr(INET_DIAG_ULP_INFO, Attr(INET_ULP_INFO_NAME, "tls", 50)))),
      // the kernel says the dump was interrupted
      Message(SOCK_DIAG_BY_FAMILY, 1, DiagMsg(1), NLM_F_DUMP_INTR),
      // an error
      Message(NLMSG_ERROR, 1, std::string("\xf3\xff\xff\xff", 4)),
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    std::vector<TcpSocketInfo> out;
    EXPECT_FALSE(ParseInetDiagDump(bad[i].data(), bad[i].size(), 1, out).ok()) << "case " << i;
  }
}

TEST(ParseInetDiagDumpTest, ShortTcpInfoGivesNoCounters) {
  std::string buffer = Message(SOCK_DIAG_BY_FAMILY, 1, DiagMsg(1, Attr(INET_DIAG_INFO, "abcd")));
  std::vector<TcpSocketInfo> out;
  ASSERT_TRUE(ParseInetDiagDump(buffer.data(), buffer.size(), 1, out).ok());
  ASSERT_THAT(out, SizeIs(1));
  EXPECT_FALSE(out[0].has_tcp_info);
}

TEST(ParseInetDiagLookUpTest, TakesTheAnswerToItsOwnRequestOnly) {
  std::string buffer = Message(SOCK_DIAG_BY_FAMILY, 6, DiagMsg(9)) +  // stale seq: skipped
                       Message(SOCK_DIAG_BY_FAMILY, 7, DiagMsg(0x55));
  bool answered = false;
  auto found = ParseInetDiagLookUp(buffer.data(), buffer.size(), 7, answered);
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_TRUE(answered);
  ASSERT_TRUE(found->has_value());
  EXPECT_EQ((*found)->cookie, 0x55u);
  // Only a stale reply: no answer yet.
  std::string stale = Message(SOCK_DIAG_BY_FAMILY, 6, DiagMsg(9));
  found = ParseInetDiagLookUp(stale.data(), stale.size(), 7, answered);
  ASSERT_TRUE(found.ok());
  EXPECT_FALSE(answered);
}

TEST(ParseInetDiagLookUpTest, NoSuchSocketIsAnAnswerAndOtherErrorsAreErrors) {
  bool answered = false;
  for (const char* error : {"\xfe\xff\xff\xff" /* -ENOENT */, "\x8c\xff\xff\xff" /* -ESTALE */}) {
    std::string buffer = Message(NLMSG_ERROR, 1, std::string(error, 4));
    auto found = ParseInetDiagLookUp(buffer.data(), buffer.size(), 1, answered);
    ASSERT_TRUE(found.ok()) << found.status();
    EXPECT_TRUE(answered);
    EXPECT_FALSE(found->has_value());
  }
  std::vector<std::string> bad = {
      Message(NLMSG_ERROR, 1, std::string("\xf3\xff\xff\xff", 4)),  // -EACCES: any other error
      Message(NLMSG_ERROR, 1, std::string(4, '\0')),                // an ack, not a socket
      Message(SOCK_DIAG_BY_FAMILY, 1, DiagMsg(1)).substr(0, 40),    // truncated
      Message(SOCK_DIAG_BY_FAMILY, 1, DiagMsg(1, Attr(INET_DIAG_INFO, "abcd", 100))),
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    EXPECT_FALSE(ParseInetDiagLookUp(bad[i].data(), bad[i].size(), 1, answered).ok())
        << "case " << i;
  }
}

}  // namespace
}  // namespace ktrust::zerohop
