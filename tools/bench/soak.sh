#!/usr/bin/env bash
# Soak and scale: many held connections and a steady rate of new ones through
# two agents for minutes, with each agent's RSS, descriptors, CPU, live
# connections and per-connection BPF map entries sampled over time, then
# whether all of it comes back once the load is gone. Two simulated nodes
# (tests/integration/two_nodes.sh); the load is `loadgen soak` in an enrolled
# cgroup on node a against `loadgen server` behind an enforced port on node b.
# See tools/bench/README.md, "soak"; the short version is a test
# (tests/integration/soak_test.sh).
#
#   tools/bench/run.sh soak [--quick] [--connections N] [--rate R] [--seconds S]
#                           [--sample S] [--settle S] [--workers W]
#                           [--plot PNG] [--out FILE] [--keep]
#
# Defaults (issue 13): 10000 held connections, 1000 new per second, 600 s,
# a sample every 5 s, 60 s to settle. --quick: 1000, 100/s, 60 s, 30 s.
# Node a's agent holds two descriptors per connection (the client's and
# node b's); the hard limit is raised to fit where that is allowed (root with
# CAP_SYS_RESOURCE), else the run stops and says how many fit. Each node's
# namespace gets ip_local_port_range 10000-65000 and tcp_tw_reuse=1, so that
# 1000 new connections a second do not run out of ports in TIME_WAIT.
# Needs root; bpftool, jq, ss; --plot needs python3-matplotlib.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

connections=10000 rate=1000 seconds=600 sample=5 settle=60 workers="" plot="" out=""
while (($#)); do
  mode_option "$@"
  if ((taken)); then shift "$taken"; continue; fi
  case $1 in
    --quick) connections=1000 rate=100 seconds=60 settle=30; shift; continue ;;
    --connections | --rate | --seconds | --sample | --settle | --workers | --plot)
      [[ $# -ge 2 ]] || die "$1 needs a value (see --help)" ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  case $1 in
    --connections) connections=$2 ;;
    --rate) rate=$2 ;;
    --seconds) seconds=$2 ;;
    --sample) sample=$2 ;;
    --settle) settle=$2 ;;
    --workers) workers=$2 ;;
    --plot) plot=$(result_path "$2" soak.png) ;;
  esac
  shift 2
done
for n in connections rate seconds sample settle; do
  [[ ${!n} =~ ^[0-9]+$ ]] || die "--$n must be a whole number (got ${!n})"
done
((sample > 0)) || die "--sample must be positive"
out=$(result_path "$out" soak.json)
port=18090

((EUID == 0)) || die "needs root (network namespaces, cgroups, bpffs, BPF programs)"
for t in ip jq ss bpftool; do command -v "$t" >/dev/null || die "$t is not installed"; done
[[ -z $plot ]] || "$PYTHON" -c 'import matplotlib' 2>/dev/null ||
  die "--plot needs matplotlib (Debian: python3-matplotlib)"
built KTRUSTD ktrustd
built KTRUST ktrust
built LOADGEN loadgen

# Node a's agent: the client's socket and its own to node b per connection,
# the held ones and up to a second's worth of new ones, plus its own.
need=$((2 * (connections + rate) + 512))
if (($(ulimit -Hn) < need)); then
  ulimit -Hn "$need" 2>/dev/null ||
    die "$connections held connections at $rate/s need $need descriptors per agent; the hard limit is $(ulimit -Hn) and cannot be raised here: at most --connections $((($(ulimit -Hn) - 512) / 2 - rate)) at this rate"
fi
ulimit -Sn "$(ulimit -Hn)"

# shellcheck source=SCRIPTDIR/../../tests/integration/two_nodes.sh
source "$repo/tests/integration/two_nodes.sh"
cleanup_hook() { two_nodes_down 2>/dev/null; }
new_work ktrust-bench-soak

log "two simulated nodes in $work"
two_nodes_up "$work" "$KTRUST"
client_server_nodes "$port"

