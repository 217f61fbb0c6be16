#!/usr/bin/env bash
# What an idle connection costs the engines, and whether they give the memory
# back: a ktrustd tunnel pair (userspace record layer unless --data-path auto
# finds kernel TLS) on 127.0.0.1 carries waves of idle echo connections from
# `loadgen idle`, which reports both engines' RSS before, while idle, after
# one more echo on every connection, and for --settle seconds after the wave
# closed. With --baseline, the same waves run first through a pair of that
# ktrustd (an older build, say), and each figure is also given as a ratio to
# it: before and after in one run. See tools/bench/README.md, "idle".
#
#   tools/bench/run.sh idle [--quick] [--connections N] [--waves W] [--hold S]
#                           [--settle S] [--data-path auto|userspace]
#                           [--baseline KTRUSTD] [--out FILE] [--keep]
#
# Defaults: 5000 connections, 2 waves, 5 s idle, 10 s to settle, userspace.
# --quick: 500 connections, 1 wave, 2 s idle. Each engine holds two
# descriptors per connection: the hard limit is raised to fit where that is
# allowed (root with CAP_SYS_RESOURCE), else the run stops and says so.
# Where /proc/net/tls_stat exists, the run checks that every connection took
# the data path asked for (kernel TLS on both engines' wire sockets, or none).
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

connections=5000 waves=2 hold=5 settle=10 data_path=userspace baseline="" out=""
while (($#)); do
  mode_option "$@"
  if ((taken)); then shift "$taken"; continue; fi
  case $1 in
    --quick) connections=500 waves=1 hold=2; shift; continue ;;
    --connections | --waves | --hold | --settle | --data-path | --baseline)
      [[ $# -ge 2 ]] || die "$1 needs a value (see --help)" ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  case $1 in
    --connections) connections=$2 ;;
    --waves) waves=$2 ;;
    --hold) hold=$2 ;;
    --settle) settle=$2 ;;
    --data-path) data_path=$2 ;;
    --baseline) baseline=$2 ;;
  esac
  shift 2
done
out=$(result_path "$out" idle.json)

new_work ktrust-idle
built LOADGEN loadgen "$work/loadgen"
built KTRUST ktrust
built KTRUSTD ktrustd
[[ -z $baseline || -x $baseline ]] || die "--baseline $baseline is not an executable"

# Each engine holds two descriptors per connection, the backend and loadgen
# one. On the kTLS path an engine from before the per-loop pipe pool held six
# (two pipes per connection), and a run may measure one as its baseline.
per_connection=2
[[ $data_path == userspace ]] || per_connection=6
need=$((per_connection * connections + 256))
if (($(ulimit -Hn) < need)); then
  ulimit -Hn "$need" 2>/dev/null ||
    die "$connections connections need $need descriptors per engine; the hard limit is $(ulimit -Hn) and cannot be raised here (fewer --connections)"
fi
ulimit -Sn "$(ulimit -Hn)"

log "minting certificates in $work (ktrust ca init / ca issue)"
"$KTRUST" ca init --trust-domain bench.local --dir "$work/ca" >/dev/null
for who in client server; do
  "$KTRUST" ca issue --ca-dir "$work/ca" --id "spiffe://bench.local/$who" \
    --out "$work/$who" --ttl 4h >/dev/null
done

base="${BENCH_PORT_BASE:-21800}"
while port_in_use "$base" || port_in_use $((base + 1)) || port_in_use $((base + 2)); do
  base=$((base + 3))
done
backend=$base a=$((base + 1)) b=$((base + 2))
start backend "$LOADGEN" server --listen "127.0.0.1:$backend"
wait_listening "$backend" "$last_pid" || die "the loadgen server did not start: $(cat "$work/backend.log")"

# Sockets given kernel TLS so far in this network namespace (TX RX), or
# nothing without kernel TLS.
ktls_installs() {
  [[ -r /proc/net/tls_stat ]] || return 0
  awk '$1 == "TlsTxSw" || $1 == "TlsTxDevice" { tx += $2 } $1 == "TlsRxSw" || $1 == "TlsRxDevice" { rx += $2 } END { print tx, rx }' /proc/net/tls_stat
}

