# Two simulated ktrust nodes on one host, for the interception test and the
# demo: a node is an agent with a network namespace and a cgroup subtree of
# its own, and the two are joined by a veth pair. Source it, then call
# two_nodes_up.
#
#   node a: netns kt-<id>-a, 10.77.0.1 and fd77::1 on veth a0
#   node b: netns kt-<id>-b, 10.77.0.2 and fd77::2 on veth b0
#   cgroups: $KT_CG/{a,b}/{agent,<workloads>}; the agents' programs are
#   attached at $KT_CG/a and $KT_CG/b, so they never see each other's cgroups
#   one embedded root CA, one intermediate per node, private bpffs per node
#   pods (add_pod): netns kt-<id>-<node>-<pod>, 10.77.1.x / fd77:1::x on
#   node a and 10.77.2.x / fd77:2::x on node b, routed by their node as a
#   Kubernetes CNI would
#
# Needs root. Everything created is removed by two_nodes_down.

KT_ID=${KT_ID:-$$}
KT_NS_A=kt-$KT_ID-a
KT_NS_B=kt-$KT_ID-b
KT_CG=
KT_WORK=
KT_PIDS=()
KT_PODS=()

# Waits for a line matching $2 in file $1 (a readiness signal), at most $3
# seconds (default 20).
wait_for() {
  for _ in $(seq $((${3:-20} * 10))); do grep -q -- "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2
  cat "$1" >&2
  return 1
}

# Polls CMD every 0.2 s until it succeeds, for at most $1 seconds.
wait_until() {  # SECONDS CMD...
  local end=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || return 1
    sleep 0.2
  done
}
exited() { ! kill -0 "$1" 2>/dev/null; }  # PID

two_nodes_up() {  # WORKDIR KTRUST
  KT_WORK=$1
  local ktrust=$2
  # `ip netns exec` mounts a fresh /sys, hiding the host's cgroup2 mount
  # there: mount the same hierarchy again where the nodes can see it.
  mkdir -p "$KT_WORK/cgroup2"
  mount -t cgroup2 none "$KT_WORK/cgroup2"
  KT_CG="$KT_WORK/cgroup2/ktrust-test-$KT_ID"
  mkdir -p "$KT_CG"/{a,b}/agent
  ip netns add "$KT_NS_A"
  ip netns add "$KT_NS_B"
  ip link add a0 netns "$KT_NS_A" type veth peer name b0 netns "$KT_NS_B"
  local n
  for n in a b; do
    local ns=$KT_NS_A addr=1
    [[ $n == b ]] && ns=$KT_NS_B addr=2
    ip -n "$ns" link set lo up
    # The agent's IPv6 source toward local applications (agent.upstream_source6).
    ip -n "$ns" addr add fd00:6b74::6/128 dev lo nodad
    ip -n "$ns" addr add "10.77.0.$addr/24" dev "${n}0"
    ip -n "$ns" addr add "fd77::$addr/64" dev "${n}0" nodad
    ip -n "$ns" link set "${n}0" up
    mkdir -p "$KT_WORK/$n/bpffs"
    mount -t bpf bpf "$KT_WORK/$n/bpffs"
  done
  "$ktrust" ca init --trust-domain example.org --dir "$KT_WORK/root" >/dev/null
  "$ktrust" ca intermediate --ca-dir "$KT_WORK/root" --name node-a --dir "$KT_WORK/a/ca" >/dev/null
  "$ktrust" ca intermediate --ca-dir "$KT_WORK/root" --name node-b --dir "$KT_WORK/b/ca" >/dev/null
}

two_nodes_down() {
  local p
  for p in "${KT_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  # Anything else still running in the nodes' cgroups goes too.
  if [[ -n $KT_CG && -e $KT_CG/cgroup.kill ]]; then echo 1 >"$KT_CG/cgroup.kill" || true; fi
  wait 2>/dev/null || true
  local pod
  for pod in "${KT_PODS[@]}"; do ip netns del "$pod" 2>/dev/null || true; done
  ip netns del "$KT_NS_A" 2>/dev/null || true
  ip netns del "$KT_NS_B" 2>/dev/null || true
  if [[ -n $KT_WORK ]]; then
    umount "$KT_WORK/a/bpffs" "$KT_WORK/b/bpffs" 2>/dev/null || true
  fi
  if [[ -n $KT_CG && -d $KT_CG ]]; then
    # Leaf cgroups first; a cgroup with processes left cannot go.
    find "$KT_CG" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    umount "$KT_WORK/cgroup2" 2>/dev/null || true
  fi
}

