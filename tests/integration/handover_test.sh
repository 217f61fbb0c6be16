#!/usr/bin/env bash
# Stopping and upgrading an agent without losing connections (issue 12), on
# two simulated nodes: an echo server on node b (cgroup "server", enrolled,
# port 8080) and one in pod w1 of node b (10.77.2.2, cgroup "pod-server",
# port 8081), clients on node a (cgroup "client", enrolled).
#
#   drain      SIGTERM to agent b: it accepts nothing more (new connects are
#              refused: the programs stay), `ktrust status` says what is
#              draining, the open connections keep working, end cleanly,
#              and the agent exits once they have, before the deadline
#   deadline   a connection still open at agent.drain_timeout is closed by
#              the agent with a drain_timeout log line
#   handover   a second `ktrustd run` on node b takes over: a loop of new
#              connections across it sees no refusal, new connections go to
#              the new agent, and both agents' `ktrust status` say who
#              drains. A connection whose TLS handshake is under way at the
#              handover (a client that sends the start of a ClientHello and
#              stalls) stays in the old agent, which ends it at its
#              handshake deadline with a log line: never left hanging. Here
#              (userspace TLS) the open connections cannot move: they drain
#              in the old agent and end cleanly before its deadline. In the
#              vm (kernel TLS) they move: 50 idle ones and a 1 GiB transfer
#              started before the handover all go to the new agent, which
#              lists them with their original start time; then a new agent
#              on node a takes over mid-transfer the same way (the client
#              side's connections move); the transfer ends with equal
#              sha256, every idle one answers, and the loop saw no refusal
#              across both
#   bad config a successor whose configuration does not load takes nothing
#   not agent  a successor without the agent's capabilities is refused
#   killed     a successor killed mid-handover leaves the old agent serving:
#              its open connections still work, and so do new ones, to the
#              node and to a pod (whose own listener slots the successor had
#              steered to itself)
#   mid-move   (vm only: nothing moves without kernel TLS) a successor that
#              stops halfway through moving 200 connections, then is killed:
#              every connection is either still served by the old agent or
#              was closed (moved, and gone with the successor, with the old
#              agent's connection_moved line); none hangs open and unserved
#
# This host has no kernel TLS: every connection is on the userspace record
# layer and drains where it was accepted; the vm tier (vm_handover_test)
# runs the same on kernel TLS, where established connections move.
# Needs root.
# Usage: handover_test.sh KTRUST KTRUSTD
set -euo pipefail

ktrust=$1
ktrustd=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
# shellcheck source=two_nodes.sh
source "$here/two_nodes.sh"
trap two_nodes_cleanup EXIT

two_nodes_up "$work" "$ktrust"
add_pod b w1 2
mkdir -p "$KT_CG"/a/client "$KT_CG"/b/server "$KT_CG"/b/pod-server

