#!/usr/bin/env bash
# The loopback benchmark: plain TCP (the limit), ktrust engine pairs (data
# path auto and forced userspace), and stunnel4 and haproxy pairs doing the same
# mutual TLS 1.3 with the same certificates, measured in one run. See
# tools/bench/README.md.
#
#   tools/bench/run.sh loopback [--quick] [--out FILE] [--runs N] [--targets LIST] [--keep]
#
# Every pair: loadgen -> proxy A (plain in, mTLS out as spiffe://bench.local/client)
#   -> proxy B (mTLS in, client certificate required, plain out) -> loadgen server.
# Plain: loadgen -> loadgen server. Targets: plain,stunnel,haproxy,ktrust,ktrust-userspace,
# ktrust-resume (ktrust with --resumption: TLS 1.3 session resumption between the pair).
# --vm-guest (internal: `run.sh vm` runs it in the kTLS VM) uses sizes for TCG,
# plain,ktrust,ktrust-userspace,ktrust-resume, and fails unless ktrust runs on kernel TLS.
#
# Environment: KTRUSTD (default build/userspace/ktrustd; the ktrust targets are
# skipped if it does not exist), KTRUSTD_ARGS (extra flags for every ktrustd;
# default "--log-level warn", as the peers log only warnings), KTRUST (the CLI),
# LOADGEN, BENCH_PORT_BASE (default 21700), BENCH_CONCURRENCY (default 8),
# BENCH_RETRIES (default 3).
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
KTRUSTD_ARGS="${KTRUSTD_ARGS---log-level warn}"

quick=0
in_vm=0     # --vm-guest: this is the guest side of `run.sh vm` (needs KTRUST_VM=1)
out=""
runs=""
targets=""
all_targets=(plain stunnel haproxy ktrust ktrust-userspace ktrust-resume)
ktrust_targets=(ktrust ktrust-userspace ktrust-resume)

while (($#)); do
  case "$1" in
    --quick) quick=1 ;;
    --out) out=$2; shift ;;
    --runs) runs=$2; shift ;;
    --targets) targets=$2; shift ;;
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
  out=${out:-$KTRUST_VM_OUT/ktrust-bench.json}
  targets=${targets:-plain,ktrust,ktrust-userspace,ktrust-resume}
fi
out=$(result_path "$out" ktrust-bench.json)

# Sizes. Full: about 10 s per target per run; quick: about 3 s, one run. In the
# VM (TCG emulates every instruction, 20-50x slower) they are smaller: full is
# about 50 s per run of the three targets, 5 runs, about 5 min with the boot.
concurrency="${BENCH_CONCURRENCY:-8}"
targets=${targets:-plain,stunnel,haproxy,ktrust,ktrust-userspace,ktrust-resume}
if ((in_vm && quick)); then
  runs=${runs:-1} bytes=$((16 << 20)) rr_count=300 conn_seconds=2
elif ((in_vm)); then
  runs=${runs:-5} bytes=$((64 << 20)) rr_count=1500 conn_seconds=4
elif ((quick)); then
  runs=${runs:-1} bytes=$((256 << 20)) rr_count=3000 conn_seconds=2
else
  runs=${runs:-3} bytes=$((2 << 30)) rr_count=20000 conn_seconds=5
fi

started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
t_start=$SECONDS
declare -A target_pids=()  # target -> "pidA pidB" (the running pair)
# In the VM --keep copies the work directory out, to the host.
cleanup_hook() {
  ((keep && in_vm)) || return 0
  cp -a "$work" "$KTRUST_VM_OUT/work" 2>/dev/null && log "kept $work (copied out of the VM)"
  keep=0 # copied: the guest removes it as before
}
new_work ktrust-bench

# ---------------------------------------------------------------- tools
declare -A status=() reason=()
IFS=, read -ra target_list <<<"$targets"
for t in "${target_list[@]}"; do
  [[ " ${all_targets[*]} " == *" $t "* ]] || die "unknown target $t (known: ${all_targets[*]})"
  status[$t]=pending
done
wants() { [[ -n ${status[$1]:-} && ${status[$1]} != skipped && ${status[$1]} != failed ]]; }
skip() { status[$1]=skipped; reason[$1]=$2; note "$1: skipped: $2"; }
fail() { status[$1]=failed; reason[$1]=$2; note "$1: FAILED: $2"; }

[[ -x $PYTHON ]] || die "$PYTHON is needed for the report (apt-get install python3)"