node_ns() { [[ $1 == a ]] && echo "$KT_NS_A" || echo "$KT_NS_B"; }
pod_ns() { echo "$(node_ns "$1")-$2"; }  # NODE POD
# GET path $2 of node $1's agent metrics endpoint (agent.metrics_address).
metrics() { ip netns exec "$(node_ns "$1")" curl -sS --max-time 5 "http://127.0.0.1:9464$2"; }

# A pod's network namespace, with only its loopback: what a container
# runtime creates before the CNI plugin gives it an address (add_pod).
add_pod_netns() {  # NODE POD
  local podns
  podns=$(pod_ns "$1" "$2")
  ip netns add "$podns"
  KT_PODS+=("$podns")
  ip -n "$podns" link set lo up
}

# A pod on node $1: its own network namespace behind a veth, with address
# 10.77.<1|2>.$3 and fd77:<1|2>::$3, reachable from the other node. The
# namespace is made unless add_pod_netns made it already.
add_pod() {  # NODE POD HOST_NUMBER
  local node=$1 pod=$2 host=$3 n=1 other=b gw=1
  [[ $node == b ]] && n=2 other=a gw=2
  local ns podns dev=p$2
  ns=$(node_ns "$node")
  podns=$(pod_ns "$node" "$pod")
  [[ -e /run/netns/$podns ]] || add_pod_netns "$node" "$pod"
  ip link add "$dev" netns "$ns" type veth peer name eth0 netns "$podns"
  # No duplicate address detection: addresses are usable at once.
  ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$dev.accept_dad=0" net.ipv4.ip_forward=1 \
    net.ipv6.conf.all.forwarding=1
  ip netns exec "$podns" sysctl -qw net.ipv6.conf.eth0.accept_dad=0
  ip -n "$ns" addr add "10.77.$n.254/32" dev "$dev"
  ip -n "$ns" addr add fe80::1/64 dev "$dev" nodad
  ip -n "$ns" link set "$dev" up
  ip -n "$ns" route add "10.77.$n.$host/32" dev "$dev"
  ip -n "$ns" route add "fd77:$n::$host/128" dev "$dev"
  ip -n "$podns" addr add "10.77.$n.$host/32" dev eth0
  ip -n "$podns" addr add "fd77:$n::$host/128" dev eth0 nodad
  ip -n "$podns" link set eth0 up
  ip -n "$podns" route add default via "10.77.$n.254" dev eth0 onlink
  ip -n "$podns" route add default via fe80::1 dev eth0
  # The other node reaches this node's pods through it.
  ip -n "$(node_ns "$other")" route replace "10.77.$n.0/24" via "10.77.0.$gw"
  ip -n "$(node_ns "$other")" route replace "fd77:$n::/64" via "fd77::$gw"
}

# Runs a command in pod $2 of node $1, in that node's cgroup $3, in the
# background; its pid is appended to KT_PIDS.
run_in_pod() {  # NODE POD CGROUP LOG CMD...
  local node=$1 pod=$2 cg=$3 log=$4
  shift 4
  mkdir -p "$KT_CG/$node/$cg"
  ip netns exec "$(pod_ns "$node" "$pod")" sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' \
    sh "$KT_CG/$node/$cg" "$@" >"$log" 2>&1 &
  KT_PIDS+=($!)
}

# The same in the foreground.
exec_in_pod() {  # NODE POD CGROUP CMD...
  local node=$1 pod=$2 cg=$3
  shift 3
  mkdir -p "$KT_CG/$node/$cg"
  ip netns exec "$(pod_ns "$node" "$pod")" sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' \
    sh "$KT_CG/$node/$cg" "$@"
}

# Runs a command on node $1 in cgroup $2 (created if missing), in the background;
# its pid is appended to KT_PIDS and printed.
run_in() {  # NODE CGROUP LOG CMD...
  local node=$1 cg=$2 log=$3
  shift 3
  mkdir -p "$KT_CG/$node/$cg"
  ip netns exec "$(node_ns "$node")" sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' \
    sh "$KT_CG/$node/$cg" "$@" >"$log" 2>&1 &
  KT_PIDS+=($!)
}

