#!/usr/bin/env bash
# The zero-hop data path end to end: two simulated nodes, each with an fd
# holder (`ktrustd holder`) and an agent, and unmodified programs started by
# `ktrust exec`.
#
#   node a: curl, python (cgroup "client", zero_hop)       -> ktrustd a
#           curl (cgroup "intruder", zero_hop, not allowed)
#           redis-benchmark (cgroup "client")
#   node b: python3 http.server :8080, a sha256 sink :9000,
#           redis-server :6379
#           (cgroup "server", zero_hop, ports 8080 9000 6379) <- ktrustd b
#   and, on node a outside any workload, a hostile client holding 50
#   connections to :8080 that never send a byte
#
# On a kernel with kernel TLS (the vm tier, KTRUST_VM=1) the workloads' own
# sockets carry TLS and the agents carry none of their bytes: a transfer
# survives SIGKILL of both agents, and restarted agents serve new
# connections without restarting the workloads, and the agents' byte counter
# stays at zero. Without it (the host tier) the same workloads are served by
# the proxy, whose byte counter counts them, and `ktrust workloads` says why.
# Both: requests work (curl, redis-benchmark against an epoll server), a
# disallowed identity gets nothing and the server never accepts it, 50 silent
# clients do not slow other clients' connect + first byte, the wire holds no
# plaintext. Needs root.
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

