#include "ktrust/bpf/bpf_loader.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "bpf/bpf_test_env.h"
#include "ktrust/bpf/abi_address.h"

namespace ktrust {
namespace {

using ::testing::HasSubstr;
using testing::ScopedBpffs;
using testing::TestCgroup;
using testing::TestNetns;

constexpr bpf_attach_type kCgroupHooks[] = {
    BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_INET6_CONNECT,     BPF_CGROUP_UDP4_SENDMSG,
    BPF_CGROUP_UDP6_SENDMSG,  BPF_CGROUP_INET4_GETPEERNAME, BPF_CGROUP_INET6_GETPEERNAME,
    BPF_CGROUP_SOCK_OPS,
};

class BpfLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    KTRUST_REQUIRE_ROOT();
    auto bpffs = ScopedBpffs::Create();
    ASSERT_TRUE(bpffs.ok()) << bpffs.status();
    bpffs_ = std::move(*bpffs);
    auto cgroup = TestCgroup::Create("loader");
    ASSERT_TRUE(cgroup.ok()) << cgroup.status();
    cgroup_ = std::move(*cgroup);
    auto netns = TestNetns::Create();
    ASSERT_TRUE(netns.ok()) << netns.status();
    netns_ = std::move(*netns);
  }

  std::unique_ptr<BpfLoader> NewLoader() {
    auto loader = BpfLoader::Create({.pin_dir = bpffs_->pin_dir()});
    EXPECT_TRUE(loader.ok()) << loader.status();
    return loader.ok() ? std::move(*loader) : nullptr;
  }

  // What the kernel has attached to a target for a hook: program ids.
  static std::vector<uint32_t> Attached(const std::string& target, bpf_attach_type type) {
    UniqueFd fd(open(target.c_str(), O_RDONLY | O_CLOEXEC));
    std::vector<uint32_t> ids(8);
    uint32_t count = static_cast<uint32_t>(ids.size());
    if (bpf_prog_query(fd.get(), type, 0, nullptr, ids.data(), &count) != 0) {
      ADD_FAILURE() << "bpf_prog_query " << target << ": " << std::strerror(errno);
      return {};
    }
    ids.resize(count);
    return ids;
  }
  std::vector<uint32_t> AttachedToCgroup(bpf_attach_type type) const {
    return Attached(cgroup_->path(), type);
  }
  std::vector<uint32_t> AttachedToNetns() const { return Attached(netns_->path(), BPF_SK_LOOKUP); }
  uint64_t NetnsInode() const {
    struct stat st {};
    EXPECT_EQ(stat(netns_->path().c_str(), &st), 0) << std::strerror(errno);
    return st.st_ino;
  }

  static uint32_t ProgramId(int fd) {
    bpf_prog_info info{};
    uint32_t len = sizeof(info);
    EXPECT_EQ(bpf_obj_get_info_by_fd(fd, &info, &len), 0);
    return info.id;
  }

  std::unique_ptr<ScopedBpffs> bpffs_;
  std::unique_ptr<TestCgroup> cgroup_;
  std::unique_ptr<TestNetns> netns_;
};

TEST_F(BpfLoaderTest, LoadsAndAttachesEveryHookOnThisKernel) {
  auto loader = NewLoader();
  ASSERT_NE(loader, nullptr);
  ASSERT_TRUE(loader->AttachCgroup(cgroup_->path()).ok());
  ASSERT_TRUE(loader->AttachSockops(cgroup_->path()).ok());
  ASSERT_TRUE(loader->AttachNetns(netns_->path()).ok());

  for (bpf_attach_type type : kCgroupHooks) {
    EXPECT_EQ(AttachedToCgroup(type).size(), 1u) << "attach type " << type;
  }
  EXPECT_THAT(AttachedToNetns(),
              ::testing::ElementsAre(ProgramId(loader->program_fd(BpfProgram::kSkLookup))));
  ASSERT_EQ(loader->attachments().size(), 8u);
  for (const auto& attachment : loader->attachments()) {
    EXPECT_FALSE(attachment.adopted) << attachment.pin_path;
    EXPECT_TRUE(std::filesystem::exists(attachment.pin_path)) << attachment.pin_path;
  }
  EXPECT_TRUE(std::filesystem::exists(bpffs_->pin_dir() + "/maps/ktrust_mesh"));
}