missing_pkgs=()
wants stunnel && ! command -v stunnel4 >/dev/null && missing_pkgs+=(stunnel4)
wants haproxy && ! command -v haproxy >/dev/null && missing_pkgs+=(haproxy)
if ((${#missing_pkgs[@]})); then
  if ((in_vm)); then
    note "no apt-get in the VM (its / is the host's, read-only): install ${missing_pkgs[*]} on the host"
  elif [[ $EUID -eq 0 ]]; then
    log "installing ${missing_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >"$work/apt.log" 2>&1 ||
      { apt-get update -qq >>"$work/apt.log" 2>&1 &&
        apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >>"$work/apt.log" 2>&1; } ||
      note "apt-get failed, see below"
  fi
  wants stunnel && ! command -v stunnel4 >/dev/null && skip stunnel "stunnel4 is not installed"
  wants haproxy && ! command -v haproxy >/dev/null && skip haproxy "haproxy is not installed"
fi
for t in "${ktrust_targets[@]}"; do
  if wants "$t" && [[ ! -x $KTRUSTD ]]; then
    skip "$t" "no engine binary at $KTRUSTD (set KTRUSTD=/path/to/ktrustd)"
  fi
done

if ((in_vm)); then # the guest cannot build: its / is the host's, read-only
  [[ -x $LOADGEN ]] || die "no loadgen at $LOADGEN (the host side builds it before starting the VM)"
  [[ -x $KTRUST ]] || die "no ktrust CLI at $KTRUST"
fi
built LOADGEN loadgen "$work/loadgen"
built KTRUST ktrust

# Which engine was measured (the build tree may change under a long run).
ktrustd_sha=""
[[ -x $KTRUSTD ]] && ktrustd_sha=$(sha256sum "$KTRUSTD" | cut -c1-16)

# ---------------------------------------------------------------- certificates
log "minting certificates in $work (ktrust ca init / ca issue)"
"$KTRUST" ca init --trust-domain bench.local --dir "$work/ca" >/dev/null
for who in client server; do
  "$KTRUST" ca issue --ca-dir "$work/ca" --id "spiffe://bench.local/$who" \
    --out "$work/$who" --ttl 4h >/dev/null
done

# ---------------------------------------------------------------- ports
base="${BENCH_PORT_BASE:-21700}"
for _ in $(seq 100); do
  clash=0
  for i in $(seq 0 11); do port_in_use $((base + i)) && clash=1 && break; done
  ((clash)) || break
  base=$((base + 12))
done
((clash == 0)) || die "no 12 free consecutive ports from ${BENCH_PORT_BASE:-21700}"
backend_port=$base
declare -A port_a=([plain]=$base [stunnel]=$((base + 1)) [haproxy]=$((base + 3)) [ktrust]=$((base + 5))
  [ktrust-userspace]=$((base + 7)) [ktrust-resume]=$((base + 10)))
declare -A port_b=([stunnel]=$((base + 2)) [haproxy]=$((base + 4)) [ktrust]=$((base + 6))
  [ktrust-userspace]=$((base + 8)) [ktrust-resume]=$((base + 11)))
ref_port=$((base + 9))

# ---------------------------------------------------------------- handshake floor
# The cheapest an mTLS 1.3 handshake can be, from public-key operations alone.
# Per side: 1 ECDSA P-256 sign (its CertificateVerify) + 2 ECDSA P-256 verifies
# (the peer's CertificateVerify, and the peer leaf's signature by the root: the
# chain is leaf -> root, the root is a trust anchor and not re-verified)
# + 1 ECDH derive in the negotiated group (X25519, every target's first choice).
# Both sides run on this machine, so:
#   cpu_per_handshake = 2 * (1/sign_per_s + 2/verify_per_s + 1/ecdh_x25519_per_s)
#   floor per core    = 1 / cpu_per_handshake;  machine floor = nproc * that.
# Left out (so a real handshake costs more): ephemeral key generation, HKDF and
# transcript hashes, certificate parsing, syscalls. openssl speed uses one core.
log "measuring public-key speed (openssl speed, ~4 s)"
openssl speed -seconds 1 -mr ecdsap256 ecdhp256 ecdhx25519 >"$work/speed.txt" 2>/dev/null ||
  note "openssl speed failed; no handshake floor"

# References: what this OpenSSL really spends per mTLS 1.3 handshake (s_time
# client <-> s_server, same certificates, suite and group, no proxying): CPU
# of both processes / handshakes.
#   s_time.json          -new: full handshakes, no tickets.
#   s_time_resumed.json  -reuse: resumed ones (psk_dhe_ke), with the server
#                        keeping its sessions (stateful tickets: -no_ticket
#                        with a ticket count), as ktrust's server does. The
#                        client fetches a 3-byte file so that it reads the
#                        ticket; s_time re-offers the first session each time.
# s_time_reference NAME S_TIME_MODE S_SERVER_ARGS...
s_time_reference() {
  local name=$1 mode=$2 srv0 srv1 conns client_cpu pid fetch=()
  shift 2
  [[ $mode == -reuse ]] && fetch=(-www /ok.txt)
  log "measuring the OpenSSL mTLS handshake reference (openssl s_time $mode)"
  echo ok >"$work/ok.txt"
  # env -C: -WWW serves files from the working directory.
  start "$name.server" env -C "$work" openssl s_server -accept "127.0.0.1:$ref_port" -quiet \
    -tls1_3 -ciphersuites TLS_AES_128_GCM_SHA256 -groups X25519 \
    -cert "$work/server/tls.crt" -key "$work/server/tls.key" -CAfile "$work/server/ca.crt" \
    -Verify 2 -verify_return_error "$@"
  pid=$last_pid
  if wait_listening "$ref_port" "$pid"; then
    srv0=$(cpu_seconds "$pid")
    (
      openssl s_time -connect "127.0.0.1:$ref_port" "$mode" "${fetch[@]}" -time $(( quick ? 1 : 2 )) \
        -cert "$work/client/tls.crt" -key "$work/client/tls.key" -CAfile "$work/client/ca.crt" \
        -verify 2 >"$work/$name.txt" 2>&1 || true
      times >"$work/$name.times"
    )
    srv1=$(cpu_seconds "$pid")
    stop "$pid"
    conns=$(sed -n 's/^\([0-9]*\) connections in [0-9.]* real seconds.*/\1/p' "$work/$name.txt" | head -n1)
    client_cpu=$(children_cpu "$work/$name.times")
    # The server's verify callback logs each client certificate it checks:
    # one per full handshake, none for a resumed one.
    printf '{"connections": %d, "client_cpu_s": %s, "server_cpu_s": %s, "full_handshakes": %d}\n' \
      "${conns:-0}" "${client_cpu:-0}" "$(awk -v a="$srv0" -v b="$srv1" 'BEGIN{printf "%.3f", b-a}')" \
      "$(grep -c '^depth=0' "$work/$name.server.log" || true)" >"$work/$name.json"
  else
    stop "$pid"
    note "openssl s_server did not start; no $name reference"
  fi
}
s_time_reference s_time -new -www -num_tickets 0 -no_cache
s_time_reference s_time_resumed -reuse -WWW -num_tickets 1 -no_ticket

# ---------------------------------------------------------------- backend
start backend "$LOADGEN" server --listen "127.0.0.1:$backend_port"
backend_pid=$last_pid
wait_listening "$backend_port" "$backend_pid" || die "the loadgen server did not start: $(cat "$work/backend.log")"
log "backend (loadgen server) on 127.0.0.1:$backend_port, pid $backend_pid"

# ---------------------------------------------------------------- targets
# The peers send no session tickets, like ktrust (lib/common.sh).
peers_openssl_conf "$work"

tls_common_stunnel="sslVersionMin = TLSv1.3
sslVersionMax = TLSv1.3
ciphersuites = TLS_AES_128_GCM_SHA256
curves = X25519:P-256
sessionResume = no
options = NO_TICKET
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1"

# stunnel_conf SIDE WHO ACCEPT_PORT CONNECT_PORT FIRST_LINE LAST_LINE: side
# SIDE's configuration, with WHO's identity; the two lines are side-specific.
stunnel_conf() {
  cat >"$work/stunnel-$1.conf" <<EOF
foreground = yes
pid =
syslog = no
debug = 4
[$1]
$5accept = 127.0.0.1:$3
connect = 127.0.0.1:$4
cert = $work/$2/tls.crt
key = $work/$2/tls.key
CAfile = $work/$2/ca.crt
verifyChain = yes
$6$tls_common_stunnel
EOF
}

start_stunnel() {
  stunnel_conf a client "${port_a[stunnel]}" "${port_b[stunnel]}" $'client = yes\n' ""
  stunnel_conf b server "${port_b[stunnel]}" "$backend_port" "" $'requireCert = yes\n'
  start stunnel-b "${peer_env[@]}" stunnel4 "$work/stunnel-b.conf"; local pb=$last_pid
  start stunnel-a "${peer_env[@]}" stunnel4 "$work/stunnel-a.conf"; local pa=$last_pid
  target_pids[stunnel]="$pa $pb"
  target_logs[stunnel]="$work/stunnel-a.log $work/stunnel-b.log"
}

start_haproxy() {
  haproxy_pair_conf "$work" "127.0.0.1:${port_a[haproxy]}" "127.0.0.1:${port_b[haproxy]}" \
    "127.0.0.1:${port_b[haproxy]}" "127.0.0.1:$backend_port" "$work/client" "$work/server"
  start haproxy-b "${peer_env[@]}" haproxy -db -f "$work/haproxy-b.cfg"; local pb=$last_pid
  start haproxy-a "${peer_env[@]}" haproxy -db -f "$work/haproxy-a.cfg"; local pa=$last_pid
  target_pids[haproxy]="$pa $pb"
  target_logs[haproxy]="$work/haproxy-a.log $work/haproxy-b.log"
}

# The ktrust targets differ only in --data-path: auto (kernel TLS when the
# kernel has it) or userspace (OpenSSL's record layer); ktrust-resume is ktrust
# with TLS 1.3 session resumption on (--resumption) on both ends.
declare -A ktrust_data_path=([ktrust]=auto [ktrust-userspace]=userspace [ktrust-resume]=auto)
declare -A target_logs=()  # target -> "log of A, log of B" (the running pair)
# start_ktrust T [check]: the pair of target T with KTRUSTD_ARGS. With "check" it
# logs at info instead (any --log-level in KTRUSTD_ARGS is dropped), so that its
# ready line and each connection's line name the data path; that pair is only
# used by the checks, the measured one logs like the peers.
start_ktrust() {
  local t=$1 phase=${2:-measure} a=${port_a[$1]} b=${port_b[$1]} args=() user_args=() x skip_next=0
  read -ra user_args <<<"$KTRUSTD_ARGS"
  if [[ $phase == check ]]; then
    for x in "${user_args[@]}"; do
      if ((skip_next)); then skip_next=0; continue; fi
      case $x in --log-level) skip_next=1 ;; --log-level=*) ;; *) args+=("$x") ;; esac
    done
    args+=(--log-level info)
  else
    args=("${user_args[@]}")
  fi
  args+=(--data-path "${ktrust_data_path[$t]}")
  [[ $t == ktrust-resume ]] && args+=(--resumption)
  local suffix=""
  [[ $phase == check ]] && suffix=-check
  start "$t-b$suffix" "$KTRUSTD" tunnel --identity "$work/server" \
    --inbound "127.0.0.1:$b=127.0.0.1:$backend_port" --allow spiffe://bench.local/client "${args[@]}"
  local pb=$last_pid
  start "$t-a$suffix" "$KTRUSTD" tunnel --identity "$work/client" \
    --outbound "127.0.0.1:$a=127.0.0.1:$b" --expect-server spiffe://bench.local/server "${args[@]}"
  target_pids[$t]="$last_pid $pb"
  target_logs[$t]="$work/$t-a$suffix.log $work/$t-b$suffix.log"
}

