#!/usr/bin/env bash
# The zero-hop data path against plain TCP and the proxy, on two simulated
# nodes with real agents (tests/integration/two_nodes.sh), measured in one run.
# `tools/bench/run.sh vm` runs it in the kTLS VM after the loopback benchmark;
# see tools/bench/README.md, "vm".
#
#   tools/bench/zerohop.sh [--quick] [--out FILE] [--runs N] [--keep]    (root)
#
#   target           node a (client)                            node b (server)
#   plain            cgroup plain: loadgen --- plain TCP ------> loadgen server :18081 (not enforced)
#   proxy-userspace  cgroup client: loadgen -> agent a =mTLS=> agent b -> loadgen server :18080
#   proxy-ktls       the same, the agents at data_path auto (kernel TLS)
#   zero-hop         cgroup zh-client: `ktrust exec -- loadgen` ==kTLS on its own socket==>
#                    `ktrust exec -- loadgen server` :18082 (workloads with data_path: zero_hop)
#
# proxy-userspace needs the agents at `agent.data_path: userspace`: each run
# restarts them once (odd runs measure it last, even runs first), the zero-hop
# listeners staying in the fd holders (`ktrustd holder`) meanwhile.
# Per target and run: throughput, rr (64 B round trips), connrate (8 workers
# of connect + 64 B echo + close) and firstbyte (sequential connect + 1 byte,
# with connect() timed apart: where a connection's time goes).
# throughput also has loadgen sample the agents' CPU around its clocked
# transfer (--watch: after connect() returned, until the server confirmed the
# count). bulk (plain and zero-hop only) is the same with 16x the bytes: the
# bulk transfer the issue's "agents under 1%" target speaks of, long enough
# that the server agent's share of one connection's set-up (its kTLS install,
# doorbell and accept, which overlap the first bytes) does not decide it;
# plain's row is the control (the agents take no part in it).
# Each measurement records, around the loadgen run: the whole machine's busy
# CPU (/proc/stat), the agents', holders' and server's CPU (/proc/PID/stat),
# the bytes the agents carried (ktrust_bytes_total) and the kernel TLS keys
# installed in each node's namespace (/proc/net/tls_stat). zerohop_report.py
# turns them into ratios from the same run and the issue's targets, and exits
# 3 if a target did not run the data path it names (zero-hop: the agents
# carried no byte and each node installed TX+RX keys per connection).
#
# --vm-guest (internal: `run.sh vm`) writes to $KTRUST_VM_OUT and uses the VM
# sizes. Environment: KTRUSTD, KTRUST, LOADGEN (defaults in the build tree),
# BENCH_CONCURRENCY (default 8). Needs root, ip, jq, ss, curl.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

quick=0
in_vm=0
out=""
runs=""
while (($#)); do
  case "$1" in
    --quick) quick=1 ;;
    --out) out=$2; shift ;;
    --runs) runs=$2; shift ;;
    --keep) keep=1 ;;
    --vm-guest) in_vm=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "$prog: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ -z $runs || $runs =~ ^[1-9][0-9]*$ ]] || { echo "$prog: --runs wants a positive number" >&2; exit 2; }
if ((in_vm)); then
  [[ ${KTRUST_VM:-} == 1 && -n ${KTRUST_VM_OUT:-} ]] || die "--vm-guest is run by \`run.sh vm\` inside the VM"
  out=${out:-$KTRUST_VM_OUT/ktrust-bench-zerohop.json}
fi
out=$(result_path "$out" ktrust-bench-zerohop.json)

# Sizes: the VM's are those of the loopback benchmark there (TCG is 20-50x slower).
concurrency="${BENCH_CONCURRENCY:-8}"
if ((quick)); then
  # In the VM 2 s are ~50 connections: too few to tell paths 10% apart.
  runs=${runs:-1} bytes=$((16 << 20)) rr_count=300 conn_seconds=$((in_vm ? 6 : 2)) fb_count=50
elif ((in_vm)); then
  runs=${runs:-3} bytes=$((64 << 20)) rr_count=1500 conn_seconds=4 fb_count=200
else
  runs=${runs:-3} bytes=$((1 << 30)) rr_count=20000 conn_seconds=5 fb_count=1000