TEST_F(BpfLoaderTest, AttachingAgainAttachesNothingTwice) {
  auto loader = NewLoader();
  ASSERT_NE(loader, nullptr);
  ASSERT_TRUE(loader->AttachCgroup(cgroup_->path()).ok());
  ASSERT_TRUE(loader->AttachSockops(cgroup_->path()).ok());
  ASSERT_TRUE(loader->AttachCgroup(cgroup_->path()).ok());
  ASSERT_TRUE(loader->AttachSockops(cgroup_->path()).ok());
  ASSERT_TRUE(loader->AttachNetns(netns_->path()).ok());
  ASSERT_TRUE(loader->AttachNetns(netns_->path()).ok());
  EXPECT_EQ(loader->attachments().size(), 8u);
  for (bpf_attach_type type : kCgroupHooks) EXPECT_EQ(AttachedToCgroup(type).size(), 1u);
  EXPECT_EQ(AttachedToNetns().size(), 1u);
}

TEST_F(BpfLoaderTest, ARestartWithAnotherConfigurationPrunesWhatItNoLongerWants) {
  auto first = NewLoader();
  ASSERT_NE(first, nullptr);
  InterceptionMaps& old_maps = first->maps();
  auto wide = *IpPrefix::Parse("10.0.0.0/8");
  auto narrow = *IpPrefix::Parse("10.1.0.0/16");
  ASSERT_TRUE(old_maps.AddMeshDestination(wide, {{1, 65535, MeshAction::kRedirect}}).ok());
  ASSERT_TRUE(old_maps.AddMeshDestination(narrow, {{1, 65535, MeshAction::kRedirect}}).ok());
  ASSERT_TRUE(old_maps.EnrollCgroup(7, EnforcementMode::kEnforce, 1).ok());
  ASSERT_TRUE(old_maps.EnrollCgroup(8, EnforcementMode::kEnforce, 2).ok());
  auto port80 = *SocketAddress::Parse("0.0.0.0:80");
  auto port443 = *SocketAddress::Parse("0.0.0.0:443");
  // A pod's rules name its exact addresses.
  auto pod4 = *SocketAddress::Parse("10.244.1.7:8080");
  auto pod6 = *SocketAddress::Parse("[fd00:244::7]:8080");
  for (const SocketAddress& port : {port80, port443, pod4, pod6}) {
    ASSERT_TRUE(old_maps.AddInboundPort(port, EnforcementMode::kEnforce, 0, 1).ok());
  }
  first.reset();

  // The next run wants one of each: the rest goes, what it keeps stays.
  auto second = NewLoader();
  ASSERT_NE(second, nullptr);
  InterceptionMaps& maps = second->maps();
  EXPECT_EQ(*maps.KeepOnlyMeshDestinations({narrow}), 1u);
  EXPECT_EQ(*maps.KeepOnlyEnrolledCgroups({8}), 1u);
  EXPECT_EQ(*maps.KeepOnlyInboundPorts({port443, pod6}), 2u);
  // A second pass finds nothing left to remove.
  EXPECT_EQ(*maps.KeepOnlyMeshDestinations({narrow}), 0u);
  EXPECT_EQ(*maps.KeepOnlyEnrolledCgroups({8}), 0u);
  EXPECT_EQ(*maps.KeepOnlyInboundPorts({port443, pod6}), 0u);
  // And what was kept is still there: removing it now succeeds.
  EXPECT_TRUE(maps.RemoveMeshDestination(narrow).ok());
  EXPECT_TRUE(maps.UnenrollCgroup(8).ok());
  EXPECT_TRUE(maps.RemoveInboundPort(port443).ok());
  EXPECT_TRUE(maps.RemoveInboundPort(pod6).ok());
  EXPECT_FALSE(maps.RemoveInboundPort(pod4).ok());  // pruned
}

