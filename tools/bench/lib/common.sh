# shellcheck shell=bash
# What every benchmark mode shares (sourced by tools/bench/*.sh): the binaries
# and their defaults, messages, building what is missing, the result path, the
# work directory with its cleanup on any exit, the processes a mode starts
# (only those are ever killed, by PID) and CPU accounting from /proc.
#
# Environment: KTRUST_BUILD_DIR (default build/ of this repository), KTRUSTD,
# KTRUST (the CLI), LOADGEN: defaults in the build tree.

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) # tools/bench
repo=$(cd "$here/../.." && pwd)
build="${KTRUST_BUILD_DIR:-$repo/build}"
KTRUSTD="${KTRUSTD:-$build/userspace/ktrustd}"
KTRUST="${KTRUST:-$build/userspace/cli/ktrust}"
LOADGEN="${LOADGEN:-$build/tools/bench/loadgen}"
# shellcheck disable=SC2034 # used by the modes
PYTHON=/usr/bin/python3
prog=${BENCH_PROG:-$(basename "$0")}

log() { printf '==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }
# usage: the comment block at the top of the running script.
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

# mode_option ARG [VALUE]: an option every mode takes (--out FILE, --keep,
# --help) into `out` and `keep`; the arguments it took in `taken` (0: not
# one of these).
# shellcheck disable=SC2034 # out, keep and taken are read by the modes
mode_option() {
  taken=1
  case $1 in
    --out) [[ $# -ge 2 ]] || die "--out needs a file"; out=$2; taken=2 ;;
    --keep) keep=1 ;;
    -h | --help) usage; exit 0 ;;
    *) taken=0 ;;
  esac
}

