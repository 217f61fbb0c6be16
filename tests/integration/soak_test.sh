#!/usr/bin/env bash
# The short soak (issue 13): load through two agents leaves nothing behind.
# A client on node a holds SOAK_HELD connections through both agents to an
# echo server on node b while it opens, echoes on and closes SOAK_RATE new
# ones per second for SOAK_SECONDS (`loadgen soak`), then closes them all.
# Afterwards each agent's own descriptors (/proc/PID/fd), its live
# connection table (`ktrust conns`, status) and the per-connection entries
# of its own pinned BPF maps must be back to what they were before the load,
# within a bounded wait, and no connection may have failed. The long version
# is a benchmark: tools/bench/run.sh soak.
#
#   node a: cgroup client (enrolled): loadgen soak -> 10.77.0.2:18090
#   node b: cgroup server (enrolled, ports: [18090]): loadgen server
#
# Per-connection maps (bpf/lib/maps.h), read from each node's own pin
# directory: ktrust_orig_ck (by socket cookie, connect until close),
# ktrust_orig_tp (by 4-tuple, ESTABLISHED until close) and
# ktrust_agent_connects (the agent's own connects in flight).
#
# Needs root. Usage: soak_test.sh KTRUST KTRUSTD LOADGEN
set -euo pipefail

ktrust=$1
ktrustd=$2
loadgen=$3
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
# shellcheck source=two_nodes.sh
source "$here/two_nodes.sh"
trap two_nodes_cleanup EXIT

held=${SOAK_HELD:-500}
rate=${SOAK_RATE:-100}
seconds=${SOAK_SECONDS:-25}
port=18090
# How long the agents get to give everything back once the client closed.
settle=${SOAK_SETTLE:-30}
per_connection_maps=(ktrust_orig_ck ktrust_orig_tp ktrust_agent_connects)

for t in bpftool jq; do command -v "$t" >/dev/null || { echo "soak_test: $t is not installed" >&2; exit 1; }; done

two_nodes_up "$work" "$ktrust"
client_server_nodes "$port"
run_in b server "$work/server.log" "$loadgen" server --listen "0.0.0.0:$port"
listening() { ip netns exec "$KT_NS_B" ss -ltnH "sport = :$port" | grep -q .; }
wait_until 10 listening || { cat "$work/server.log" >&2; exit 1; }

start_agents_until_ready "$ktrustd"

# What is counted, each for one agent only: its descriptors by kind, its
# live connections (status and the conns table) and its own maps' entries.
fds() { find "/proc/${KT_AGENT_PID[$1]}/fd" -mindepth 1 | wc -l; }
fd_kinds() {  # NODE: "socket 12 pipe 4 anon_inode 9 other 3"
  find "/proc/${KT_AGENT_PID[$1]}/fd" -mindepth 1 -printf '%l\n' 2>/dev/null | awk '
    /^socket:/ { s++; next } /^pipe:/ { p++; next } /^anon_inode:/ { a++; next } { o++ }
    END { printf "socket %d pipe %d anon_inode %d other %d", s, p, a, o }'
}
status_field() { kt "$1" status --json | jq -r ".counts.$2"; }
conns_listed() { kt "$1" conns --json | jq '.connections | length'; }
map_entries() {  # NODE MAP
  bpftool -j map dump pinned "$work/$1/bpffs/ktrust/maps/$2" | jq length
}
# Everything that must come back, one "name value" line each.
snapshot() {
  local n m
  for n in a b; do
    echo "$n.fds $(fds "$n")"
    echo "$n.active $(status_field "$n" connections_active)"
    echo "$n.conns $(conns_listed "$n")"
    for m in "${per_connection_maps[@]}"; do echo "$n.$m $(map_entries "$n" "$m")"; done
  done
}
value_of() { awk -v k="$1" '$1 == k { print $2 }' <<<"$2"; }  # NAME SNAPSHOT

# A warm-up through both agents first, so that what an agent sets up once
# (per-loop state, OpenSSL's caches) is in the baseline, then the baseline
# once both are quiet. A leak per connection grows with the load after it.
exec_in a client "$loadgen" soak --connect "10.77.0.2:$port" --connections 20 --rate 20 \
  --seconds 2 >"$work/warmup.json"
quiet() { [[ $(status_field a connections_active) == 0 && $(status_field b connections_active) == 0 ]]; }
check "the warm-up worked ($(jq -c '{opened, new_ok, errors}' "$work/warmup.json"))" \
  jq -e '.errors == 0 and .opened == 20' "$work/warmup.json"
