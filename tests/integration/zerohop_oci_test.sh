#!/usr/bin/env bash
# A container started by an unmodified `runc run`, its seccomp profile's
# listenerPath pointing at the holder (no `ktrust exec`), served as a zero-hop
# workload: the agent takes its listener from the holder and finds the
# container process's workload (its cgroup) and network namespace itself.
#
#   node a: curl, python (cgroup "client", zero_hop, by ktrust exec) -> ktrustd a
#           curl (cgroup "intruder", zero_hop, not allowed)
#   node b: runc container: python3 http.server :8080, in node b's network
#           namespace and cgroup "server" (linux.cgroupsPath), connect/accept/
#           accept4 SCMP_ACT_NOTIFY to oci-seccomp.sock       <- ktrustd b
#
# With kernel TLS (the vm tier, KTRUST_VM=1) agent b hands the authenticated
# sockets to the container's accept (zero-hop inbound: runc 1.1.5 installs its
# filter without WAIT_KILLABLE_RECV, so the container's own connects would be
# proxied). Without it (the host tier) the container is proxied and the agent
# says why. Both: requests work, a disallowed identity gets nothing and the
# container never accepts it, the wire holds no plaintext, the listener goes
# when the container does. Needs root and runc.
# Usage: zerohop_oci_test.sh KTRUST KTRUSTD
set -euo pipefail

ktrust=$1
ktrustd=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
# shellcheck source=two_nodes.sh
source "$here/two_nodes.sh"
runc=$(command -v runc || true)
container=ktrust-oci-$KT_ID