# result_path FILE DEFAULT: FILE (or DEFAULT) as an absolute path.
result_path() {
  local f=${1:-$2}
  [[ $f = /* ]] && echo "$f" || echo "$PWD/$f"
}

# built VAR TARGET [FALLBACK]: makes sure the binary named by $VAR exists. One
# of the build tree's own is built with ninja; one set elsewhere must exist.
# With FALLBACK (loadgen only: it needs no project library), a build tree that
# has no TARGET yet gets loadgen.cc compiled to FALLBACK, and VAR points there.
built() {
  local var=$1 target=$2 fallback=${3:-} path=${!1}
  [[ -x $path ]] && return 0
  [[ $path == "$build/"* ]] || die "$var=$path is not an executable"
  if [[ -f $build/build.ninja ]] && ninja -C "$build" -t targets all 2>/dev/null | grep -q "^$target:"; then
    log "building $target"
    ninja -C "$build" "$target" >/dev/null
  elif [[ -n $fallback ]]; then
    log "compiling $target into $fallback (the build tree has no $target target)"
    mkdir -p "$(dirname "$fallback")"
    c++ -std=c++20 -O2 -Wall -Wextra -pthread "$here/$target.cc" -o "$fallback"
    printf -v "$var" '%s' "$fallback"
  else
    die "no $target at $path and no build tree to build it in ($build; set $var=/path/to/it)"
  fi
}

# ---------------------------------------------------------------- work directory, cleanup
keep=0 # --keep: leave the work directory
work=""
pids=()
# new_work PREFIX: a fresh work directory, removed (with everything this shell
# started) on any exit, Ctrl-C and SIGTERM included. A mode may define
# cleanup_hook, run after the processes are stopped and before the removal.
new_work() {
  work=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  ((${#pids[@]} == 0)) || stop "${pids[@]}"
  if declare -F cleanup_hook >/dev/null; then cleanup_hook || true; fi
  if [[ -n $work ]]; then
    if ((keep)); then
      log "kept $work"
    elif ! findmnt -rn -o TARGET | grep -q "^$work/"; then # never recurse into a mount left behind
      rm -rf "$work"
    fi
  fi
  exit "$rc"
}

# start NAME CMD... : runs CMD in the background, output in $work/NAME.log;
# its PID in last_pid.
start() {
  local name=$1
  shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  # shellcheck disable=SC2034 # read by the caller
  last_pid=$!
}

# stop PID...: TERM, KILL after 2.5 s, reap, and forget them (so that cleanup
# never signals a PID that the system may have handed out again).
stop() {
  local pid keep_pids=() p
  for pid; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do [[ " $* " == *" $p "* ]] || keep_pids+=("$p"); done
  pids=("${keep_pids[@]}")
}

# ---------------------------------------------------------------- listening ports
# wait_listening PORT PID: until something listens on PORT, or PID dies, 10 s at most.
wait_listening() {
  local port=$1 pid=$2 deadline=$((SECONDS + 10))
  while ((SECONDS < deadline)); do
    ss -ltnH "sport = :$port" | grep -q . && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

port_in_use() { ss -tanH "( sport = :$1 )" | grep -q .; }

# ---------------------------------------------------------------- CPU accounting
clk_tck=$(getconf CLK_TCK)
# cpu_ticks PID...: utime+stime of the processes (all threads), in clock ticks.
cpu_ticks() {
  local total=0 pid ticks
  for pid in "$@"; do
    # Fields after the ")" that ends comm: state is 1, utime 12, stime 13.
    ticks=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') || ticks=0
    total=$((total + ${ticks:-0}))
  done
  echo "$total"
}
# cpu_seconds PID...: the same in seconds.
cpu_seconds() { awk -v t="$(cpu_ticks "$@")" -v hz="$clk_tck" 'BEGIN { printf "%.3f", t / hz }'; }
# sys_cpu: busy (user+nice+system+irq+softirq) and steal ticks of the whole machine.
sys_cpu() { awk '/^cpu /{ print $2 + $3 + $4 + $7 + $8, $9 }' /proc/stat; }
# children_cpu FILE: seconds of user+system CPU of the children in FILE, the
# output of bash's `times` (line 2, "XmY.YYYs XmY.YYYs").
children_cpu() {
  sed -n 2p "$1" 2>/dev/null | awk '{
    t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] }
    printf "%.3f", t }'
}

# ---------------------------------------------------------------- the haproxy mTLS peer
# OpenSSL sends TLS 1.3 session tickets even with SSL_OP_NO_TICKET and the
# session cache off (openssl/openssl#8077); haproxy 2.6 and stunnel have no knob
# for it (haproxy/haproxy#1103). ktrust sends none (SSL_CTX_set_num_tickets(0))
# unless resumption is on, so the peers get the same through OpenSSL's
# system-default SSL configuration: peers_openssl_conf DIR writes it to
# DIR/openssl-peers.cnf and sets peer_env, the prefix that runs a peer with it.
peers_openssl_conf() {
  cat >"$1/openssl-peers.cnf" <<EOC
openssl_conf = bench_conf
[bench_conf]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
NumTickets = 0
EOC
  # shellcheck disable=SC2034 # read by the modes
  peer_env=(env "OPENSSL_CONF=$1/openssl-peers.cnf")
}

# haproxy_pair_conf DIR A_LISTEN B_CONNECT B_LISTEN BACKEND CLIENT_ID SERVER_ID:
# DIR/haproxy-a.cfg (plain in on A_LISTEN, mTLS out to B_CONNECT as the identity
# in CLIENT_ID: tls.crt, tls.key, ca.crt) and DIR/haproxy-b.cfg (mTLS in on
# B_LISTEN, client certificate required, as SERVER_ID; plain out to BACKEND).
# TLS 1.3, TLS_AES_128_GCM_SHA256, X25519 first, no resumption, no tickets, two
# threads (= ktrust's one loop per core here); addresses are HOST:PORT.
# The settings and why: tools/bench/README.md, "Fairness settings".
haproxy_pair_conf() {
  local dir=$1 a_listen=$2 b_connect=$3 b_listen=$4 backend=$5 cid=$6 sid=$7 side who
  for side in a b; do
    who=$cid
    [[ $side == b ]] && who=$sid
    # crt wants the certificate and its key in one PEM.
    cat "$who/tls.crt" "$who/tls.key" >"$who/haproxy.pem"
    cat >"$dir/haproxy-$side.cfg" <<EOC
global
    nbthread 2
    maxconn 4096
    # No session resumption anywhere: every connection pays a full handshake.
    tune.ssl.cachesize 0
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
EOC
  done
  cat >>"$dir/haproxy-a.cfg" <<EOC
frontend plain_in
    bind $a_listen
    default_backend mtls_out
backend mtls_out
    server b $b_connect ssl crt $cid/haproxy.pem ca-file $cid/ca.crt verify required ssl-min-ver TLSv1.3 ciphersuites TLS_AES_128_GCM_SHA256 no-ssl-reuse no-tls-tickets
EOC
  cat >>"$dir/haproxy-b.cfg" <<EOC
frontend mtls_in
    bind $b_listen ssl crt $sid/haproxy.pem ca-file $sid/ca.crt verify required ssl-min-ver TLSv1.3 ciphersuites TLS_AES_128_GCM_SHA256 curves X25519:P-256 no-tls-tickets
    default_backend plain_out
backend plain_out
    server app $backend
EOC
}

# ---------------------------------------------------------------- agents on two simulated nodes
# For the modes on tests/integration/two_nodes.sh's nodes (source it first):
# each node's agent from $KT_WORK/NODE/ktrustd-VARIANT.yaml.
status_of() { "$KTRUST" --socket "$KT_WORK/$1/control.sock" status --json; }  # NODE
agent_ready() { status_of "$1" | jq -e '.ready == true'; }                       # NODE
declare -A agent_pid=()
# restart_agents VARIANT: both agents (re)started with ktrustd-VARIANT.yaml,
# logging to agent-VARIANT.log, and ready (60 s at most each); their PIDs in
# agent_pid[a] and agent_pid[b].
restart_agents() {
  local n p keep_pids=()
  if [[ -n ${agent_pid[a]:-} ]]; then
    stop "${agent_pid[a]}" "${agent_pid[b]}"
    for p in "${KT_PIDS[@]}"; do [[ $p == "${agent_pid[a]}" || $p == "${agent_pid[b]}" ]] || keep_pids+=("$p"); done
    KT_PIDS=("${keep_pids[@]}")
  fi
  for n in a b; do
    run_in "$n" agent "$KT_WORK/$n/agent-$1.log" "$KTRUSTD" run --config "$KT_WORK/$n/ktrustd-$1.yaml"
    agent_pid[$n]=${KT_PIDS[-1]}
    pids+=("${KT_PIDS[-1]}") # stop() waits for it like the other processes it started
  done
  for n in a b; do
    wait_until 60 agent_ready "$n" || { tail -n 20 "$KT_WORK/$n/agent-$1.log" >&2; die "ktrustd on node $n did not become ready ($1)"; }
  done
}