# pair_echoes T WHAT: T's pair listens on both sides and carries an echo end
# to end; otherwise T fails, naming WHAT (the pair, the measured pair).
pair_echoes() {
  local t=$1 what=$2 pa pb err
  read -r pa pb <<<"${target_pids[$t]}"
  if ! wait_listening "${port_b[$t]}" "$pb" || ! wait_listening "${port_a[$t]}" "$pa"; then
    # shellcheck disable=SC2086 # a list of two files
    fail "$t" "$what did not start listening: $(tail -n 3 ${target_logs[$t]} | tr '\n' ' ')"
    return 1
  fi
  if ! err=$(timeout 20 "$LOADGEN" rr --connect "127.0.0.1:${port_a[$t]}" --count 10 2>&1 >/dev/null); then
    fail "$t" "no echo through $what: $err"
    return 1
  fi
}

declare -A negotiated=()
# check_target T: the pair carries an echo end to end, B refuses a client
# without a certificate, and B speaks TLS 1.3 with AES-128-GCM.
check_target() {
  local t=$1
  pair_echoes "$t" "the pair" || return 0
  # A client without a certificate must not reach the backend through B.
  local marker="Eno-client-cert-$RANDOM"
  if printf '%s' "$marker" | timeout 5 openssl s_client -quiet -ign_eof \
    -connect "127.0.0.1:${port_b[$t]}" -CAfile "$work/client/ca.crt" 2>/dev/null |
    grep -q "$marker"; then
    fail "$t" "proxy B let a client without a certificate through: not mTLS"
    return
  fi
  local brief
  brief=$(timeout 5 openssl s_client -brief -connect "127.0.0.1:${port_b[$t]}" \
    -cert "$work/client/tls.crt" -key "$work/client/tls.key" -CAfile "$work/client/ca.crt" \
    </dev/null 2>&1 || true)
  local proto suite group
  proto=$(sed -n 's/^Protocol version: *//p' <<<"$brief" | head -n1)
  suite=$(sed -n 's/^Ciphersuite: *//p' <<<"$brief" | head -n1)
  group=$(sed -n 's/^Server Temp Key: *//p' <<<"$brief" | head -n1)
  # Session tickets arrive before the first application byte, so after one
  # echo the client knows whether B sent any.
  local tickets
  tickets=$(timeout 10 "$PYTHON" - "${port_b[$t]}" "$work/client" <<'EOF' 2>&1 || true
import socket, ssl, sys
port, d = int(sys.argv[1]), sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False  # SVIDs carry a URI SAN, no DNS name
ctx.load_verify_locations(d + "/ca.crt")
ctx.load_cert_chain(d + "/tls.crt", d + "/tls.key")
with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5)) as s:
    s.sendall(b"E" * 64)
    got = b""
    while len(got) < 64:
        chunk = s.recv(64 - len(got))
        if not chunk:
            break
        got += chunk
    assert got == b"E" * 64, "no echo through B"
    print("yes" if s.session is not None and s.session.has_ticket else "no")
