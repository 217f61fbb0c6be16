// The BPF programs and this C++ read the same bytes through
// include/ktrust/bpf/abi.h. These checks pin the layout the programs were
// written against: a change here is a change to the pinned maps.
#include <cstddef>
#include <type_traits>

#include "ktrust/bpf/abi.h"
#include "ktrust/common/ip_prefix.h"

namespace ktrust {
namespace {

#define KTRUST_CHECK_OFFSET(type, field, offset) \
  static_assert(offsetof(type, field) == (offset), #type "." #field " moved")

static_assert(sizeof(ktrust_mesh_key) == 20);
KTRUST_CHECK_OFFSET(ktrust_mesh_key, addr, 4);

static_assert(sizeof(ktrust_port_rule) == 8);
KTRUST_CHECK_OFFSET(ktrust_port_rule, last_port, 2);
KTRUST_CHECK_OFFSET(ktrust_port_rule, action, 4);
static_assert(sizeof(ktrust_mesh_value) == sizeof(ktrust_port_rule) * KTRUST_MESH_RULES_PER_PREFIX);

static_assert(sizeof(ktrust_cgroup_value) == 8);
KTRUST_CHECK_OFFSET(ktrust_cgroup_value, workload, 4);

static_assert(sizeof(ktrust_config) == 8);
KTRUST_CHECK_OFFSET(ktrust_config, agent_mark, 4);

static_assert(sizeof(ktrust_outbound_target) == 24);
KTRUST_CHECK_OFFSET(ktrust_outbound_target, ip4, 16);
KTRUST_CHECK_OFFSET(ktrust_outbound_target, flags, 20);

static_assert(sizeof(ktrust_orig_dst) == 48);
KTRUST_CHECK_OFFSET(ktrust_orig_dst, addr, 8);
KTRUST_CHECK_OFFSET(ktrust_orig_dst, port, 24);
KTRUST_CHECK_OFFSET(ktrust_orig_dst, family, 26);
KTRUST_CHECK_OFFSET(ktrust_orig_dst, workload, 28);
KTRUST_CHECK_OFFSET(ktrust_orig_dst, pid, 32);
KTRUST_CHECK_OFFSET(ktrust_orig_dst, mode, 36);
KTRUST_CHECK_OFFSET(ktrust_orig_dst, netns_cookie, 40);

// No implicit padding: the kernel hashes every byte of a key.
static_assert(sizeof(ktrust_tuple) == 48);
KTRUST_CHECK_OFFSET(ktrust_tuple, src_addr, 8);
KTRUST_CHECK_OFFSET(ktrust_tuple, dst_addr, 24);
KTRUST_CHECK_OFFSET(ktrust_tuple, src_port, 40);
KTRUST_CHECK_OFFSET(ktrust_tuple, dst_port, 42);
KTRUST_CHECK_OFFSET(ktrust_tuple, pad, 44);
static_assert(std::has_unique_object_representations_v<ktrust_tuple>);

static_assert(sizeof(ktrust_inbound_key) == 20);
KTRUST_CHECK_OFFSET(ktrust_inbound_key, port, 16);
static_assert(sizeof(ktrust_inbound_value) == 16);
KTRUST_CHECK_OFFSET(ktrust_inbound_value, flags, 12);

static_assert(sizeof(ktrust_event) == 72);
KTRUST_CHECK_OFFSET(ktrust_event, cgroup_id, 8);
KTRUST_CHECK_OFFSET(ktrust_event, socket_cookie, 16);
KTRUST_CHECK_OFFSET(ktrust_event, src_addr, 24);
KTRUST_CHECK_OFFSET(ktrust_event, dst_addr, 40);
KTRUST_CHECK_OFFSET(ktrust_event, pid, 56);
KTRUST_CHECK_OFFSET(ktrust_event, workload, 60);
KTRUST_CHECK_OFFSET(ktrust_event, src_port, 64);
KTRUST_CHECK_OFFSET(ktrust_event, dst_port, 66);
KTRUST_CHECK_OFFSET(ktrust_event, type, 68);
KTRUST_CHECK_OFFSET(ktrust_event, protocol, 69);
KTRUST_CHECK_OFFSET(ktrust_event, reason, 70);

static_assert(sizeof(ktrust_flow) == 28);
KTRUST_CHECK_OFFSET(ktrust_flow, dst_port, 16);
KTRUST_CHECK_OFFSET(ktrust_flow, protocol, 20);
KTRUST_CHECK_OFFSET(ktrust_flow, mark, 24);
static_assert(sizeof(ktrust_decision) == 20);

// Events and counters share the reason codes; a u16 holds them.
static_assert(KTRUST_REASON_MAX < 0xffff);

// The mesh map's keys take IpPrefix's address and mapped length as they are.
static_assert(IpPrefix::kV4MappedPrefixBits == KTRUST_V4_MAPPED_PREFIX_BITS);

#undef KTRUST_CHECK_OFFSET

}  // namespace
}  // namespace ktrust