# Runs a command as node a's zero-hop workload "client", in the foreground.
as_client() { exec_in a client "$ktrust" exec --holder-socket "$work/a/holder/zerohop.sock" -- "$@"; }
# Application bytes the agent on node $1 carried, both directions.
agent_bytes() { metrics "$1" /metrics | awk '$1 ~ /^ktrust_bytes_total[{]/ { n += $2 } END { printf "%d", n }'; }
# Inbound handshakes pending in agent b, and whether the 50 silent clients are among them.
pending_b() { metrics b /metrics | awk '$1 == "ktrust_handshakes_pending{direction=\"inbound\"}" { printf "%d", $2 }'; }
silent_held() { (($(pending_b) >= 50)); }

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
    ports: [8080, 9000, 6379]
    data_path: zero_hop' '
  - to: server
    ports: [8080, 9000, 6379]
    from: [spiffe://example.org/node-a/client]'
start_holder a "$ktrustd"
start_holder b "$ktrustd"
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
body=$(as_client curl -sS --max-time 10 http://10.77.0.2:8080/secret.txt 2>&1 || true)
check "curl started by ktrust exec gets the file over IPv4 ($body)" test "$body" = "$marker"
body6=$(as_client curl -sS --max-time 10 -g 'http://[fd77::2]:8080/secret.txt' 2>&1 || true)
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

echo "# redis-benchmark to redis-server"
# An epoll server that accepts until EAGAIN, and a client whose connects are
# non-blocking (hiredis): both through ktrust exec.
run_in b server "$work/redis.log" "$ktrust" exec --holder-socket "$work/b/holder/zerohop.sock" -- \
  redis-server --port 6379 --bind 0.0.0.0 --protected-mode no --save '' --appendonly no --dir "$work"
wait_for "$work/redis.log" "Ready to accept connections"
bench_rc=0
# It exits at the first error reply or failed connection.
bench=$(as_client redis-benchmark -h 10.77.0.2 -p 6379 -n 1000 -c 10 -t set,get --csv 2>&1) ||
  bench_rc=$?
((bench_rc == 0)) || echo "$bench" >&2
rps() { awk -F'"' -v t="$1" '$2 == t { print $4 }' <<<"$bench"; }
set_rps=$(rps SET)
get_rps=$(rps GET)
check "redis-benchmark ran SET and GET against redis-server on node b (exit $bench_rc, SET $set_rps/s, GET $get_rps/s)" \
  awk -v rc="$bench_rc" -v s="$set_rps" -v g="$get_rps" 'BEGIN { exit !(rc == 0 && s + 0 > 0 && g + 0 > 0) }'
info=$(as_client redis-cli -h 10.77.0.2 -p 6379 INFO all 2>&1 | tr -d '\r' || true)
calls=$(grep -E '^cmdstat_(set|get):' <<<"$info" | cut -d, -f1,4,5 | tr '\n' ' ')
check "redis-server counted 1000 SETs and 1000 GETs, none failed or rejected ($calls)" test \
  "$(grep -cE '^cmdstat_(set|get):calls=1000,.*rejected_calls=0,failed_calls=0$' <<<"$info")" = 2
if [[ -n $ktls ]]; then
  # Every connection redis-server accepted (the INFO one too) is one the
  # agent authenticated and handed over: none came through the proxy, and
  # no doorbell reached redis-server.
  accepted=$(sed -n 's/^total_connections_received://p' <<<"$info")
  handed_over_6379() {
    test "$(grep '"event":"connection_handed_over"' "$work/b/agent.log" |
      grep -c '"wire_local":"[^"]*:6379"')" = "$accepted"
  }
  wait_until 10 handed_over_6379 || true
  handed=$(grep '"event":"connection_handed_over"' "$work/b/agent.log" | grep -c '"wire_local":"[^"]*:6379"' || true)
  check "agent b handed redis-server every connection it accepted ($handed handed over, redis-server accepted $accepted)" \
    test "$handed" = "$accepted" -a "$handed" -gt 20
  connected=$(grep '"event":"connection_handed_over"' "$work/a/agent.log" | grep -c '"wire_peer":"10.77.0.2:6379"' || true)
  check "agent a handed redis-benchmark's and redis-cli's sockets back with kernel TLS ($connected)" \
    test "$connected" = "$accepted"
else
  bytes_b=$(agent_bytes b)
  check "proxied: agent b's byte counter (ktrust_bytes_total) counts the bytes it carried ($bytes_b)" \
    test "$bytes_b" -gt 0
fi

echo "# 50 silent clients"
# Connect + first byte of GET /secret.txt, 10 times in a row from the client
# workload (after one warm-up): first without the silent clients, then, once
# the test writes to the fifo, while they are held. One process for both, so
# both medians are measured alike.
mkfifo "$work/held"
run_in a client "$work/first_byte.log" "$ktrust" exec --holder-socket "$work/a/holder/zerohop.sock" -- \
  python3 -u -c "
import socket, statistics, sys, time
def get():
    t = time.monotonic()
    s = socket.create_connection(('10.77.0.2', 8080), timeout=30)
    s.sendall(b'GET /secret.txt HTTP/1.0\r\n\r\n')
    data = s.recv(65536); first = time.monotonic() - t
    while b := s.recv(65536): data += b
    s.close()
    return first, sys.argv[1].encode() in data
def measure(when):
    times, answered = [], 0
    for _ in range(10):
        t, ok = get(); times.append(t); answered += ok
    print(when, 'median %.3f max %.3f answered %d of 10' % (statistics.median(times), max(times), answered))
get()
measure('without')
open(sys.argv[2]).read()
measure('with')" "$marker" "$work/held"
wait_for "$work/first_byte.log" '^without ' 60
before=$(grep '^without ' "$work/first_byte.log")
check "without them, other clients are answered ($before)" grep -q 'answered 10 of 10' <<<"$before"
# A hostile client on node a, in no workload: 50 plain TCP connections to
# http.server's port that never send a byte, each reopened as soon as agent b
# drops it (first_byte_timeout).
ip netns exec "$KT_NS_A" python3 -u -c "
import selectors, socket
sel = selectors.DefaultSelector(); opened = 0
def connect():
    global opened
    sel.register(socket.create_connection(('10.77.0.2', 8080)), selectors.EVENT_READ); opened += 1
for _ in range(50): connect()
print('holding 50', flush=True)
while True:
    for key, _ in sel.select():
        sel.unregister(key.fileobj); key.fileobj.close(); connect()
        print('reopened, opened', opened, flush=True)" >"$work/silent.log" 2>&1 &
KT_PIDS+=($!)
silent_pid=$!
wait_for "$work/silent.log" "holding 50"
wait_until 20 silent_held || true
pending=$(pending_b)
check "agent b holds the 50 silent clients as pending handshakes ($pending pending)" test "$pending" -ge 50
timeout 10 sh -c 'echo >"$1"' sh "$work/held" || true
wait_for "$work/first_byte.log" '^with ' 60 || true
during=$(grep '^with ' "$work/first_byte.log" || true)
check "while they are held, too ($during)" grep -q 'answered 10 of 10' <<<"$during"
median_before=$(sed -n 's/.* median \([0-9.]*\) .*/\1/p' <<<"$before")
median_during=$(sed -n 's/.* median \([0-9.]*\) .*/\1/p' <<<"$during")
check "connect + first byte not slowed by them: median ${median_during}s with, ${median_before}s without (bound 2x + 0.2 s)" \
  awk -v b="$median_before" -v d="$median_during" 'BEGIN { exit !(b != "" && d != "" && d <= 2 * b + 0.2) }'
wait_until 20 silent_held || true
pending=$(pending_b)
check "and still held them at the end ($pending pending)" test "$pending" -ge 50
server_conns=$(ip netns exec "$KT_NS_B" ss -Htnp state established '( sport = :8080 )' |
  grep -c "pid=$server_pid," || true)
check "http.server holds none of them ($server_conns connections)" test "$server_conns" = 0
kill "$silent_pid"

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
    # The row's bytes are the workload's socket's (sock_diag); the agent's
    # own counter counts what it carried: nothing, also of curl, redis and
    # the silent clients before.
    moved=$(jq '[.connections[] | select(.wire_peer + .wire_local | test(":9000")) |
      .bytes_to_wire + .bytes_from_wire] | add // 0' <<<"$conns")
    carried=$(agent_bytes "$n")
    check "agent $n's byte counter (ktrust_bytes_total) is $carried while the transfer's socket moved $moved bytes" \
      test "$carried" = 0 -a "$moved" -ge $((1 << 20))
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

  body=$(as_client curl -sS --max-time 10 http://10.77.0.2:8080/secret.txt 2>&1 || true)
  check "restarted agents serve a new connection to the same http.server ($body)" \
    test "$body" = "$marker"
  check "http.server was never restarted" kill -0 "$server_pid"
fi

echo "# the wire"
kill -INT "$tcpdump_pid"
wait "$tcpdump_pid" 2>/dev/null || true
for port in 8080 6379; do
  check "the capture saw traffic to port $port" \
    sh -c "tcpdump -r '$work/wire.pcap' -nn 'tcp port $port' 2>/dev/null | grep -q ."
done
check "the wire never carried the file content in plaintext" sh -c "! grep -aq '$marker' '$work/wire.pcap'"
# redis-benchmark's SET names this key.
check "nor redis-benchmark's commands (key:__rand_int__)" sh -c "! grep -aq 'key:__rand_int__' '$work/wire.pcap'"

two_nodes_results
