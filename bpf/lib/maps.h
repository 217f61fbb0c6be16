// Every ktrust map. Exactly one object file per link defines them
// (KTRUST_DEFINE_MAPS, see maps.bpf.c); the others declare them extern, and
// `bpftool gen object` resolves the references into one set of maps.
#pragma once

#include "lib/common.h"

#ifdef KTRUST_DEFINE_MAPS
#define KTRUST_MAP(type, name) type name SEC(".maps")
#else
#define KTRUST_MAP(type, name) extern type name SEC(".maps")
#endif

// Mesh destinations: CIDR -> port rules (redirect or bypass).
typedef struct {
  __uint(type, BPF_MAP_TYPE_LPM_TRIE);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __uint(max_entries, KTRUST_MAX_MESH_PREFIXES);
  __type(key, struct ktrust_mesh_key);
  __type(value, struct ktrust_mesh_value);
} ktrust_mesh_map;
KTRUST_MAP(ktrust_mesh_map, ktrust_mesh);

// Cgroups the agent has classified: cgroup v2 id -> mode and workload
// (KTRUST_MODE_NOT_ENROLLED for those it leaves alone).
typedef struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, KTRUST_MAX_ENROLLED_CGROUPS);
  __type(key, __u64);
  __type(value, struct ktrust_cgroup_value);
} ktrust_cgroups_map;
KTRUST_MAP(ktrust_cgroups_map, ktrust_cgroups);

// The cgroups under which the agent classifies every new cgroup (its cgroup
// root): cgroup v2 id -> 0. A descendant missing from ktrust_cgroups is new.
typedef struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, KTRUST_MAX_WATCHED_CGROUPS);
  __type(key, __u64);
  __type(value, __u32);
} ktrust_watched_map;
KTRUST_MAP(ktrust_watched_map, ktrust_watched);

// The agent's runtime settings, one entry.
typedef struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct ktrust_config);
} ktrust_config_map;
KTRUST_MAP(ktrust_config_map, ktrust_config);

// Original destinations by socket cookie, from connect until close. LRU so a
// connect that fails before sockops sees it cannot fill the map.
typedef struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, KTRUST_MAX_TRACKED_CONNECTIONS);
  __type(key, __u64);
  __type(value, struct ktrust_orig_dst);
} ktrust_orig_ck_map;
KTRUST_MAP(ktrust_orig_ck_map, ktrust_orig_ck);

// Original destinations by 4-tuple, from ESTABLISHED until close: what the
// agent looks up for an accepted socket. Plain hash: entries are only ever
// removed by close, so a leak shows.
typedef struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, KTRUST_MAX_TRACKED_CONNECTIONS);
  __type(key, struct ktrust_tuple);
  __type(value, struct ktrust_orig_dst);
} ktrust_orig_tp_map;
KTRUST_MAP(ktrust_orig_tp_map, ktrust_orig_tp);

// Where connect4/6 send a namespace's mesh connections: netns cookie ->
// target address (see struct ktrust_outbound_target).
typedef struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, KTRUST_MAX_SERVED_NETNS);
  __type(key, __u64);
  __type(value, struct ktrust_outbound_target);
} ktrust_outbound_targets_map;
KTRUST_MAP(ktrust_outbound_targets_map, ktrust_outbound_targets);

// The agent's own connections in flight, by (0, agent address, destination)
// 4-tuple, from TCP_CONNECT_CB until ESTABLISHED or close: sk_lookup lets
// exactly these reach an enforced port's application. The agent's sockets
// are known by their SO_MARK, which only CAP_NET_ADMIN can set; a source
// address would be one any local user can bind.
typedef struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, KTRUST_MAX_AGENT_CONNECTS);
  __type(key, struct ktrust_tuple);
  __type(value, __u32);
} ktrust_agent_connects_map;
KTRUST_MAP(ktrust_agent_connects_map, ktrust_agent_connects);

// Enforced inbound (address, port) -> the agent listener slot that takes it.
typedef struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, KTRUST_MAX_INBOUND_PORTS);
  __type(key, struct ktrust_inbound_key);
  __type(value, struct ktrust_inbound_value);
} ktrust_inbound_map;
KTRUST_MAP(ktrust_inbound_map, ktrust_inbound);

// The agent's inbound listening sockets, by slot (see
// KTRUST_INBOUND_V6_SLOT_OFFSET); a closed socket leaves its slot.
typedef struct {
  __uint(type, BPF_MAP_TYPE_SOCKMAP);
  __uint(max_entries, 2 * KTRUST_MAX_INBOUND_LISTENERS);  // IPv4 slots, then IPv6
  __type(key, __u32);
  __type(value, __u64);
} ktrust_listen_map;
KTRUST_MAP(ktrust_listen_map, ktrust_listen);

// Decisions about enrolled traffic, for the agent's log and metrics.
typedef struct {
  __uint(type, BPF_MAP_TYPE_RINGBUF);
  __uint(max_entries, KTRUST_EVENT_RING_BYTES);
} ktrust_events_map;
KTRUST_MAP(ktrust_events_map, ktrust_events);

// Per-CPU counters indexed by enum ktrust_reason.
typedef struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, KTRUST_REASON_MAX);
  __type(key, __u32);
  __type(value, __u64);
} ktrust_counters_map;
KTRUST_MAP(ktrust_counters_map, ktrust_counters);