TEST_F(BpfLoaderTest, ARestartParksThePodRulesItPicksAndReadsTheSlotsOfTheRest) {
  auto loader = NewLoader();
  ASSERT_NE(loader, nullptr);
  InterceptionMaps& maps = loader->maps();
  auto host = *SocketAddress::Parse("0.0.0.0:443");
  auto pod4 = *SocketAddress::Parse("10.244.1.7:8080");
  auto pod6 = *SocketAddress::Parse("[fd00:244::7]:8080");
  for (const SocketAddress& rule : {host, pod4, pod6}) {
    ASSERT_TRUE(maps.AddInboundPort(rule, EnforcementMode::kEnforce, 3, 1).ok());
  }
  auto pod7 = *SocketAddress::Parse("10.244.1.8:8080");
  ASSERT_TRUE(maps.AddInboundPort(pod7, EnforcementMode::kEnforce, 9, 2).ok());
  // What a restart finds: every exact rule's slot, never the wildcard's.
  auto found = maps.ExactInboundSlots();
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, (std::map<std::string, uint32_t>{
                        {pod4.ToString(), 3}, {pod6.ToString(), 3}, {pod7.ToString(), 9}}));
  // The rules naming a slot this run's host listeners take (below 4, say).
  auto below4 = [](const SocketAddress&, uint32_t slot) { return slot < 4; };
  EXPECT_EQ(*maps.ParkExactInboundRules(KTRUST_PARKED_SLOT, below4), 2u);
  EXPECT_EQ(*maps.ParkExactInboundRules(KTRUST_PARKED_SLOT, below4), 0u) << "parked already";
  int inbound = *loader->map_fd("ktrust_inbound");
  auto slot_of = [&](const AbiAddress& addr, uint16_t port) -> uint32_t {
    ktrust_inbound_key key{};
    std::memcpy(key.addr, addr.data(), 16);
    key.port = port;
    ktrust_inbound_value value{};
    EXPECT_EQ(bpf_map_lookup_elem(inbound, &key, &value), 0);
    return value.listener;
  };
  EXPECT_EQ(slot_of(*ToAbiAddress(pod4), 8080), KTRUST_PARKED_SLOT);
  EXPECT_EQ(slot_of(*ToAbiAddress(pod6), 8080), KTRUST_PARKED_SLOT);
  EXPECT_EQ(slot_of(*ToAbiAddress(pod7), 8080), 9u) << "a pod rule the host's slots miss keeps its";
  EXPECT_EQ(slot_of(AbiAddress{}, 443), 3u) << "the host's wildcard rule keeps its listener";
  EXPECT_FALSE(maps.ParkExactInboundRules(KTRUST_MAX_INBOUND_LISTENERS, below4).ok());
}

TEST_F(BpfLoaderTest, EnforcementOutlivesTheLoaderAndARestartAdoptsIt) {
  auto first = NewLoader();
  ASSERT_NE(first, nullptr);
  ASSERT_TRUE(first->AttachCgroup(cgroup_->path()).ok());
  ASSERT_TRUE(first->AttachSockops(cgroup_->path()).ok());
  ASSERT_TRUE(first->AttachNetns(netns_->path()).ok());
  ASSERT_TRUE(first->maps().EnrollCgroup(cgroup_->id(), EnforcementMode::kEnforce, 42).ok());
  first.reset();  // the agent process is gone

  for (bpf_attach_type type : kCgroupHooks) EXPECT_EQ(AttachedToCgroup(type).size(), 1u);
  EXPECT_EQ(AttachedToNetns().size(), 1u);

  auto second = NewLoader();
  ASSERT_NE(second, nullptr);
  // The pinned maps were reused at load: the enrolment is still there.
  auto cgroups_fd = second->map_fd("ktrust_cgroups");
  ASSERT_TRUE(cgroups_fd.ok());
  uint64_t id = cgroup_->id();
  ktrust_cgroup_value value{};
  ASSERT_EQ(bpf_map_lookup_elem(*cgroups_fd, &id, &value), 0);
  EXPECT_EQ(value.workload, 42u);

  ASSERT_TRUE(second->AttachCgroup(cgroup_->path()).ok());
  ASSERT_TRUE(second->AttachSockops(cgroup_->path()).ok());
  ASSERT_TRUE(second->AttachNetns(netns_->path()).ok());
  ASSERT_EQ(second->attachments().size(), 8u);
  for (const auto& attachment : second->attachments()) {
    EXPECT_TRUE(attachment.adopted) << attachment.pin_path;
  }
  // Still one program per hook, and it is this run's.
  EXPECT_THAT(AttachedToCgroup(BPF_CGROUP_INET4_CONNECT),
              ::testing::ElementsAre(ProgramId(second->program_fd(BpfProgram::kConnect4))));
  EXPECT_THAT(AttachedToCgroup(BPF_CGROUP_SOCK_OPS),
              ::testing::ElementsAre(ProgramId(second->program_fd(BpfProgram::kSockops))));
  EXPECT_THAT(AttachedToNetns(),
              ::testing::ElementsAre(ProgramId(second->program_fd(BpfProgram::kSkLookup))));
}

