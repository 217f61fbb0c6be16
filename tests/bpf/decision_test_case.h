/* One BPF_PROG_TEST_RUN case for decision_test.bpf.c, shared with
 * decision_test.cc. It travels as the payload after a zeroed Ethernet
 * header: the program reads the inputs and writes the decision back. */
#ifndef KTRUST_TESTS_BPF_DECISION_TEST_CASE_H_
#define KTRUST_TESTS_BPF_DECISION_TEST_CASE_H_

#include "ktrust/bpf/abi.h"

#define KTRUST_TEST_ETH_HLEN 14

struct ktrust_decision_case {
  __u64 cgroup_id; /* looked up in ktrust_cgroups, as bpf_get_current_cgroup_id would be */
  struct ktrust_flow flow;
  __u32 pad;
  struct ktrust_decision decision; /* written by the program */
  __u32 pad2;
};

#endif /* KTRUST_TESTS_BPF_DECISION_TEST_CASE_H_ */