EOF
  )
  negotiated[$t]="$proto|$suite|$group|$tickets"
  note "$t: ok (B negotiates ${proto:-?} ${suite:-?} ${group:-?}, session tickets: ${tickets:-?}; refuses clients without a certificate)"
  status[$t]=ok
}

# ktrustd_paths LOG_A LOG_B: from ktrustd's JSON log lines, separated by \x1f: the
# data_path of A's and B's ready line, A's data_path_reason, and the distinct
# data_path values of A's and B's connection_closed lines.
ktrustd_paths() {
  "$PYTHON" - "$@" <<'EOF'
import json, sys
def events(path):
    for line in open(path, errors="replace"):
        if "{" in line:
            try:
                yield json.loads(line[line.index("{"):])
            except ValueError:
                pass
ready, conns, reason = [], [], ""
for path in sys.argv[1:3]:
    evs = list(events(path))
    r = [e for e in evs if e.get("event") == "ready"]
    ready.append(r[0].get("data_path", "") if r else "")
    if r and not reason:
        reason = r[0].get("data_path_reason", "")
    conns.append(",".join(sorted({e.get("data_path", "?") for e in evs
                                  if e.get("event") == "connection_closed"})))
print("\x1f".join([ready[0], ready[1], reason.replace("\n", " "), conns[0], conns[1]]))
EOF
}