TEST_F(BpfLoaderTest, UninstallDetachesEverythingAndRemovesThePins) {
  auto loader = NewLoader();
  ASSERT_NE(loader, nullptr);
  ASSERT_TRUE(loader->AttachCgroup(cgroup_->path()).ok());
  ASSERT_TRUE(loader->AttachSockops(cgroup_->path()).ok());
  ASSERT_TRUE(loader->AttachNetns(netns_->path()).ok());

  ASSERT_TRUE(loader->Uninstall().ok());
  for (bpf_attach_type type : kCgroupHooks) EXPECT_TRUE(AttachedToCgroup(type).empty());
  EXPECT_TRUE(AttachedToNetns().empty());
  EXPECT_FALSE(std::filesystem::exists(bpffs_->pin_dir()));
  EXPECT_TRUE(loader->attachments().empty());
}

TEST_F(BpfLoaderTest, UninstallWorksFromAFreshProcessWithNothingLoaded) {
  auto loader = NewLoader();
  ASSERT_NE(loader, nullptr);
  ASSERT_TRUE(loader->AttachCgroup(cgroup_->path()).ok());
  ASSERT_TRUE(loader->AttachSockops(cgroup_->path()).ok());
  ASSERT_TRUE(loader->AttachNetns(netns_->path()).ok());
  loader.reset();

  ASSERT_TRUE(BpfLoader::UninstallPinned(bpffs_->pin_dir()).ok());
  for (bpf_attach_type type : kCgroupHooks) EXPECT_TRUE(AttachedToCgroup(type).empty());
  EXPECT_TRUE(AttachedToNetns().empty());
  EXPECT_FALSE(std::filesystem::exists(bpffs_->pin_dir()));
  // Nothing left to remove is not an error.
  EXPECT_TRUE(BpfLoader::UninstallPinned(bpffs_->pin_dir()).ok());
}

TEST_F(BpfLoaderTest, TheSockopsLinkOfAGoneCgroupIsUnpinnedOnceTheKernelFreesIt) {
  auto loader = NewLoader();
  ASSERT_NE(loader, nullptr);
  auto child = TestCgroup::Create("sockops-child", cgroup_.get());
  ASSERT_TRUE(child.ok()) << child.status();
  uint64_t id = (*child)->id();
  ASSERT_TRUE(loader->AttachSockops((*child)->path()).ok());
  ASSERT_TRUE(loader->AttachSockops((*child)->path()).ok());  // once
  ASSERT_EQ(loader->attachments().size(), 1u);
  std::string pin = loader->attachments()[0].pin_path;
  EXPECT_THAT(pin, ::testing::EndsWith(absl::StrCat("/cgroup-", id, "-sockops")));
  EXPECT_EQ(*loader->PruneDetachedLinks(), 0u) << "its cgroup is alive";
  EXPECT_TRUE(std::filesystem::exists(pin));

  (*child).reset();  // rmdir
  // The kernel frees the cgroup, and detaches its links, a moment later.
  size_t pruned = 0;
  for (int i = 0; i < 500 && pruned == 0; ++i) {
    auto n = loader->PruneDetachedLinks();
    ASSERT_TRUE(n.ok()) << n.status();
    pruned = *n;
    if (pruned == 0) usleep(10 * 1000);
  }
  EXPECT_EQ(pruned, 1u);
  EXPECT_FALSE(std::filesystem::exists(pin));
  EXPECT_TRUE(loader->attachments().empty());
}

