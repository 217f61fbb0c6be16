#!/usr/bin/env bash
# ktrust benchmarks: one entry point, one script per mode. How each works and
# how to read it: tools/bench/README.md; results: docs/performance.md.
#
#   tools/bench/run.sh [MODE] [OPTIONS]      MODE --help lists that mode's options
#
#   loopback  (the default) plain TCP, stunnel, haproxy, ktrust and ktrust-userspace
#             pairs on loopback, one run: throughput, latency, connections/s, CPU
#             [--quick] [--out FILE] [--runs N] [--targets LIST] [--keep]      loopback.sh
#   vm        in the kTLS VM: the loopback kTLS / userspace ratios, and the
#             zero-hop suite (plain, proxy-userspace, proxy-ktls, zero-hop on
#             two simulated nodes with real agents)
#             [--quick] [--suite all|loopback|zero-hop] [--out FILE] [--runs N]
#             [--targets LIST] [--keep]                                         vm.sh
#   zerohop   the zero-hop suite on this host (root; without kernel TLS only
#             plain and proxy-userspace)  [--quick] [--out FILE] [--runs N] [--keep]  zerohop.sh
#   connect   connect() latency of cgroups the eBPF programs leave alone,
#             attached vs detached (root)   [--quick] [--out FILE]             connect.sh
#   e2e       an enrolled workload's connect + first byte through two agents
#             vs plain TCP (root)           [--quick] [--out FILE] [--keep]    e2e.sh
#   flood     an allowed client's connect + first byte under a handshake flood
#             [--quick] [handshake_flood options]                              flood.sh
#   protocols redis-benchmark and pgbench, unmodified, plain vs the mesh (two
#             simulated nodes, resumption off and on) vs an haproxy mTLS pair, one
#             run; ratios against plain (root)
#             [--quick | --smoke] [--runs N] [--out FILE] [--keep]               protocols.sh
#   idle      agent RSS per idle connection and after waves of them, through a
#             ktrustd tunnel pair  [--quick] [--connections N] [--waves W] [--out FILE]  idle.sh
#   soak      held connections and a rate of new ones through two agents for
#             minutes: RSS, descriptors, CPU per connection, errors over time,
#             and whether all comes back after (root)  [--quick] [--connections N]
#             [--rate R] [--seconds S] [--plot PNG] [--out FILE]              soak.sh
#
# --quick is each mode's smoke run (under 2 minutes). The older spellings
# --vm, --connect and --e2e still select their mode.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

mode=""
case ${1:-} in
  loopback | vm | zerohop | connect | e2e | flood | idle | soak | protocols) mode=$1; shift ;;
  -h | --help | help) usage; exit 0 ;;
  -* | "") ;;
  *) echo "run.sh: unknown mode $1" >&2; usage >&2; exit 2 ;;
esac
args=()
for a; do
  case $a in
    --vm | --connect | --e2e)
      [[ -z $mode || $mode == "${a#--}" ]] || { echo "run.sh: one mode at a time ($mode, $a)" >&2; exit 2; }
      mode=${a#--} ;;
    *) args+=("$a") ;;
  esac
done
mode=${mode:-loopback}
BENCH_PROG="run.sh $mode" exec "$here/$mode.sh" "${args[@]}"