# check_data_path T: what the checked pair of T said about its data path: the
# ready line of each side, and the connection_closed lines of the connections
# check_target made. A carried only the echo through the pair; B also logs the
# probes, and a probe that closes right after the handshake (s_client -brief)
# is carried by OpenSSL's record layer by design (TCP_ULP on a socket in
# CLOSE_WAIT gives ENOTCONN). ktrust-userspace must be userspace; ktrust in the
# VM must be kernel TLS. Then the checked pair makes way for the measured one,
# whose kTLS use report.py checks from /proc/net/tls_stat (--expect-ktls).
declare -A data_path=() data_path_reason=() conn_data_path=()
check_data_path() {
  local t=$1 la lb pa pb ready_a="" ready_b="" why="" conn_a="" conn_b="" deadline=$((SECONDS + 20))
  read -r la lb <<<"${target_logs[$t]}"
  read -r pa pb <<<"${target_pids[$t]}"
  # The ready lines, and the connection_closed lines of check_target's echoes.
  while ((SECONDS < deadline)); do
    grep -qF '"event":"ready"' "$la" 2>/dev/null && grep -qF '"event":"ready"' "$lb" 2>/dev/null &&
      grep -qF '"event":"connection_closed"' "$la" 2>/dev/null &&
      grep -qF '"event":"connection_closed"' "$lb" 2>/dev/null && break
    sleep 0.1
  done
  IFS=$'\x1f' read -r ready_a ready_b why conn_a conn_b <<<"$(ktrustd_paths "$la" "$lb")"
  data_path[$t]=$ready_a
  data_path_reason[$t]=$why
  conn_data_path[$t]="A ${conn_a:-none}, B ${conn_b:-none}"
  local want=""
  [[ $t == ktrust-userspace ]] && want=userspace
  [[ $t == ktrust || $t == ktrust-resume ]] && ((in_vm)) && want=ktls
  local conn_ok=0
  case $ready_a in
    ktls) [[ $conn_a =~ ^ktls-(sw|hw)(,ktls-(sw|hw))?$ && $conn_b == *ktls-* ]] && conn_ok=1 ;;
    userspace) [[ $conn_a == userspace && $conn_b == userspace ]] && conn_ok=1 ;;
  esac
  if [[ -z $ready_a || $ready_a != "$ready_b" || (-n $want && $ready_a != "$want") ]] || ((!conn_ok)); then
    fail "$t" "data path: ready says A ${ready_a:-?}, B ${ready_b:-?} (${data_path_reason[$t]:-no reason}); connections: ${conn_data_path[$t]}; wanted ${want:-the same on both sides}"
    if [[ $t == ktrust ]] && ((in_vm)); then
      die "the ktrust target did not run on kernel TLS in the VM; kTLS / userspace ratios would be meaningless (logs: $la $lb)"
    fi
    return
  fi
  note "$t: data path $ready_a (${data_path_reason[$t]}); connections: ${conn_data_path[$t]}"
  # Measure a pair that logs like the peers (KTRUSTD_ARGS), not the checked one.
  stop "$pa" "$pb"
  start_ktrust "$t"
  pair_echoes "$t" "the measured pair" || true
}