TEST_F(BpfLoaderTest, APodNamespaceGetsThePodProgramOnceAndReleasingItDetachesOnlyThat) {
  auto loader = NewLoader();
  ASSERT_NE(loader, nullptr);
  ASSERT_TRUE(loader->AttachNetns(netns_->path()).ok());
  ASSERT_TRUE(loader->AttachPodNetns(netns_->path()).ok());
  ASSERT_TRUE(loader->AttachPodNetns(netns_->path()).ok());
  uint32_t host = ProgramId(loader->program_fd(BpfProgram::kSkLookup));
  uint32_t pod = ProgramId(loader->program_fd(BpfProgram::kSkLookupPod));
  EXPECT_THAT(AttachedToNetns(), ::testing::UnorderedElementsAre(host, pod));
  ASSERT_EQ(loader->attachments().size(), 2u);
  std::string pod_pin = loader->attachments()[1].pin_path;
  EXPECT_THAT(pod_pin, ::testing::EndsWith(absl::StrCat("-", NetnsInode(), "-sk_lookup_pod")));

  absl::Status released = loader->ReleasePodNetns(NetnsInode());
  ASSERT_TRUE(released.ok()) << released;
  EXPECT_THAT(AttachedToNetns(), ::testing::ElementsAre(host));
  EXPECT_FALSE(std::filesystem::exists(pod_pin));
  ASSERT_EQ(loader->attachments().size(), 1u);
  EXPECT_THAT(loader->attachments()[0].pin_path, ::testing::EndsWith("-sk_lookup"));
  // Releasing what is not attached is not an error; attaching again works.
  released = loader->ReleasePodNetns(NetnsInode());
  EXPECT_TRUE(released.ok()) << released;
  ASSERT_TRUE(loader->AttachPodNetns(netns_->path()).ok());
  EXPECT_THAT(AttachedToNetns(), ::testing::UnorderedElementsAre(host, pod));
}

TEST_F(BpfLoaderTest, ARestartReleasesAPodNamespaceAnEarlierRunAttached) {
  auto first = NewLoader();
  ASSERT_NE(first, nullptr);
  ASSERT_TRUE(first->AttachPodNetns(netns_->path()).ok());
  first.reset();
  ASSERT_EQ(AttachedToNetns().size(), 1u);  // pinned: outlives the run

  auto second = NewLoader();
  ASSERT_NE(second, nullptr);
  absl::Status released = second->ReleasePodNetns(NetnsInode());
  ASSERT_TRUE(released.ok()) << released;
  EXPECT_TRUE(AttachedToNetns().empty());
  EXPECT_TRUE(second->attachments().empty());
}

TEST_F(BpfLoaderTest, RefusesAPinDirectoryOffBpffs) {
  auto loader = BpfLoader::Create({.pin_dir = "/tmp/ktrust-not-bpffs/ktrust"});
  ASSERT_FALSE(loader.ok());
  EXPECT_EQ(loader.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(loader.status().message()), HasSubstr("no BPF filesystem"));

  auto relative = BpfLoader::Create({.pin_dir = "ktrust"});
  EXPECT_EQ(relative.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(BpfLoaderTest, AttachingToSomethingThatIsNotACgroupFails) {
  auto loader = NewLoader();
  ASSERT_NE(loader, nullptr);
  absl::Status status = loader->AttachCgroup("/tmp");
  EXPECT_FALSE(status.ok());
  EXPECT_TRUE(loader->attachments().empty());
}

}  // namespace
}  // namespace ktrust
