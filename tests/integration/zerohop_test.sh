#!/usr/bin/env bash
# The zero-hop data path end to end: two simulated nodes, each with an fd
# holder (`ktrustd holder`) and an agent, and unmodified programs started by
# `ktrust exec`.
#
#   node a: curl, python (cgroup "client", zero_hop)       -> ktrustd a
#           curl (cgroup "intruder", zero_hop, not allowed)
#   node b: python3 http.server :8080, a sha256 sink :9000
#           (cgroup "server", zero_hop, ports 8080 9000)     <- ktrustd b
#
# On a kernel with kernel TLS (the vm tier, KTRUST_VM=1) the workloads' own
# sockets carry TLS and the agents carry none of their bytes: a transfer
# survives SIGKILL of both agents, and restarted agents serve new
# connections without restarting the workloads. Without it (the host tier)
# the same workloads are served by the proxy, and `ktrust workloads` says
# why. Both: requests work, a disallowed identity gets nothing and the
# server never accepts it, the wire holds no plaintext. Needs root.
# Usage: zerohop_test.sh KTRUST KTRUSTD
set -euo pipefail

ktrust=$1
ktrustd=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
# shellcheck source=two_nodes.sh
source "$here/two_nodes.sh"
trap two_nodes_cleanup EXIT

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
    ports: [8080, 9000]
    data_path: zero_hop' '
  - to: server
    ports: [8080, 9000]
    from: [spiffe://example.org/node-a/client]'
for n in a b; do
  # The holder, in a cgroup no workload claims: it outlives the agents.
  run_in "$n" holder "$work/$n/holder.log" "$ktrustd" holder --socket-dir "$work/$n/holder"
  wait_for "$work/$n/holder.log" '"event":"holder_ready"'
done
start_agent a "$ktrustd"
start_agent b "$ktrustd"

marker="KTRUST-ZERO-HOP-MARKER-$RANDOM$RANDOM"
mkdir "$work/www"
echo "$marker" >"$work/www/secret.txt"
run_in b server "$work/http.log" "$ktrust" exec --holder-socket "$work/b/holder/zerohop.sock" -- \
  python3 -u -m http.server --bind :: --directory "$work/www" 8080
wait_for "$work/http.log" "Serving HTTP"
server_pid=$(pgrep -f "http.server --bind :: --directory $work/www")

ip netns exec "$KT_NS_A" tcpdump -i a0 --immediate-mode -U -s 0 -w "$work/wire.pcap" 'tcp' \
  2>"$work/tcpdump.log" &
KT_PIDS+=($!)
tcpdump_pid=$!
wait_for "$work/tcpdump.log" "listening on"

echo "# requests"
body=$(exec_in a client "$ktrust" exec --holder-socket "$work/a/holder/zerohop.sock" -- \
  curl -sS --max-time 10 http://10.77.0.2:8080/secret.txt 2>&1 || true)
check "curl started by ktrust exec gets the file over IPv4 ($body)" test "$body" = "$marker"
body6=$(exec_in a client "$ktrust" exec --holder-socket "$work/a/holder/zerohop.sock" -- \
  curl -sS --max-time 10 -g 'http://[fd77::2]:8080/secret.txt' 2>&1 || true)
check "and over IPv6 ($body6)" test "$body6" = "$marker"

status_b=$("$ktrust" --socket "$work/b/control.sock" status --json)
check "ktrust status on node b: holder connected, http.server's listener served" jq -e \
  --argjson pid "$server_pid" \
  '.zero_hop.holder_connected and (.zero_hop.listeners | map(select(.pid == $pid and .workload == "server")) | length == 1)' \
  <<<"$status_b"
workloads_b=$("$ktrust" --socket "$work/b/control.sock" workloads --json)
path=$(jq -r '.workloads[] | select(.name == "server") | .data_path' <<<"$workloads_b")
if [[ -n $ktls ]]; then
  check "ktrust workloads on node b: server is zero-hop ($path)" test "$path" = "zero-hop (1 process)"
else
  check "ktrust workloads on node b: server is proxied, and says why ($path)" \
    grep -q '^proxy (zero-hop unavailable: .*kernel TLS' <<<"$path"
fi

echo "# refusals"
requests_before=$(grep -c 'GET /secret.txt' "$work/http.log" || true)
out=$(exec_in a intruder "$ktrust" exec --holder-socket "$work/a/holder/zerohop.sock" -- \
  curl -sS --max-time 10 http://10.77.0.2:8080/secret.txt 2>&1 || true)
check "a disallowed identity gets nothing" lacks "$marker" "$out"
check "http.server never accepted it" \
  test "$(grep -c 'GET /secret.txt' "$work/http.log" || true)" = "$requests_before"
check "node b said why" grep -q 'not allowed for port 8080' "$work/b/agent.log"

if [[ -n $ktls ]]; then
  echo "# zero-hop: the agents carry no bytes, and can die"
  for n in a b; do
    tls_stat=$(ip netns exec "$(node_ns "$n")" cat /proc/net/tls_stat)
    check "node $n's kernel installed TLS on sockets (TlsTxSw, TlsRxSw > 0)" \
      awk '$1 ~ /^Tls(Tx|Rx)Sw$/ && $2 > 0 { n++ } END { exit n != 2 }' <<<"$tls_stat"
  done
  check "agent a handed curl's sockets back with kernel TLS" \
    grep -q '"event":"connection_handed_over"' "$work/a/agent.log"
  check "agent b handed the accepted sockets to http.server" \
    grep -q '"event":"connection_handed_over"' "$work/b/agent.log"
  carried=$(grep -h '"event":"connection_closed"' "$work/a/agent.log" "$work/b/agent.log" |
    grep -c '"workload":"\(client\|server\)"' || true)
  check "neither agent proxied a connection of the zero-hop workloads ($carried)" test "$carried" = 0

  # The decisive test: 1 GiB, both agents SIGKILLed in the middle.
  run_in b server "$work/sink.log" "$ktrust" exec --holder-socket "$work/b/holder/zerohop.sock" -- \
    python3 -u -c "
import hashlib, socket
s = socket.create_server(('0.0.0.0', 9000)); print('listening', flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    h.update(b); n += len(b)
    if n >= 64 << 20 and n - len(b) < 64 << 20: print('64 MiB in', flush=True)
print('received', n, h.hexdigest(), flush=True)"
  wait_for "$work/sink.log" listening
  run_in a client "$work/source.log" "$ktrust" exec --holder-socket "$work/a/holder/zerohop.sock" -- \
    python3 -u -c "
import hashlib, os, socket
s = socket.create_connection(('10.77.0.2', 9000)); h = hashlib.sha256()
print('connected', flush=True)
for i in range(1024):
    b = os.urandom(1 << 20); h.update(b); s.sendall(b)
    if i % 256 == 255: print('progress', i, flush=True)
print('sent', 1 << 30, h.hexdigest(), flush=True); s.close()"
  wait_for "$work/sink.log" '64 MiB in'
  for n in a b; do
    conns=$("$ktrust" --socket "$work/$n/control.sock" conns --json)
    check "ktrust conns on node $n lists the transfer as zero-hop" jq -e \
      '.connections | map(select(.data_path == "zero-hop" and (.wire_peer + .wire_local | test(":9000")))) | length == 1' \
      <<<"$conns"
  done
  pkill -9 -f "ktrustd run --config $work/a/ktrustd.yaml"
  pkill -9 -f "ktrustd run --config $work/b/ktrustd.yaml"
  # Back while the transfer still runs: they find it again (their journals).
  start_agent a "$ktrustd"
  start_agent b "$ktrustd"
  for n in a b; do
    conns=$("$ktrust" --socket "$work/$n/control.sock" conns --json)
    check "the restarted agent on node $n lists the live transfer, with its peer" jq -e \
      '.connections | map(select(.data_path == "zero-hop" and (.peer_id | test("node-[ab]/")))) | length >= 1' \
      <<<"$conns"
  done
  wait_for "$work/sink.log" '^received' 300
  wait_for "$work/source.log" '^sent' 30 ||
    ps -eo pid,stat,wchan:20,args | grep -E 'python|ktrust' | cut -c1-150 >&2
  sent=$(sed -n 's/^sent //p' "$work/source.log")
  received=$(sed -n 's/^received //p' "$work/sink.log")
  check "1 GiB crossed with both agents SIGKILLed mid-transfer, sha256 equal ($received)" \
    test -n "$sent" -a "$sent" = "$received"

  body=$(exec_in a client "$ktrust" exec --holder-socket "$work/a/holder/zerohop.sock" -- \
    curl -sS --max-time 10 http://10.77.0.2:8080/secret.txt 2>&1 || true)
  check "restarted agents serve a new connection to the same http.server ($body)" \
    test "$body" = "$marker"
  check "http.server was never restarted" kill -0 "$server_pid"
fi

echo "# the wire"
kill -INT "$tcpdump_pid"
wait "$tcpdump_pid" 2>/dev/null || true
check "the capture saw traffic to port 8080" \
  sh -c "tcpdump -r '$work/wire.pcap' -nn 'tcp port 8080' 2>/dev/null | grep -q ."
check "the wire never carried the file content in plaintext" sh -c "! grep -aq '$marker' '$work/wire.pcap'"

two_nodes_results
