#!/usr/bin/env bash
# End-to-end cost of interception for an enrolled workload: connect() + first
# byte through both agents against plain TCP, on two simulated nodes (the
# netns/veth/cgroup/bpffs set-up of tests/integration/two_nodes.sh). Run by
# `tools/bench/run.sh e2e`; see tools/bench/README.md, "e2e".
#
#   tools/bench/run.sh e2e [--quick] [--out FILE] [--keep]
#
#   node a, cgroup client (enrolled)   -> ktrustd a -> mTLS -> ktrustd b -> server :E
#   node a, cgroup plain (not enrolled) --------- plain TCP -------------> server :P
#   node b: `loadgen server` in cgroup server (enrolled, ports: [E]) and a
#           second one in cgroup plain (not enrolled), port P not enforced
#
# A batch is `loadgen firstbyte`: N sequential connections, each socket(),
# connect(), send 1 byte, read the echo, close(), timed per connection. Rounds
# run both targets, the order alternating (A B, B A, ...) so drift hits both.
# Checks that fail the run: every connection must succeed; each agent's
# connections_total must grow by exactly the enrolled connections made, and not
# at all for the plain ones.
#
# Environment: KTRUSTD, KTRUST, LOADGEN (defaults in $KTRUST_BUILD_DIR, else
# build/; built if missing), E2E_ROUNDS (default 20, --quick 4), E2E_CONNECTS
# (per batch, default 400, --quick 100), E2E_WARMUP (unrecorded connections per
# batch, default 10), E2E_WARMUP_ROUNDS (default 1). Needs root.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

quick=0
out=""
while (($#)); do
  case "$1" in
    --quick) quick=1 ;;
    --out) out=$2; shift ;;
    --keep) keep=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "$prog: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
out=$(result_path "$out" ktrust-bench-e2e.json)
rounds=${E2E_ROUNDS:-$( ((quick)) && echo 4 || echo 20)}
connects=${E2E_CONNECTS:-$( ((quick)) && echo 100 || echo 400)}
warmup=${E2E_WARMUP:-10}
warmup_rounds=${E2E_WARMUP_ROUNDS:-1}
enrolled_port=18080 # E: enforced on node b
plain_port=18081    # P: not enforced

