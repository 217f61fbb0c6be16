#include "ktrust/bpf/kernel_features.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/magic.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "ktrust/bpf/cgroup2.h"
#include "ktrust/common/unique_fd.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71  // Linux 5.14; older C library headers lack it
#endif

namespace ktrust {
namespace {

// Loads "return 1" as a cgroup sock_addr program for an attach type: the
// program type is older than its attach types, so probing the type alone
// would not show that getpeername (5.8) is missing. Returns -errno or 1.
int ProbeSockAddrHook(bpf_attach_type attach_type) {
  const bpf_insn program[] = {
      {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .src_reg = 0, .off = 0, .imm = 1},
      {.code = BPF_JMP | BPF_EXIT, .dst_reg = 0, .src_reg = 0, .off = 0, .imm = 0},
  };
  LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = attach_type);
  int fd = bpf_prog_load(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, "ktrust_probe", "GPL", program, 2, &opts);
  if (fd < 0) return -errno;
  UniqueFd owned(fd);
  return 1;
}

// The two halves of a tracked connection's key: SO_NETNS_COOKIE (5.14)
// names the namespace of the agent's accepted socket, bpf_get_netns_cookie
// in sockops (5.15) that of the application's.
bool ProbeNetnsCookies() {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  uint64_t cookie = 0;
  socklen_t length = sizeof(cookie);
  if (!fd.valid() || getsockopt(fd.get(), SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &length) != 0) {
    return false;
  }
  return libbpf_probe_bpf_helper(BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_get_netns_cookie, nullptr) == 1;
}

bool OnBpffs(const std::string& path) {
  struct statfs fs {};
  return statfs(path.c_str(), &fs) == 0 && static_cast<unsigned long>(fs.f_type) == BPF_FS_MAGIC;
}

}  // namespace

KernelFeatures KernelFeatures::Probe(absl::string_view pin_dir) {
  KernelFeatures f;
  f.pin_dir_ = std::string(pin_dir);
  f.btf_ = access("/sys/kernel/btf/vmlinux", R_OK) == 0;
  if (auto mount = Cgroup2Mount(); mount.ok()) f.cgroup2_mount_ = *mount;

  int hooks = ProbeSockAddrHook(BPF_CGROUP_INET4_GETPEERNAME);
  f.sock_addr_hooks_ = hooks == 1;
  f.permitted_ = hooks != -EPERM;
  // libbpf's probes return 1, 0 (unsupported) or -errno.
  f.sk_lookup_ = libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SK_LOOKUP, nullptr) == 1;
  f.ring_buffer_ = libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, nullptr) == 1;
  f.netns_cookies_ = ProbeNetnsCookies();

  // The pin dir may not exist yet; then its parent decides.
  std::filesystem::path dir(f.pin_dir_);
  std::error_code ec;
  f.bpffs_ = std::filesystem::exists(dir, ec) ? OnBpffs(dir.string())
                                              : OnBpffs(dir.parent_path().string());
  return f;
}

absl::Status KernelFeatures::Require() const {
  auto missing = [](absl::string_view sentence) {
    return absl::FailedPreconditionError(
        absl::StrCat(sentence, "; ktrust refuses to enforce without it"));
  };
  if (!permitted_) {
    return missing(
        "loading BPF programs was refused (EPERM): the agent needs root, or CAP_BPF with "
        "CAP_PERFMON and CAP_NET_ADMIN (Linux 5.8 or later)");
  }
  if (!btf_) {
    return missing(
        "kernel BTF (/sys/kernel/btf/vmlinux) is missing: ktrust's CO-RE programs need a kernel "
        "built with CONFIG_DEBUG_INFO_BTF, Linux 5.4 or later");
  }
  if (cgroup2_mount_.empty()) {
    return missing(
        "no cgroup v2 hierarchy is mounted (none in /proc/self/mountinfo): per-workload "
        "interception needs cgroup2 with CONFIG_CGROUP_BPF, Linux 4.10 or later");
  }
  if (!sock_addr_hooks_) {
    return missing(
        "the cgroup getpeername hook is not supported by this kernel: transparent redirection "
        "needs the cgroup sock_addr hooks of Linux 5.8 or later");
  }
  if (!ring_buffer_) {
    return missing(
        "the BPF ring buffer is not supported by this kernel: interception events need "
        "Linux 5.8 or later");
  }
  if (!sk_lookup_) {
    return missing(
        "sk_lookup BPF programs are not supported by this kernel: inbound steering needs "
        "Linux 5.9 or later");
  }
  if (!netns_cookies_) {
    return missing(
        "network namespace cookies (SO_NETNS_COOKIE, bpf_get_netns_cookie in sockops) are not "
        "supported by this kernel: telling apart the connections of pods, whose agent "
        "listeners share one address, needs Linux 5.15 or later");
  }
  if (!bpffs_) {
    return missing(absl::StrCat("no BPF filesystem holds ", pin_dir_,
                                ": pinned links that outlive the agent need bpffs mounted there "
                                "(mount -t bpf bpf /sys/fs/bpf) and Linux 5.7 or later"));
  }
  return absl::OkStatus();
}

}  // namespace ktrust
