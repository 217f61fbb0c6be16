/* The ABI between ktrust's BPF programs (bpf/) and the agent (userspace/bpf):
 * map keys and values, the ring-buffer event and the counter indexes.
 *
 * Plain C with fixed-size fields and explicit padding, because the same bytes
 * are read by the BPF programs and by C++ (userspace/bpf/abi_layout.cc checks
 * sizes and offsets). Changing a layout changes the pinned maps: a running
 * node must be uninstalled first (libbpf refuses to reuse a pinned map whose
 * sizes differ).
 *
 * Byte order: addresses are network order (as on the wire), ports are host
 * order. IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d) everywhere, so
 * one set of maps serves both families and an AF_INET6 socket connecting to a
 * mapped address matches the same entries as an AF_INET one. */
#ifndef KTRUST_BPF_ABI_H_
#define KTRUST_BPF_ABI_H_

/* The kernel's fixed-size types: from the generated vmlinux.h in BPF code
 * (the UAPI headers would clash with it), from the UAPI headers elsewhere. */
#ifdef __bpf__
#include "vmlinux.h"
#else
#include <linux/types.h>
#endif

/* C names for C structs: BPF code includes this too. */
/* NOLINTBEGIN(readability-identifier-naming) */

/* Bits before the IPv4 part of an IPv4-mapped address (::ffff:0:0/96). */
#define KTRUST_V4_MAPPED_PREFIX_BITS 96

/* Map capacities. */
#define KTRUST_MAX_MESH_PREFIXES 16384
/* ktrust_cgroups holds every cgroup under the agent's cgroup root, enrolled
 * or only classified. */
#define KTRUST_MAX_ENROLLED_CGROUPS 65536
/* ktrust_watched: the cgroup roots the agent classifies. */
#define KTRUST_MAX_WATCHED_CGROUPS 64
/* Levels of the cgroup hierarchy searched for a watched ancestor; a watched
 * cgroup deeper than this protects nothing. */
#define KTRUST_MAX_CGROUP_DEPTH 16
#define KTRUST_MAX_TRACKED_CONNECTIONS 262144
/* The agent's own connections between their SYN and ESTABLISHED. */
#define KTRUST_MAX_AGENT_CONNECTS 65536
/* Network namespaces the agent serves: the host's and every pod's. */
#define KTRUST_MAX_SERVED_NETNS KTRUST_MAX_INBOUND_LISTENERS
#define KTRUST_MAX_INBOUND_PORTS 16384
/* Listener slots: the host's, plus those of every pod network namespace served. */
#define KTRUST_MAX_INBOUND_LISTENERS 1024
/* ktrust_listen holds an AF_INET listener at slot s and an AF_INET6 one at
 * s + this offset: sk_lookup cannot give an IPv6 connection to an AF_INET
 * socket, and the kernel makes a socket bound to ::1 IPv6-only. */
#define KTRUST_INBOUND_V6_SLOT_OFFSET KTRUST_MAX_INBOUND_LISTENERS
/* Never given a listener: rules pointing here refuse (enforce) or pass
 * (permissive), as with any empty slot. */
#define KTRUST_PARKED_SLOT (KTRUST_MAX_INBOUND_LISTENERS - 1)
#define KTRUST_EVENT_RING_BYTES (256 * 1024)

/* Port rules a mesh prefix carries; the first matching rule wins. */
#define KTRUST_MESH_RULES_PER_PREFIX 8

enum ktrust_mesh_action {
  KTRUST_MESH_ACTION_NONE = 0,     /* unused rule slot; ends the rule list */
  KTRUST_MESH_ACTION_REDIRECT = 1, /* TCP goes through the agent; other protocols are denied */
  KTRUST_MESH_ACTION_BYPASS = 2,   /* left alone, e.g. DNS; counted and reported */
};

enum ktrust_mode {
  /* 0 is not a mode: a zeroed value is treated as enforce (fail closed). */
  KTRUST_MODE_ENFORCE = 1,    /* no plaintext: failures refuse the connection */
  KTRUST_MODE_PERMISSIVE = 2, /* the operator accepts plaintext when interception can't work */
  /* classified by the agent and not enrolled (no workload, `mode: off`, the
   * agent itself): left alone, after the one lookup that finds this */
  KTRUST_MODE_NOT_ENROLLED = 3,
};

/* ktrust_mesh: LPM trie key. prefixlen counts bits of addr; an IPv4 /8 is
 * 96 + 8 = 104 on its mapped address. */
struct ktrust_mesh_key {
  __u32 prefixlen;
  __u8 addr[16];
};

struct ktrust_port_rule {
  __u16 first_port; /* inclusive, host order */
  __u16 last_port;  /* inclusive, host order */
  __u8 action;      /* enum ktrust_mesh_action */
  __u8 pad[3];
};

