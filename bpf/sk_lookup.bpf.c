// sk_lookup, one attachment per network namespace: a connection attempt to an
// enforced (address, port) is handed to the agent's inbound listener, whose
// accepted socket keeps the original destination as its local address. With
// no listener (agent down, or a pod not served yet) it is refused unless the
// port is permissive. The same rules take a namespace's redirected mesh
// connections (connect4/6 rewrote them to the namespace's outbound target)
// to the agent's outbound listener, and only to it: whoever else binds that
// address and port gets nothing, agent up or down. In enforce mode UDP to an
// enforced port is dropped. ktrust_sk_lookup serves the host's namespace,
// ktrust_sk_lookup_pod each pod's.
#include "lib/decision.h"
#include "lib/telemetry.h"

static __always_inline void ktrust_report_refused(struct bpf_sk_lookup* ctx,
                                                  const struct ktrust_inbound_value* rule,
                                                  const __u8 local[16], const __u8 remote[16],
                                                  __u32 reason, __u8 protocol) {
  struct ktrust_event event = {
      .timestamp_ns = bpf_ktime_get_ns(),
      .workload = rule->workload,
      .src_port = bpf_ntohs(ctx->remote_port),
      .dst_port = (__u16)ctx->local_port,
      .type = KTRUST_EVENT_DENIED,
      .protocol = protocol,
      .reason = reason,
  };
  __builtin_memcpy(event.src_addr, remote, 16);
  __builtin_memcpy(event.dst_addr, local, 16);
  ktrust_emit(&event);
}

// A verdict for an enforced port whose listener cannot take the connection.
// An outbound target is the agent's or nobody's, whatever the mode.
static __always_inline int ktrust_without_listener(struct bpf_sk_lookup* ctx,
                                                   const struct ktrust_inbound_value* rule,
                                                   const __u8 local[16], const __u8 remote[16],
                                                   __u32 reason) {
  if (rule->mode == KTRUST_MODE_PERMISSIVE && !(rule->flags & KTRUST_INBOUND_OUTBOUND_LISTENER)) {
    ktrust_count(KTRUST_REASON_SK_LOOKUP_PERMISSIVE);
    return SK_PASS;
  }
  ktrust_count(reason);
  ktrust_report_refused(ctx, rule, local, remote, reason, IPPROTO_TCP);
  return SK_DROP;
}

// Both families' fields are read up front (zero when absent), so no branch
// chooses between context offsets.
static __always_inline void ktrust_lookup_addresses(struct bpf_sk_lookup* ctx, __u8 local[16],
                                                    __u8 remote[16]) {
  __u32 l4 = ctx->local_ip4, r4 = ctx->remote_ip4;
  ktrust_barrier_var(l4);
  ktrust_barrier_var(r4);
  __u32 l6[4] = {ctx->local_ip6[0], ctx->local_ip6[1], ctx->local_ip6[2], ctx->local_ip6[3]};
  __u32 r6[4] = {ctx->remote_ip6[0], ctx->remote_ip6[1], ctx->remote_ip6[2], ctx->remote_ip6[3]};
  if (ctx->family == AF_INET) {
    ktrust_addr_from_ip4(local, l4);
    ktrust_addr_from_ip4(remote, r4);
  } else {
    ktrust_addr_from_ip6(local, l6);
    ktrust_addr_from_ip6(remote, r6);
  }
}

// Steers a connection attempt to an enforced (address, port) to the agent
// listener of its rule's slot. exact_only: consult rules for the exact local
// address only, never the port's wildcard entry.
static __always_inline int ktrust_steer(struct bpf_sk_lookup* ctx, bool exact_only) {
  if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP) return SK_PASS;
  __u8 local[16], remote[16];
  ktrust_lookup_addresses(ctx, local, remote);

  const struct ktrust_inbound_value* rule =
      ktrust_inbound_rule(local, (__u16)ctx->local_port, exact_only);
  if (!rule) return SK_PASS;
  // The host's outbound target is on loopback, which in a pod is the pod's
  // own: a pod's outbound target is one of its own addresses.
  if (exact_only && (rule->flags & KTRUST_INBOUND_OUTBOUND_LISTENER) &&
      ktrust_addr_is_loopback(local)) {
    return SK_PASS;
  }
  if (ctx->protocol == IPPROTO_UDP) {
    // Datagrams carry no identity: an enforced port takes none. An outbound
    // target's rule is about redirected TCP only.
    if (rule->mode == KTRUST_MODE_PERMISSIVE || (rule->flags & KTRUST_INBOUND_OUTBOUND_LISTENER)) {
      return SK_PASS;
    }
    ktrust_count(KTRUST_REASON_SK_LOOKUP_UDP_REFUSED);
    ktrust_report_refused(ctx, rule, local, remote, KTRUST_REASON_SK_LOOKUP_UDP_REFUSED,
                          IPPROTO_UDP);
    return SK_DROP;
  }
  if (ktrust_is_agent_connect(remote, bpf_ntohs(ctx->remote_port), local, (__u16)ctx->local_port)) {
    ktrust_count(KTRUST_REASON_SK_LOOKUP_UPSTREAM);
    return SK_PASS;
  }

  __u32 slot = rule->listener;
  if (ctx->family == AF_INET6) slot += KTRUST_INBOUND_V6_SLOT_OFFSET;
  struct bpf_sock* listener = bpf_map_lookup_elem(&ktrust_listen, &slot);
  if (!listener) {
    // In a pod, an empty slot means the agent has not (or no longer) opened
    // listeners there; on the host, that the agent is down.
    return ktrust_without_listener(
        ctx, rule, local, remote,
        exact_only ? KTRUST_REASON_SK_LOOKUP_UNSERVED_NETNS : KTRUST_REASON_SK_LOOKUP_NO_LISTENER);
  }
  long err = bpf_sk_assign(ctx, listener, 0);
  bpf_sk_release(listener);
  if (err) {
    return ktrust_without_listener(ctx, rule, local, remote, KTRUST_REASON_SK_LOOKUP_ASSIGN_FAILED);
  }
  ktrust_count(KTRUST_REASON_SK_LOOKUP_STEERED);
  return SK_PASS;
}

// The host's network namespace: exact rules, then the port's wildcard.
SEC("sk_lookup")
int ktrust_sk_lookup(struct bpf_sk_lookup* ctx) { return ktrust_steer(ctx, false); }

// A pod's network namespace, where the agent has listeners of the pod's own.
// Only exact (pod address, port) rules apply: the wildcard entries describe
// the host's workloads, and a pod of another workload listening on the same
// port must not be steered or refused because of them.
SEC("sk_lookup")
int ktrust_sk_lookup_pod(struct bpf_sk_lookup* ctx) { return ktrust_steer(ctx, true); }
