// What happens to an enrolled workload's connection or datagram, and to an
// inbound connection attempt. Pure logic over the maps: no context, no
// side effects, so tests/bpf/decision_test.bpf.c can run it with crafted
// inputs. The SEC() programs gather the inputs and apply the verdict.
#pragma once

#include "lib/addr.h"
#include "lib/maps.h"

// How the agent classified a cgroup: NULL when it has not (yet). The only
// lookup a classified cgroup that is not enrolled pays.
static __always_inline const struct ktrust_cgroup_value* ktrust_enrolled(__u64 cgroup_id) {
  return bpf_map_lookup_elem(&ktrust_cgroups, &cgroup_id);
}

static __always_inline const struct ktrust_config* ktrust_settings(void) {
  __u32 zero = 0;
  return bpf_map_lookup_elem(&ktrust_config, &zero);
}

// The first rule whose range holds port decides; an empty slot ends the list.
static __always_inline __u8 ktrust_match_port(const struct ktrust_mesh_value* value, __u16 port) {
#pragma unroll
  for (int i = 0; i < KTRUST_MESH_RULES_PER_PREFIX; i++) {
    const struct ktrust_port_rule* rule = &value->rules[i];
    if (rule->action == KTRUST_MESH_ACTION_NONE) break;
    if (port >= rule->first_port && port <= rule->last_port) return rule->action;
  }
  return KTRUST_MESH_ACTION_NONE;
}

static __always_inline __u8 ktrust_mesh_action(const __u8 addr[16], __u16 port) {
  struct ktrust_mesh_key key = {.prefixlen = 128};
  __builtin_memcpy(key.addr, addr, 16);
  const struct ktrust_mesh_value* value = bpf_map_lookup_elem(&ktrust_mesh, &key);
  if (!value) return KTRUST_MESH_ACTION_NONE;
  return ktrust_match_port(value, port);
}

static __always_inline void ktrust_set(struct ktrust_decision* out, __u32 verdict, __u32 reason,
                                       __u32 event) {
  out->verdict = verdict;
  out->reason = reason;
  out->event = event;
}

// connect() or sendmsg() by a workload. enrolled is NULL, or says
// KTRUST_MODE_NOT_ENROLLED, for a cgroup that is not enrolled; settings may
// be NULL (treated as "agent not configured").
static __always_inline void ktrust_decide_connect(const struct ktrust_flow* flow,
                                                  const struct ktrust_cgroup_value* enrolled,
                                                  const struct ktrust_config* settings,
                                                  struct ktrust_decision* out) {
  out->workload = 0;
  out->mode = 0;
  ktrust_set(out, KTRUST_VERDICT_PASS, KTRUST_REASON_MAX, 0);
  if (!enrolled || enrolled->mode == KTRUST_MODE_NOT_ENROLLED) return;

  // Anything but an explicit permissive is enforce: a zeroed entry fails closed.
  bool enforce = enrolled->mode != KTRUST_MODE_PERMISSIVE;
  out->workload = enrolled->workload;
  out->mode = enforce ? KTRUST_MODE_ENFORCE : KTRUST_MODE_PERMISSIVE;

  if (settings && settings->agent_mark != 0 && flow->mark == settings->agent_mark) {
    ktrust_set(out, KTRUST_VERDICT_PASS, KTRUST_REASON_CONNECT_AGENT_MARK, 0);
    return;
  }

  __u8 action = ktrust_mesh_action(flow->dst_addr, flow->dst_port);
  bool tcp = flow->protocol == IPPROTO_TCP;
  if (action == KTRUST_MESH_ACTION_NONE) {
    ktrust_set(out, KTRUST_VERDICT_PASS, KTRUST_REASON_CONNECT_NOT_MESH, 0);
    return;
  }
  if (action == KTRUST_MESH_ACTION_BYPASS) {
    ktrust_set(out, KTRUST_VERDICT_PASS,
               tcp ? KTRUST_REASON_CONNECT_BYPASS_RULE : KTRUST_REASON_UDP_BYPASS_RULE,
               KTRUST_EVENT_BYPASSED);
    return;
  }

  // v1 tunnels TCP only. Anything else to the mesh (UDP, MPTCP, SCTP) would
  // leave in plaintext, so enforce mode refuses it.
  if (!tcp) {
    if (enforce) {
      ktrust_set(out, KTRUST_VERDICT_DENY, KTRUST_REASON_UDP_DENIED, KTRUST_EVENT_DENIED);
    } else {
      ktrust_set(out, KTRUST_VERDICT_PASS, KTRUST_REASON_UDP_PERMISSIVE, KTRUST_EVENT_BYPASSED);
    }
    return;
  }

  if (!settings || settings->outbound_port == 0) {
    if (enforce) {
      ktrust_set(out, KTRUST_VERDICT_DENY, KTRUST_REASON_CONNECT_NO_AGENT, KTRUST_EVENT_DENIED);
    } else {
      ktrust_set(out, KTRUST_VERDICT_PASS, KTRUST_REASON_CONNECT_NO_AGENT, KTRUST_EVENT_BYPASSED);
    }
    return;
  }
  ktrust_set(out, KTRUST_VERDICT_REDIRECT, KTRUST_REASON_CONNECT_REDIRECTED,
             KTRUST_EVENT_REDIRECTED);
}