/* ktrust_mesh: value. The trie returns only the longest matching prefix, so
 * a longer prefix must repeat the port rules of the shorter ones it refines. */
struct ktrust_mesh_value {
  struct ktrust_port_rule rules[KTRUST_MESH_RULES_PER_PREFIX];
};

/* ktrust_cgroups: key is the cgroup v2 id (bpf_get_current_cgroup_id). A
 * cgroup with no entry under a ktrust_watched cgroup is one the agent has not
 * classified yet: refused for mesh destinations until it is. */
struct ktrust_cgroup_value {
  __u32 mode;     /* enum ktrust_mode */
  __u32 workload; /* the agent's workload index, carried into records and events */
};

/* ktrust_config: the single entry (key 0) of the agent's runtime settings.
 * A zero outbound_port means the agent is not configured: enrolled
 * connections to the mesh are refused (enforce) or left alone (permissive). */
struct ktrust_config {
  __u16 outbound_port; /* where connect4/6 send mesh connections, in every netns */
  __u16 pad0;
  __u32 agent_mark; /* SO_MARK on the agent's sockets, never redirected; 0 = none */
};

/* ktrust_outbound_targets: network namespace cookie -> the local address
 * connect4/6 rewrite an enrolled workload's mesh connections to (with
 * ktrust_config.outbound_port). The agent gives each namespace it serves an
 * address of its own (127.0.0.1 and ::1 on the host, the pod's address in a
 * pod), so sk_lookup, which cannot see the namespace, can tell the
 * namespaces' outbound listeners apart by an exact rule. No entry: the
 * namespace is not served and its mesh connections are refused. */
#define KTRUST_TARGET_HAS_IP4 1
#define KTRUST_TARGET_HAS_IP6 2
struct ktrust_outbound_target {
  __u8 ip6[16]; /* for IPv6 destinations (valid with KTRUST_TARGET_HAS_IP6) */
  __u32 ip4;    /* network order, for IPv4 destinations (KTRUST_TARGET_HAS_IP4) */
  __u32 flags;
};

/* Where an intercepted connection was going, and for whom. */
struct ktrust_orig_dst {
  __u64 cgroup_id;
  __u8 addr[16];
  __u16 port;
  __u16 family; /* AF_INET or AF_INET6 of the application's sockaddr */
  __u32 workload;
  __u32 pid; /* tgid that called connect() */
  __u32 mode;
  __u64 netns_cookie; /* of the application's network namespace (SO_NETNS_COOKIE) */
};

/* ktrust_orig_tp key: the application's side of the redirected connection,
 * (application address, agent listener address), in its network namespace:
 * every pod has an outbound listener at the same loopback address and port,
 * so two pods can hold the same 4-tuple at once. The agent builds it from
 * its accepted socket as (SO_NETNS_COOKIE, peer, local); the application's
 * connection never leaves its namespace, so the cookies agree. */
struct ktrust_tuple {
  __u64 netns_cookie;
  __u8 src_addr[16];
  __u8 dst_addr[16];
  __u16 src_port;
  __u16 dst_port;
  __u32 pad; /* zero: the kernel hashes every byte of a key */
};

/* ktrust_inbound key: an enforced local (address, port); the all-zero address
 * is the wildcard for the port, which only the host namespace's program
 * consults: a pod's program takes exact entries only (bpf/sk_lookup.bpf.c). */
struct ktrust_inbound_key {
  __u8 addr[16];
  __u16 port;
  __u16 pad;
};

/* ktrust_inbound_value.flags */
/* The rule is an outbound target's (address, outbound_port): only the
 * agent's outbound listener may take it, whatever the mode, and it concerns
 * TCP only. */
#define KTRUST_INBOUND_OUTBOUND_LISTENER 1

struct ktrust_inbound_value {
  __u32 listener; /* IPv4 slot in ktrust_listen (IPv6: + KTRUST_INBOUND_V6_SLOT_OFFSET) */
  __u32 mode;     /* enum ktrust_mode: what to do while that slot is empty */
  __u32 workload;
  __u32 flags;
};

/* Reasons: each is a per-CPU counter index and an event's reason code. Append
 * only; userspace names them in ReasonName(). */
