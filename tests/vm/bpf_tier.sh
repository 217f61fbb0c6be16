#!/usr/bin/env bash
# bpf_tier.sh TEST_BINARY... — the bpf tier (tests/bpf) on the VM's kernel.
#
# Inside the VM (run.sh sets KTRUST_VM=1; ctest vm_bpf_test does this):
#   tests/vm/run.sh CACHE_DIR -- "$PWD/tests/vm/bpf_tier.sh" build/tests/bpf_loader_test ...
# It also runs on the host as root (then it is just the bpf tier again).
#
# Runs each gtest binary in turn, all of them even after a failure, and
# prints one line per binary: "PASS <name>: N tests" or "FAIL <name>: ...",
# naming every skipped test (a skip hides a kernel difference, so it is
# reported, never silent). Last line "PASS bpf-tier" (exit 0) or
# "FAIL bpf-tier: <binaries>" (exit 1). Extra environment: GTEST_FILTER etc.
# pass through run.sh's KTRUST_VM_PASSENV.
set -euo pipefail

(($#)) || { echo "usage: $0 TEST_BINARY..." >&2; exit 2; }
((EUID == 0)) || { echo "FAIL bpf-tier: needs root (the VM runs commands as root)"; exit 1; }

logs=$(mktemp -d "${TMPDIR:-/tmp}/bpf-tier.XXXXXX")
trap 'rm -rf "$logs"' EXIT

cg2=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
bpffs=$(awk '$9 == "bpf" { print $5; exit }' /proc/self/mountinfo)
echo "bpf tier on Linux $(uname -r)$([[ ${KTRUST_VM:-} == 1 ]] && echo ' (in the VM)'); cgroup2 at ${cg2:-NONE}, bpffs at ${bpffs:-NONE}"

failed=()
for bin in "$@"; do
  name=$(basename "$bin")
  if [[ ! -x $bin ]]; then
    echo "FAIL $name: $bin is not an executable (build it first: ninja -C build $name)"
    failed+=("$name")
    continue
  fi
  out=$logs/$name.log
  start=$SECONDS
  rc=0
  echo "---- $name"
  # tee: the full output goes to the console too, for the failure's detail.
  "$bin" --gtest_color=no 2>&1 | tee "$out" || rc=$?
  ran=$(sed -n 's/^\[==========\] \([0-9]*\) tests\{0,1\} from .* ran\..*/\1/p' "$out" | tail -n1)
  # No process substitution: the guest has no /dev/fd.
  list=$(sed -n 's/^\[  SKIPPED \] \([^ ]*\.[^ ]*\) (.*/\1/p' "$out" | sort -u)
  skipped=()
  [[ -z $list ]] || mapfile -t skipped <<<"$list"
  note=""
  ((${#skipped[@]})) && note="; ${#skipped[@]} SKIPPED: ${skipped[*]}"
  if ((rc == 0)); then
    echo "PASS $name: ${ran:-?} tests in $((SECONDS - start)) s$note"
  else
    list=$(sed -n 's/^\[  FAILED  \] \([^ ]*\.[^ ]*\)\( (.*\)\{0,1\}$/\1/p' "$out" | sort -u | tr '\n' ' ')
    echo "FAIL $name: exit $rc; failed: ${list:-none listed (crash or timeout?)}$note"
    failed+=("$name")
  fi
done

if ((${#failed[@]})); then
  echo "FAIL bpf-tier: ${failed[*]}"
  exit 1
fi
echo "PASS bpf-tier"
