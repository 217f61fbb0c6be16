#!/usr/bin/env bash
# An agent at its file descriptor limit (issue 13): new connections are
# refused with a reason and counted, and nothing else is damaged. Node a's
# agent gets a low RLIMIT_NOFILE (prlimit on the running process), then a
# client in an enrolled cgroup opens connections through it until it is out
# of descriptors, and keeps trying. Meanwhile its enrolment passes fail to
# list the cgroup tree (EMFILE): they must remove nothing (once, every
# workload was unenrolled and even a non-enrolled cgroup's connects were
# refused as connect_unclassified).
#
#   node a: cgroups client (enrolled, the flood), probe-0 and probe-1
#           (enrolled, made while at the limit), bystander (not enrolled)
#   node b: cgroup server: an echo server on :8081 (enforced); cgroup plain
#           (not enrolled): a plaintext echo on :8082
#
# Needs root. Usage: fd_limit_test.sh KTRUST KTRUSTD
set -euo pipefail

ktrust=$1
ktrustd=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
# shellcheck source=two_nodes.sh
source "$here/two_nodes.sh"
trap two_nodes_cleanup EXIT

agent_pid() { pgrep -f "ktrustd run --config $work/$1/ktrustd.yaml"; }
log_lines() { wc -l <"$work/a/agent.log"; }
# Agent a's log after line $1.
log_since() { tail -n "+$(($1 + 1))" "$work/a/agent.log"; }

two_nodes_up "$work" "$ktrust"
mkdir -p "$KT_CG"/a/{client,bystander} "$KT_CG"/b/{server,plain}
write_config a '
  - name: client
    cgroup: client
    spiffe_id: spiffe://{trust_domain}/{node}/client
  - name: probe
    cgroup: probe-*
    spiffe_id: spiffe://{trust_domain}/{node}/{cgroup}' '
  []'
