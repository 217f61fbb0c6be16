#!/usr/bin/env bash
# The loopback benchmark inside the kTLS VM (tests/vm): plain, ktrust and
# ktrust-userspace with sizes for TCG, and the kTLS / userspace ratios of that
# one run. See tools/bench/README.md, "vm".
#
#   tools/bench/run.sh vm [--quick] [--out FILE] [--runs N] [--targets LIST] [--keep]
#
# Boots the VM (tests/vm/run.sh) and runs `loopback.sh --vm-guest` there. The
# guest sees the host's / read-only, so the binaries come from the host build
# tree; it writes the JSON to $KTRUST_VM_OUT, which tests/vm/run.sh copies back.
# --keep copies the guest's work directory to FILE.work.
#
# Environment: as loopback.sh (KTRUSTD, KTRUSTD_ARGS, KTRUST, LOADGEN,
# BENCH_PORT_BASE, BENCH_CONCURRENCY), and KTRUST_VM_CACHE (default
# /var/cache/ktrust-vm), KTRUST_VM_TIMEOUT (default 900 s).
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
KTRUSTD_ARGS="${KTRUSTD_ARGS---log-level warn}"

guest_args=(--vm-guest --out /run/ktrust-vm/out/ktrust-bench.json)
keep_guest=0
out=""
while (($#)); do
  case "$1" in
    --quick | --keep) guest_args+=("$1"); [[ $1 == --keep ]] && keep_guest=1 ;;
    --runs | --targets)
      [[ $1 == --targets || ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "$prog: --runs wants a positive number" >&2; exit 2; }
      guest_args+=("$1" "$2"); shift ;;
    --out) out=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "$prog: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
out=$(result_path "$out" ktrust-bench-vm.json)
vm_cache="${KTRUST_VM_CACHE:-/var/cache/ktrust-vm}"
vm_timeout="${KTRUST_VM_TIMEOUT:-900}"
[[ -x $repo/tests/vm/run.sh ]] || die "no tests/vm/run.sh in $repo"

# Build what the guest needs now: it cannot build (read-only /, and TCG is slow).
built KTRUST ktrust
built LOADGEN loadgen "$LOADGEN"
[[ -x $KTRUSTD ]] || die "no engine binary at $KTRUSTD (set KTRUSTD=/path/to/ktrustd)"
for f in "$KTRUSTD" "$KTRUST" "$LOADGEN" "$here/loopback.sh"; do
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
rc=0
(
  KTRUST_VM_TIMEOUT="$vm_timeout" KTRUST_VM_OUTDIR="$work" \
    KTRUST_VM_PASSENV="KTRUSTD KTRUSTD_ARGS KTRUST LOADGEN BENCH_CONCURRENCY BENCH_PORT_BASE" \
    "$repo/tests/vm/run.sh" "$vm_cache" -- "$here/loopback.sh" "${guest_args[@]}"
  rc=$?
  times >"$work/host.times" # line 2: CPU of this subshell's children, i.e. qemu
  exit "$rc"
) || rc=$?
h_t1=$(date +%s.%N)
read -r h_busy1 h_steal1 <<<"$(sys_cpu)"
((rc == 0)) || die "the benchmark in the VM failed (exit $rc; 124 = KTRUST_VM_TIMEOUT hit)"
[[ -s $work/ktrust-bench.json ]] || die "the VM wrote no result"
((keep_guest)) && [[ -d $work/work ]] && cp -a "$work/work" "$out.work" && log "kept the guest's files in $out.work"
qemu_cpu=$(children_cpu "$work/host.times")

# The guest's result, with a host section: was the host quiet while the VM ran?
"$PYTHON" -B - "$work/ktrust-bench.json" "$out" "$(nproc)" "$(uname -r)" "$host_load" \
  "$h_t0" "$h_t1" "$h_busy0" "$h_busy1" "$h_steal0" "$h_steal1" "$clk_tck" "${qemu_cpu:-0}" \
  "$vm_timeout" "$vm_cache" <<'PY'
import json, sys
src, dst, nproc, kernel, load, t0, t1, b0, b1, s0, s1, hz, qemu, timeout, cache = sys.argv[1:]
r = json.load(open(src))
wall, hz, nproc = float(t1) - float(t0), float(hz), int(nproc)
busy, steal = (float(b1) - float(b0)) / hz, (float(s1) - float(s0)) / hz
foreign = max(0.0, busy - float(qemu))
r["host"] = {"nproc": nproc, "kernel": kernel, "loadavg_before": load, "vm_wall_s": round(wall, 1),
             "busy_s": round(busy, 1), "qemu_cpu_s": float(qemu), "foreign_s": round(foreign, 1),
             "foreign_fraction": round(foreign / (wall * nproc), 3),
             "steal_fraction": round(steal / (wall * nproc), 3),
             "vm": f"tests/vm/run.sh {cache} (KTRUST_VM_TIMEOUT={timeout})"}
json.dump(r, open(dst, "w"), indent=2)
h = r["host"]
print(f"host during the VM run: load average before {load}; qemu used {h['qemu_cpu_s']:.0f} s CPU in "
      f"{wall:.0f} s; other processes used {100 * h['foreign_fraction']:.0f}% of the host CPU")
if h["foreign_fraction"] > 0.10 or h["steal_fraction"] > 0.05:
    print("  WARNING: the host was not quiet during the VM run; the ratios are noisy")
PY
log "wrote $out"
