#!/usr/bin/env bash
# The benchmarks that need kernel TLS, inside the kTLS VM (tests/vm), with
# sizes for TCG, in one boot. See tools/bench/README.md, "vm".
#   loopback  plain, ktrust and ktrust-userspace tunnels on 127.0.0.1: the
#             kTLS / userspace ratios (`loopback.sh --vm-guest`)
#   zero-hop  two simulated nodes with real agents: plain, proxy-userspace,
#             proxy-ktls and zero-hop, zero-hop's ratios and the issue's
#             targets (`zerohop.sh --vm-guest`)
#   idle      (only when asked for) RSS per idle connection on the kTLS path
#             (`idle.sh --data-path auto`), with --connections, --waves and
#             --baseline KTRUSTD passed on; `all` does not include it
#
#   tools/bench/run.sh vm [--quick] [--suite all|loopback|zero-hop|idle] [--out FILE]
#                         [--runs N] [--targets LIST] [--keep]
#                         [--connections N] [--waves W] [--baseline KTRUSTD]
#
# The guest sees the host's / read-only, so the binaries come from the host
# build tree; it writes the JSON to $KTRUST_VM_OUT, which tests/vm/run.sh
# copies back: the loopback result to FILE (default ktrust-bench-vm.json), the
# zero-hop one to FILE's name with -zerohop before .json, the idle one with
# -idle. --targets applies to
# loopback only; --keep copies the guest's work directories to FILE.work.
#
# Environment: as loopback.sh (KTRUSTD, KTRUSTD_ARGS, KTRUST, LOADGEN,
# BENCH_PORT_BASE, BENCH_CONCURRENCY), and KTRUST_VM_CACHE (default
# /var/cache/ktrust-vm), KTRUST_VM_TIMEOUT (default 900 s loopback, 1800 s zero-hop,
# 2400 s both).
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
KTRUSTD_ARGS="${KTRUSTD_ARGS---log-level warn}"

guest_args=(--vm-guest)
loopback_args=()
idle_args=()
keep_guest=0
out=""
suite=all
while (($#)); do
  case "$1" in
    --quick | --keep)
      guest_args+=("$1")
      [[ $1 == --keep ]] && keep_guest=1
      [[ $1 == --quick ]] && idle_args+=("$1") ;;
    --runs)
      [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "$prog: --runs wants a positive number" >&2; exit 2; }
      guest_args+=("$1" "$2"); shift ;;
    --targets) loopback_args+=("$1" "$2"); shift ;;
    --connections | --waves | --baseline)
      [[ -n ${2:-} ]] || { echo "$prog: $1 needs a value" >&2; exit 2; }
      idle_args+=("$1" "$2"); shift ;;
    --suite)
      [[ ${2:-} =~ ^(all|loopback|zero-hop|idle)$ ]] || { echo "$prog: --suite is all, loopback, zero-hop or idle" >&2; exit 2; }
      suite=$2; shift ;;
    --out) out=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "$prog: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
out=$(result_path "$out" ktrust-bench-vm.json)
out_zh="${out%.json}-zerohop.json"
out_idle="${out%.json}-idle.json"
vm_cache="${KTRUST_VM_CACHE:-/var/cache/ktrust-vm}"
declare -A suite_timeout=([loopback]=900 [zero-hop]=1800 [all]=2400 [idle]=900)
vm_timeout="${KTRUST_VM_TIMEOUT:-${suite_timeout[$suite]}}"
[[ -x $repo/tests/vm/run.sh ]] || die "no tests/vm/run.sh in $repo"