# Runs a command on node $1 in cgroup $2 in the foreground.
exec_in() {  # NODE CGROUP CMD...
  local node=$1 cg=$2
  shift 2
  mkdir -p "$KT_CG/$node/$cg"
  ip netns exec "$(node_ns "$node")" sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' \
    sh "$KT_CG/$node/$cg" "$@"
}

# Writes node $1's agent configuration: its workloads (YAML lines under
# workloads:) and policy (YAML lines under policy:). Optional, from the
# caller's variables: KT_SVID_TTL (default 1h), KT_CA_DIR (default
# $KT_WORK/<node>/ca), KT_TRUST_BUNDLES (YAML lines under trust_bundles:),
# KT_CRLS (YAML lines under crls:),
# KT_IDENTITY_SOURCE (default embedded_ca; svid_files reads KT_SVID_DIR,
# default $KT_WORK/<node>/svids), KT_AGENT_EXTRA (YAML lines under agent:),
# KT_CONFIG_EXTRA (top-level YAML lines, after agent:).
# KT_DRAIN_TIMEOUT (agent.drain_timeout, default 5s: scripts that stop an
# agent with SIGTERM wait for it, and a drain of 30 s would outlast them).
# The file is replaced by a rename, so an agent polling it never reads half.
write_config() {  # NODE WORKLOADS_YAML POLICY_YAML
  local node=$1
  local bundles=
  [[ -n ${KT_TRUST_BUNDLES:-} ]] && bundles=$'trust_bundles:\n'"$KT_TRUST_BUNDLES"
  local crls=
  [[ -n ${KT_CRLS:-} ]] && crls=$'crls:\n'"$KT_CRLS"
  cat >"$KT_WORK/$node/ktrustd.yaml.tmp" <<EOF
version: 1
trust_domain: example.org
identity:
  source: ${KT_IDENTITY_SOURCE:-embedded_ca}
  ca_dir: ${KT_CA_DIR:-$KT_WORK/$node/ca}
  svid_dir: ${KT_SVID_DIR:-$KT_WORK/$node/svids}
  svid_ttl: ${KT_SVID_TTL:-1h}
$bundles
$crls
workloads:
$2
mesh:
  destinations:
    - cidr: 10.77.0.0/16
    - cidr: fd77::/16
policy:
$3
agent:
  node_name: node-$node
  cgroup_root: $KT_CG/$node
  bpf_pin_dir: $KT_WORK/$node/bpffs/ktrust
  upstream_source6: fd00:6b74::6
  control_socket: $KT_WORK/$node/control.sock
  metrics_address: 127.0.0.1:9464
  log_level: debug
  drain_timeout: ${KT_DRAIN_TIMEOUT:-5s}
${KT_AGENT_EXTRA:-}
${KT_CONFIG_EXTRA:-}
EOF
  mv "$KT_WORK/$node/ktrustd.yaml.tmp" "$KT_WORK/$node/ktrustd.yaml"
}