run_in b server "$work/server.log" "$LOADGEN" server --listen "0.0.0.0:$port"
listening() { ip netns exec "$(node_ns b)" ss -ltnH "sport = :$port" | grep -q .; }
wait_until 10 listening || die "the loadgen server did not listen: $(cat "$work/server.log")"
ktrust=$KTRUST # kt, in two_nodes.sh
status_of() { kt "$1" status --json; }
start_agents_until_ready "$KTRUSTD" || die "the agents did not start"
for n in a b; do
  note "node $n's agent: pid ${KT_AGENT_PID[$n]}, descriptor limit $(awk '/^Max open files/ { print $4 }' "/proc/${KT_AGENT_PID[$n]}/limits")"
done

# The sampler: one JSON line per --sample seconds into samples.jsonl, each
# agent's RSS, descriptors, CPU, status counts and per-connection map
# entries, labelled with the phase in $work/phase (soak_report.py sample).
echo warmup >"$work/phase"
start sampler "$PYTHON" "$here/soak_report.py" sample --every "$sample" --ktrust "$KTRUST" \
  --phase-file "$work/phase" --out "$work/samples.jsonl" \
  --agent "a=${KT_AGENT_PID[a]},$KT_WORK/a/control.sock,$KT_WORK/a/bpffs/ktrust/maps" \
  --agent "b=${KT_AGENT_PID[b]},$KT_WORK/b/control.sock,$KT_WORK/b/bpffs/ktrust/maps"
sampler_pid=$last_pid

active() { status_of "$1" | jq -r .counts.connections_active; }
quiet() { [[ $(active a) == 0 && $(active b) == 0 ]]; }
# A warm-up, so that what the agents set up once is in the baseline.
exec_in a client "$LOADGEN" soak --connect "10.77.0.2:$port" --connections 20 --rate 20 \
  --seconds 2 >"$work/warmup.json" || die "the warm-up failed: $(cat "$work/warmup.json")"
wait_until 30 quiet || die "the agents did not go quiet after the warm-up"
echo baseline >"$work/phase"
baseline_sampled() { (($(grep -c '"phase": "baseline"' "$work/samples.jsonl" 2>/dev/null || true) >= 2)); }
wait_until $((3 * sample + 30)) baseline_sampled ||
  die "the sampler wrote no baseline: $(tail -n 3 "$work/sampler.log")"

log "load: $connections held connections, $rate new per second for $seconds s, a sample every $sample s"
log "load average $(cut -d' ' -f1-3 /proc/loadavg) before"
echo load >"$work/phase"
soak_args=(--connect "10.77.0.2:$port" --connections "$connections" --rate "$rate"
  --seconds "$seconds" --series "$work/series.jsonl")
[[ -z $workers ]] || soak_args+=(--workers "$workers")
exec_in a client "$LOADGEN" soak "${soak_args[@]}" >"$work/loadgen.json" 2>"$work/loadgen.err" ||
  die "loadgen soak failed: $(cat "$work/loadgen.err")"
note "loadgen: $(jq -c '{opened, open_s, new_ok, new_per_s, late, errors}' "$work/loadgen.json")"
echo settle >"$work/phase"
log "load closed; sampling for $settle s more"
# A measurement window, not a wait for something: the sampler records
# whether and when each figure comes back.
sleep "$settle"
stop "$sampler_pid"

"$PYTHON" "$here/soak_report.py" assemble --samples "$work/samples.jsonl" \
  --series "$work/series.jsonl" --loadgen "$work/loadgen.json" --out "$out" \
  --param connections="$connections" --param rate="$rate" --param seconds="$seconds" \
  --param sample_s="$sample" --param settle_s="$settle" --param nproc="$(nproc)" \
  --param kernel="$(uname -r)" --param data_path="$(status_of b | jq -r .data_path)" \
  --param fd_limit="$(ulimit -Hn)" \
  --param git="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  --param ktrustd_sha256="$(sha256sum "$KTRUSTD" | cut -c1-16)"
"$PYTHON" "$here/soak_report.py" report "$out" ${plot:+--plot "$plot"}
log "result: $out${plot:+, plot: $plot}"
