// Loads ktrust's BPF programs and attaches them where interception should
// happen, so that enforcement outlives the agent process:
//
//   <pin_dir>/maps/<map>                  every map, reused by the next run
//   <pin_dir>/links/cgroup-<id>-<prog>    connect/sendmsg/getpeername/sockops,
//                                         sockops_agent (the agent's own cgroup)
//   <pin_dir>/links/netns-<inode>-sk_lookup      the agent's own namespace
//   <pin_dir>/links/netns-<inode>-sk_lookup_pod  each pod's namespace
//
// A restarted agent adopts the pinned maps (libbpf reuses them at load) and
// the pinned links (their programs are swapped for this run's in place, so a
// hook is never attached twice). Uninstall removes everything under pin_dir.
//
// Thread-safe after Create: attaching, releasing, pruning and reading
// attachments() may happen on any thread (the agent's enrolment passes,
// its pods, its status requests); one lock inside serializes them. maps()
// has locks of its own where it needs them (InterceptionMaps).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "ktrust/bpf/interception_maps.h"
#include "ktrust/bpf/kernel_features.h"
#include "ktrust/bpf/libbpf_ptr.h"

struct ktrust_bpf;  // the bpftool skeleton (ktrust_bpf.skel.h)

namespace ktrust {

struct BpfLoaderOptions {
  // A directory ktrust owns on a BPF filesystem (it or its parent must be
  // bpffs); created if missing.
  std::string pin_dir = "/sys/fs/bpf/ktrust";

  absl::Status Validate() const;
};

enum class BpfProgram {
  kConnect4,
  kConnect6,
  kSendmsg4,
  kSendmsg6,
  kGetpeername4,
  kGetpeername6,
  kSockops,
  kSockopsAgent,
  kSkLookup,
  kSkLookupPod,
};

class BpfLoader {
 public:
  // Probes the kernel (KernelFeatures::Require), then loads the programs,
  // reusing maps pinned by an earlier run.
  static absl::StatusOr<std::unique_ptr<BpfLoader>> Create(BpfLoaderOptions options);
  // Closes this process's handles. Pinned links stay attached.
  ~BpfLoader();
  BpfLoader(const BpfLoader&) = delete;
  BpfLoader& operator=(const BpfLoader&) = delete;

  // Attaches the cgroup programs (connect4/6, sendmsg4/6, getpeername4/6)
  // to a cgroup v2 directory; they apply to its whole subtree, and act on
  // the cgroups enrolled in maps(). Idempotent, and adopts links an earlier
  // run pinned for the same cgroup.
  absl::Status AttachCgroup(absl::string_view cgroup_dir);
  // Attaches sockops, which re-keys and cleans up the redirected
  // connections, to one enrolled cgroup (or a parent of several). Not at
  // the root: there every socket of every cgroup would run it, and it is
  // most of what interception adds to a connect() that is not intercepted
  // (docs/performance.md). Idempotent and adopting, as above.
  absl::Status AttachSockops(absl::string_view cgroup_dir);
  // Attaches the agent's sockops to the agent's own cgroup: it records each
  // connection the agent's marked sockets open (ktrust_agent_connects), which
  // is what sk_lookup lets through to an enforced port's application.
  // Idempotent and adopting, as above.
  absl::Status AttachAgentSockops(absl::string_view cgroup_dir);
  // Unpins the links whose cgroup or network namespace the kernel has
  // freed, which detached them: a sockops link lives as long as its cgroup
  // and so sees the close of every socket made there. Returns how many.
  absl::StatusOr<size_t> PruneDetachedLinks();
  // Attaches sk_lookup to a network namespace (/proc/<pid>/ns/net,
  // /run/netns/<name>). Idempotent and adopting, as above.
  absl::Status AttachNetns(absl::string_view netns_path);
  // Attaches the pod variant to a pod's network namespace: only exact
  // (address, port) rules apply there, steered to the listeners the agent
  // opened in that namespace, and refused while their slot is empty (see
  // bpf/sk_lookup.bpf.c). Idempotent and adopting, as above.
  absl::Status AttachPodNetns(absl::string_view netns_path);
  // Detaches and unpins what AttachPodNetns attached to the namespace with
  // this inode, pinned by this run or an earlier one. Nothing attached is
  // not an error.
  absl::Status ReleasePodNetns(uint64_t netns_inode);

  // Unpins every link and map under pin_dir and closes this loader's links,
  // which detaches the programs. The loaded maps stay usable until the
  // loader is destroyed.
  absl::Status Uninstall();
  // The same without a loaded instance (`ktrustd --uninstall`). A missing
  // pin_dir is not an error.
  static absl::Status UninstallPinned(absl::string_view pin_dir);

  InterceptionMaps& maps() { return maps_; }
  const InterceptionMaps& maps() const { return maps_; }
  const KernelFeatures& features() const { return features_; }
  int program_fd(BpfProgram program) const;
  // By ELF name ("ktrust_mesh", ...): for tests that share the maps with
  // their own programs.
  absl::StatusOr<int> map_fd(absl::string_view name) const;
  // The ring buffer of struct ktrust_event records (InterceptionEventReader).
  int events_fd() const;

  struct Attachment {
    std::string pin_path;
    bool adopted = false;  // found pinned by an earlier run
  };
  // A copy: enrolment may attach more meanwhile.
  std::vector<Attachment> attachments() const;

 private:
  struct SkeletonDeleter {
    void operator()(ktrust_bpf* skeleton) const;
  };
  // What a pinned link must be attached to for this loader to adopt it.
  struct LinkTarget {
    uint32_t link_type = 0;    // enum bpf_link_type
    uint32_t attach_type = 0;  // enum bpf_attach_type
    uint64_t id = 0;           // cgroup id or netns inode
  };

  BpfLoader(BpfLoaderOptions options, KernelFeatures features,
            std::unique_ptr<ktrust_bpf, SkeletonDeleter> skeleton);
  bpf_program* program(BpfProgram program) const;
  // Whether this run attached (or adopted) the link pinned at pin_path.
  bool Holds(const std::string& pin_path) const;
  absl::Status AttachToNetns(BpfProgram program, absl::string_view name,
                             absl::string_view netns_path);
  enum class CgroupHooks { kSockAddr, kSockops, kAgentSockops };
  absl::Status AttachToCgroup(absl::string_view cgroup_dir, CgroupHooks hooks);
  std::string CgroupPinPath(uint64_t cgroup_id, absl::string_view name) const;
  // Detaches through the pin (which also covers a link an earlier run
  // pinned and this one never adopted) and forgets it.
  absl::Status ReleaseLink(const std::string& pin_path) ABSL_LOCKS_EXCLUDED(mu_);
  std::string NetnsPinPath(uint64_t netns_inode, absl::string_view name) const;
  absl::Status AttachOrAdopt(BpfProgram program, const std::string& pin_path,
                             const LinkTarget& target, int target_fd) ABSL_LOCKS_EXCLUDED(mu_);

  BpfLoaderOptions options_;
  KernelFeatures features_;
  std::unique_ptr<ktrust_bpf, SkeletonDeleter> skeleton_;
  InterceptionMaps maps_;
  mutable absl::Mutex mu_;  // links_ and attachments_, and each attach or release as a whole
  std::vector<BpfLinkPtr> links_ ABSL_GUARDED_BY(mu_);  // links_[i] is attachments_[i]'s
  std::vector<Attachment> attachments_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ktrust