# Load through both agents (the e2e and soak benchmarks, soak_test): node
# a's cgroup client (enrolled) may reach node b's cgroup server on PORT
# (enforced); the agents log warnings only, as the benchmarks' peers do;
# and, in the nodes' own namespaces only, a wide ephemeral port range with
# TIME_WAIT reuse, for many short connections.
client_server_nodes() {  # PORT
  local port=$1 n
  for n in a b; do
    ip netns exec "$(node_ns "$n")" sysctl -q -w net.ipv4.ip_local_port_range="10000 65000" \
      net.ipv4.tcp_tw_reuse=1
  done
  mkdir -p "$KT_CG"/a/client "$KT_CG"/b/server
  write_config a '
  - name: client
    cgroup: client
    spiffe_id: spiffe://{trust_domain}/{node}/client' '
  []'
  write_config b "
  - name: server
    cgroup: server
    spiffe_id: spiffe://{trust_domain}/{node}/server
    ports: [$port]" "
  - to: server
    ports: [$port]
    from: [spiffe://example.org/node-a/client]"
  sed -i 's/^  log_level: .*/  log_level: warn/' "$KT_WORK"/{a,b}/ktrustd.yaml
}

# Starts both nodes' agents and waits until `ktrust status` says each is
# ready (an agent at warn does not log its ready event); their pids in
# KT_AGENT_PID[a] and [b].
# shellcheck disable=SC2034 # read by the scripts that source this file
declare -gA KT_AGENT_PID=()
start_agents_until_ready() {  # KTRUSTD
  local n
  for n in a b; do
    run_in "$n" agent "$KT_WORK/$n/agent.log" "$1" run --config "$KT_WORK/$n/ktrustd.yaml"
    KT_AGENT_PID[$n]=${KT_PIDS[-1]}
  done
  kt_agent_ready() { kt "$1" status --json | jq -e ".ready == true"; }
  for n in a b; do
    if ! wait_until 30 kt_agent_ready "$n"; then
      echo "ktrustd on node $n did not become ready:" >&2
      cat "$KT_WORK/$n/agent.log" >&2
      return 1
    fi
  done
}

# Starts node $1's zero-hop fd holder (`ktrustd holder`, sockets in
# $KT_WORK/<node>/holder) in a cgroup no workload claims, so that it
# outlives the agents, and waits until it is ready.
start_holder() {  # NODE KTRUSTD
  local node=$1 ktrustd=$2
  run_in "$node" holder "$KT_WORK/$node/holder.log" "$ktrustd" holder --socket-dir "$KT_WORK/$node/holder"
  wait_for "$KT_WORK/$node/holder.log" '"event":"holder_ready"'
}

# Starts node $1's agent in its own cgroup and waits until it is ready;
# WRAPPER (e.g. setpriv with its options) runs it.
start_agent() {  # NODE KTRUSTD [WRAPPER...]
  local node=$1 ktrustd=$2
  shift 2
  run_in "$node" agent "$KT_WORK/$node/agent.log" "$@" "$ktrustd" run --config "$KT_WORK/$node/ktrustd.yaml"
  wait_for "$KT_WORK/$node/agent.log" '"event":"ready"\|startup_failed'
  if grep -q startup_failed "$KT_WORK/$node/agent.log"; then
    echo "ktrustd on node $node did not start:" >&2
    cat "$KT_WORK/$node/agent.log" >&2
    return 1
  fi
}

# The CLI against node $1's agent ($ktrust: the script's ktrust binary).
kt() { local node=$1; shift; "$ktrust" --socket "$KT_WORK/$node/control.sock" "$@"; }
# Node $1's configuration generation, and whether it passed $2 (a reload took).
generation() { kt "$1" status --json | jq -r .config.generation; }
generation_above() { (($(generation "$1") > $2)); }

# Results, one line per check as TAP prints them, for the tests on these nodes.
KT_PASSED=0
KT_FAILED=0
ok() { echo "ok - $*"; KT_PASSED=$((KT_PASSED + 1)); }
not_ok() { echo "not ok - $*"; KT_FAILED=$((KT_FAILED + 1)); }
check() { local what=$1; shift; if "$@" >/dev/null; then ok "$what"; else not_ok "$what"; fi; }
lacks() { ! grep -q -- "$1" <<<"$2"; }  # text $2 does not contain $1
# The summary line and the exit status: 0 only if every check passed.
two_nodes_results() {
  echo "# $KT_PASSED passed, $KT_FAILED failed"
  ((KT_FAILED == 0))
}

# Removes the nodes and the work directory (never recursing into a mount,
# cgroup2 or bpffs, that failed to come off). KT_KEEP_LOGS=1 keeps the files.
two_nodes_cleanup() {
  two_nodes_down
  # In the VM the work directory dies with the guest: hand the logs out.
  if [[ -n ${KTRUST_VM_OUT:-} && -n $KT_WORK ]]; then
    (cd "$KT_WORK" && find . -maxdepth 2 -name '*.log' -exec cp --parents {} "$KTRUST_VM_OUT/" \;) || true
  fi
  if [[ -n ${KT_KEEP_LOGS:-} ]]; then echo "# kept $KT_WORK" >&2; return; fi
  if [[ -n $KT_WORK ]] && ! findmnt -rn -o TARGET | grep -q "^$KT_WORK/"; then rm -rf "$KT_WORK"; fi
}