fi
bulk_bytes=$((bytes * 16))
fb_warmup=5
targets=(plain proxy-userspace proxy-ktls zero-hop)
declare -A port=([plain]=18081 [proxy-userspace]=18080 [proxy-ktls]=18080 [zero-hop]=18082)
declare -A cgroup=([plain]=plain [proxy-userspace]=client [proxy-ktls]=client [zero-hop]=zh-client)
declare -A mode_of=([plain]=auto [proxy-userspace]=userspace [proxy-ktls]=auto [zero-hop]=auto)
declare -A status=() reason=()
for t in "${targets[@]}"; do status[$t]=ok; done

((EUID == 0)) || die "needs root (network namespaces, cgroups, bpffs, BPF programs)"
for t in ip jq ss curl; do command -v "$t" >/dev/null || die "$t is not installed"; done
[[ -x $PYTHON ]] || die "$PYTHON is needed for the report"
if ((in_vm)); then # the guest cannot build: its / is the host's, read-only
  for b in KTRUSTD KTRUST LOADGEN; do [[ -x ${!b} ]] || die "no $b at ${!b}"; done
else
  built KTRUSTD ktrustd
  built KTRUST ktrust
  built LOADGEN loadgen
fi

# shellcheck source=SCRIPTDIR/../../tests/integration/two_nodes.sh
source "$repo/tests/integration/two_nodes.sh"
cleanup_hook() {
  two_nodes_down 2>/dev/null
  # In the VM --keep copies the files out (after the cgroup2 and bpffs mounts are
  # gone; regular files only: the share refuses sockets).
  if ((keep && in_vm)); then
    mkdir -p "$KTRUST_VM_OUT/zerohop-work"
    (cd "$work" && find . -type f -exec cp --parents {} "$KTRUST_VM_OUT/zerohop-work/" \;) 2>/dev/null &&
      log "kept $work (copied out of the VM)"
    keep=0
  fi
}
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
t_start=$SECONDS
new_work ktrust-bench-zerohop

# Polls CMD... until it succeeds, at most $1 seconds.
await() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
}
listening() { ip netns exec "$(node_ns "$1")" ss -ltnH "sport = :$2" | grep -q .; }
zh_served() {  # NODE WORKLOAD: `ktrust workloads` says the workload is served zero-hop
  "$KTRUST" --socket "$KT_WORK/$1/control.sock" workloads --json |
    jq -e --arg w "$2" '.workloads[] | select(.name == $w) | .data_path | startswith("zero-hop")'
}
# The bytes an agent carried (ktrust_bytes_total, both directions); empty if unknown.
agent_bytes() {
  ip netns exec "$(node_ns "$1")" curl -fsS --max-time 5 http://127.0.0.1:9464/metrics 2>/dev/null |
    awk '/^ktrust_bytes_total[{ ]/ { s += $NF; n++ } END { if (n) printf "%.0f", s }'
}
# Kernel TLS keys installed so far in node $1's namespace (TX + RX); empty without kTLS.
ktls_installs() {
  # shellcheck disable=SC2016 # awk's fields
  ip netns exec "$(node_ns "$1")" awk '$1 ~ /^Tls(Tx|Rx)(Sw|Device)$/ { s += $2; n++ }
    END { if (n) print s }' /proc/net/tls_stat 2>/dev/null || true
}

log "two simulated nodes in $work"
two_nodes_up "$work" "$KTRUST"
for n in a b; do
  # Many short connections: more ephemeral ports and TIME_WAIT reuse, in the nodes only.
  ip netns exec "$(node_ns "$n")" sysctl -q -w net.ipv4.ip_local_port_range="10000 64999" \
    net.ipv4.tcp_tw_reuse=1
done
mkdir -p "$KT_CG"/a/{plain,client,zh-client,holder} "$KT_CG"/b/{plain,server,zh-server,holder}
KT_AGENT_EXTRA="  holder_socket: $work/a/holder/holder.sock" write_config a '
  - name: client
    cgroup: client
    spiffe_id: spiffe://{trust_domain}/{node}/client
  - name: zh-client
    cgroup: zh-client
    spiffe_id: spiffe://{trust_domain}/{node}/zh-client
    data_path: zero_hop' '
  []'
