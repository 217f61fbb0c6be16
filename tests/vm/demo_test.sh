#!/usr/bin/env bash
# demo_test.sh KTRUST KTRUSTD — the README's main demo (tools/demo/mesh_demo.sh)
# inside the kTLS VM (ctest vm_demo_test):
#   tests/vm/run.sh CACHE_DIR -- "$PWD/tests/vm/demo_test.sh" build/userspace/cli/ktrust build/userspace/ktrustd
#
# Runs the demo as a user would, its output on the console, and asserts that
# it exits 0 and that the `ktrust conns` tables it prints for node a and
# node b each show the held connection on the ktls-sw data path (kernel TLS,
# which the VM's kernel has). Last line "PASS vm-demo" or "FAIL vm-demo: ...".
set -euo pipefail

[[ $# -eq 2 ]] || { echo "usage: $0 KTRUST KTRUSTD" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp "${TMPDIR:-/tmp}/vm-demo.XXXXXX")
trap 'rm -f "$out"' EXIT

rc=0
# tee: the demo's own output stays on the console for a failure's detail.
"$here/../../tools/demo/mesh_demo.sh" "$1" "$2" 2>&1 | tee "$out" || rc=$?

# Nodes whose printed conns table (the lines after "$ ... <node>/control.sock
# conns", up to the next command or section) has a row on ktls-sw.
ktls_nodes=$(awk '
  /^\$ .*control\.sock conns$/ { node = ($0 ~ /\/a\/control\.sock/) ? "a" : "b"; inside = 1; next }
  /^\$ |^== / { inside = 0 }
  inside && / ktls-sw / { print node }' "$out" | sort -u | tr -d '\n')

problems=()
((rc == 0)) || problems+=("the demo exited $rc")
[[ $ktls_nodes == *a* ]] || problems+=("node a's ktrust conns shows no ktls-sw connection")
[[ $ktls_nodes == *b* ]] || problems+=("node b's ktrust conns shows no ktls-sw connection")
if ((${#problems[@]})); then
  joined=$(printf '; %s' "${problems[@]}")
  echo "FAIL vm-demo: ${joined#; }"
  exit 1
fi
echo "PASS vm-demo: the demo passed; both nodes' ktrust conns show ktls-sw"
