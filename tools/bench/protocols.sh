#!/usr/bin/env bash
# Real protocols, unmodified: redis-benchmark against redis-server and pgbench
# against PostgreSQL, plain TCP against the mesh (two simulated nodes with real
# agents, tests/integration/two_nodes.sh) against an haproxy mTLS pair, measured
# in one run. See tools/bench/README.md, "protocols".
#
#   tools/bench/run.sh protocols [--quick | --smoke] [--runs N] [--out FILE] [--keep]   (root)
#
#   target       node a (client)                                node b (servers)
#   plain        cgroup plain: client --------- plain TCP ------> redis :6380, postgres :5433
#   haproxy      cgroup plain: client -> haproxy A (127.0.0.1) =mTLS=> haproxy B :7379/:7432
#                -> the plain servers (haproxy in cgroup plain on both nodes, not enrolled)
#   mesh         cgroup client: client -> agent a =mTLS=> agent b -> redis :6379, postgres :5432
#                (workload server, ports enforced), agent.tls_resumption off
#   mesh-resume  the same, both agents with agent.tls_resumption: true
#
# Workloads, per target and run: redis-benchmark -c 50 SET/GET; -c 50 -P 16
# SET/GET; -c 50 -k 0 SET (a new connection per request); pgbench -c 8 -j 2
# (TPC-B-like, persistent connections); pgbench -c 8 -j 2 -C (a connection per
# transaction). Odd runs measure plain, haproxy, mesh, mesh-resume; even runs the
# reverse, so the agents restart once per run (resumption on or off).
# The run fails unless every request succeeded: each tool exits 0, pgbench
# reports no failed or aborted transaction, and through the mesh the enrolled
# redis processed every command while neither agent failed a handshake.
# protocols_report.py turns it into ratios against plain from the same run and
# the issue's targets (JSON schema ktrust-bench-protocols/1).
#
# --smoke: tiny counts, one run (ctest bench_protocols_smoke: correctness only).
# Environment: KTRUSTD, KTRUST (defaults in the build tree). Needs root,
# redis-server, redis-benchmark, redis-cli, pgbench, PostgreSQL's server
# (/usr/lib/postgresql/*/bin), haproxy, ip, jq, ss, curl, openssl.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

size=full
out=""
runs=""
while (($#)); do
  case "$1" in
    --quick) size=quick ;;
    --smoke) size=smoke ;;
    --runs) runs=${2:-}; shift ;;
    --out) out=${2:-}; shift ;;
    --keep) keep=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "$prog: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ -z $runs || $runs =~ ^[1-9][0-9]*$ ]] || { echo "$prog: --runs wants a positive number" >&2; exit 2; }
out=$(result_path "$out" ktrust-bench-protocols.json)

# Sizes: requests per redis-benchmark test, pgbench seconds. Full: about 3 min
# per run on 2 busy cores (the mesh carries 5-6k redis requests/s with 50
# clients and about 250 new connections/s at -k 0 there); the set-up about 1 min.
case $size in
  full) runs=${runs:-2} redis_n=50000 pipelined_n=200000 reconnect_n=2000 pg_seconds=6 client_limit=180 ;;
  quick) runs=${runs:-1} redis_n=20000 pipelined_n=100000 reconnect_n=1000 pg_seconds=4 client_limit=90 ;;
  smoke) runs=${runs:-1} redis_n=2000 pipelined_n=8000 reconnect_n=200 pg_seconds=2 client_limit=60 ;;
esac
redis_clients=50 pipeline=16 pg_clients=8 pg_threads=2 pg_scale=10
targets=(plain haproxy mesh mesh-resume)
workloads=(redis redis-pipelined redis-reconnect pgbench pgbench-connect)
declare -A cgroup_of=([plain]=plain [haproxy]=plain [mesh]=client [mesh-resume]=client)
declare -A redis_addr=([plain]=10.77.0.2:6380 [haproxy]=127.0.0.1:7379 [mesh]=10.77.0.2:6379 [mesh-resume]=10.77.0.2:6379)
declare -A pg_addr=([plain]=10.77.0.2:5433 [haproxy]=127.0.0.1:7432 [mesh]=10.77.0.2:5432 [mesh-resume]=10.77.0.2:5432)
declare -A agents_mode_of=([mesh]=off [mesh-resume]=on)

