#!/usr/bin/env bash
# What an idle connection costs the engines, and whether they give the memory
# back: a ktrustd tunnel pair (userspace record layer unless --data-path auto
# finds kernel TLS) on 127.0.0.1 carries waves of idle echo connections from
# `loadgen idle`, which reports both engines' RSS before, while idle, after
# one more echo on every connection, and for --settle seconds after the wave
# closed. See tools/bench/README.md, "idle".
#
#   tools/bench/run.sh idle [--quick] [--connections N] [--waves W] [--hold S]
#                           [--settle S] [--data-path auto|userspace] [--out FILE] [--keep]
#
# Defaults: 5000 connections, 2 waves, 5 s idle, 10 s to settle, userspace.
# --quick: 500 connections, 1 wave, 2 s idle. Each engine holds two
# descriptors per connection: the hard limit is raised to fit where that is
# allowed (root with CAP_SYS_RESOURCE), else the run stops and says so.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

connections=5000 waves=2 hold=5 settle=10 data_path=userspace out=""
while (($#)); do
  mode_option "$@"
  if ((taken)); then shift "$taken"; continue; fi
  case $1 in
    --quick) connections=500 waves=1 hold=2; shift; continue ;;
    --connections | --waves | --hold | --settle | --data-path)
      [[ $# -ge 2 ]] || die "$1 needs a value (see --help)" ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  case $1 in
    --connections) connections=$2 ;;
    --waves) waves=$2 ;;
    --hold) hold=$2 ;;
    --settle) settle=$2 ;;
    --data-path) data_path=$2 ;;
  esac
  shift 2
done
out=$(result_path "$out" idle.json)

new_work ktrust-idle
built LOADGEN loadgen "$work/loadgen"
built KTRUST ktrust
built KTRUSTD ktrustd

# Each engine holds two descriptors per connection, the backend and loadgen one.
need=$((2 * connections + 256))
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
start b "$KTRUSTD" tunnel --identity "$work/server" --data-path "$data_path" --log-level warn \
  --inbound "127.0.0.1:$b=127.0.0.1:$backend" --allow spiffe://bench.local/client
pb=$last_pid
start a "$KTRUSTD" tunnel --identity "$work/client" --data-path "$data_path" --log-level warn \
  --outbound "127.0.0.1:$a=127.0.0.1:$b" --expect-server spiffe://bench.local/server
pa=$last_pid
wait_listening "$b" "$pb" || die "engine B did not start: $(tail -n 3 "$work/b.log")"
wait_listening "$a" "$pa" || die "engine A did not start: $(tail -n 3 "$work/a.log")"

log "$connections connections x $waves waves through A (pid $pa) and B (pid $pb), data path $data_path"
"$LOADGEN" idle --connect "127.0.0.1:$a" --connections "$connections" --waves "$waves" \
  --hold "$hold" --settle "$settle" --watch "$pa,$pb" >"$work/idle.json"
"$PYTHON" - "$work/idle.json" "$out" "$connections" "$(sha256sum "$KTRUSTD" | cut -c1-16)" \
  "$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n = int(sys.argv[3])
r.update(ktrustd_sha256=sys.argv[4], git=sys.argv[5], engines=["A (outbound)", "B (inbound)"])
for w, wave in enumerate(r["waves"]):
    for e, name in enumerate(r["engines"]):
        base = r["baseline_kib"][e]
        idle = (wave["idle_kib"][e] - base) / n
        echo = (wave["after_echo_kib"][e] - base) / n
        print(f"wave {w + 1}, {name}: {idle:.1f} KiB per idle connection "
              f"({echo:.1f} after one more echo); RSS {base} KiB before, "
              f"{wave['settled_kib'][e]} KiB after the wave "
              f"({wave['settled_kib'][e] / base:.2f}x)")
    print(f"wave {w + 1}: back within 2x of the baseline after {wave['back_within_2x_s']} s "
          f"(-1: not within the settle time); opened in {wave['open_s']} s")
json.dump(r, open(sys.argv[2], "w"), indent=1)
PY
log "result: $out"
