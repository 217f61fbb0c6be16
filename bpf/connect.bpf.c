// cgroup/connect4 and cgroup/connect6: an enrolled workload's TCP connection
// to the mesh is rewritten to its network namespace's outbound target, which
// sk_lookup hands to the agent's outbound listener there, after its original
// destination is recorded by socket cookie. A namespace without a target is
// not served: refused. Other protocols to the mesh are refused in enforce mode. A cgroup
// the agent has not classified yet is refused whatever would be redirected.
#include "lib/sock_addr.h"

// Stores where the application was going; sockops re-keys it by 4-tuple.
static __always_inline int ktrust_record(struct bpf_sock_addr* ctx, const struct ktrust_flow* flow,
                                         const struct ktrust_decision* decision, __u64 cgroup_id,
                                         bool v6) {
  __u64 cookie = bpf_get_socket_cookie(ctx);
  struct ktrust_orig_dst record = {
      .cgroup_id = cgroup_id,
      .port = flow->dst_port,
      .family = v6 ? AF_INET6 : AF_INET,
      .workload = decision->workload,
      .pid = bpf_get_current_pid_tgid() >> 32,
      .mode = decision->mode,
      // Every pod has an outbound listener at the same address: the
      // namespace tells their connections apart (ktrust_tuple).
      .netns_cookie = bpf_get_netns_cookie(ctx),
  };
  __builtin_memcpy(record.addr, flow->dst_addr, 16);
  return bpf_map_update_elem(&ktrust_orig_ck, &cookie, &record, BPF_ANY);
}

// Where this namespace's mesh connections go, for this family. NULL: the
// agent serves no outbound listener there.
static __always_inline const struct ktrust_outbound_target* ktrust_target(
    const struct ktrust_outbound_target* target, const struct ktrust_flow* flow, bool v6) {
  if (!target) return NULL;
  bool ip4 = !v6 || ktrust_addr_is_v4_mapped(flow->dst_addr);
  return (target->flags & (ip4 ? KTRUST_TARGET_HAS_IP4 : KTRUST_TARGET_HAS_IP6)) ? target : NULL;
}

static __always_inline void ktrust_rewrite(struct bpf_sock_addr* ctx,
                                           const struct ktrust_flow* flow,
                                           const struct ktrust_outbound_target* target,
                                           const struct ktrust_config* settings, bool v6) {
  ctx->user_port = bpf_htons(settings->outbound_port);
  if (!v6) {
    ctx->user_ip4 = target->ip4;
    return;
  }
  // An AF_INET6 socket dialling a mapped IPv4 address reaches the IPv4
  // listener through its mapped form; only real IPv6 goes to the IPv6 one.
  __u32 ip6[4];
  if (ktrust_addr_is_v4_mapped(flow->dst_addr)) {
    ip6[0] = 0;
    ip6[1] = 0;
    ip6[2] = bpf_htonl(0x0000ffff);
    ip6[3] = target->ip4;
  } else {
    __builtin_memcpy(ip6, target->ip6, 16);
  }
  ctx->user_ip6[0] = ip6[0];
  ctx->user_ip6[1] = ip6[1];
  ctx->user_ip6[2] = ip6[2];
  ctx->user_ip6[3] = ip6[3];
}

static __always_inline int ktrust_connect(struct bpf_sock_addr* ctx, bool v6) {
  __u64 cgroup_id = bpf_get_current_cgroup_id();
  const struct ktrust_cgroup_value* enrolled = ktrust_enrolled(cgroup_id);
  if (enrolled && enrolled->mode == KTRUST_MODE_NOT_ENROLLED) return KTRUST_SYSCALL_ALLOW;

  struct ktrust_flow flow = {};
  ktrust_flow_from_ctx(ctx, v6, &flow);
  const struct ktrust_config* settings = ktrust_settings();
  struct ktrust_decision decision;
  ktrust_decide(&flow, enrolled, settings, cgroup_id, &decision);

  // settings is non-NULL whenever the verdict is redirect.
  if (decision.verdict == KTRUST_VERDICT_REDIRECT && settings) {
    __u64 netns = bpf_get_netns_cookie(ctx);
    const struct ktrust_outbound_target* target =
        ktrust_target(bpf_map_lookup_elem(&ktrust_outbound_targets, &netns), &flow, v6);
    __u32 failed = 0;
    if (!target) {
      failed = KTRUST_REASON_CONNECT_UNSERVED_NETNS;
    } else if (ktrust_record(ctx, &flow, &decision, cgroup_id, v6) != 0) {
      failed = KTRUST_REASON_CONNECT_RECORD_FAILED;
    } else {
      ktrust_rewrite(ctx, &flow, target, settings, v6);
    }
    if (failed && decision.mode == KTRUST_MODE_PERMISSIVE) {
      // The agent cannot serve it: plaintext is the lesser evil only here.
      ktrust_set(&decision, KTRUST_VERDICT_PASS, failed, KTRUST_EVENT_BYPASSED);
    } else if (failed) {
      ktrust_set(&decision, KTRUST_VERDICT_DENY, failed, KTRUST_EVENT_DENIED);
    }
  }
  ktrust_account(ctx, &flow, &decision, cgroup_id);
  return decision.verdict == KTRUST_VERDICT_DENY ? KTRUST_SYSCALL_REFUSE : KTRUST_SYSCALL_ALLOW;
}

SEC("cgroup/connect4")
int ktrust_connect4(struct bpf_sock_addr* ctx) { return ktrust_connect(ctx, false); }

SEC("cgroup/connect6")
int ktrust_connect6(struct bpf_sock_addr* ctx) { return ktrust_connect(ctx, true); }