log "starting the pairs (A = 127.0.0.1:PORT_A plain in, B = mTLS in)"
wants plain && status[plain]=ok
wants stunnel && start_stunnel
wants haproxy && start_haproxy
for t in "${ktrust_targets[@]}"; do wants "$t" && start_ktrust "$t" check; done
for t in stunnel haproxy "${ktrust_targets[@]}"; do wants "$t" && check_target "$t"; done
for t in "${ktrust_targets[@]}"; do [[ ${status[$t]:-} == ok ]] && check_data_path "$t"; done

# ---------------------------------------------------------------- measurements
raw="$work/raw.jsonl"
: >"$raw"
alive() {
  local pid
  for pid in ${target_pids[$1]:-}; do kill -0 "$pid" 2>/dev/null || return 1; done
}
# Kernel TLS key installs so far (TX + RX, software and device), from
# /proc/net/tls_stat; empty where the kernel has no kTLS (the file appears when
# the tls module is loaded). Each kTLS connection through a pair adds 4.
ktls_installs() {
  [[ -r /proc/net/tls_stat ]] || return 0
  awk '$1 == "TlsTxSw" || $1 == "TlsRxSw" || $1 == "TlsTxDevice" || $1 == "TlsRxDevice" { s += $2 }
       END { print s + 0 }' /proc/net/tls_stat
}
# record T RUN KIND CPU_PROXY CPU_BACKEND SYSTEM_BUSY WALL RESULT_JSON|ERROR [KTLS_INSTALLS [DISCARDED]]
record() {
  if [[ $8 == \{* ]]; then
    printf '{"target": "%s", "run": %d, "kind": "%s", "proxy_cpu_s": %s, "backend_cpu_s": %s, "system_busy_s": %s, "wall_s": %s, "ktls_installs": %s, %s"result": %s}\n' \
      "$1" "$2" "$3" "$4" "$5" "$6" "$7" "${9:-null}" \
      "$([[ -n ${10:-} ]] && printf '"discarded": "%s", ' "${10}")" "$8" >>"$raw"
  else
    "$PYTHON" -c 'import json,sys; print(json.dumps({"target": sys.argv[1], "run": int(sys.argv[2]), "kind": sys.argv[3], "error": sys.argv[4]}))' \
      "$1" "$2" "$3" "$8" >>"$raw"
    note "$1 run $2 $3: ERROR: $8"
  fi
}
# delta A B [DIVISOR]: (B - A) / DIVISOR with 3 decimals.
delta() { awk -v a="$1" -v b="$2" -v d="${3:-1}" 'BEGIN { printf "%.3f", (b - a) / d }'; }
# Others' load: a measurement during which other processes used more than 10%
# of the machine is discarded (kept in the JSON, marked) and repeated once the
# machine has had a quiet second, up to BENCH_RETRIES times (default 3). Not in
# the VM, where nothing else runs and the script's own helpers would trip it.
retries="${BENCH_RETRIES:-3}"
((in_vm)) && retries=0
nproc_=$(nproc)
# foreign_share BUSY_S WALL_S OURS_S: the share of the machine others used.
foreign_share() {
  awk -v b="$1" -v w="$2" -v o="$3" -v n="$nproc_" 'BEGIN {
    f = (b - o) / (w * n); printf "%.3f", (f < 0 ? 0 : f) }'
}
# wait_quiet_second: until a whole second passes with less than 10% of the
# machine busy (our proxies and backend idle between measurements), 60 s at most.
wait_quiet_second() {
  local a b _ deadline=$((SECONDS + 60))
  while ((SECONDS < deadline)); do
    read -r a _ <<<"$(sys_cpu)"
    sleep 1
    read -r b _ <<<"$(sys_cpu)"
    awk -v a="$a" -v b="$b" -v hz="$clk_tck" -v n="$nproc_" 'BEGIN { exit !((b - a) / hz < 0.1 * n) }' &&
      return 0
  done
  note "the machine did not get quiet within 60 s; measuring anyway"
}
repeated=0
# measure T RUN KIND LOADGEN-ARGS...: one loadgen run with the CPU of T's proxies
# around it, repeated while others took more than 10% of the machine.
measure() {
  local attempt
  for ((attempt = 0; ; attempt++)); do
    measure_once "$attempt" "$@" && return 0
    repeated=$((repeated + 1))
    wait_quiet_second
  done
}
# measure_once ATTEMPT T RUN KIND ARGS...: 1 if the result was discarded (noisy).
measure_once() {
  local attempt=$1 t=$2 r=$3 kind=$4; shift 4
  local limit=$((conn_seconds + 60))
  [[ $kind == throughput ]] && limit=300
  local c0 b0 c1 b1 s0 s1 w0 w1 k0 k1 res proxies _ busy wall ours client share discard=""
  read -ra proxies <<<"${target_pids[$t]:-}"
  k0=$(ktls_installs)
  c0=$(cpu_seconds "${proxies[@]}") b0=$(cpu_seconds "$backend_pid")
  read -r s0 _ <<<"$(sys_cpu)"
  w0=$(date +%s.%N)
  if res=$(timeout "$limit" "$LOADGEN" "$kind" --connect "127.0.0.1:${port_a[$t]}" "$@" 2>&1); then
    w1=$(date +%s.%N)
    read -r s1 _ <<<"$(sys_cpu)"
    c1=$(cpu_seconds "${proxies[@]}") b1=$(cpu_seconds "$backend_pid")
    k1=$(ktls_installs)
    busy=$(delta "$s0" "$s1" "$clk_tck") wall=$(delta "$w0" "$w1")
    client=$(sed -n 's/.*"client_cpu_s": *\([0-9.]*\).*/\1/p' <<<"$res")
    ours=$(awk -v a="$(delta "$c0" "$c1")" -v b="$(delta "$b0" "$b1")" -v c="${client:-0}" \
      'BEGIN { printf "%.3f", a + b + c }')
    share=$(foreign_share "$busy" "$wall" "$ours")
    # /proc/stat counts 10 ms ticks: too coarse below a second of machine time.
    if ((attempt < retries)) && awk -v s="$share" -v w="$wall" -v n="$nproc_" \
      'BEGIN { exit !(w * n >= 1 && s > 0.10) }'; then
      discard="others used $(awk -v s="$share" 'BEGIN { printf "%.0f", 100 * s }')% of the CPU"
      note "$t run $r $kind: $discard; repeating it"
    fi
    record "$t" "$r" "$kind" "$(delta "$c0" "$c1")" "$(delta "$b0" "$b1")" "$busy" "$wall" "$res" \
      "$([[ -n $k0 && -n $k1 ]] && echo $((k1 - k0)))" "$discard"
    [[ -z $discard ]]
  else
    record "$t" "$r" "$kind" 0 0 0 0 "loadgen $kind failed: ${res:-timed out}"
  fi
}

