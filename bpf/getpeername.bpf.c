// cgroup/getpeername4 and cgroup/getpeername6: a redirected application sees
// the peer it dialled, not the agent's listener.
#include "lib/telemetry.h"

static __always_inline int ktrust_getpeername(struct bpf_sock_addr* ctx, bool v6) {
  __u64 cookie = bpf_get_socket_cookie(ctx);
  const struct ktrust_orig_dst* record = bpf_map_lookup_elem(&ktrust_orig_ck, &cookie);
  if (!record) return KTRUST_SYSCALL_ALLOW;

  ctx->user_port = bpf_htons(record->port);
  __u32 ip6[4];
  __builtin_memcpy(ip6, record->addr, 16);
  if (v6) {
    ctx->user_ip6[0] = ip6[0];
    ctx->user_ip6[1] = ip6[1];
    ctx->user_ip6[2] = ip6[2];
    ctx->user_ip6[3] = ip6[3];
  } else {
    ctx->user_ip4 = ip6[3];
  }
  ktrust_count(KTRUST_REASON_GETPEERNAME_REWRITTEN);
  return KTRUST_SYSCALL_ALLOW;
}

SEC("cgroup/getpeername4")
int ktrust_getpeername4(struct bpf_sock_addr* ctx) { return ktrust_getpeername(ctx, false); }

SEC("cgroup/getpeername6")
int ktrust_getpeername6(struct bpf_sock_addr* ctx) { return ktrust_getpeername(ctx, true); }