check "both agents are quiet after the warm-up" wait_until 30 quiet
baseline=$(snapshot)
echo "# baseline: $(tr '\n' ' ' <<<"$baseline")"
for n in a b; do echo "# node $n's agent (pid ${KT_AGENT_PID[$n]}) descriptors: $(fd_kinds "$n")"; done
before_failed_a=$(status_field a handshakes_failed)
before_failed_b=$(status_field b handshakes_failed)
before_denied_b=$(status_field b denied)
before_total_b=$(status_field b connections_total)

echo "# load: $held held connections, $rate new per second for $seconds s"
exec_in a client "$loadgen" soak --connect "10.77.0.2:$port" --connections "$held" \
  --rate "$rate" --seconds "$seconds" --check-every 10 --series "$work/series.json" \
  --ready "$work/held" >"$work/soak.json" 2>"$work/soak.err" &
soak_pid=$!
# Once every held connection is open, both agents carry at least that many:
# the load goes through them, so what comes back afterwards is theirs.
all_held() { [[ -e $work/held ]] || exited "$soak_pid"; }
wait_until $((60 + held / 10)) all_held || true
carried() { (($(status_field a connections_active) >= held && $(status_field b connections_active) >= held)); }
wait_until 20 carried || true
loaded=$(snapshot)
echo "# under load: $(tr '\n' ' ' <<<"$loaded")"
check "under load, both agents carry the $held held connections (a $(value_of a.active "$loaded"), b $(value_of b.active "$loaded") active)" \
  test "$(value_of a.active "$loaded")" -ge "$held" -a "$(value_of b.active "$loaded")" -ge "$held"
# So the map checks below are not vacuous: node a's maps hold the client's
# connections while they are open.
check "under load, node a's ktrust_orig_tp has an entry per held connection ($(value_of a.ktrust_orig_tp "$loaded"))" \
  test "$(value_of a.ktrust_orig_tp "$loaded")" -ge "$held"
wait "$soak_pid" || { cat "$work/soak.err" >&2; not_ok "loadgen soak exited with an error"; }
summary=$(cat "$work/soak.json")
[[ -n $summary ]] || summary='{"error_kinds": "no result"}'
echo "# loadgen: $summary"
check "every connection worked: none failed to open, echo or stay open ($(jq -c '.error_kinds' <<<"$summary"))" \
  jq -e --argjson n "$held" '.errors == 0 and .opened == $n and .held_at_end == $n' <<<"$summary"
# The rate is not the point here (a loaded CI host may fall short), only
# that there was churn to leak from.
new_ok=$(jq '.new_ok // 0' <<<"$summary")
check "new connections were made: $new_ok of $((rate * seconds)) scheduled" \
  test "$new_ok" -ge $((rate * seconds / 2))
made=$((held + new_ok))

# Back to the baseline: every figure at or below its value before the load
# (below: e.g. a control connection open at the baseline has closed).
echo "# after the load, waiting up to $settle s for everything to come back"
# The snapshot that passed (or the last one tried) is the one reported.
final=""
back() {
  local name
  final=$(snapshot)
  while read -r name _; do
    (($(value_of "$name" "$final") <= $(value_of "$name" "$baseline"))) || return 1
  done <<<"$baseline"
}
t0=$SECONDS
wait_until "$settle" back || true
echo "# waited $((SECONDS - t0)) s"
while read -r name was; do
  now=$(value_of "$name" "$final")
  check "$name back to its baseline: $now now, $was before" test "$now" -le "$was"
done <<<"$baseline"
for n in a b; do echo "# node $n's agent descriptors now: $(fd_kinds "$n")"; done

# No failure on the agents' side either, and node b carried every connection.
failed_a=$(($(status_field a handshakes_failed) - before_failed_a))
failed_b=$(($(status_field b handshakes_failed) - before_failed_b))
denied_b=$(($(status_field b denied) - before_denied_b))
total_b=$(($(status_field b connections_total) - before_total_b))
check "no failed handshake on either agent (a $failed_a, b $failed_b)" test $((failed_a + failed_b)) = 0
check "no denial on node b ($denied_b)" test "$denied_b" = 0
check "node b's agent carried every connection ($total_b of $made)" test "$total_b" = "$made"
for n in a b; do
  refused=$(metrics "$n" /metrics | awk '/^ktrust_refused_(limit|at_accept)_total/ { s += $NF } END { print s + 0 }')
  check "node $n's agent refused nothing at accept or over a limit ($refused)" test "$refused" = 0
done

two_nodes_results
