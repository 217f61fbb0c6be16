// cgroup/sendmsg4 and cgroup/sendmsg6: an enrolled workload's unconnected
// datagrams to the mesh are refused in enforce mode (v1 does not tunnel UDP
// and must not leak it), as are those of a cgroup the agent has not
// classified yet; connect() on UDP is covered by connect.bpf.c.
#include "lib/sock_addr.h"

static __always_inline int ktrust_sendmsg(struct bpf_sock_addr* ctx, bool v6) {
  __u64 cgroup_id = bpf_get_current_cgroup_id();
  const struct ktrust_cgroup_value* enrolled = ktrust_enrolled(cgroup_id);
  if (enrolled && enrolled->mode == KTRUST_MODE_NOT_ENROLLED) return KTRUST_SYSCALL_ALLOW;

  struct ktrust_flow flow = {};
  ktrust_flow_from_ctx(ctx, v6, &flow);
  struct ktrust_decision decision;
  ktrust_decide(&flow, enrolled, ktrust_settings(), cgroup_id, &decision);
  // sendmsg never redirects: a TCP verdict cannot reach here, but be explicit.
  if (decision.verdict == KTRUST_VERDICT_REDIRECT) decision.verdict = KTRUST_VERDICT_PASS;
  ktrust_account(ctx, &flow, &decision, cgroup_id);
  return decision.verdict == KTRUST_VERDICT_DENY ? KTRUST_SYSCALL_REFUSE : KTRUST_SYSCALL_ALLOW;
}

SEC("cgroup/sendmsg4")
int ktrust_sendmsg4(struct bpf_sock_addr* ctx) { return ktrust_sendmsg(ctx, false); }

SEC("cgroup/sendmsg6")
int ktrust_sendmsg6(struct bpf_sock_addr* ctx) { return ktrust_sendmsg(ctx, true); }