# measure NAME KTRUSTD: the waves through a fresh pair of that ktrustd, into
# $work/NAME.json.
measure() {
  local name=$1 engine=$2 pa pb before after
  start "$name-b" "$engine" tunnel --identity "$work/server" --data-path "$data_path" --log-level warn \
    --inbound "127.0.0.1:$b=127.0.0.1:$backend" --allow spiffe://bench.local/client
  pb=$last_pid
  start "$name-a" "$engine" tunnel --identity "$work/client" --data-path "$data_path" --log-level warn \
    --outbound "127.0.0.1:$a=127.0.0.1:$b" --expect-server spiffe://bench.local/server
  pa=$last_pid
  wait_listening "$b" "$pb" || die "engine B did not start: $(tail -n 3 "$work/$name-b.log")"
  wait_listening "$a" "$pa" || die "engine A did not start: $(tail -n 3 "$work/$name-a.log")"
  before=$(ktls_installs)
  log "$name: $connections connections x $waves waves through A (pid $pa) and B (pid $pb), $engine, data path $data_path"
  "$LOADGEN" idle --connect "127.0.0.1:$a" --connections "$connections" --waves "$waves" \
    --hold "$hold" --settle "$settle" --watch "$pa,$pb" >"$work/$name.json"
  after=$(ktls_installs)
  stop "$pa" "$pb"
  # Both engines' wire sockets: two per connection on kernel TLS.
  local want=0 tx=0 rx=0 tx0 rx0 tx1 rx1
  [[ $data_path == userspace ]] || want=$((2 * connections * waves))
  if [[ -n $before ]]; then
    read -r tx0 rx0 <<<"$before"
    read -r tx1 rx1 <<<"$after"
    tx=$((tx1 - tx0)) rx=$((rx1 - rx0))
    note "$name: kernel TLS installed on $tx sockets for TX and $rx for RX (want $want each)"
    ((tx == want && rx == want)) || die "$name: not every connection took the data path $data_path"
  elif [[ $data_path != userspace ]]; then
    note "$name: no /proc/net/tls_stat: this kernel has no kernel TLS, the engines ran on userspace TLS"
  fi
  printf '{"ktls_tx": %d, "ktls_rx": %d}\n' "$tx" "$rx" >"$work/$name.path.json"
}

[[ -z $baseline ]] || measure baseline "$baseline"
measure result "$KTRUSTD"

"$PYTHON" - "$work" "$out" "$connections" "$KTRUSTD" "$baseline" "$data_path" \
  "$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'PY'
import hashlib, json, sys
work, out, n, ktrustd, baseline, data_path, git = sys.argv[1:]
n = int(n)
engines = ["A (outbound)", "B (inbound)"]

def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()[:16]

def load(name, binary):
    r = json.load(open(f"{work}/{name}.json"))
    r.update(json.load(open(f"{work}/{name}.path.json")))
    r.update(ktrustd=binary, ktrustd_sha256=sha(binary), data_path=data_path)
    for wave in r["waves"]:
        wave["per_idle_connection_kib"] = [
            round((wave["idle_kib"][e] - r["baseline_kib"][e]) / n, 2) for e in range(2)]
    return r

def report(label, r):
    for w, wave in enumerate(r["waves"]):
        for e, name in enumerate(engines):
            base = r["baseline_kib"][e]
            echo = (wave["after_echo_kib"][e] - base) / n
            print(f"{label}wave {w + 1}, {name}: {wave['per_idle_connection_kib'][e]:.1f} KiB per idle "
                  f"connection ({echo:.1f} after one more echo); RSS {base} KiB before, "
                  f"{wave['settled_kib'][e]} KiB after the wave "
                  f"({wave['settled_kib'][e] / base:.2f}x)")
        print(f"{label}wave {w + 1}: back within 2x of the baseline after {wave['back_within_2x_s']} s "
              f"(-1: not within the settle time); opened in {wave['open_s']} s")

r = load("result", ktrustd)
r.update(git=git, engines=engines)
if baseline:
    b = load("baseline", baseline)
    r["baseline_run"] = b
    report("baseline: ", b)
report("", r)
if baseline:
    r["per_idle_connection_vs_baseline"] = []
    for w, (wave, bwave) in enumerate(zip(r["waves"], b["waves"])):
        ratios = [round(wave["per_idle_connection_kib"][e] / bwave["per_idle_connection_kib"][e], 2)
                  if bwave["per_idle_connection_kib"][e] > 0 else None for e in range(2)]
        r["per_idle_connection_vs_baseline"].append(ratios)
        print(f"wave {w + 1}: RSS per idle connection / baseline's: A {ratios[0]}, B {ratios[1]}")
json.dump(r, open(out, "w"), indent=1)
PY
log "result: $out"
