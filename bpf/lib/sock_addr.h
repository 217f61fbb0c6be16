// The part of connect/sendmsg handling that touches the bpf_sock_addr
// context: read the flow, account for the decision.
#pragma once

#include "lib/decision.h"
#include "lib/telemetry.h"

static __always_inline void ktrust_flow_from_ctx(struct bpf_sock_addr* ctx, bool v6,
                                                 struct ktrust_flow* flow) {
  if (v6) {
    __u32 ip6[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
    ktrust_addr_from_ip6(flow->dst_addr, ip6);
  } else {
    ktrust_addr_from_ip4(flow->dst_addr, ctx->user_ip4);
  }
  flow->dst_port = bpf_ntohs((__u16)ctx->user_port);
  flow->protocol = ctx->protocol;
  struct bpf_sock* sk = ctx->sk;
  flow->mark = sk ? sk->mark : 0;
}

// Whether a strict ancestor of the current cgroup is watched by the agent,
// which classifies every cgroup below it: one missing from ktrust_cgroups is
// then new and not classified yet. Level 0 is the hierarchy's root.
static __always_inline bool ktrust_under_watched(__u64 cgroup_id) {
  for (int level = 0; level < KTRUST_MAX_CGROUP_DEPTH; level++) {
    __u64 ancestor = bpf_get_current_ancestor_cgroup_id(level);
    if (ancestor == 0 || ancestor == cgroup_id) return false;
    if (bpf_map_lookup_elem(&ktrust_watched, &ancestor)) return true;
  }
  return false;
}

// The decision for a connect() or sendmsg(): by the cgroup's enrolment, or,
// for a cgroup the agent has not classified, refusing what would reach the
// mesh in plaintext when it was created under a watched cgroup.
static __always_inline void ktrust_decide(const struct ktrust_flow* flow,
                                          const struct ktrust_cgroup_value* enrolled,
                                          const struct ktrust_config* settings, __u64 cgroup_id,
                                          struct ktrust_decision* decision) {
  if (enrolled) {
    ktrust_decide_connect(flow, enrolled, settings, decision);
    return;
  }
  ktrust_decide_unclassified(flow, settings, decision);
  // The walk only for what would be refused: the rest never pays it.
  if (decision->verdict == KTRUST_VERDICT_DENY && !ktrust_under_watched(cgroup_id)) {
    ktrust_set(decision, KTRUST_VERDICT_PASS, KTRUST_REASON_MAX, 0);
  }
}

// Counts the decision and, when it has one, reports its event.
static __always_inline void ktrust_account(struct bpf_sock_addr* ctx,
                                           const struct ktrust_flow* flow,
                                           const struct ktrust_decision* decision,
                                           __u64 cgroup_id) {
  if (decision->reason >= KTRUST_REASON_MAX) return;
  ktrust_count(decision->reason);
  if (decision->event == 0) return;
  struct ktrust_event event = {
      .timestamp_ns = bpf_ktime_get_ns(),
      .cgroup_id = cgroup_id,
      .socket_cookie = bpf_get_socket_cookie(ctx),
      .pid = bpf_get_current_pid_tgid() >> 32,
      .workload = decision->workload,
      .dst_port = flow->dst_port,
      .type = decision->event,
      .protocol = flow->protocol,
      .reason = decision->reason,
  };
  __builtin_memcpy(event.dst_addr, flow->dst_addr, 16);
  ktrust_emit(&event);
}
