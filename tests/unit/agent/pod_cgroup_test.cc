#include "ktrust/agent/pod_cgroup.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ktrust {
namespace {

using ::testing::HasSubstr;

constexpr char kUid[] = "0b7c1f5e-3a2d-4c8e-9f10-2b3c4d5e6f70";
constexpr char kUidSystemd[] = "0b7c1f5e_3a2d_4c8e_9f10_2b3c4d5e6f70";
constexpr char kOtherUidSystemd[] = "11111111_2222_4333_8444_555555555555";
constexpr char kCid[] = "4f2a9c0d1e8b7a6f5e4d3c2b1a09f8e7d6c5b4a3928170615f4e3d2c1b0a9f8e";

std::string Join(std::initializer_list<std::string> parts) {
  std::string out;
  for (const std::string& p : parts) out += (out.empty() ? "" : "/") + p;
  return out;
}

struct Layout {
  const char* name;
  std::string path;
  bool has_container;
};

TEST(PodOfCgroupTest, ReadsEveryKubeletLayout) {
  const std::string burstable_slice =
      std::string("kubepods-burstable-pod") + kUidSystemd + ".slice";
  const Layout layouts[] = {
      {"systemd burstable containerd",
       Join({"kubepods.slice", "kubepods-burstable.slice", burstable_slice,
             std::string("cri-containerd-") + kCid + ".scope"}),
       true},
      {"systemd besteffort crio",
       Join({"kubepods.slice", "kubepods-besteffort.slice",
             std::string("kubepods-besteffort-pod") + kUidSystemd + ".slice",
             std::string("crio-") + kCid + ".scope"}),
       true},
      {"systemd guaranteed docker",
       Join({"kubepods.slice", std::string("kubepods-pod") + kUidSystemd + ".slice",
             std::string("docker-") + kCid + ".scope"}),
       true},
      {"systemd pod slice itself",
       Join({"kubepods.slice", "kubepods-burstable.slice", burstable_slice}), false},
      {"cgroupfs burstable", Join({"kubepods", "burstable", std::string("pod") + kUid, kCid}),
       true},
      {"cgroupfs besteffort crio",
       Join({"kubepods", "besteffort", std::string("pod") + kUid, std::string("crio-") + kCid}),
       true},
      {"cgroupfs guaranteed", Join({"kubepods", std::string("pod") + kUid, kCid}), true},
      // A cgroup namespace hides everything above its root: no "kubepods".
      {"systemd, prefix hidden", Join({burstable_slice, std::string("crio-") + kCid + ".scope"}),
       true},
      {"cgroupfs, prefix hidden", Join({std::string("pod") + kUid, kCid}), true},
      {"leading slash, as /proc/<pid>/cgroup",
       "/" + Join({"kubepods", std::string("pod") + kUid, kCid}), true},
      // A container's own nested cgroups belong to that container.
      {"nested below the container",
       Join({"kubepods", std::string("pod") + kUid, kCid, "init.scope"}), true},
      // A host that puts kubepods below another slice.
      {"deeper root",
       Join({"machine.slice", "kubelet.slice", "kubepods.slice",
             std::string("kubepods-pod") + kUidSystemd + ".slice",
             std::string("cri-containerd-") + kCid + ".scope"}),
       true},
  };
  for (const Layout& layout : layouts) {
    auto pod = PodOfCgroup(layout.path);
    ASSERT_TRUE(pod.ok()) << layout.name << ": " << layout.path << ": " << pod.status();
    EXPECT_EQ(pod->pod_uid, kUid) << layout.name;
    EXPECT_EQ(pod->container_id, layout.has_container ? kCid : "") << layout.name;
  }
}

TEST(PodOfCgroupTest, NotAPodIsNotFound) {
  for (const char* path :
       {"", "/", "system.slice/nginx.service", "kubepods.slice",
        "kubepods.slice/kubepods-burstable.slice", "kubepods/burstable",
        "user.slice/user-1000.slice/podman-123.scope",
        // A container scope alone says nothing about its pod.
        "cri-containerd-4f2a9c0d1e8b7a6f5e4d3c2b1a09f8e7d6c5b4a3928170615f4e3d2c1b0a9f8e.scope",
        "podcast.service", "pods/x"}) {
    auto pod = PodOfCgroup(path);
    EXPECT_EQ(pod.status().code(), absl::StatusCode::kNotFound) << path << ": " << pod.status();
  }
}

TEST(PodOfCgroupTest, RefusesConflictsAndMalformedNames) {
  const std::string pod_slice = std::string("kubepods-pod") + kUidSystemd + ".slice";
  const std::string scope = std::string("cri-containerd-") + kCid + ".scope";
  struct Case {
    std::string path;
    const char* reason;
  } cases[] = {
      // A pod that makes a cgroup named after another pod below its own.
      {Join({"kubepods.slice", pod_slice, scope,
             std::string("kubepods-pod") + kOtherUidSystemd + ".slice"}),
       "names two pods"},
      {Join({"kubepods", std::string("pod") + kUid, kCid,
             "pod11111111-2222-4333-8444-555555555555"}),
       "names two pods"},
      {Join({"kubepods.slice", pod_slice, scope, pod_slice}), "twice"},
      // Malformed UIDs: wrong length, uppercase, '-' in a systemd name.
      {Join({"kubepods.slice", "kubepods-pod0b7c1f5e_3a2d_4c8e_9f10_2b3c4d5e6f7.slice"}),
       "is not a pod UID"},
      {Join({"kubepods.slice", "kubepods-pod0B7C1F5E_3A2D_4C8E_9F10_2B3C4D5E6F70.slice"}),
       "is not a pod UID"},
      {Join({"kubepods.slice", std::string("kubepods-pod") + kUid + ".slice"}), "is not a pod UID"},
      {Join({"kubepods", "besteffort", "pod0b7c1f5e3a2d4c8e9f102b3c4d5e6f7", kCid}),
       "is not a pod UID"},
      {Join({"kubepods", "besteffort", "pod0b7c1f5e3a2d4c8e9f102b3c4d5e6f70a", kCid}),
       "is not a pod UID"},
      {Join({"kubepods", "pod0b7c1f5e-3a2d-4c8e-9f10-2b3c4d5e6f70-00", kCid}), "is not a pod UID"},
      {Join({"kubepods.slice", "kubepods-guaranteed-pod" + std::string(kUidSystemd) + ".slice"}),
       "neither a QoS slice"},
      {Join({"kubepods.slice", "kubepods-.slice"}), "neither a QoS slice"},
      // Below the pod level only containers.
      {Join({"kubepods.slice", pod_slice, "other.scope"}), "is not a container scope"},
      {Join({"kubepods.slice", pod_slice, std::string("containerd-") + kCid + ".scope"}),
       "is not a container scope"},
      {Join({"kubepods.slice", pod_slice, std::string("cri-containerd-") + kCid}),
       "is not a container scope"},
      {Join({"kubepods.slice", pod_slice, std::string("cri-containerd-") + kCid + "0.scope"}),
       "is not a container scope"},
      {Join({"kubepods", std::string("pod") + kUid, std::string(kCid).substr(1)}),
       "is not a container"},
      // cgroupfs pods hold bare IDs, not systemd scopes.
      {Join({"kubepods", std::string("pod") + kUid, scope}), "is not a container"},
      {Join({"kubepods", std::string("pod") + kUid,
             "4F2A9C0D1E8B7A6F5E4D3C2B1A09F8E7D6C5B4A3928170615F4E3D2C1B0A9F8E"}),
       "is not a container"},
  };
  for (const Case& c : cases) {
    auto pod = PodOfCgroup(c.path);
    EXPECT_EQ(pod.status().code(), absl::StatusCode::kInvalidArgument) << c.path;
    EXPECT_THAT(pod.status().message(), HasSubstr(c.reason)) << c.path;
  }
}

// kubelet names a static pod (read from a manifest file) by the md5 of its
// manifest: 32 lowercase hex digits, no '-' to escape.
TEST(PodOfCgroupTest, ReadsStaticPodUids) {
  const std::string uid = "9a4f3c2b1d0e8f7a6b5c4d3e2f1a0b9c";
  for (const std::string& path : {Join({"kubepods.slice", "kubepods-burstable.slice",
                                        "kubepods-burstable-pod" + uid + ".slice",
                                        std::string("cri-containerd-") + kCid + ".scope"}),
                                  Join({"kubepods", "besteffort", "pod" + uid, kCid})}) {
    auto pod = PodOfCgroup(path);
    ASSERT_TRUE(pod.ok()) << path << ": " << pod.status();
    EXPECT_EQ(pod->pod_uid, uid);
    EXPECT_EQ(pod->container_id, kCid);
  }
}

TEST(IsPodUidTest, Rfc4122TextFormOrStaticHash) {
  EXPECT_TRUE(IsPodUid(kUid));
  EXPECT_TRUE(IsPodUid("9a4f3c2b1d0e8f7a6b5c4d3e2f1a0b9c"));
  EXPECT_FALSE(IsPodUid("9A4F3C2B1D0E8F7A6B5C4D3E2F1A0B9C"));
  EXPECT_FALSE(IsPodUid("9a4f3c2b1d0e8f7a6b5c4d3e2f1a0b9g"));
  EXPECT_TRUE(IsPodUid("00000000-0000-0000-0000-000000000000"));
  for (const char* bad :
       {"", "0b7c1f5e-3a2d-4c8e-9f10-2b3c4d5e6f7", "0b7c1f5e-3a2d-4c8e-9f10-2b3c4d5e6f700",
        "0b7c1f5e3a2d-4c8e-9f10-2b3c4d5e6f70-", "0b7c1f5e_3a2d_4c8e_9f10_2b3c4d5e6f70",
        "0B7C1F5E-3A2D-4C8E-9F10-2B3C4D5E6F70", "0b7c1f5g-3a2d-4c8e-9f10-2b3c4d5e6f70",
        "{0b7c1f5e-3a2d-4c8e-9f10-2b3c4d5e6f7}"}) {
    EXPECT_FALSE(IsPodUid(bad)) << bad;
  }
}

}  // namespace
}  // namespace ktrust
