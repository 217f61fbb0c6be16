#!/usr/bin/env bash
# Stopping and upgrading an agent without losing connections (issue 12), on
# two simulated nodes: an echo server on node b (cgroup "server", enrolled,
# port 8080), clients on node a (cgroup "client", enrolled).
#
#   drain      SIGTERM to agent b: it accepts nothing more (new connects are
#              refused: the programs stay), `ktrust status` says what is
#              draining, the open connections keep working, end cleanly,
#              and the agent exits once they have, before the deadline
#   deadline   a connection still open at agent.drain_timeout is closed by
#              the agent with a drain_timeout log line
#
# This host has no kernel TLS: every connection is on the userspace record
# layer. Needs root.
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
mkdir -p "$KT_CG"/a/client "$KT_CG"/b/server

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
    ports: [8080]' '
  - to: server
    ports: [8080]
    from: [spiffe://example.org/node-a/client]'
}
write_nodes

run_in b server "$work/echo.log" python3 -u -c "
import socket, threading
def serve(c):
    while True:
        data = c.recv(65536)
        if not data:
            break
        c.sendall(data)
    c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 8080)); s.listen(256); print('listening', flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()"
wait_for "$work/echo.log" listening

start_agent a "$ktrustd"
start_agent b "$ktrustd"

# The events of a log as one JSON array (lines are "<time> <level> {...}").
events() { grep '"event":' "$1" | sed 's/^[^{]*//' | jq -s .; }
agent_pid() { pgrep -nf "ktrustd run --config $work/$1/ktrustd.yaml"; }
# One echo round trip from node a's client cgroup on a new connection.
echo_once() {
  exec_in a client python3 -c "
import socket
s = socket.create_connection(('10.77.0.2', 8080), timeout=5)
s.sendall(b'ping\n'); print(s.recv(16).decode().strip())"
}
# Starts COUNT long-lived connections (conns.py), waits until they are open.
open_conns() {  # NAME COUNT
  rm -f "$work/$1.go"
  run_in a client "$work/$1.log" python3 -u "$here/conns.py" 10.77.0.2 8080 "$2" "$work/$1.go"
  wait_for "$work/$1.log" "^open $2"
}

check "a first echo works through both agents ($(echo_once 2>&1 || true))" \
  test "$(echo_once 2>&1 || true)" = ping

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
while kill -0 "$pid_b" 2>/dev/null; do sleep 0.1; done
closed=$(events "$work/b/agent.log" |
  jq '[.[] | select(.event == "connection_closed" and .workload == "server")] | length')
check "agent b logged each connection as closed normally ($closed)" test "$closed" -ge 5
check "agent b said it drained and exited" grep -q '"event":"drained"' "$work/b/agent.log"
check "without a drain_timeout line" lacks '"drain_timeout"' "$(cat "$work/b/agent.log")"

echo "# deadline: a connection still open at drain_timeout is closed, with a log line"
mv "$work/b/agent.log" "$work/b/agent-drained.log"
KT_AGENT_EXTRA="  drain_timeout: 2s" write_nodes
start_agent b "$ktrustd"
open_conns deadline 2
pid_b=$(agent_pid b)
kill -TERM "$pid_b"
while kill -0 "$pid_b" 2>/dev/null; do sleep 0.1; done
touch "$work/deadline.go"
wait_for "$work/deadline.log" "^done"
check "the connections left open were closed by agent b ($(tail -1 "$work/deadline.log"))" \
  grep -q "^done 0$" "$work/deadline.log"
timed_out=$(events "$work/b/agent.log" |
  jq '[.[] | select(.event == "connection_failed" and .result == "drain_timeout")] | length')
check "agent b logged each as drain_timeout ($timed_out of 2)" test "$timed_out" = 2

two_nodes_results