// connect() or sendmsg() by a cgroup the agent has not classified: it may be
// a workload created a moment ago, so whatever an enforce-mode workload could
// not send in plaintext is refused, and the rest passes uncounted, as for a
// cgroup that is not enrolled. The caller refuses only under a watched cgroup.
static __always_inline void ktrust_decide_unclassified(const struct ktrust_flow* flow,
                                                       const struct ktrust_config* settings,
                                                       struct ktrust_decision* out) {
  const struct ktrust_cgroup_value as_enforced = {.mode = KTRUST_MODE_ENFORCE};
  ktrust_decide_connect(flow, &as_enforced, settings, out);
  out->workload = 0;
  out->mode = 0;
  if (out->verdict == KTRUST_VERDICT_PASS) {
    ktrust_set(out, KTRUST_VERDICT_PASS, KTRUST_REASON_MAX, 0);
    return;
  }
  ktrust_set(out, KTRUST_VERDICT_DENY, KTRUST_REASON_CONNECT_UNCLASSIFIED, KTRUST_EVENT_DENIED);
}

// The enforced-port rule for a local (address, port): the exact address
// first, then (unless exact_only) the port's wildcard entry. NULL: not
// enforced.
static __always_inline const struct ktrust_inbound_value* ktrust_inbound_rule(const __u8 addr[16],
                                                                              __u16 port,
                                                                              bool exact_only) {
  // The all-zero address is the wildcard's key: no exact rule can have it.
  if (exact_only && ktrust_addr_is_zero(addr)) return NULL;
  struct ktrust_inbound_key key = {.port = port};
  __builtin_memcpy(key.addr, addr, 16);
  const struct ktrust_inbound_value* rule = bpf_map_lookup_elem(&ktrust_inbound, &key);
  if (rule || exact_only) return rule;
  __builtin_memset(key.addr, 0, sizeof(key.addr));
  return bpf_map_lookup_elem(&ktrust_inbound, &key);
}

// The agent's own connections reach the application, not the agent again.
// Recorded by ktrust_sockops_agent from the agent's marked sockets: the SYN's
// (source, destination) is one of them.
static __always_inline bool ktrust_is_agent_connect(const __u8 remote[16], __u16 remote_port,
                                                    const __u8 local[16], __u16 local_port) {
  struct ktrust_tuple key = {.src_port = remote_port, .dst_port = local_port};
  __builtin_memcpy(key.src_addr, remote, 16);
  __builtin_memcpy(key.dst_addr, local, 16);
  return bpf_map_lookup_elem(&ktrust_agent_connects, &key) != NULL;
}