# Whole-machine CPU around the measurements: what our processes did not use
# was used by someone else, and that makes the numbers noisy.
read -r sys_busy0 sys_steal0 <<<"$(sys_cpu)"
loadavg_before=$(cut -d' ' -f1-3 /proc/loadavg)
measure_start=$(date +%s.%N)
log "measuring: $runs run(s); throughput $((bytes >> 20)) MiB, rr $rr_count x 64 B, connrate ${conn_seconds}s at concurrency $concurrency"
# The order rotates from run to run, so no target always follows the same one.
measured=()
for t in "${all_targets[@]}"; do [[ ${status[$t]:-} == ok ]] && measured+=("$t"); done
for ((r = 1; r <= runs; r++)); do
  for ((i = 0; i < ${#measured[@]}; i++)); do
    t=${measured[(i + r - 1) % ${#measured[@]}]}
    [[ ${status[$t]:-} == ok ]] || continue
    if ! alive "$t"; then fail "$t" "a proxy process died (logs in $work)"; continue; fi
    measure "$t" "$r" throughput --bytes "$bytes"
    measure "$t" "$r" rr --count "$rr_count" --size 64
    measure "$t" "$r" connrate --concurrency "$concurrency" --seconds "$conn_seconds" --size 64
    note "run $r/$runs: $t done"
  done
done

read -r sys_busy1 sys_steal1 <<<"$(sys_cpu)"
measure_end=$(date +%s.%N)

# ---------------------------------------------------------------- report
meta="$work/meta.json"
jstr() { "$PYTHON" -c 'import json, sys; print(json.dumps(sys.argv[1]), end="")' "$1"; }
{
  printf '{\n'
  printf '"started": "%s", "duration_s": %d, "mode": "%s", "in_vm": %s,\n' "$started_at" $((SECONDS - t_start)) \
    "$( ((quick)) && echo quick || echo full)" "$( ((in_vm)) && echo true || echo false)"
  printf '"params": {"runs": %d, "throughput_bytes": %d, "rr_count": %d, "rr_size": 64, "connrate_seconds": %d, "connrate_concurrency": %d, "connrate_size": 64, "retries": %d, "repeated": %d},\n' \
    "$runs" "$bytes" "$rr_count" "$conn_seconds" "$concurrency" "$retries" "$repeated"
  printf '"machine": {"nproc": %d, "kernel": %s, "cpu": %s, "openssl": %s, "stunnel": %s, "haproxy": %s, "ktrustd": %s, "ktrustd_sha256": %s, "git": %s},\n' \
    "$(nproc)" "$(jstr "$(uname -r)")" \
    "$(jstr "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)")" \
    "$(jstr "$(openssl version)")" \
    "$(jstr "$(stunnel4 -version 2>&1 | sed -n 's/^\(stunnel [0-9.]*\).*/\1/p' | head -n1)")" \
    "$(jstr "$(haproxy -v 2>/dev/null | sed -n 's/^HAProxy version \([^ ]*\).*/\1/p' | head -n1)")" \
    "$(jstr "$([[ -x $KTRUSTD ]] && echo "$KTRUSTD" || echo absent)")" \
    "$(jstr "$ktrustd_sha")" \
    "$(jstr "$(git -C "$repo" describe --always --dirty 2>/dev/null || true)")"
  printf '"system_cpu": {"wall_s": %s, "busy_s": %s, "steal_s": %s, "loadavg_before": %s},\n' \
    "$(awk -v a="$measure_start" -v b="$measure_end" 'BEGIN{printf "%.3f", b-a}')" \
    "$(awk -v a="$sys_busy0" -v b="$sys_busy1" -v hz="$clk_tck" 'BEGIN{printf "%.3f", (b-a)/hz}')" \
    "$(awk -v a="$sys_steal0" -v b="$sys_steal1" -v hz="$clk_tck" 'BEGIN{printf "%.3f", (b-a)/hz}')" \
    "$(jstr "$loadavg_before")"
  printf '"ports": {"backend": %d' "$backend_port"
  for t in stunnel haproxy "${ktrust_targets[@]}"; do
    printf ', "%s": [%d, %d]' "$t" "${port_a[$t]}" "${port_b[$t]}"
  done
  printf '},\n"targets": {'
  sep=""
  for t in "${all_targets[@]}"; do
    [[ -n ${status[$t]:-} ]] || continue
    IFS='|' read -r proto suite group tickets <<<"${negotiated[$t]:-|||}"
    printf '%s"%s": {"status": %s, "reason": %s, "protocol": %s, "ciphersuite": %s, "key_exchange": %s, "session_tickets": %s' \
      "$sep" "$t" "$(jstr "${status[$t]}")" "$(jstr "${reason[$t]:-}")" "$(jstr "$proto")" \
      "$(jstr "$suite")" "$(jstr "$group")" "$(jstr "$tickets")"
    if [[ -n ${ktrust_data_path[$t]:-} ]]; then
      printf ', "data_path_flag": %s, "data_path": %s, "data_path_reason": %s, "connection_data_path": %s' \
        "$(jstr "${ktrust_data_path[$t]}")" "$(jstr "${data_path[$t]:-}")" \
        "$(jstr "${data_path_reason[$t]:-}")" "$(jstr "${conn_data_path[$t]:-}")"
    fi
    printf '}'
    sep=", "
  done
  printf '}\n}\n'
} >"$meta"

report_args=()
((in_vm)) && report_args+=(--expect-ktls)
report_rc=0
"$PYTHON" -B "$here/report.py" --meta "$meta" --raw "$raw" --speed "$work/speed.txt" \
  --s-time "$work/s_time.json" \
  --s-time-resumed "$work/s_time_resumed.json" --work "$work" --out "$out" "${report_args[@]}" || report_rc=$?
log "wrote $out"
((report_rc != 3)) || die "kernel TLS was not used as expected while measuring (see ERROR above)"
((report_rc == 0)) || die "report.py failed (exit $report_rc)"
