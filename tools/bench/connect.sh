#!/usr/bin/env bash
# connect() latency of cgroups the eBPF programs do not intercept, attached vs
# detached, on this kernel (the VM's TCG timings would mean nothing): runs
# connect_latency (as root). See tools/bench/README.md, "connect".
#
#   tools/bench/run.sh connect [--quick] [--out FILE]
#
# --quick: 6 rounds of 1000 connects. JSON to FILE (default ./ktrust-bench-connect.json).
# Environment: CONNECT_LATENCY (default build/tools/bench/connect_latency),
# CONNECT_LATENCY_ARGS (extra arguments, e.g. "--cpu 1 --rounds 40").
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
CONNECT_LATENCY="${CONNECT_LATENCY:-$build/tools/bench/connect_latency}"

args=()
out=""
while (($#)); do
  case "$1" in
    --quick) args+=(--rounds 6 --connects 1000) ;;
    --out) out=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "$prog: unknown argument $1 (connect_latency's own go in CONNECT_LATENCY_ARGS)" >&2; exit 2 ;;
  esac
  shift
done
((EUID == 0)) || die "needs root (bpffs mount, cgroups, BPF programs)"
built CONNECT_LATENCY connect_latency
# shellcheck disable=SC2206  # word splitting is the point
args+=(${CONNECT_LATENCY_ARGS:-} --json "$(result_path "$out" ktrust-bench-connect.json)")
log "$CONNECT_LATENCY ${args[*]}"
exec "$CONNECT_LATENCY" "${args[@]}"
