# ok/not ok lines and the summary, as in tests/integration/two_nodes.sh.
K8S_PASSED=0
K8S_FAILED=0
ok() { echo "ok - $*"; K8S_PASSED=$((K8S_PASSED + 1)); }
not_ok() { echo "not ok - $*"; K8S_FAILED=$((K8S_FAILED + 1)); }
check() { local what=$1; shift; if "$@" >/dev/null; then ok "$what"; else not_ok "$what"; fi; }
# A missing tool is a failure, never a skip (docs/testing.md).
require() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "not ok - $tool is missing: run tools/dev setup"; exit 1; }
  done
}
results() {
  echo "# $K8S_PASSED passed, $K8S_FAILED failed"
  ((K8S_FAILED == 0))
}