((EUID == 0)) || die "needs root (network namespaces, cgroups, bpffs, BPF programs)"
# No silent skips: every tool the targets need is there, or the run fails.
pg_bin=$(find /usr/lib/postgresql -maxdepth 3 -path '*/bin/postgres' 2>/dev/null | sort -V | tail -n1)
pg_bin=${pg_bin%/postgres}
[[ -n $pg_bin && -x $pg_bin/initdb ]] ||
  die "PostgreSQL's server is not installed (/usr/lib/postgresql/*/bin/postgres; tools/dev setup installs postgresql-15)"
for t in redis-server redis-benchmark redis-cli pgbench haproxy ip jq ss curl openssl setpriv; do
  command -v "$t" >/dev/null || die "$t is not installed (tools/dev setup installs what the benchmarks need)"
done
id -u postgres >/dev/null 2>&1 || die "no postgres user (PostgreSQL refuses to run as root; Debian's postgresql-15 creates it)"
[[ -x $PYTHON ]] || die "$PYTHON is needed for the report"
built KTRUSTD ktrustd
built KTRUST ktrust

# shellcheck source=SCRIPTDIR/../../tests/integration/two_nodes.sh
source "$repo/tests/integration/two_nodes.sh"
declare -A server_pid=()
# PostgreSQL first, by a fast shutdown (a SIGKILLed postmaster leaves its shared
# memory behind), then the nodes.
cleanup_hook() {
  local p
  for p in "${server_pid[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${server_pid[@]}"; do wait_until 10 exited "$p" || true; done
  two_nodes_down 2>/dev/null
}
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
t_start=$SECONDS
new_work ktrust-bench-protocols