enum ktrust_reason {
  KTRUST_REASON_CONNECT_REDIRECTED = 0,
  KTRUST_REASON_CONNECT_BYPASS_RULE = 1,   /* TCP matched a bypass rule */
  KTRUST_REASON_CONNECT_NOT_MESH = 2,      /* enrolled, destination outside the mesh */
  KTRUST_REASON_CONNECT_AGENT_MARK = 3,    /* the agent's own socket */
  KTRUST_REASON_CONNECT_NO_AGENT = 4,      /* agent not configured (see ktrust_config) */
  KTRUST_REASON_CONNECT_RECORD_FAILED = 5, /* original destination could not be stored */
  KTRUST_REASON_UDP_DENIED = 6,            /* non-TCP to the mesh in enforce mode */
  KTRUST_REASON_UDP_BYPASS_RULE = 7,
  KTRUST_REASON_UDP_PERMISSIVE = 8, /* non-TCP to the mesh allowed by permissive mode */
  KTRUST_REASON_SOCKOPS_REKEYED = 9,
  KTRUST_REASON_SOCKOPS_REKEY_FAILED = 10, /* the agent will not find this connection */
  KTRUST_REASON_SOCKOPS_CLOSED = 11,
  KTRUST_REASON_GETPEERNAME_REWRITTEN = 12,
  KTRUST_REASON_SK_LOOKUP_STEERED = 13,
  KTRUST_REASON_SK_LOOKUP_UPSTREAM = 14,      /* the agent's own connection: not steered */
  KTRUST_REASON_SK_LOOKUP_NO_LISTENER = 15,   /* enforced port, agent absent: refused */
  KTRUST_REASON_SK_LOOKUP_PERMISSIVE = 16,    /* agent absent, permissive: delivered */
  KTRUST_REASON_SK_LOOKUP_ASSIGN_FAILED = 17, /* refused */
  KTRUST_REASON_EVENTS_LOST = 18,             /* ring buffer full */
  /* enforced port of a pod the agent has no listener for (yet, or any more): refused */
  KTRUST_REASON_SK_LOOKUP_UNSERVED_NETNS = 19,
  /* to the mesh from a cgroup created under a watched cgroup that the agent
   * has not classified yet: refused until it is */
  KTRUST_REASON_CONNECT_UNCLASSIFIED = 20,
  /* to the mesh from a network namespace the agent has no outbound listener
   * for (ktrust_outbound_targets): refused in enforce mode */
  KTRUST_REASON_CONNECT_UNSERVED_NETNS = 21,
  /* UDP to an enforced port in enforce mode: there is no datagram identity */
  KTRUST_REASON_SK_LOOKUP_UDP_REFUSED = 22,
  /* the agent's own connection could not be recorded: its SYN will be
   * steered like anyone's, and fail */
  KTRUST_REASON_SOCKOPS_AGENT_RECORD_FAILED = 23,
  KTRUST_REASON_MAX = 24,
};

enum ktrust_event_type {
  KTRUST_EVENT_REDIRECTED = 1,
  KTRUST_EVENT_DENIED = 2,
  KTRUST_EVENT_BYPASSED = 3,
};

/* ktrust_events: one record per decision about an enrolled workload's
 * connection or datagram, and per refused inbound SYN. Fields a hook cannot
 * know are zero (the source of a connect, the pid and cgroup in sk_lookup). */
struct ktrust_event {
  __u64 timestamp_ns; /* CLOCK_MONOTONIC */
  __u64 cgroup_id;
  __u64 socket_cookie;
  __u8 src_addr[16];
  __u8 dst_addr[16];
  __u32 pid;
  __u32 workload;
  __u16 src_port;
  __u16 dst_port;
  __u8 type;     /* enum ktrust_event_type */
  __u8 protocol; /* IPPROTO_TCP, IPPROTO_UDP, ... (low byte) */
  __u16 reason;  /* enum ktrust_reason */
};

/* The decision's interface (bpf/lib/decision.h): what the connect and sendmsg
 * hooks extract from their context, and what they are told to do. The
 * decision test program takes and returns these through BPF_PROG_TEST_RUN. */
struct ktrust_flow {
  __u8 dst_addr[16];
  __u16 dst_port;
  __u16 pad0;
  __u32 protocol; /* IPPROTO_*; MPTCP (262) does not fit a byte */
  __u32 mark;     /* the socket's SO_MARK */
};

enum ktrust_verdict {
  KTRUST_VERDICT_PASS = 0,     /* leave the connection as it is */
  KTRUST_VERDICT_REDIRECT = 1, /* rewrite to the agent's outbound listener */
  KTRUST_VERDICT_DENY = 2,     /* refuse (EPERM) */
};

struct ktrust_decision {
  __u32 verdict; /* enum ktrust_verdict */
  __u32 reason;  /* enum ktrust_reason; KTRUST_REASON_MAX = not enrolled, nothing counted */
  __u32 event;   /* enum ktrust_event_type; 0 = no event */
  __u32 workload;
  __u32 mode;
};

/* NOLINTEND(readability-identifier-naming) */

#endif /* KTRUST_BPF_ABI_H_ */