((EUID == 0)) || die "needs root (network namespaces, cgroups, bpffs, BPF programs)"
for n in rounds connects warmup warmup_rounds; do
  [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a number (got ${!n})"
done
((rounds > 0 && connects > 0)) || die "E2E_ROUNDS and E2E_CONNECTS must be positive"
built KTRUSTD ktrustd
built KTRUST ktrust
built LOADGEN loadgen
for t in ip jq ss; do command -v "$t" >/dev/null || die "$t is not installed"; done

# shellcheck source=SCRIPTDIR/../../tests/integration/two_nodes.sh
source "$repo/tests/integration/two_nodes.sh"
# bash reports the agents and servers it SIGKILLs as "Killed": expected here.
cleanup_hook() { two_nodes_down 2>/dev/null; }
new_work ktrust-bench-e2e

listening() { ip netns exec "$(node_ns "$1")" ss -ltnH "sport = :$2" | grep -q .; }
connections_total() { status_of "$1" | jq -r '.counts.connections_total'; }
counted_at_least() { (($(connections_total "$1") >= $2)); }  # NODE N

log "two simulated nodes in $work"
two_nodes_up "$work" "$KTRUST"
client_server_nodes "$enrolled_port"
mkdir -p "$KT_CG"/a/plain "$KT_CG"/b/plain

# Servers first: the agent enrols existing cgroups at start.
run_in b server "$work/server-enrolled.log" "$LOADGEN" server --listen "0.0.0.0:$enrolled_port"
run_in b plain "$work/server-plain.log" "$LOADGEN" server --listen "0.0.0.0:$plain_port"
wait_until 10 listening b "$enrolled_port" || die "the enrolled server did not listen"
wait_until 10 listening b "$plain_port" || die "the plain server did not listen"

declare -A agent_pid=()
for n in a b; do
  run_in "$n" agent "$KT_WORK/$n/agent.log" "$KTRUSTD" run --config "$KT_WORK/$n/ktrustd.yaml"
  agent_pid[$n]=${KT_PIDS[-1]}
done
for n in a b; do
  wait_until 30 agent_ready "$n" || {
    cat "$KT_WORK/$n/agent.log" >&2
    die "ktrustd on node $n did not become ready"
  }
done
data_path=$(status_of b | jq -r '.data_path')
log "agents ready, data path $data_path ($(status_of b | jq -r '.data_path_reason'))"

batch() {  # TARGET FILE COUNT WARMUP
  local cg=client port=$enrolled_port
  [[ $1 == plain ]] && cg=plain port=$plain_port
  if ! exec_in a "$cg" "$LOADGEN" firstbyte --connect "10.77.0.2:$port" --count "$3" \
    --warmup "$4" >"$2" 2>"$2.err"; then
    cat "$2.err" >&2
    die "$1: a connection failed (agent logs: $KT_WORK/{a,b}/agent.log with --keep)"
  fi
}

log "checks: both paths answer; only the enrolled one goes through the agents"
before_a=$(connections_total a)
before_b=$(connections_total b)
batch enrolled "$work/check-enrolled.json" 3 0
wait_until 5 counted_at_least b $((before_b + 3)) ||
  die "node b's agent did not carry the enrolled connections"
wait_until 5 counted_at_least a $((before_a + 3)) ||
  die "node a's agent did not carry the enrolled connections"
before_a=$(connections_total a)
before_b=$(connections_total b)
batch plain "$work/check-plain.json" 3 0
[[ $(connections_total a) == "$before_a" && $(connections_total b) == "$before_b" ]] ||
  die "the plain connections went through an agent"

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%FT%TZ)
log "load average $load_before; $warmup_rounds warm-up + $rounds rounds of $connects connections per target"
mkdir -p "$work/rounds"
enrolled_made=0
agent_ticks=0
total_rounds=$((warmup_rounds + rounds))
for ((r = 0; r < total_rounds; r++)); do
  order=(enrolled plain)
  ((r % 2)) && order=(plain enrolled)
  for t in "${order[@]}"; do
    f="$work/rounds/$r-$t.json"
    if [[ $t == enrolled ]]; then
      t0=$(cpu_ticks "${agent_pid[a]}" "${agent_pid[b]}")
      batch "$t" "$f" "$connects" "$warmup"
      t1=$(cpu_ticks "${agent_pid[a]}" "${agent_pid[b]}")
      enrolled_made=$((enrolled_made + connects + warmup))
      ((r < warmup_rounds)) || agent_ticks=$((agent_ticks + t1 - t0))
    else
      batch "$t" "$f" "$connects" "$warmup"
    fi
  done
  ((r < warmup_rounds)) && rm -f "$work/rounds/$r-"*.json
  printf '    round %d/%d: enrolled p50 %s us, plain p50 %s us\n' $((r + 1)) "$total_rounds" \
    "$(jq -r .p50_us "$work/rounds/$r-enrolled.json" 2>/dev/null || echo warm-up)" \
    "$(jq -r .p50_us "$work/rounds/$r-plain.json" 2>/dev/null || echo warm-up)" >&2
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# Exactly the enrolled connections went through each agent, the plain ones did not.
wait_until 5 counted_at_least a $((before_a + enrolled_made)) || true
wait_until 5 counted_at_least b $((before_b + enrolled_made)) || true
got_a=$(($(connections_total a) - before_a))
got_b=$(($(connections_total b) - before_b))
[[ $got_a == "$enrolled_made" && $got_b == "$enrolled_made" ]] ||
  die "agents counted $got_a (a) and $got_b (b) connections, expected $enrolled_made each"
failed_b=$(status_of b | jq -r '.counts.handshakes_failed')
((failed_b == 0)) || die "node b's agent reports $failed_b failed handshakes"

"$PYTHON" "$here/e2e_report.py" --rounds-dir "$work/rounds" --out "$out" \
  --param rounds="$rounds" --param connects="$connects" --param warmup="$warmup" \
  --param warmup_rounds="$warmup_rounds" --param data_path="$data_path" \
  --param load_before="$load_before" --param load_after="$load_after" --param started="$started" \
  --param agent_cpu_ms_per_conn="$(awk -v t="$agent_ticks" -v hz="$clk_tck" \
    -v n=$((rounds * (connects + warmup))) 'BEGIN { printf "%.3f", t * 1000 / hz / n }')" \
  --param nproc="$(nproc)" --param kernel="$(uname -r)" \
  --param ktrustd_sha256="$(sha256sum "$KTRUSTD" | cut -c1-16)"
log "wrote $out"