cleanup() {
  if [[ -n $runc ]]; then "$runc" --root "$work/runc" delete -f "$container" >/dev/null 2>&1 || true; fi
  # On a hybrid host runc also made the path in every cgroup v1 hierarchy.
  find /sys/fs/cgroup/*/"ktrust-test-$KT_ID" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  two_nodes_cleanup
}
trap cleanup EXIT

if [[ -z $runc ]]; then
  echo "not ok - runc is not installed (tools/dev installs it)"
  exit 1
fi

two_nodes_up "$work" "$ktrust"
mkdir -p "$KT_CG"/a/{client,intruder,holder} "$KT_CG"/b/{server,holder}
ktls=${KTRUST_VM:+yes}

KT_AGENT_EXTRA="  holder_socket: $work/a/holder/holder.sock" write_config a '
  - name: client
    cgroup: client
    spiffe_id: spiffe://{trust_domain}/{node}/client
    data_path: zero_hop
  - name: intruder
    cgroup: intruder
    spiffe_id: spiffe://{trust_domain}/{node}/intruder
    data_path: zero_hop' '
  []'
KT_AGENT_EXTRA="  holder_socket: $work/b/holder/holder.sock" write_config b '
  - name: server
    cgroup: server
    spiffe_id: spiffe://{trust_domain}/{node}/server
    ports: [8080]
    data_path: zero_hop' '
  - to: server
    ports: [8080]
    from: [spiffe://example.org/node-a/client]'
start_holder a "$ktrustd"
start_holder b "$ktrustd"
start_agent a "$ktrustd"
start_agent b "$ktrustd"

marker="KTRUST-OCI-MARKER-$RANDOM$RANDOM"
mkdir -p "$work/www" "$work/bundle/rootfs"
echo "$marker" >"$work/www/secret.txt"

# The bundle: runc's default spec, the host's directories read-only as the
# root filesystem, and what makes it a zero-hop workload of node b: its
# network namespace, the workload's cgroup (relative to the cgroup v2 root)
# and the seccomp profile of docs/operations.md.
"$runc" spec --bundle "$work/bundle"
cgroups_path=/${KT_CG#"$KT_WORK/cgroup2/"}/b/server
binds=()
for d in /usr /bin /lib /lib64 /etc; do [[ -e $d ]] && binds+=("$d"); done
jq --arg netns "/run/netns/$KT_NS_B" --arg cgroups "$cgroups_path" \
  --arg listener "$work/b/holder/oci-seccomp.sock" --arg www "$work/www" \
  --argjson binds "$(printf '%s\n' "${binds[@]}" | jq -R . | jq -s .)" '
  .root = {path: "rootfs", readonly: true}
  | del(.process.rlimits)  # refused in this sandbox (ARCHITECTURE.md)
  | .process.terminal = false
  | .process.args = ["python3", "-u", "-m", "http.server", "--bind", "::", "--directory", "/www", "8080"]
  | .mounts = [.mounts[] | select(.type != "cgroup")]
      + [$binds[] | {destination: ., type: "bind", source: ., options: ["rbind", "ro"]}]
      + [{destination: "/www", type: "bind", source: $www, options: ["rbind", "ro"]}]
  | .linux.namespaces = [.linux.namespaces[] | select(.type != "network")]
      + [{type: "network", path: $netns}]
  | .linux.cgroupsPath = $cgroups
  | .linux.seccomp = {
      defaultAction: "SCMP_ACT_ALLOW",
      listenerPath: $listener,
      architectures: ["SCMP_ARCH_X86_64"],
      syscalls: [
        {names: ["connect", "accept", "accept4"], action: "SCMP_ACT_NOTIFY"},
        {names: ["io_uring_setup"], action: "SCMP_ACT_ERRNO", errnoRet: 1}]}
  ' "$work/bundle/config.json" >"$work/bundle/config.json.new"
mv "$work/bundle/config.json.new" "$work/bundle/config.json"

"$runc" --root "$work/runc" run --bundle "$work/bundle" "$container" >"$work/container.log" 2>&1 &
KT_PIDS+=($!)
runc_pid=$!
wait_for "$work/container.log" "Serving HTTP" 60
container_pid=$("$runc" --root "$work/runc" state "$container" | jq -r .pid)
wait_for "$work/b/agent.log" '"event":"zero_hop_listener",.*"source":"oci"'

echo "# the container's listener"
check "the holder registered the container's listener from runc ($container_pid)" \
  grep -q "\"event\":\"zerohop_listener_registered\".*\"source\":\"oci\".*\"pid\":$container_pid," \
  "$work/b/holder.log"
check "the container runs in node b's network namespace" \
  test "$(stat -Lc %i "/proc/$container_pid/ns/net")" = "$(stat -Lc %i "/run/netns/$KT_NS_B")"
check "and in workload server's cgroup ($cgroups_path)" \
  grep -qx "0::$cgroups_path" "/proc/$container_pid/cgroup"
status_b=$("$ktrust" --socket "$work/b/control.sock" status --json)
listener=$(jq -c --argjson pid "$container_pid" \
  '[.zero_hop.listeners[] | select(.pid == $pid)]' <<<"$status_b")
check "ktrust status on node b lists the container's listener: source oci, workload server ($listener)" \
  jq -e 'length == 1 and .[0].source == "oci" and .[0].workload == "server"' <<<"$listener"
workloads_b=$("$ktrust" --socket "$work/b/control.sock" workloads --json)
path=$(jq -r '.workloads[] | select(.name == "server") | .data_path' <<<"$workloads_b")
if [[ -n $ktls ]]; then
  check "its data path: zero-hop inbound, outbound proxied without WAIT_KILLABLE_RECV" \
    jq -e '.[0].data_path | test("^zero-hop inbound .*WAIT_KILLABLE_RECV")' <<<"$listener"
  check "ktrust workloads on node b: server is zero-hop ($path)" test "$path" = "zero-hop (1 process)"
else
  check "its data path: proxied, and says why" \
    jq -e '.[0].data_path | test("^proxy \\(zero-hop unavailable: .*kernel TLS")' <<<"$listener"
  check "ktrust workloads on node b: server is proxied, and says why ($path)" \
    grep -q '^proxy (zero-hop unavailable: .*kernel TLS' <<<"$path"
fi

ip netns exec "$KT_NS_A" tcpdump -i a0 --immediate-mode -U -s 0 -w "$work/wire.pcap" 'tcp' \
  2>"$work/tcpdump.log" &
KT_PIDS+=($!)
tcpdump_pid=$!
wait_for "$work/tcpdump.log" "listening on"

echo "# requests"
body=$(exec_in a client "$ktrust" exec --holder-socket "$work/a/holder/zerohop.sock" -- \
  curl -sS --max-time 10 http://10.77.0.2:8080/secret.txt 2>&1 || true)
check "curl on node a gets the file from the container over IPv4 ($body)" test "$body" = "$marker"
body6=$(exec_in a client "$ktrust" exec --holder-socket "$work/a/holder/zerohop.sock" -- \
  curl -sS --max-time 10 -g 'http://[fd77::2]:8080/secret.txt' 2>&1 || true)
check "and over IPv6 ($body6)" test "$body6" = "$marker"

# A connection held open: what ktrust conns on node b says while it lives.
# The client sends its request once the test writes to the fifo (held open
# here, so neither side blocks on opening it).
mkfifo "$work/go"
exec 3<>"$work/go"
run_in a client "$work/held.log" "$ktrust" exec --holder-socket "$work/a/holder/zerohop.sock" -- \
  python3 -u -c "
import socket
s = socket.create_connection(('10.77.0.2', 8080)); print('connected', flush=True)
open('$work/go').readline()
s.sendall(b'GET /secret.txt HTTP/1.0\r\n\r\n'); print(s.makefile('rb').read().decode(), flush=True)"
wait_for "$work/held.log" connected
held() {
  "$ktrust" --socket "$work/b/control.sock" conns --json |
    jq -ce '[.connections[] | select(.direction == "inbound" and .workload == "server"
      and (.wire_local | test(":8080$")) and (.peer_id | test("/node-a/client$")))] | .[0]'
}
wait_until 20 held || true
conn=$(held || true)
if [[ -n $ktls ]]; then
  check "ktrust conns on node b lists the held connection as zero-hop ($conn)" \
    jq -e '.data_path == "zero-hop"' <<<"$conn"
else
  check "ktrust conns on node b lists the held connection, proxied ($conn)" \
    jq -e 'type == "object" and .data_path != "zero-hop"' <<<"$conn"
fi
echo go >&3
wait_for "$work/held.log" "$marker"
check "the held connection then gets the file" grep -q "$marker" "$work/held.log"

server_closed() { grep -c '"event":"connection_closed".*"workload":"server"' "$work/b/agent.log" || true; }
if [[ -n $ktls ]]; then
  tls_stat=$(ip netns exec "$KT_NS_B" cat /proc/net/tls_stat)
  check "node b's kernel installed TLS on sockets (TlsTxSw, TlsRxSw > 0)" \
    awk '$1 ~ /^Tls(Tx|Rx)Sw$/ && $2 > 0 { n++ } END { exit n != 2 }' <<<"$tls_stat"
  handed=$(grep -c '"event":"connection_handed_over".*"workload":"server"' "$work/b/agent.log" || true)
  check "agent b handed the accepted sockets to the container ($handed, 3 requests)" test "$handed" -ge 3
  carried=$(server_closed)
  check "agent b proxied none of them ($carried)" test "$carried" = 0
else
  # The held connection's close is logged just after its client has the file.
  three_closed() { test "$(server_closed)" -ge 3; }
  wait_until 10 three_closed || true
  carried=$(server_closed)
  check "agent b proxied them ($carried, 3 requests)" test "$carried" -ge 3
fi

echo "# refusals"
requests_before=$(grep -c 'GET /secret.txt' "$work/container.log" || true)
out=$(exec_in a intruder "$ktrust" exec --holder-socket "$work/a/holder/zerohop.sock" -- \
  curl -sS --max-time 10 http://10.77.0.2:8080/secret.txt 2>&1 || true)
check "a disallowed identity gets nothing" lacks "$marker" "$out"
check "the container never accepted it" \
  test "$(grep -c 'GET /secret.txt' "$work/container.log" || true)" = "$requests_before"
check "node b said why" grep -q 'not allowed for port 8080' "$work/b/agent.log"

echo "# the wire"
kill -INT "$tcpdump_pid"
wait "$tcpdump_pid" 2>/dev/null || true
check "the capture saw traffic to port 8080" \
  sh -c "tcpdump -r '$work/wire.pcap' -nn 'tcp port 8080' 2>/dev/null | grep -q ."
check "the wire never carried the file content in plaintext" sh -c "! grep -aq '$marker' '$work/wire.pcap'"

echo "# the container stops"
"$runc" --root "$work/runc" kill "$container" KILL
wait "$runc_pid" 2>/dev/null || true
oci_listeners() {
  "$ktrust" --socket "$work/b/control.sock" status --json |
    jq -e '[.zero_hop.listeners[] | select(.source == "oci")] | length == 0'
}
wait_until 10 oci_listeners || true
check "its listener is gone from ktrust status on node b" oci_listeners

two_nodes_results
