#!/usr/bin/env bash
# tests/fuzz/run.sh SOURCE_DIR FUZZ_BUILD_DIR [TARGET...]
#
# Builds ktrust's libFuzzer targets with clang in a CMake tree of their own
# (FUZZ_BUILD_DIR; -DKTRUST_FUZZ=ON -DKTRUST_BUILD_TESTS=OFF, only the fuzz
# targets and what they link) and runs each for a bounded time on its seed
# corpus in tests/fuzz/corpus/<target>/. A crash, leak, sanitizer report or
# timeout fails the run and prints the reproducer's path and the command that
# replays it. Without TARGET arguments, every target the tree defines runs.
#
# Environment:
#   KTRUST_FUZZ_SECONDS  fuzzing time per target (default 20)
#   KTRUST_FUZZ_JOBS     parallel compile jobs (default 2)
#
# Inputs the fuzzer finds go to FUZZ_BUILD_DIR/corpus/<target>/ (kept between
# runs, never into the source tree); reproducers to FUZZ_BUILD_DIR/artifacts/.
set -euo pipefail

usage() { echo "usage: $0 SOURCE_DIR FUZZ_BUILD_DIR [TARGET...]" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
src=$(cd "$1" && pwd) || usage
build=$2
shift 2

seconds=${KTRUST_FUZZ_SECONDS:-20}
jobs=${KTRUST_FUZZ_JOBS:-2}
[[ $seconds =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: KTRUST_FUZZ_SECONDS must be a positive number" >&2; exit 2; }

log() { printf '==> fuzz: %s\n' "$*"; }
die() { printf 'FAIL fuzz: %s\n' "$*" >&2; exit 1; }

for tool in clang clang++ cmake ninja; do
  command -v "$tool" >/dev/null || die "$tool is not installed (libFuzzer needs clang; tools/dev installs it)"
done

# Only the fuzzer's own processes are ever signalled, by PID.
fuzz_pid=""
logs=$(mktemp -d "${TMPDIR:-/tmp}/ktrust-fuzz.XXXXXX")
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $fuzz_pid ]]; then
    kill -TERM "$fuzz_pid" 2>/dev/null || true
    wait "$fuzz_pid" 2>/dev/null || true
  fi
  rm -rf "$logs"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t0=$SECONDS
if [[ ! -f $build/build.ninja ]] || ! grep -q '^KTRUST_FUZZ:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
  log "configuring the clang tree in $build"
  cmake -S "$src" -B "$build" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKTRUST_FUZZ=ON -DKTRUST_BUILD_TESTS=OFF \
    >"$logs/configure.log" 2>&1 || { cat "$logs/configure.log" >&2; die "cmake configure failed"; }
else
  # Picks up new targets and edited CMakeLists (ninja would re-run cmake anyway).
  cmake "$build" >"$logs/configure.log" 2>&1 || { cat "$logs/configure.log" >&2; die "cmake failed"; }
fi
list=$build/fuzz-targets.txt
[[ -s $list ]] || die "$list is missing or empty: no fuzz targets defined?"

declare -A binary=()
defined=()
while read -r name path; do
  [[ -n $name ]] || continue
  binary[$name]=$path
  defined+=("$name")
done <"$list"

targets=("$@")
((${#targets[@]})) || targets=("${defined[@]}")
for t in "${targets[@]}"; do
  [[ -n ${binary[$t]:-} ]] || die "no fuzz target $t (defined: ${defined[*]})"
  [[ -d $src/tests/fuzz/corpus/$t ]] || die "no seed corpus tests/fuzz/corpus/$t"
done

log "building ${targets[*]} (-j$jobs)"
cmake --build "$build" -j"$jobs" --target "${targets[@]}" >"$logs/build.log" 2>&1 ||
  { tail -n 60 "$logs/build.log" >&2; die "building the fuzz targets failed"; }
log "configured and built in $((SECONDS - t0)) s"

mkdir -p "$build/artifacts"
failed=()
for t in "${targets[@]}"; do
  seeds=$src/tests/fuzz/corpus/$t
  work=$build/corpus/$t
  mkdir -p "$work"
  out=$logs/$t.log
  log "$t: ${seconds} s on $(find "$seeds" -type f | wc -l) seeds + $(find "$work" -type f | wc -l) found earlier"
  # The first corpus directory receives new inputs; the seeds are only read.
  rc=0
  "${binary[$t]}" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" "$work" "$seeds" >"$out" 2>&1 &
  fuzz_pid=$!
  wait "$fuzz_pid" || rc=$?
  fuzz_pid=""
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -n1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' "$out" | tail -n1)
  if ((rc == 0)); then
    echo "PASS $t: ${runs:-?} inputs, coverage ${cov:-?} edges, corpus $(find "$work" -type f | wc -l) files"
    continue
  fi
  failed+=("$t")
  echo "----- $t (exit $rc), last lines of its output:" >&2
  { grep -a -v -E '^#[0-9]+' "$out" || true; } | tail -n 40 >&2
  repro=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$out" | tail -n1)
  if [[ -n $repro ]]; then
    echo "FAIL $t: reproducer $repro" >&2
    echo "  replay: ${binary[$t]} $repro" >&2
  else
    echo "FAIL $t: exit $rc and no reproducer written (see the output above)" >&2
  fi
done

log "done in $((SECONDS - t0)) s"
((${#failed[@]} == 0)) || die "${failed[*]}"
