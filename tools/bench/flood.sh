#!/usr/bin/env bash
# An allowed client's connect + first byte through two engines, unloaded vs
# with idle hostile connections held open: runs handshake_flood. See
# tools/bench/README.md, "flood".
#
#   tools/bench/run.sh flood [--quick] [handshake_flood options]
#
# handshake_flood's options: --hostile N (2000) --sources K (32)
#   --attack client|server (client) --drip --hold --samples S (300) --rounds R (3)
# --quick: 2 rounds of 20 samples; a later --rounds or --samples wins.
# Environment: HANDSHAKE_FLOOD (default build/tools/bench/handshake_flood).
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
HANDSHAKE_FLOOD="${HANDSHAKE_FLOOD:-$build/tools/bench/handshake_flood}"

quick=()
args=()
for a; do
  case $a in
    --quick) quick=(--rounds 2 --samples 20) ;;
    -h | --help) usage; exit 0 ;;
    *) args+=("$a") ;;
  esac
done
built HANDSHAKE_FLOOD handshake_flood
log "$HANDSHAKE_FLOOD ${quick[*]} ${args[*]}"
exec "$HANDSHAKE_FLOOD" "${quick[@]}" "${args[@]}"