KT_AGENT_EXTRA="  holder_socket: $work/b/holder/holder.sock" write_config b '
  - name: server
    cgroup: server
    spiffe_id: spiffe://{trust_domain}/{node}/server
    ports: [18080]
  - name: zh-server
    cgroup: zh-server
    spiffe_id: spiffe://{trust_domain}/{node}/zh-server
    ports: [18082]
    data_path: zero_hop' '
  - to: server
    ports: [18080]
    from: [spiffe://example.org/node-a/client]
  - to: zh-server
    ports: [18082]
    from: [spiffe://example.org/node-a/zh-client]'
for n in a b; do
  # The peers in tools/bench log warnings only; so do the agents here.
  sed -i 's/^  log_level: .*/  log_level: warn/' "$KT_WORK/$n/ktrustd.yaml"
  mv "$KT_WORK/$n/ktrustd.yaml" "$KT_WORK/$n/ktrustd-auto.yaml"
  { cat "$KT_WORK/$n/ktrustd-auto.yaml"; echo "  data_path: userspace"; } >"$KT_WORK/$n/ktrustd-userspace.yaml"
done

# Servers that are not zero-hop first: the agents enrol existing cgroups at start.
run_in b plain "$work/server-plain.log" "$LOADGEN" server --listen "0.0.0.0:${port[plain]}"
run_in b server "$work/server-proxy.log" "$LOADGEN" server --listen "0.0.0.0:${port[proxy-ktls]}"
declare -A server_pid=([plain]=${KT_PIDS[-2]} [proxy-ktls]=${KT_PIDS[-1]} [proxy-userspace]=${KT_PIDS[-1]})
declare -A holder_pid=()
for n in a b; do
  # The holder, in a cgroup no workload claims: it outlives the agents' restarts.
  run_in "$n" holder "$work/$n/holder.log" "$KTRUSTD" holder --socket-dir "$work/$n/holder"
  holder_pid[$n]=${KT_PIDS[-1]}
  wait_for "$work/$n/holder.log" '"event":"holder_ready"' || die "the holder on node $n did not start"
done

agent_mode=""
# agents MODE: both agents running with ktrustd-MODE.yaml (auto or userspace), ready.
agents() {
  [[ $agent_mode == "$1" ]] && return 0
  restart_agents "$1"
  agent_mode=$1
  # A restarted agent takes the zero-hop listeners back from the holder: wait for it.
  if [[ $1 == auto && -n ${server_pid[zero-hop]:-} && ${status[zero-hop]:-} == ok ]]; then
    await 30 zh_served b zh-server || die "node b's agent did not take zh-server's listener back after its restart"
  fi
  note "agents at data_path $1: data path $(status_of a | jq -r '.data_path + " (" + .data_path_reason + ")"')"
}

agents auto
data_path_auto=$(status_of b | jq -r '.data_path')
data_path_reason_auto=$(status_of b | jq -r '.data_path_reason')
zh_holder=(--holder-socket "$work/b/holder/zerohop.sock")
run_in b zh-server "$work/server-zh.log" "$KTRUST" exec "${zh_holder[@]}" -- \
  "$LOADGEN" server --listen "0.0.0.0:${port[zero-hop]}"
server_pid[zero-hop]=${KT_PIDS[-1]}
for t in plain proxy-ktls zero-hop; do
  await 20 listening b "${port[$t]}" || die "the $t server did not listen: $(cat "$work"/server-*.log)"
done

if [[ $data_path_auto != ktls ]]; then
  # Without kernel TLS both would be the userspace proxy under other names.
  status[proxy-ktls]=skipped reason[proxy-ktls]="the agents have no kernel TLS: $data_path_reason_auto"
  status[zero-hop]=skipped reason[zero-hop]="no kernel TLS: zero-hop workloads are proxied"
  ((in_vm)) && die "the agents did not run on kernel TLS in the VM ($data_path_reason_auto)"
  note "no kernel TLS here: only plain and proxy-userspace are measured (run.sh vm for all four)"
elif ! await 20 zh_served b zh-server; then
  status[zero-hop]=failed
  reason[zero-hop]="node b's agent does not serve zh-server zero-hop: $("$KTRUST" --socket "$KT_WORK/b/control.sock" workloads --json | jq -c '.workloads[] | select(.name == "zh-server") | .data_path')"
  die "${reason[zero-hop]}"
fi

# client TARGET KIND ARGS...: the load generator of TARGET on node a, as its user would start it.
client() {
  local t=$1 kind=$2 limit=$((conn_seconds + 60)) cmd=()
  shift 2
  [[ $kind == throughput ]] && limit=300
  [[ $kind == bulk ]] && kind=throughput limit=900
  [[ $t == zero-hop ]] && cmd=("$KTRUST" exec --holder-socket "$work/a/holder/zerohop.sock" --)
  exec_in a "${cgroup[$t]}" timeout "$limit" "${cmd[@]}" "$LOADGEN" "$kind" \
    --connect "10.77.0.2:${port[$t]}" "$@"
}

raw="$work/raw.jsonl"
: >"$raw"
# measure T RUN KIND ARGS...: one loadgen run with everything around it (see the top).
measure() {
  local t=$1 r=$2 kind=$3 res _
  shift 3
  local ba0 bb0 ka0 kb0 c0 h0 s0 b0 w0 w1 b1 s1 h1 c1 ka1 kb1 ba1 bb1
  ba0=$(agent_bytes a) bb0=$(agent_bytes b) ka0=$(ktls_installs a) kb0=$(ktls_installs b)
  c0=$(cpu_seconds "${agent_pid[a]}" "${agent_pid[b]}") h0=$(cpu_seconds "${holder_pid[@]}")
  s0=$(cpu_seconds "${server_pid[$t]}")
  read -r b0 _ <<<"$(sys_cpu)"
  w0=$(date +%s.%N)
  if res=$(client "$t" "$kind" "$@" 2>&1); then
    w1=$(date +%s.%N)
    read -r b1 _ <<<"$(sys_cpu)"
    s1=$(cpu_seconds "${server_pid[$t]}")
    c1=$(cpu_seconds "${agent_pid[a]}" "${agent_pid[b]}") h1=$(cpu_seconds "${holder_pid[@]}")
    ka1=$(ktls_installs a) kb1=$(ktls_installs b) ba1=$(agent_bytes a) bb1=$(agent_bytes b)
    "$PYTHON" - "$t" "$r" "$kind" "$res" "$w0" "$w1" "$b0" "$b1" "$clk_tck" "$c0" "$c1" "$h0" \
      "$h1" "$s0" "$s1" "$ka0" "$ka1" "$kb0" "$kb1" "$ba0" "$ba1" "$bb0" "$bb1" \
      "$agent_mode" >>"$raw" <<'PY'
import json, sys
(t, r, kind, res, w0, w1, b0, b1, hz, c0, c1, h0, h1, s0, s1,
 ka0, ka1, kb0, kb1, ba0, ba1, bb0, bb1, mode) = sys.argv[1:]
d = lambda a, b: round(float(b) - float(a), 3)
opt = lambda a, b: int(b) - int(a) if a and b else None
both = lambda x, y: x + y if x is not None and y is not None else None
print(json.dumps({
    "target": t, "run": int(r), "kind": kind, "agents_mode": mode,
    "wall_s": d(w0, w1), "system_busy_s": round((float(b1) - float(b0)) / float(hz), 3),
    "agents_cpu_s": d(c0, c1), "holders_cpu_s": d(h0, h1), "server_cpu_s": d(s0, s1),
    "ktls_installs": {"a": opt(ka0, ka1), "b": opt(kb0, kb1)},
    "agent_bytes": both(opt(ba0, ba1), opt(bb0, bb1)),
    "result": json.loads(res.strip().splitlines()[-1])}))
PY
  else
    "$PYTHON" -c 'import json,sys; print(json.dumps({"target": sys.argv[1], "run": int(sys.argv[2]), "kind": sys.argv[3], "error": sys.argv[4]}))' \
      "$t" "$r" "$kind" "loadgen $kind failed: ${res:-timed out}" >>"$raw"
    note "$t run $r $kind: ERROR: $res"
  fi
}

# thread_ticks PID...: "pid/tid ticks" for every thread of the processes, one
# awk per process so that the snapshot stays close to the window it brackets.
thread_ticks() {
  local pid
  for pid; do
    # shellcheck disable=SC2016 # awk's fields
    awk -v pid="$pid" '{ sub(/.*\) /, ""); split(FILENAME, p, "/"); print pid "/" p[5], $12 + $13 }' \
      /proc/"$pid"/task/*/stat 2>/dev/null || true
  done
}
# thread_wchan PID...: "pid/tid wchan" (where each thread waits), taken after the window.
thread_wchan() {
  local pid f
  for pid; do
    for f in /proc/"$pid"/task/*; do echo "$pid/${f##*/} $(cat "$f/wchan" 2>/dev/null)"; done
  done
}
# measure_idle T RUN SECONDS: the agents with no traffic at all, for SECONDS (the
# window is the measurement, not a wait): their CPU, the machine's, and per
# thread where the agents' CPU went.
measure_idle() {
  local t=$1 r=$2 secs=$3 b0 b1 w0 w1 c0 c1 _
  thread_ticks "${agent_pid[a]}" "${agent_pid[b]}" >"$work/threads0"
  c0=$(cpu_seconds "${agent_pid[a]}" "${agent_pid[b]}")
  read -r b0 _ <<<"$(sys_cpu)"
  w0=$(date +%s.%N)
  sleep "$secs"
  w1=$(date +%s.%N)
  read -r b1 _ <<<"$(sys_cpu)"
  c1=$(cpu_seconds "${agent_pid[a]}" "${agent_pid[b]}")
  thread_ticks "${agent_pid[a]}" "${agent_pid[b]}" >"$work/threads1"
  thread_wchan "${agent_pid[a]}" "${agent_pid[b]}" >"$work/wchan"
  "$PYTHON" - "$t" "$r" "$w0" "$w1" "$b0" "$b1" "$clk_tck" "$c0" "$c1" "$agent_mode" \
    "${agent_pid[a]}" "$work/threads0" "$work/threads1" "$work/wchan" >>"$raw" <<'PY'
import json, sys
t, r, w0, w1, b0, b1, hz, c0, c1, mode, pid_a, f0, f1, fw = sys.argv[1:]
hz = float(hz)
before = {l.split()[0]: int(l.split()[1]) for l in open(f0) if l.strip()}
wchan = {l.split()[0]: (l.split() + [""])[1] for l in open(fw) if l.strip()}
threads = []
for l in open(f1):
    f = l.split()
    if not f:
        continue
    d = (int(f[1]) - before.get(f[0], int(f[1]))) / hz
    if d > 0:
        node = "a" if f[0].split("/")[0] == pid_a else "b"
        threads.append({"agent": node, "tid": int(f[0].split("/")[1]), "cpu_s": d,
                        "wchan": wchan.get(f[0], "")})
threads.sort(key=lambda x: -x["cpu_s"])
print(json.dumps({"target": t, "run": int(r), "kind": "idle", "agents_mode": mode,
                  "wall_s": round(float(w1) - float(w0), 3),
                  "system_busy_s": round((float(b1) - float(b0)) / hz, 3),
                  "agents_cpu_s": round(float(c1) - float(c0), 3), "threads": threads,
                  "result": {}}))
PY
}

# BENCH_PERF=1: `perf record` of both agents around each firstbyte
# measurement (sequential connections: one connection's agent work), reported
# by symbol into $work/perf-TARGET-RUN.txt (kept with --keep). BENCH_PERF=graph
# records call chains instead (DWARF, 199 Hz), to report on the host from
# the kept perf-TARGET-RUN.data (tools/bench/README.md).
perf_pid=""
profile_start() {
  [[ ${BENCH_PERF:-0} == 1 || ${BENCH_PERF:-0} == graph ]] || return 0
  command -v perf >/dev/null || die "BENCH_PERF needs perf (linux-perf)"
  local how=(-F 499)
  # shellcheck disable=SC2054 # perf's own "dwarf,SIZE"
  [[ $BENCH_PERF == graph ]] && how=(-F 199 --call-graph dwarf,8192)
  perf_out="$work/perf-$1-$2"
  perf record -q "${how[@]}" -p "${agent_pid[a]},${agent_pid[b]}" -o "$perf_out.data" 2>/dev/null &
  perf_pid=$!
  sleep 0.5
}
profile_stop() {
  [[ -n $perf_pid ]] || return 0
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" 2>/dev/null || true
  perf_pid=""
  local report=(perf report -n --stdio -i "$perf_out.data")
  [[ $BENCH_PERF == graph ]] && return 0
  "${report[@]}" --no-children --sort comm,dso,sym >"$perf_out.txt" 2>&1 || true
  "${report[@]}" --no-children --sort dso >"$perf_out-dso.txt" 2>&1 || true
}

# Each target must carry an echo before it is measured.
check_echo() {
  local t=$1 err
  if ! err=$(client "$t" rr --count 10 --warmup 0 2>&1 >/dev/null); then
    status[$t]=failed reason[$t]="no echo: $err"
    note "$t: FAILED: no echo through it: $err"
    ((in_vm)) && die "$t carries no echo in the VM (logs in $work)"
    return 0
  fi
  note "$t: carries an echo"
}
for t in plain proxy-ktls zero-hop; do [[ ${status[$t]} == ok ]] && check_echo "$t"; done

# delta A B [DIVISOR]: (B - A) / DIVISOR with 3 decimals.
delta() { awk -v a="$1" -v b="$2" -v d="${3:-1}" 'BEGIN { printf "%.3f", (b - a) / d }'; }
log "measuring: $runs run(s); throughput $((bytes >> 20)) MiB, bulk $((bulk_bytes >> 20)) MiB, rr $rr_count x 64 B, connrate ${conn_seconds}s at concurrency $concurrency, firstbyte $fb_count"
read -r sys_busy0 _ <<<"$(sys_cpu)"
measure_start=$(date +%s.%N)
auto_group=(plain proxy-ktls zero-hop)
for ((r = 1; r <= runs; r++)); do
  order=()
  for ((i = 0; i < ${#auto_group[@]}; i++)); do order+=("${auto_group[(i + r - 1) % ${#auto_group[@]}]}"); done
  if ((r % 2)); then order+=(proxy-userspace); else order=(proxy-userspace "${order[@]}"); fi
  for t in "${order[@]}"; do
    [[ ${status[$t]} == ok ]] || continue
    agents "${mode_of[$t]}"
    if [[ $t == proxy-userspace && -z ${checked_userspace:-} ]]; then
      checked_userspace=1
      [[ $(status_of a | jq -r .data_path) == userspace ]] || die "agent a at data_path userspace says $(status_of a | jq -r .data_path)"
      check_echo "$t"
      [[ ${status[$t]} == ok ]] || continue
    fi
    measure_idle "$t" "$r" 3
    measure "$t" "$r" throughput --bytes "$bytes" --watch "${agent_pid[a]},${agent_pid[b]}"
    if [[ $t == plain || $t == zero-hop ]]; then
      measure "$t" "$r" bulk --bytes "$bulk_bytes" --watch "${agent_pid[a]},${agent_pid[b]}"
    fi
    measure "$t" "$r" rr --count "$rr_count" --size 64
    measure "$t" "$r" connrate --concurrency "$concurrency" --seconds "$conn_seconds" --size 64
    profile_start "$t" "$r"
    measure "$t" "$r" firstbyte --count "$fb_count" --warmup "$fb_warmup"
    profile_stop
    note "run $r/$runs: $t done"
  done
done
measure_end=$(date +%s.%N)
read -r sys_busy1 _ <<<"$(sys_cpu)"

meta="$work/meta.json"
target_lines=$(for t in "${targets[@]}"; do printf '%s\t%s\t%s\n' "$t" "${status[$t]}" "${reason[$t]:-}"; done)
"$PYTHON" - "$started_at" $((SECONDS - t_start)) "$in_vm" "$quick" "$runs" "$bytes" "$rr_count" \
  "$conn_seconds" "$concurrency" "$fb_count" "$fb_warmup" "$(nproc)" "$(uname -r)" "$KTRUSTD" \
  "$(sha256sum "$KTRUSTD" | cut -c1-16)" "$(git -C "$repo" describe --always --dirty 2>/dev/null || true)" \
  "$(delta "$measure_start" "$measure_end")" "$(delta "$sys_busy0" "$sys_busy1" "$clk_tck")" \
  "$data_path_auto" "$target_lines" >"$meta" <<'PY'
import json, sys
(started, duration, in_vm, quick, runs, nbytes, rr, conn_s, conc, fb, fbw, nproc, kernel, ktrustd, sha, git,
 wall, busy, dp, targets) = sys.argv[1:]
print(json.dumps({
    "started": started, "duration_s": int(duration), "in_vm": in_vm == "1",
    "mode": "quick" if quick == "1" else "full",
    "params": {"runs": int(runs), "throughput_bytes": int(nbytes), "rr_count": int(rr),
               "rr_size": 64, "connrate_seconds": int(conn_s), "connrate_concurrency": int(conc),
               "connrate_size": 64, "firstbyte_count": int(fb), "firstbyte_warmup": int(fbw)},
    "machine": {"nproc": int(nproc), "kernel": kernel, "ktrustd": ktrustd, "ktrustd_sha256": sha,
                "git": git},
    "window": {"wall_s": float(wall), "busy_s": float(busy)},
    "agents_data_path_auto": dp,
    "targets": {t: {"status": s, "reason": r} for t, s, r in
                (l.split("\t", 2) for l in targets.splitlines() if l)},
}))
PY
rc=0
"$PYTHON" -B "$here/zerohop_report.py" --meta "$meta" --raw "$raw" --out "$out" || rc=$?
log "wrote $out"
((rc != 3)) || die "a target did not run the data path it names (see ERROR above)"
((rc == 0)) || die "zerohop_report.py failed (exit $rc)"