write_config b '
  - name: server
    cgroup: server
    spiffe_id: spiffe://{trust_domain}/{node}/server
    ports: [8081]' '
  - to: server
    ports: [8081]
    from: [spiffe://example.org/node-a/client]'

echo_server='
import socket, sys, threading
def serve(c):
    with c:
        while (d := c.recv(4096)):
            c.sendall(d)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(512); print("listening", flush=True)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()'
run_in b server "$work/echo.log" python3 -u -c "$echo_server" 8081
run_in b plain "$work/plain.log" python3 -u -c "$echo_server" 8082
wait_for "$work/echo.log" listening
wait_for "$work/plain.log" listening

# One echo through a new connection from node a's cgroup $1 to port $2.
echo_once() {  # CGROUP PORT
  exec_in a "$1" python3 -c "
import socket, sys
try:
    s = socket.create_connection(('10.77.0.2', int(sys.argv[1])), timeout=5)
    s.sendall(b'ping\n'); print('reply', s.recv(100).decode().strip())
except OSError as e: print('failed', e)" "$2" 2>&1 || true
}
echo_works() { [[ $(echo_once "$1" "$2") == "reply ping" ]]; }

# Node a's classification of its cgroups, from the agent's own pinned map:
# "<mode>" of cgroup $1 (1 enforce, 3 not enrolled), empty when absent.
mode_of() {
  local id
  id=$(stat -c %i "$KT_CG/a/$1")
  bpftool -j map dump pinned "$work/a/bpffs/ktrust/maps/ktrust_cgroups" |
    jq -r --argjson id "$id" '.[] | (.formatted // .) | select(.key == $id) | .value.mode'
}

start_agent a "$ktrustd"
start_agent b "$ktrustd"

echo "# before the limit"
check "the client's echo goes through both agents" echo_works client 8081
check "the bystander reaches the plaintext echo" echo_works bystander 8082
check "node a's map: client enrolled, enforce ($(mode_of client))" test "$(mode_of client)" = 1
check "node a's map: bystander not enrolled ($(mode_of bystander))" test "$(mode_of bystander)" = 3

# The flood: connections held open, a new one every 20 ms until the stop
# file exists, none while the pause file exists; prints "held N" /
# "refused N: why" as they happen.
cat >"$work/flood.py" <<'EOF'
import os, socket, sys, time
stop, pause = sys.argv[1], sys.argv[2]
held, refused = [], 0
while not os.path.exists(stop):
    if os.path.exists(pause):
        print('paused', flush=True)
        while os.path.exists(pause) and not os.path.exists(stop):
            time.sleep(0.02)
        continue
    try:
        s = socket.create_connection(('10.77.0.2', 8081), timeout=5)
        s.sendall(b'ping\n')
        if s.recv(100) != b'ping\n':
            raise OSError('no echo')
        held.append(s)
        print('held', len(held), flush=True)
    except OSError as e:
        refused += 1
        print('refused', refused, e, flush=True)
    time.sleep(0.02)
for s in held:
    s.close()
print('closed', len(held), flush=True)
EOF

pid=$(agent_pid a)
in_use=$(find "/proc/$pid/fd" -mindepth 1 | wc -l)
limit=$((in_use + 40))
echo "# node a's agent (pid $pid) has $in_use descriptors open; limit $limit"
# The soft limit only: raising it again needs no CAP_SYS_RESOURCE.
prlimit --pid "$pid" --nofile="$limit:"
run_in a client "$work/flood.log" python3 -u "$work/flood.py" "$work/flood.stop" "$work/flood.pause"
check "the flood reached the limit: a connection was refused" \
  wait_until 30 grep -q '^refused' "$work/flood.log"
echo "# $(grep -c '^held' "$work/flood.log") connections held, $(grep -c '^refused' "$work/flood.log") refused"

# At the limit, a new workload cgroup wakes the agent's watcher; its pass
# either enrols it or cannot read the tree, and says so. Whatever it did,
# nothing enrolled may be lost. Phases: the limit and the limit + 1
# (whichever number of descriptors a pass needs, one of them may leave it
# one short), under the flood; then, the flood paused, a limit at the
# agent's lowest free descriptor number, where no pass can open anything.
at_limit() {  # LIMIT PROBE [flood]
  local at=$1 probe=$2 flood=${3:-}
  prlimit --pid "$pid" --nofile="$at:"
  from=$(log_lines)
  mkdir "$KT_CG/a/$probe"
  pass_seen() {
    log_since "$from" | grep -Eq "workload_enrolled.*$probe|enrolment_incomplete|enrolment_failed|cgroup_skipped|workload_unenrolled"
  }
  check "limit $at: an enrolment pass ran and said what it did" wait_until 20 pass_seen
  log_since "$from" | grep -E 'enrolment_|cgroup_skipped|workload_(un)?enrolled' | head -3 | cut -c1-300 || true
  if [[ -n $flood ]]; then
    refused_since() { log_since "$from" | grep -q '"result":"fd_limit"'; }
    check "limit $at: the flood is still refused (fd_limit)" wait_until 10 refused_since
  fi
  check "limit $at: node a's map still enrolls the client ($(mode_of client))" \
    test "$(mode_of client)" = 1
  check "limit $at: node a's map still classifies the bystander ($(mode_of bystander))" \
    test "$(mode_of bystander)" = 3
  check "limit $at: the bystander still reaches the plaintext echo" echo_works bystander 8082
}
at_limit "$limit" probe-0 flood
at_limit "$((limit + 1))" probe-1 flood
# The control socket at the limit: an answer at once (in words when there
# is no descriptor for the client), not a hang.
status=$(timeout 10 "$ktrust" --socket "$work/a/control.sock" status 2>&1 || true)
echo "# ktrust status at the limit: ${status:0:200}"
check "ktrust status at the limit answers at once: its status, or why it cannot" \
  grep -Eq "out of file descriptors|node-a" <<<"$status"

touch "$work/flood.pause"
wait_for "$work/flood.log" '^paused'
# The first number missing from the agent's descriptors: the one the next
# open would get. As the limit, no open succeeds.
lowest_free=$(find "/proc/$pid/fd" -mindepth 1 -printf '%f\n' | sort -n |
  awk '$1 != n { exit } { n++ } END { print n + 0 }')
at_limit "$lowest_free" probe-2
check "limit $lowest_free: the pass that could read nothing said so (enrolment_incomplete)" \
  grep -q '"event":"enrolment_incomplete"' <(log_since "$from")

log=$(cat "$work/a/agent.log")
unenrolled=$(grep -c '"workload_unenrolled"' <<<"$log" || true)
check "no workload_unenrolled at the limit ($unenrolled lines)" test "$unenrolled" = 0
refusal=$(grep '"result":"fd_limit"' <<<"$log" | head -1 || true)
echo "# ${refusal:0:400}"
check "the refusal is logged with its reason in words" \
  grep -q '"reason":"[^"]*out of file descriptors' <<<"$refusal"

echo "# after the flood"
touch "$work/flood.stop"
check "the flood closed its connections" wait_for "$work/flood.log" '^closed'
prlimit --pid "$pid" --nofile="$((limit + 1000)):"
check "a new connection from the client works again" wait_until 10 echo_works client 8081
probes_enrolled() { [[ "$(mode_of probe-0)$(mode_of probe-1)$(mode_of probe-2)" == 111 ]]; }
check "the probes made at the limit are enrolled now" wait_until 10 probes_enrolled
check "the agent said the passes read everything again (enrolment_complete)" \
  wait_until 10 grep -q '"event":"enrolment_complete"' "$work/a/agent.log"
workloads=$(kt a workloads)
echo "$workloads" | sed 's/^/#   /'
check "ktrust workloads still lists the client" grep -q '^client ' <<<"$workloads"
metrics_a=$(metrics a /metrics)
check "metrics: the refusals counted (ktrust_refused_at_accept_total{limit=\"fds\"} or ktrust_denials_total{result=\"fd_limit\"})" \
  grep -Eq '^(ktrust_refused_at_accept_total\{limit="fds"\}|ktrust_denials_total\{result="fd_limit"\}) [1-9]' <<<"$metrics_a"
check "metrics: the enrolment passes that could not read everything are counted" \
  grep -Eq '^ktrust_enrolment_incomplete_total [1-9]' <<<"$metrics_a"
check "ktrust denials on node a: fd_limit" jq -e \
  '[.denials[] | select(.result == "fd_limit" and (.reason | test("file descriptors")))] | length >= 1' \
  <<<"$(kt a denials --json)"

two_nodes_results