listening() { ip netns exec "$(node_ns "$1")" ss -ltnH "sport = :$2" | grep -q .; }
# counters NODE: the agent's accepted connections, failed and resumed handshakes.
counters() {
  metrics "$1" /metrics | awk '
    /^ktrust_connections_accepted_total[{ ]/ { a += $NF }
    /^ktrust_handshakes_failed_total[{ ]/ { f += $NF }
    /^ktrust_handshakes_resumed_total[{ ]/ { r += $NF }
    END { printf "%d %d %d\n", a, f, r }'
}
# redis_cli TARGET ARGS...: redis-cli on node a, the way TARGET's clients go.
redis_cli() {
  local t=$1
  shift
  exec_in a "${cgroup_of[$t]}" timeout 10 redis-cli -h "${redis_addr[$t]%:*}" -p "${redis_addr[$t]#*:}" "$@"
}
redis_stat() { redis_cli "$1" INFO stats | tr -d '\r' | sed -n "s/^$2://p"; }  # TARGET FIELD

log "two simulated nodes in $work"
two_nodes_up "$work" "$KTRUST"
for n in a b; do
  # A new connection per request: more ephemeral ports and TIME_WAIT reuse, in the nodes only.
  ip netns exec "$(node_ns "$n")" sysctl -q -w net.ipv4.ip_local_port_range="10000 64999" \
    net.ipv4.tcp_tw_reuse=1
done
mkdir -p "$KT_CG"/a/{plain,client} "$KT_CG"/b/{plain,server}
write_config a '
  - name: client
    cgroup: client
    spiffe_id: spiffe://{trust_domain}/{node}/client' '
  []'
write_config b '
  - name: server
    cgroup: server
    spiffe_id: spiffe://{trust_domain}/{node}/server
    ports: [6379, 5432]' '
  - to: server
    ports: [6379, 5432]
    from: [spiffe://example.org/node-a/client]'
for n in a b; do
  # The peers log warnings only; so do the agents.
  sed -i 's/^  log_level: .*/  log_level: warn/' "$KT_WORK/$n/ktrustd.yaml"
  mv "$KT_WORK/$n/ktrustd.yaml" "$KT_WORK/$n/ktrustd-off.yaml"
  { cat "$KT_WORK/$n/ktrustd-off.yaml"; echo "  tls_resumption: true"; } >"$KT_WORK/$n/ktrustd-on.yaml"
done

# ---------------------------------------------------------------- servers (node b)
# Two of each, the same binary and settings: one in the enrolled cgroup server
# (reached only through the mesh), one in cgroup plain (plain and haproxy).
# PostgreSQL: no fsync (this measures the network path, not the disk), trust
# authentication, no TLS of its own (the clients ask for none: PGSSLMODE=disable).
chmod o+x "$work" # the postgres user reaches its data directories below it
for inst in server:6379:5432 plain:6380:5433; do
  IFS=: read -r cg rport pport <<<"$inst"
  run_in b "$cg" "$work/redis-$cg.log" redis-server --port "$rport" --bind '*' '-::*' \
    --protected-mode no --save '' --appendonly no --logfile ''
  install -d -o postgres -g postgres -m 700 "$work/pg-$cg"
  setpriv --reuid=postgres --regid=postgres --init-groups "$pg_bin/initdb" -D "$work/pg-$cg" \
    -A trust -U bench --no-sync >"$work/initdb-$cg.log" 2>&1 ||
    die "initdb failed: $(tail -n 5 "$work/initdb-$cg.log")"
  printf 'host all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n' >>"$work/pg-$cg/pg_hba.conf"
  run_in b "$cg" "$work/postgres-$cg.log" setpriv --reuid=postgres --regid=postgres --init-groups \
    "$pg_bin/postgres" -D "$work/pg-$cg" -p "$pport" -c listen_addresses='*' \
    -c unix_socket_directories='' -c fsync=off -c synchronous_commit=off \
    -c full_page_writes=off -c max_connections=100
  server_pid[postgres-$cg]=${KT_PIDS[-1]}
done
for port in 6379 6380 5432 5433; do
  wait_until 30 listening b "$port" || die "no server listens on node b port $port: $(tail -n 3 "$work"/redis-*.log "$work"/postgres-*.log)"
done
export PGSSLMODE=disable PGUSER=bench PGDATABASE=postgres
# The pgbench tables, made before the agents start (enforcement would refuse
# node b's own plain connection to the enrolled port).
for pport in 5432 5433; do
  exec_in b plain pgbench -h 127.0.0.1 -p "$pport" -i -q -s "$pg_scale" >"$work/pgbench-init-$pport.log" 2>&1 ||
    die "pgbench -i on port $pport failed: $(tail -n 5 "$work/pgbench-init-$pport.log")"
done
log "servers on node b: redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'), postgres $("$pg_bin/postgres" --version | awk '{print $3}') (scale $pg_scale)"

# ---------------------------------------------------------------- haproxy pair
# The pair of tools/bench/loopback.sh (lib/common.sh), across the nodes: A on
# node a's loopback, B on node b's veth address, both not enrolled. Their SVIDs
# come from the nodes' intermediates, like the agents' (leaf + intermediate
# presented, the root trusted).
peers_openssl_conf "$work"
declare -A haproxy_pids=()
for proto in redis:7379:6380 pg:7432:5433; do
  IFS=: read -r name hport backend <<<"$proto"
  mkdir -p "$work/haproxy-$name"
  for side in a b; do
    who=client
    [[ $side == b ]] && who=server
    "$KTRUST" ca issue --ca-dir "$KT_WORK/$side/ca" --id "spiffe://example.org/node-$side/haproxy-$who" \
      --out "$work/haproxy-$name/$who" --ttl 4h >/dev/null
  done
  haproxy_pair_conf "$work/haproxy-$name" "127.0.0.1:$hport" "10.77.0.2:$hport" "10.77.0.2:$hport" \
    "127.0.0.1:$backend" "$work/haproxy-$name/client" "$work/haproxy-$name/server"
  run_in b plain "$work/haproxy-$name/b.log" "${peer_env[@]}" haproxy -db -f "$work/haproxy-$name/haproxy-b.cfg"
  haproxy_pids[$name]=${KT_PIDS[-1]}
  run_in a plain "$work/haproxy-$name/a.log" "${peer_env[@]}" haproxy -db -f "$work/haproxy-$name/haproxy-a.cfg"
  haproxy_pids[$name]+=" ${KT_PIDS[-1]}"
  { wait_until 10 listening b "$hport" && wait_until 10 listening a "$hport"; } ||
    die "the haproxy pair for $name did not listen: $(tail -n 3 "$work/haproxy-$name"/*.log)"
done

# ---------------------------------------------------------------- agents
agents_mode=""
# agents MODE: both agents running with ktrustd-MODE.yaml (resumption off or on), ready.
agents() {
  [[ $agents_mode == "$1" ]] && return 0
  restart_agents "$1"
  agents_mode=$1
  note "agents with resumption $1: data path $(status_of a | jq -r '.data_path + " (" + .data_path_reason + ")"')"
}
agents off
data_path=$(status_of b | jq -r '.data_path')

# ---------------------------------------------------------------- checks
# Every path answers, only the mesh goes through the agents, and haproxy B is
# mutual TLS (refuses a client without a certificate).
log "checks: every target answers; only the mesh goes through the agents; haproxy B wants a certificate"
read -r acc_a0 _ <<<"$(counters a)"
for t in plain haproxy; do
  [[ $(redis_cli "$t" PING) == PONG ]] || die "$t: redis does not answer PING"
  exec_in a plain psql -h "${pg_addr[$t]%:*}" -p "${pg_addr[$t]#*:}" -Atc 'select 1' >/dev/null ||
    die "$t: postgres does not answer"
done
read -r acc_a1 _ <<<"$(counters a)"
((acc_a1 == acc_a0)) || die "plain or haproxy connections went through agent a ($acc_a0 -> $acc_a1 accepted)"
[[ $(redis_cli mesh PING) == PONG ]] || die "mesh: redis does not answer PING through the agents"
exec_in a client psql -h 10.77.0.2 -p 5432 -Atc 'select 1' >/dev/null || die "mesh: postgres does not answer through the agents"
accepted_a_above() { (($(counters a | cut -d' ' -f1) >= $1)); }
wait_until 5 accepted_a_above $((acc_a1 + 2)) || die "the mesh's connections did not go through agent a"
# s_client_pong ARGS...: a redis PING straight to haproxy B over TLS gets PONG
# (QUIT: redis closes, so s_client ends; its status says nothing, the reply does).
s_client_pong() {
  local reply
  reply=$(printf 'PING\r\nQUIT\r\n' | exec_in a plain timeout 5 openssl s_client -quiet \
    -connect 10.77.0.2:7379 -CAfile "$work/haproxy-redis/client/ca.crt" "$@" 2>/dev/null || true)
  grep -q PONG <<<"$reply"
}
# (-cert takes the leaf; -cert_chain sends the intermediate after it.)
s_client_pong -cert "$work/haproxy-redis/client/tls.crt" -cert_chain "$work/haproxy-redis/client/tls.crt" \
  -key "$work/haproxy-redis/client/tls.key" ||
  die "haproxy B does not answer a client with a certificate"
! s_client_pong || die "haproxy B let a client without a certificate through: not mTLS"
note "ok; agents' data path $data_path (no kernel TLS on this host: userspace)"

# ---------------------------------------------------------------- measurements
raw="$work/raw.jsonl"
: >"$raw"
mkdir -p "$work/out"
# proxies T: the PIDs doing T's TLS (none for plain).
proxies() {
  case $1 in
    haproxy) echo "${haproxy_pids[redis]} ${haproxy_pids[pg]}" ;;
    mesh*) echo "${agent_pid[a]} ${agent_pid[b]}" ;;
  esac
}
# client T WORKLOAD: WORKLOAD's client on node a, the way T goes; its output on stdout.
client() {
  local t=$1 w=$2 rh=${redis_addr[$1]%:*} rp=${redis_addr[$1]#*:} ph=${pg_addr[$1]%:*} pp=${pg_addr[$1]#*:}
  local rb=(redis-benchmark -h "$rh" -p "$rp" -c "$redis_clients" --csv)
  local pg=(pgbench -h "$ph" -p "$pp" -n -c "$pg_clients" -j "$pg_threads" -T "$pg_seconds")
  local cmd
  case $w in
    redis) cmd=("${rb[@]}" -n "$redis_n" -t "set,get") ;;
    redis-pipelined) cmd=("${rb[@]}" -n "$pipelined_n" -P "$pipeline" -t "set,get") ;;
    redis-reconnect) cmd=("${rb[@]}" -n "$(requests "$w" "$t")" -k 0 -t set) ;;
    pgbench) cmd=("${pg[@]}") ;;
    pgbench-connect) cmd=("${pg[@]}" -C) ;;
  esac
  # redis-benchmark waits forever for a server it cannot reach: a deadline.
  exec_in a "${cgroup_of[$t]}" timeout "$client_limit" "${cmd[@]}"
}
# requests W T: the redis commands workload W sends through target T (0 for
# pgbench). Plain makes 5x the connections at -k 0: at the same count it is
# over in well under a second, too short to give a steady rate.
requests() {
  case $1 in
    redis) echo $((2 * redis_n)) ;;
    redis-pipelined) echo $((2 * pipelined_n)) ;;
    redis-reconnect) if [[ $2 == plain ]]; then echo $((5 * reconnect_n)); else echo "$reconnect_n"; fi ;;
    *) echo 0 ;;
  esac
}
# measure T RUN WORKLOAD: one client run, with the proxies' CPU, the machine's
# busy CPU, the redis server's command and connection counts and (mesh) the
# agents' counters around it; fails the run on any failed request.
measure() {
  local t=$1 r=$2 w=$3 f="$work/out/$1-$2-$3.txt" px c0 c1 s0 s1 w0 w1 _ rc=0
  local cmd0=0 cmd1=0 conn0=0 conn1=0 ca0 cb0 ca1 cb1
  read -ra px <<<"$(proxies "$t")"
  [[ $w == redis* ]] && cmd0=$(redis_stat "$t" total_commands_processed) conn0=$(redis_stat "$t" total_connections_received)
  ca0=$(counters a) cb0=$(counters b)
  c0=$(cpu_seconds "${px[@]}")
  read -r s0 _ <<<"$(sys_cpu)"
  w0=$(date +%s.%N)
  client "$t" "$w" >"$f" 2>&1 || rc=$?
  w1=$(date +%s.%N)
  read -r s1 _ <<<"$(sys_cpu)"
  c1=$(cpu_seconds "${px[@]}")
  ca1=$(counters a) cb1=$(counters b)
  [[ $w == redis* ]] && cmd1=$(redis_stat "$t" total_commands_processed) conn1=$(redis_stat "$t" total_connections_received)
  ((rc == 0)) || die "$t run $r $w: the client failed (exit $rc): $(tail -n 5 "$f")"
  "$PYTHON" - "$t" "$r" "$w" "$f" "$w0" "$w1" "$c0" "$c1" "$s0" "$s1" "$clk_tck" \
    "$((cmd1 - cmd0))" "$((conn1 - conn0))" "$(requests "$w" "$t")" "$ca0" "$ca1" "$cb0" "$cb1" \
    "${agents_mode_of[$t]:-}" >>"$raw" <<'PY'
import json, sys
(t, r, w, f, w0, w1, c0, c1, s0, s1, hz, cmds, conns, expected,
 ca0, ca1, cb0, cb1, mode) = sys.argv[1:]
a0, a1, b0, b1 = ([int(x) for x in v.split()] for v in (ca0, ca1, cb0, cb1))
print(json.dumps({
    "target": t, "run": int(r), "workload": w, "output": open(f).read(),
    "wall_s": round(float(w1) - float(w0), 3), "proxy_cpu_s": round(float(c1) - float(c0), 3),
    "system_busy_s": round((float(s1) - float(s0)) / float(hz), 3),
    "redis_commands": int(cmds), "redis_connections": int(conns), "expected_requests": int(expected),
    "resumption": mode or None,
    "agents": {"accepted": [a1[0] - a0[0], b1[0] - b0[0]],
               "handshakes_failed": [a1[1] - a0[1], b1[1] - b0[1]],
               "resumed": [a1[2] - a0[2], b1[2] - b0[2]]},
}))
PY
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
log "measuring: $runs run(s); redis-benchmark -c $redis_clients -n $redis_n (-P $pipeline: $pipelined_n; -k 0: $reconnect_n), pgbench -c $pg_clients -T $pg_seconds"
for ((r = 1; r <= runs; r++)); do
  order=("${targets[@]}")
  ((r % 2)) || order=(mesh-resume mesh haproxy plain)
  for t in "${order[@]}"; do
    [[ -n ${agents_mode_of[$t]:-} ]] && agents "${agents_mode_of[$t]}"
    for w in "${workloads[@]}"; do measure "$t" "$r" "$w"; done
    note "run $r/$runs: $t done"
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
jq -n --arg started "$started_at" --argjson duration $((SECONDS - t_start)) --arg size "$size" \
  --argjson runs "$runs" --argjson redis_n "$redis_n" --argjson pipelined_n "$pipelined_n" \
  --argjson reconnect_n "$reconnect_n" --argjson pg_seconds "$pg_seconds" \
  --argjson redis_clients "$redis_clients" --argjson pipeline "$pipeline" \
  --argjson pg_clients "$pg_clients" --argjson pg_threads "$pg_threads" --argjson pg_scale "$pg_scale" \
  --arg load_before "$load_before" --arg load_after "$load_after" --arg data_path "$data_path" \
  --argjson nproc "$(nproc)" --arg kernel "$(uname -r)" --arg openssl "$(openssl version)" \
  --arg redis "$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')" \
  --arg postgres "$("$pg_bin/postgres" --version)" --arg pgbench "$(pgbench --version)" \
  --arg haproxy "$(haproxy -v 2>/dev/null | sed -n 's/^HAProxy version \([^ ]*\).*/\1/p' | head -n1)" \
  --arg ktrustd "$KTRUSTD" --arg ktrustd_sha "$(sha256sum "$KTRUSTD" | cut -c1-16)" \
  --arg git "$(git -C "$repo" describe --always --dirty 2>/dev/null || true)" \
  '{started: $started, duration_s: $duration, size: $size, load_before: $load_before, load_after: $load_after,
    params: {runs: $runs, redis_clients: $redis_clients, redis_requests: $redis_n,
             pipeline: $pipeline, pipelined_requests: $pipelined_n, reconnect_requests: $reconnect_n,
             pgbench_clients: $pg_clients, pgbench_threads: $pg_threads, pgbench_seconds: $pg_seconds,
             pgbench_scale: $pg_scale},
    machine: {nproc: $nproc, kernel: $kernel, openssl: $openssl, redis: $redis, postgres: $postgres,
              pgbench: $pgbench, haproxy: $haproxy, ktrustd: $ktrustd, ktrustd_sha256: $ktrustd_sha,
              git: $git, agents_data_path: $data_path}}' >"$work/meta.json"
"$PYTHON" -B "$here/protocols_report.py" --meta "$work/meta.json" --raw "$raw" --out "$out" ||
  die "protocols_report.py failed (exit $?): a request failed, or an output could not be read"
log "wrote $out"
