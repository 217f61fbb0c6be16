// What the kernel offers interception, probed once at start. The agent
// refuses to enforce rather than enforce half: Require() names the first
// missing feature and the kernel version that has it, in one sentence.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace ktrust {

class KernelFeatures {
 public:
  // pin_dir: where the loader will pin (it or its parent must be on bpffs).
  static KernelFeatures Probe(absl::string_view pin_dir);

  // OK, or FailedPrecondition with one sentence such as "sk_lookup BPF
  // programs are not supported by this kernel: inbound steering needs
  // Linux 5.9 or later".
  absl::Status Require() const;

  bool btf() const { return btf_; }
  // Empty when no cgroup2 filesystem is mounted.
  const std::string& cgroup2_mount() const { return cgroup2_mount_; }
  bool sock_addr_hooks() const { return sock_addr_hooks_; }
  bool sk_lookup() const { return sk_lookup_; }
  bool ring_buffer() const { return ring_buffer_; }
  bool netns_cookies() const { return netns_cookies_; }
  bool bpffs() const { return bpffs_; }

 private:
  KernelFeatures() = default;

  bool btf_ = false;
  std::string cgroup2_mount_;
  bool sock_addr_hooks_ = false;  // cgroup connect/sendmsg/getpeername hooks
  bool sk_lookup_ = false;
  bool ring_buffer_ = false;
  bool netns_cookies_ = false;  // SO_NETNS_COOKIE and bpf_get_netns_cookie in sockops
  bool bpffs_ = false;
  bool permitted_ = true;  // false: probes failed with EPERM
  std::string pin_dir_;
};

}  // namespace ktrust
