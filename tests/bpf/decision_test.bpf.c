// Runs the shared decision logic (bpf/lib/decision.h) on crafted inputs, the
// way Cilium's bpf/tests wrap theirs: a tc program under BPF_PROG_TEST_RUN,
// the case in the packet. Its maps are the loader's, shared by fd, so the
// test fills them through the same InterceptionMaps API the agent uses.
#define KTRUST_DEFINE_MAPS
#include "lib/decision.h"

#include "bpf/decision_test_case.h"

SEC("tc")
int ktrust_decision_test(struct __sk_buff* skb) {
  struct ktrust_decision_case test;
  if (bpf_skb_load_bytes(skb, KTRUST_TEST_ETH_HLEN, &test, sizeof(test)) != 0) return -1;
  ktrust_decide_connect(&test.flow, ktrust_enrolled(test.cgroup_id), ktrust_settings(),
                        &test.decision);
  if (bpf_skb_store_bytes(skb, KTRUST_TEST_ETH_HLEN + __builtin_offsetof(typeof(test), decision),
                          &test.decision, sizeof(test.decision), 0) != 0) {
    return -1;
  }
  return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