# Build what the guest needs now: it cannot build (read-only /, and TCG is slow).
built KTRUST ktrust
built LOADGEN loadgen "$LOADGEN"
[[ -x $KTRUSTD ]] || die "no engine binary at $KTRUSTD (set KTRUSTD=/path/to/ktrustd)"
baseline_engine=""
for ((i = 0; i < ${#idle_args[@]}; i++)); do
  [[ ${idle_args[i]} == --baseline ]] && baseline_engine=${idle_args[i + 1]}
done
for f in "$KTRUSTD" "$KTRUST" "$LOADGEN" "$here/loopback.sh" "$here/zerohop.sh" "$here/idle.sh" $baseline_engine; do
  case $(realpath "$f") in
    /tmp/* | /run/* | /dev/shm/*) die "$f is not visible in the VM (its /tmp, /run and /dev/shm are its own)" ;;
  esac
done
log "preparing the VM ($repo/tests/vm/prepare.sh $vm_cache)"
"$repo/tests/vm/prepare.sh" "$vm_cache" >/dev/null || die "tests/vm/prepare.sh $vm_cache failed"
new_work ktrust-bench-vm # receives the guest's output; always removed
export KTRUSTD KTRUSTD_ARGS KTRUST LOADGEN BENCH_CONCURRENCY="${BENCH_CONCURRENCY:-8}" \
  BENCH_PORT_BASE="${BENCH_PORT_BASE:-21700}"

# TCG needs the whole host: anything else running makes the guest slow and noisy.
host_load=$(cut -d' ' -f1-3 /proc/loadavg)
if pgrep -f '^qemu-system' >/dev/null 2>&1; then
  note "WARNING: another qemu is running on this host; the VM numbers will be noisy"
fi
read -r h_busy0 h_steal0 <<<"$(sys_cpu)"
h_t0=$(date +%s.%N)
log "running the benchmark in the VM (host load average $host_load; timeout $vm_timeout s)"
# The guest runs the suites in turn; a failed one does not stop the next.
# shellcheck disable=SC2016 # expanded by the guest's bash
guest=(bash -c 'rc=0
  for s in $0; do
    case $s in
      loopback) "$1/loopback.sh" --out "$KTRUST_VM_OUT/ktrust-bench.json" "${@:2}" $KT_LOOPBACK_ARGS || rc=$? ;;
      zero-hop) "$1/zerohop.sh" --out "$KTRUST_VM_OUT/ktrust-bench-zerohop.json" "${@:2}" || rc=$? ;;
      idle) "$1/idle.sh" --data-path auto --out "$KTRUST_VM_OUT/ktrust-bench-idle.json" $KT_IDLE_ARGS || rc=$? ;;
    esac
  done
  exit $rc' "$([[ $suite == all ]] && echo "loopback zero-hop" || echo "$suite")" "$here" "${guest_args[@]}")
rc=0
(
  KT_LOOPBACK_ARGS="${loopback_args[*]}" KT_IDLE_ARGS="${idle_args[*]}" KTRUST_VM_TIMEOUT="$vm_timeout" KTRUST_VM_OUTDIR="$work" \
    KTRUST_VM_PASSENV="KTRUSTD KTRUSTD_ARGS KTRUST LOADGEN BENCH_CONCURRENCY BENCH_PERF BENCH_PORT_BASE KT_LOOPBACK_ARGS KT_IDLE_ARGS" \
    "$repo/tests/vm/run.sh" "$vm_cache" -- "${guest[@]}"
  rc=$?
  times >"$work/host.times" # line 2: CPU of this subshell's children, i.e. qemu
  exit "$rc"
) || rc=$?
h_t1=$(date +%s.%N)
read -r h_busy1 h_steal1 <<<"$(sys_cpu)"
for d in work zerohop-work; do
  if ((keep_guest)) && [[ -d $work/$d ]]; then cp -a "$work/$d" "$out.$d" && log "kept the guest's files in $out.$d"; fi
done
qemu_cpu=$(children_cpu "$work/host.times")
results=()
[[ $suite != zero-hop && -s $work/ktrust-bench.json ]] && results+=("$work/ktrust-bench.json" "$out")
[[ ($suite == all || $suite == zero-hop) && -s $work/ktrust-bench-zerohop.json ]] && results+=("$work/ktrust-bench-zerohop.json" "$out_zh")
[[ $suite == idle && -s $work/ktrust-bench-idle.json ]] && results+=("$work/ktrust-bench-idle.json" "$out_idle")
((${#results[@]})) || die "the VM wrote no result (exit $rc; 124 = KTRUST_VM_TIMEOUT hit)"

# The guest's results, with a host section: was the host quiet while the VM ran?
"$PYTHON" -B - "$(nproc)" "$(uname -r)" "$host_load" \
  "$h_t0" "$h_t1" "$h_busy0" "$h_busy1" "$h_steal0" "$h_steal1" "$clk_tck" "${qemu_cpu:-0}" \
  "$vm_timeout" "$vm_cache" "${results[@]}" <<'PY'
import json, sys
nproc, kernel, load, t0, t1, b0, b1, s0, s1, hz, qemu, timeout, cache = sys.argv[1:14]
files = sys.argv[14:]
wall, hz, nproc = float(t1) - float(t0), float(hz), int(nproc)
busy, steal = (float(b1) - float(b0)) / hz, (float(s1) - float(s0)) / hz
foreign = max(0.0, busy - float(qemu))
h = {"nproc": nproc, "kernel": kernel, "loadavg_before": load, "vm_wall_s": round(wall, 1),
     "busy_s": round(busy, 1), "qemu_cpu_s": float(qemu), "foreign_s": round(foreign, 1),
     "foreign_fraction": round(foreign / (wall * nproc), 3),
     "steal_fraction": round(steal / (wall * nproc), 3),
     "vm": f"tests/vm/run.sh {cache} (KTRUST_VM_TIMEOUT={timeout})"}
for src, dst in zip(files[::2], files[1::2]):
    r = json.load(open(src))
    r["host"] = h
    json.dump(r, open(dst, "w"), indent=2)
    print(f"wrote {dst}")
print(f"host during the VM run: load average before {load}; qemu used {h['qemu_cpu_s']:.0f} s CPU in "
      f"{wall:.0f} s; other processes used {100 * h['foreign_fraction']:.0f}% of the host CPU")
if h["foreign_fraction"] > 0.10 or h["steal_fraction"] > 0.05:
    print("  WARNING: the host was not quiet during the VM run; the ratios are noisy")
PY
((rc == 0)) || die "the benchmark in the VM failed (exit $rc; 124 = KTRUST_VM_TIMEOUT hit)"