write_nodes() {
  write_config a '
  - name: client
    cgroup: client
    spiffe_id: spiffe://{trust_domain}/{node}/client' '
  []'
  write_config b '
  - name: server
    cgroup: server
    spiffe_id: spiffe://{trust_domain}/{node}/server
    ports: [8080]
  - name: pod-server
    cgroup: pod-server
    spiffe_id: spiffe://{trust_domain}/{node}/pod-server
    ports: [8081]' '
  - to: server
    ports: [8080]
    from: [spiffe://example.org/node-a/client]
  - to: pod-server
    ports: [8081]
    from: [spiffe://example.org/node-a/client]'
}
KT_DRAIN_TIMEOUT=60s write_nodes

cat >"$work/echo.py" <<'EOF'
import socket, sys, threading
def serve(c):
    while True:
        data = c.recv(65536)
        if not data:
            break
        c.sendall(data)
    c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(256); print('listening', flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF
run_in b server "$work/echo.log" python3 -u "$work/echo.py" 8080
run_in_pod b w1 pod-server "$work/pod-echo.log" python3 -u "$work/echo.py" 8081
wait_for "$work/echo.log" listening
wait_for "$work/pod-echo.log" listening

start_agent a "$ktrustd"
start_agent b "$ktrustd"

# The events of a log as one JSON array (lines are "<time> <level> {...}").
events() { grep '"event":' "$1" | sed 's/^[^{]*//' | jq -s .; }
# How many connections of WORKLOAD the agent of LOG moved on kernel TLS.
ktls_moved() {  # LOG WORKLOAD
  events "$1" | jq --arg w "$2" '[.[] | select(.event == "connection_moved" and .workload == $w and .data_path == "ktls-sw")] | length'
}
# "<count> <seconds>": how many of NODE's connections of WORKLOAD are older
# than SINCE (date +%s.%N), which was <seconds> ago.
older_than() {  # NODE WORKLOAD SINCE
  local conns ago
  conns=$(kt "$1" conns --json)
  ago=$(awk -v now="$(date +%s.%N)" -v then="$3" 'BEGIN { printf "%.1f", now - then }')
  echo "$(jq --arg w "$2" --argjson ago "$ago" '[.connections[] | select(.workload == $w and .age_seconds > $ago)] | length' <<<"$conns") $ago"
}
agent_pid() { pgrep -nf "ktrustd run --config $work/$1/ktrustd.yaml"; }
# One echo round trip from node a's client cgroup on a new connection, to
# node b (or to ADDRESS PORT: echo_pod).
echo_once() {
  exec_in a client python3 -c "
import socket
s = socket.create_connection(('${1:-10.77.0.2}', ${2:-8080}), timeout=5)
s.sendall(b'ping\n'); print(s.recv(16).decode().strip())"
}
echo_pod() { echo_once 10.77.2.2 8081; }
# Starts COUNT long-lived connections (conns.py), waits until they are open.
open_conns() {  # NAME COUNT
  rm -f "$work/$1.go"
  run_in a client "$work/$1.log" python3 -u "$here/conns.py" 10.77.0.2 8080 "$2" "$work/$1.go"
  wait_for "$work/$1.log" "^open $2" $((20 + $2))
}

check "a first echo works through both agents ($(echo_once 2>&1 || true))" \
  test "$(echo_once 2>&1 || true)" = ping
wait_for "$work/b/agent.log" '"event":"pod_netns_served".*10\.77\.2\.2'
check "and one to the pod on node b ($(echo_pod 2>&1 || true))" test "$(echo_pod 2>&1 || true)" = ping

echo "# drain: SIGTERM to agent b with 5 connections open"
open_conns drain 5
pid_b=$(agent_pid b)
kill -TERM "$pid_b"
wait_for "$work/b/agent.log" '"event":"draining"'
status=$(kt b status --json)
check "ktrust status on b says it drains, after SIGTERM ($(jq -c .drain <<<"$status"))" \
  jq -e '.drain.draining and .drain.reason == "SIGTERM" and .drain.connections == 5' <<<"$status"
human=$(kt b status)
check "the human status has a draining line" grep -q "^draining  *SIGTERM: 5 connections open" <<<"$human"
refused=$(echo_once 2>&1 || true)
check "a new connection to b is refused while it drains ($refused)" \
  grep -q "Connection refused\|Connection reset\|timed out" <<<"$refused"
touch "$work/drain.go"
wait_for "$work/drain.log" "^done"
check "every drained connection still echoed ($(grep -c ' ok$' "$work/drain.log") of 5)" \
  grep -q "^done 5$" "$work/drain.log"
check "agent b exited once they ended" wait_until 90 exited "$pid_b"
closed=$(events "$work/b/agent.log" |
  jq '[.[] | select(.event == "connection_closed" and .workload == "server")] | length')
check "agent b logged each connection as closed normally ($closed)" test "$closed" -ge 5
check "agent b said it drained and exited" grep -q '"event":"drained"' "$work/b/agent.log"
check "without a drain_timeout line" lacks '"drain_timeout"' "$(cat "$work/b/agent.log")"

echo "# deadline: a connection still open at drain_timeout is closed, with a log line"
mv "$work/b/agent.log" "$work/b/agent-drained.log"
KT_DRAIN_TIMEOUT=2s write_nodes
start_agent b "$ktrustd"
open_conns deadline 2
pid_b=$(agent_pid b)
kill -TERM "$pid_b"
check "agent b exited at its 2 s deadline" wait_until 20 exited "$pid_b"
touch "$work/deadline.go"
wait_for "$work/deadline.log" "^done"
check "the connections left open were closed by agent b ($(tail -1 "$work/deadline.log"))" \
  grep -q "^done 0$" "$work/deadline.log"
timed_out=$(events "$work/b/agent.log" |
  jq '[.[] | select(.event == "connection_failed" and .result == "drain_timeout")] | length')
check "agent b logged each as drain_timeout ($timed_out of 2)" test "$timed_out" = 2

echo "# handover: a second ktrustd run takes over node b"
mv "$work/b/agent.log" "$work/b/agent-deadline.log"
KT_DRAIN_TIMEOUT=60s write_nodes
start_agent b "$ktrustd"
old_b=$(agent_pid b)
idle=5
if [[ -n ${KTRUST_VM:-} ]]; then idle=50; fi
open_conns moved "$idle"
# The issue's 1 GiB (HANDOVER_TRANSFER_MIB to change it), capped at
# HANDOVER_TRANSFER_RATE MiB/s (2): under way through both handovers however
# fast the machine, and leaving the vm's CPU to the rest. The vm (TCG, 2
# vCPUs) echoes at most 3.1 MiB/s; at that rate the loop's new connections
# and the idle ones' echoes waited past their timeouts.
transfer_mib=${HANDOVER_TRANSFER_MIB:-1024}
if [[ -n ${KTRUST_VM:-} ]]; then
  run_in a client "$work/transfer.log" python3 -u "$here/transfer.py" 10.77.0.2 8080 \
    "$transfer_mib" "${HANDOVER_TRANSFER_RATE:-2}"
  wait_for "$work/transfer.log" "^progress\|^transfer" 120
fi
# New connections in a loop across the handover, each one echo round trip.
rm -f "$work/loop.stop"
run_in a client "$work/loop.log" python3 -u -c "
import os, socket
ok = failed = 0
while not os.path.exists('$work/loop.stop'):
    try:
        # A refusal is at once; a slow handshake (the vm's CPU is busy
        # with the transfer) is not one.
        s = socket.create_connection(('10.77.0.2', 8080), timeout=20)
        s.sendall(b'loop\n')
        ok += s.recv(16) == b'loop\n'
        s.close()
    except OSError as e:
        failed += 1
        print('failed:', e, flush=True)
print('loop ok %d failed %d' % (ok, failed), flush=True)"
wait_until 90 sh -c "[ \$(grep -c '\"event\":\"connection_closed\".*\"workload\":\"server\"' '$work/b/agent.log') -ge 3 ]"
# A handshake under way at the handover: from a process node a does not
# enrol (its connect goes to node b as it is), the start of a ClientHello
# record (512 bytes announced, one sent), then nothing.
run_in a bystander "$work/stalled.log" python3 -u -c "
import socket, time
s = socket.create_connection(('10.77.0.2', 8080), timeout=5)
s.sendall(bytes.fromhex('160301020001'))
start = time.monotonic()
print('stalled', flush=True)
s.settimeout(60)
try:
    how = 'answered' if s.recv(1) else 'closed'
except ConnectionResetError:
    how = 'reset'
except socket.timeout:
    how = 'hung'
print('%s after %.1f s' % (how, time.monotonic() - start), flush=True)"
wait_for "$work/stalled.log" '^stalled'
handshaking() { kt b conns --json | jq -c '[.connections[] | select(.state == "handshaking") | .workload]'; }
holds_handshake() { [[ $(handshaking) != "[]" ]]; }
wait_until 10 holds_handshake || true
check "the old agent holds it in its handshake ($(handshaking))" holds_handshake
handover_at=$(date +%s.%N)
run_in b agent "$work/b/successor.log" "$ktrustd" run --config "$work/b/ktrustd.yaml"
wait_for "$work/b/successor.log" '"event":"ready"\|startup_failed' 60
new_b=$(agent_pid b)
check "the successor started and took over from pid $old_b" \
  grep -q "\"predecessor_pid\":$old_b" "$work/b/successor.log"
wait_for "$work/b/agent.log" '"event":"draining"'
check "the old agent logged the handover" grep -q '"event":"handed_over"' "$work/b/agent.log"
status_new=$(kt b status --json)
if [[ -n ${KTRUST_VM:-} ]] && grep -q '"event":"predecessor_exited"' "$work/b/successor.log"; then
  # Everything moved at once: the old agent held nothing and has gone.
  check "ktrust status on the new agent no longer names the predecessor, which exited ($(jq -c .drain.predecessor <<<"$status_new"))" \
    jq -e '.drain.draining == false and .drain.predecessor == ""' <<<"$status_new"
else
  check "ktrust status on the new agent names the draining predecessor ($(jq -c .drain.predecessor <<<"$status_new"))" \
    jq -e --arg pid "$old_b" '.drain.draining == false and (.drain.predecessor | contains("pid " + $pid))' <<<"$status_new"
fi
if [[ -n ${KTRUST_VM:-} ]]; then
  # Kernel TLS: the idle connections and the transfer move.
  moved_count() { events "$work/b/agent.log" | jq '[.[] | select(.event == "connection_moved" and .workload == "server")] | length'; }
  check "the old agent moved the open connections ($(moved_count) connection_moved)" \
    wait_until 120 sh -c "[ \$(grep -c '\"event\":\"connection_moved\".*\"workload\":\"server\"' '$work/b/agent.log') -ge $((idle + 1)) ]"
  # It exits once it holds nothing (its status while it keeps some is
  # checked in mid-move below): its last word counts what moved.
  wait_for "$work/b/agent.log" '"event":"drained"' 120
  drained_moved() { grep '"event":"drained"' "$work/b/agent.log" | grep -o '"moved":[0-9]*' | cut -d: -f2; }
  check "and its drained line counts them all ($(drained_moved))" \
    wait_until 10 sh -c "[ \"\$(grep '\"event\":\"drained\"' '$work/b/agent.log' | grep -o '\"moved\":[0-9]*' | cut -d: -f2)\" -ge $((idle + 1)) ]"
  ktls_b=$(ktls_moved "$work/b/agent.log" server)
  check "they ran on kernel TLS ($ktls_b ktls-sw)" test "$ktls_b" -ge $((idle + 1))
  read -r older since <<<"$(older_than b server "$handover_at")"
  check "ktrust conns on the new agent lists them with their original start time ($older older than the handover, ${since}s ago)" \
    test "$older" -ge "$idle"
  check "the new agent's status counts them as moved in ($(jq -c .drain.moved_in <<<"$(kt b status --json)"))" \
    jq -e --argjson n $((idle + 1)) '.drain.moved_in >= $n' <<<"$(kt b status --json)"
  moved_in=$(events "$work/b/successor.log" |
    jq '[.[] | select(.event == "connection_moved_in" and .workload == "server" and .data_path == "ktls-sw")] | length')
  check "and logged each as moved in, with its workload and data path ($moved_in)" test "$moved_in" -ge $((idle + 1))
else
  status_old=$("$ktrust" --socket "$work/b/control-$old_b.sock" status --json)
  check "the old agent's status, beside it, says it drains for the successor ($(jq -c .drain <<<"$status_old"))" \
    jq -e --arg pid "$new_b" --argjson n "$idle" '.drain.draining and .drain.reason == "handed over to ktrustd pid " + $pid and .drain.connections - .drain.handshakes == $n and .drain.moved == 0' <<<"$status_old"
  check "nothing moved: no kernel TLS here" lacks '"connection_moved"' "$(cat "$work/b/agent.log")"
fi
wait_for "$work/stalled.log" ' after ' 60
check "the handshake under way at the handover was ended by the old agent, not left hanging ($(tail -1 "$work/stalled.log"))" \
  grep -q '^\(closed\|reset\) after' "$work/stalled.log"
stalled_failed=$(events "$work/b/agent.log" |
  jq -c '[.[] | select(.event == "connection_failed" and (.result | test("handshake"))) | .result + ": " + .reason]')
check "with a log line in the old agent ($stalled_failed)" test "$stalled_failed" != "[]"
if [[ -n ${KTRUST_VM:-} ]]; then
  big_moved() {  # LOG WORKLOAD: the largest connection it moved, in bytes
    events "$1" | jq --arg w "$2" '[.[] | select(.event == "connection_moved" and .workload == $w) | .bytes_to_wire] | max // 0'
  }
  check "the transfer moved mid-way on node b ($(big_moved "$work/b/agent.log" server) bytes of $((transfer_mib << 20)) at the move)" \
    test "$(big_moved "$work/b/agent.log" server)" -ge $((8 << 20))

  echo "# handover on node a too, mid-transfer: the client side's connections move"
  transfer_at_a=$(tail -1 "$work/transfer.log")
  old_a=$(agent_pid a)
  failed_before_a=$(grep -c '"connection_failed"' "$work/a/agent.log" || true)
  handover_a_at=$(date +%s.%N)
  run_in a agent "$work/a/successor.log" "$ktrustd" run --config "$work/a/ktrustd.yaml"
  wait_for "$work/a/successor.log" '"event":"ready"\|startup_failed' 60
  check "the transfer was still under way at node a's handover ($transfer_at_a)" test "$transfer_at_a" = progress
  check "a successor on node a took over from pid $old_a" \
    grep -q "\"predecessor_pid\":$old_a" "$work/a/successor.log"
  moved_a() { grep -c '"event":"connection_moved".*"workload":"client"' "$work/a/agent.log"; }
  wait_until 120 sh -c "[ \$(grep -c '\"event\":\"connection_moved\".*\"workload\":\"client\"' '$work/a/agent.log') -ge $((idle + 1)) ]" || true
  check "node a's old agent moved the client's open connections ($(moved_a) connection_moved)" \
    test "$(moved_a)" -ge $((idle + 1))
  check "the transfer among them, mid-way ($(big_moved "$work/a/agent.log" client) bytes at the move)" \
    test "$(big_moved "$work/a/agent.log" client)" -ge $((8 << 20))
  wait_for "$work/a/agent.log" '"event":"drained"' 120
  ktls_a=$(ktls_moved "$work/a/agent.log" client)
  check "on kernel TLS ($ktls_a ktls-sw)" test "$ktls_a" -ge $((idle + 1))
  # Started before node b's handover even: older than both.
  read -r older since <<<"$(older_than a client "$handover_a_at")"
  check "ktrust conns on node a's new agent lists them with their original start time ($older older than its handover, ${since}s ago)" \
    test "$older" -ge "$idle"
  check "node a's old agent exited once it held nothing" wait_until 90 exited "$old_a"
  failed_after_a=$(grep -c '"connection_failed"' "$work/a/agent.log" || true)
  check "without closing any ($((failed_after_a - failed_before_a)) failed since its handover)" \
    test "$failed_after_a" = "$failed_before_a" -a -z "$(grep '"drain_timeout"\|drain_cut_short' "$work/a/agent.log")"
  check "node a's new agent saw it exit" wait_for "$work/a/successor.log" '"event":"predecessor_exited"'
fi
# New connections reach the new agent.
check "new connections go to the new agent" wait_until 20 sh -c "[ \$(grep -c '\"event\":\"connection_closed\".*\"workload\":\"server\"' '$work/b/successor.log') -ge 5 ]"
touch "$work/loop.stop"
wait_for "$work/loop.log" "^loop ok"
check "zero refused or failed connects in the loop across the handover$([[ -n ${KTRUST_VM:-} ]] && echo "s of both nodes") ($(grep -v '^loop ok' "$work/loop.log" | head -3) $(tail -1 "$work/loop.log"))" \
  grep -q "failed 0$" "$work/loop.log"
if [[ -z ${KTRUST_VM:-} ]]; then
  # What the kubelet (deleting the old pod of a surge) or systemd does once
  # the successor is ready: one SIGTERM, which must not cut the drain short.
  # (In the vm the old agent has nothing left to drain by now.)
  kill -TERM "$old_b"
  check "the old agent takes a SIGTERM after the handover as the stop it is already doing" \
    wait_until 10 grep -q '"note":"draining on until' "$work/b/agent.log"
  check "and drains on" \
    jq -e --argjson n "$idle" '.drain.draining and .drain.connections - .drain.handshakes == $n' <<<"$("$ktrust" --socket "$work/b/control-$old_b.sock" status --json)"
fi
touch "$work/moved.go"
wait_for "$work/moved.log" "^done"
check "the connections open at the handover still echo ($(tail -1 "$work/moved.log"))" \
  grep -q "^done $idle$" "$work/moved.log"
if [[ -n ${KTRUST_VM:-} ]]; then
  wait_for "$work/transfer.log" "^transfer.*[0-9]$" 600
  grep '^took' "$work/transfer.log" | sed 's/^/# transfer /' || true
  transfer_whole() {
    local sent_sha sent_bytes got_sha got_bytes
    # (no process substitution: the vm has no /dev/fd)
    read -r _ _ sent_sha sent_bytes _ got_sha got_bytes <<<"$(grep "^transfer" "$work/transfer.log")" || true
    [[ -n ${sent_sha:-} && ${sent_sha:-} == "${got_sha:-}" && ${sent_bytes:-} == "${got_bytes:-}" ]]
  }
  check "the transfer across the handover came back whole ($(grep "^transfer" "$work/transfer.log"))" \
    transfer_whole
fi
check "the old agent exited once it held nothing" wait_until 90 exited "$old_b"
check "before its deadline, without closing any" \
  lacks '"drain_timeout"\|drain_cut_short' "$(cat "$work/b/agent.log")"
check "the new agent saw its predecessor exit" wait_for "$work/b/successor.log" '"event":"predecessor_exited"'
check "and serves on ($(echo_once 2>&1 || true))" test "$(echo_once 2>&1 || true)" = ping
check "the pod too ($(echo_pod 2>&1 || true))" test "$(echo_pod 2>&1 || true)" = ping

cp "$work/b/agent.log" "$work/b/agent-handover.log"  # the old agent's, for the record
echo "# bad config: a successor whose configuration does not load takes nothing"
cp "$work/b/ktrustd.yaml" "$work/b/bad.yaml"
echo "  no_such_setting: 1" >>"$work/b/bad.yaml"
bad_exit=0
exec_in b agent "$ktrustd" run --config "$work/b/bad.yaml" >"$work/b/bad.log" 2>&1 || bad_exit=$?
check "the bad successor exited with an error ($bad_exit)" test "$bad_exit" -ne 0
check "it said why" grep -q 'startup_failed.*no_such_setting' "$work/b/bad.log"
check "the running agent is still the same process" test "$(agent_pid b)" = "$new_b"
check "and not draining" jq -e '.drain.draining == false' <<<"$(kt b status --json)"
check "and serves ($(echo_once 2>&1 || true))" test "$(echo_once 2>&1 || true)" = ping

echo "# not an agent: only root with the agent's capabilities may take over"
check "the handover socket is root's alone ($(stat -c '%a %U' "$work/b/handover.sock"))" \
  test "$(stat -c '%a %U' "$work/b/handover.sock")" = "600 root"
# uid 0 without capabilities: the file lets it connect, SO_PEERCRED does not.
weak_exit=0
exec_in b agent setpriv --bounding-set=-all --inh-caps=-all --ambient-caps=-all \
  "$ktrustd" run --config "$work/b/ktrustd.yaml" >"$work/b/weak.log" 2>&1 || weak_exit=$?
tail -2 "$work/b/weak.log" | sed 's/^/#   weak successor: /'
check "a successor without the agent's capabilities is refused ($weak_exit: $(grep -o 'lacks capabilities[^"]*' "$work/b/weak.log" | head -1))" \
  grep -q 'lacks capabilities' "$work/b/weak.log"
check "the running agent logged it" grep -q '"event":"handover_refused"' "$work/b/successor.log"
check "and still serves, undisturbed ($(echo_once 2>&1 || true))" test "$(echo_once 2>&1 || true)" = ping
check "not draining" jq -e '.drain.draining == false' <<<"$(kt b status --json)"

echo "# killed: a successor killed mid-handover leaves the running agent serving"
mv "$work/b/successor.log" "$work/b/agent.log"
open_conns kept 3
# The successor stops itself at the worst moment (KTRUST_TEST_HANDOVER_STOP):
# it has steered the kernel to its listeners and taken the control socket,
# and is not ready yet.
run_in b agent "$work/b/doomed.log" env KTRUST_TEST_HANDOVER_STOP=started \
  "$ktrustd" run --config "$work/b/ktrustd.yaml"
wait_for "$work/b/doomed.log" '"event":"test_handover_stop"'
doomed=$(pgrep -nf "ktrustd run --config $work/b/ktrustd.yaml")
check "the successor is stopped after it took over the steering" \
  wait_until 10 sh -c "awk '{print \$3}' /proc/$doomed/stat | grep -q T"
kill -9 "$doomed"
wait_for "$work/b/agent.log" '"event":"handover_aborted"'
check "the running agent restored its steering ($(grep -o '"event":"pod_steering_restored"[^}]*' "$work/b/agent.log" | tail -1))" \
  grep -q '"event":"steering_restored"' "$work/b/agent.log"
check "it is not draining" jq -e '.drain.draining == false' <<<"$(kt b status --json)"
check "new connections are served ($(echo_once 2>&1 || true))" test "$(echo_once 2>&1 || true)" = ping
# The pod's listeners are its own, in its namespace: the successor had
# pointed its slots at its own, which died with it.
check "new connections to the pod are served ($(echo_pod 2>&1 || true))" test "$(echo_pod 2>&1 || true)" = ping
touch "$work/kept.go"
wait_for "$work/kept.log" "^done"
check "the connections open during the failed handover still echo ($(tail -1 "$work/kept.log"))" \
  grep -q "^done 3$" "$work/kept.log"

echo "# mid-move: a successor stopped halfway through moving, then killed"
if [[ -n ${KTRUST_VM:-} ]]; then
  mv "$work/b/doomed.log" "$work/b/doomed-started.log"
  open_conns midmove 200
  # It takes 100, then stops holding the 101st unanswered.
  run_in b agent "$work/b/doomed.log" env KTRUST_TEST_HANDOVER_STOP=moving:100 \
    "$ktrustd" run --config "$work/b/ktrustd.yaml"
  wait_for "$work/b/doomed.log" '"event":"test_handover_stop"' 120
  doomed=$(pgrep -nf "ktrustd run --config $work/b/ktrustd.yaml")
  wait_for "$work/b/agent.log" '"event":"successor_dropped"' 30
  kill -9 "$doomed"
  moved=$(events "$work/b/agent.log" |
    jq '[.[] | select(.event == "connection_moved" and .workload == "server")] | length')
  kept=$(events "$work/b/agent.log" |
    jq '[.[] | select(.event == "connection_kept" and .workload == "server")] | length')
  # Kept: the rest of the batch it was moving (the ones not taken out of
  # its engine yet stay there as they were); the status counts them all.
  check "the old agent moved 100 and took back the rest of the batch when the successor stopped answering ($moved moved, $kept kept)" \
    test "$moved" = 100 -a "$kept" -ge 1
  status_old=$("$ktrust" --socket "$work/b/control-$new_b.sock" status --json)
  check "its status says how many moved and how many drain here ($(jq -c .drain <<<"$status_old"))" \
    jq -e '.drain.draining and .drain.moved == 100 and .drain.connections == 100' <<<"$status_old"
  check "and so does the human one" grep -q "^moved  *100 connections to the successor" <<<"$("$ktrust" --socket "$work/b/control-$new_b.sock" status)"
  touch "$work/midmove.go"
  wait_for "$work/midmove.log" "^done" 120
  served=$(grep -c ' ok$' "$work/midmove.log" || true)
  ended=$(grep -c 'failed: .*\(ended\|reset\|Broken pipe\)' "$work/midmove.log" || true)
  hung=$(grep -c 'failed: .*timed out' "$work/midmove.log" || true)
  check "every connection was served ($served) or closed ($ended); none hung open and unserved ($hung)" \
    test "$hung" = 0 -a $((served + ended)) = 200 -a "$served" = $((200 - moved))
else
  echo "# (not on this host: without kernel TLS nothing moves; the drain checks above cover it)"
fi

two_nodes_results
