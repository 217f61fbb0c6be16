// sockops, two programs:
// - ktrust_sockops, on enrolled cgroups: gives the agent a way to find a
//   redirected connection's original destination from its accepted socket
//   (re-keyed by network namespace and 4-tuple at ESTABLISHED), and removes
//   both records when the connection closes;
// - ktrust_sockops_agent, on the agent's own cgroup: records each connection
//   the agent opens from its SYN until established, which is what sk_lookup
//   lets through to an enforced port's application.
#include "lib/addr.h"
#include "lib/telemetry.h"

// The application's side: (its namespace, its address, the agent listener's
// address). The namespace comes from the socket itself, not from the record:
// the record is in an LRU map and may be gone by close, when the key must
// still be rebuilt exactly. It is the namespace connect() recorded, since a
// socket never changes namespace.
static __always_inline void ktrust_tuple_of(struct bpf_sock_ops* skops, struct ktrust_tuple* key) {
  key->netns_cookie = bpf_get_netns_cookie(skops);
  if (skops->family == AF_INET) {
    ktrust_addr_from_ip4(key->src_addr, skops->local_ip4);
    ktrust_addr_from_ip4(key->dst_addr, skops->remote_ip4);
  } else {
    __u32 local[4] = {skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2],
                      skops->local_ip6[3]};
    __u32 remote[4] = {skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2],
                       skops->remote_ip6[3]};
    ktrust_addr_from_ip6(key->src_addr, local);
    ktrust_addr_from_ip6(key->dst_addr, remote);
  }
  key->src_port = (__u16)skops->local_port;  // host order already
  // remote_port holds the network-order port in its upper 16 bits.
  key->dst_port = (__u16)bpf_ntohl(skops->remote_port);
}

static __always_inline bool ktrust_tracked(struct bpf_sock_ops* skops) {
  return skops->bpf_sock_ops_cb_flags & BPF_SOCK_OPS_STATE_CB_FLAG;
}

// Before the SYN: only redirected sockets ask to hear about state changes,
// so nothing else pays for the close path.
static __always_inline void ktrust_on_connect(struct bpf_sock_ops* skops) {
  __u64 cookie = bpf_get_socket_cookie(skops);
  if (!bpf_map_lookup_elem(&ktrust_orig_ck, &cookie)) return;
  bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

// On loopback this runs before the ACK that completes the agent's accept,
// so the entry exists by the time the agent looks.
static __always_inline void ktrust_on_established(struct bpf_sock_ops* skops) {
  if (!ktrust_tracked(skops)) return;
  __u64 cookie = bpf_get_socket_cookie(skops);
  const struct ktrust_orig_dst* record = bpf_map_lookup_elem(&ktrust_orig_ck, &cookie);
  if (!record) return;
  struct ktrust_tuple key = {};
  ktrust_tuple_of(skops, &key);
  if (bpf_map_update_elem(&ktrust_orig_tp, &key, record, BPF_ANY) == 0) {
    ktrust_count(KTRUST_REASON_SOCKOPS_REKEYED);
  } else {
    ktrust_count(KTRUST_REASON_SOCKOPS_REKEY_FAILED);
  }
}

static __always_inline void ktrust_on_close(struct bpf_sock_ops* skops) {
  __u64 cookie = bpf_get_socket_cookie(skops);
  struct ktrust_tuple key = {};
  ktrust_tuple_of(skops, &key);
  bpf_map_delete_elem(&ktrust_orig_ck, &cookie);
  bpf_map_delete_elem(&ktrust_orig_tp, &key);
  ktrust_count(KTRUST_REASON_SOCKOPS_CLOSED);
}

// The agent's own socket: marked with SO_MARK, which needs CAP_NET_ADMIN.
static __always_inline bool ktrust_is_agent_socket(struct bpf_sock_ops* skops) {
  __u32 zero = 0;
  const struct ktrust_config* settings = bpf_map_lookup_elem(&ktrust_config, &zero);
  if (!settings || settings->agent_mark == 0) return false;
  struct bpf_sock* sk = skops->sk;
  return sk && sk->mark == settings->agent_mark;
}

// As sk_lookup sees the SYN: (agent address, destination), no namespace.
static __always_inline void ktrust_agent_tuple_of(struct bpf_sock_ops* skops,
                                                  struct ktrust_tuple* key) {
  ktrust_tuple_of(skops, key);
  key->netns_cookie = 0;
}

SEC("sockops")
int ktrust_sockops_agent(struct bpf_sock_ops* skops) {
  struct ktrust_tuple key = {};
  switch (skops->op) {
    case BPF_SOCK_OPS_TCP_CONNECT_CB: {
      if (!ktrust_is_agent_socket(skops)) break;
      ktrust_agent_tuple_of(skops, &key);
      __u32 one = 1;
      if (bpf_map_update_elem(&ktrust_agent_connects, &key, &one, BPF_ANY) != 0) {
        ktrust_count(KTRUST_REASON_SOCKOPS_AGENT_RECORD_FAILED);
        break;
      }
      // To hear about a connect that fails before ESTABLISHED.
      bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
      break;
    }
    case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
      // Past sk_lookup: the record has done its job.
      if (!ktrust_tracked(skops)) break;
      ktrust_agent_tuple_of(skops, &key);
      bpf_map_delete_elem(&ktrust_agent_connects, &key);
      bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags & ~BPF_SOCK_OPS_STATE_CB_FLAG);
      break;
    case BPF_SOCK_OPS_STATE_CB:
      if (skops->args[1] != BPF_TCP_CLOSE) break;
      ktrust_agent_tuple_of(skops, &key);
      bpf_map_delete_elem(&ktrust_agent_connects, &key);
      break;
    default:
      break;
  }
  return 1;
}

SEC("sockops")
int ktrust_sockops(struct bpf_sock_ops* skops) {
  switch (skops->op) {
    case BPF_SOCK_OPS_TCP_CONNECT_CB:
      ktrust_on_connect(skops);
      break;
    case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
      ktrust_on_established(skops);
      break;
    case BPF_SOCK_OPS_STATE_CB:
      if (skops->args[1] == BPF_TCP_CLOSE) ktrust_on_close(skops);
      break;
    default:
      break;
  }
  return 1;
}
