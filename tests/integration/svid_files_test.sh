#!/usr/bin/env bash
# identity.source svid_files end to end: node b's agent takes its workload's
# SVID from files (the cert-manager / spiffe-helper layout) instead of the
# embedded CA, and picks up a replaced SVID without a restart.
#
#   node a: curl (cgroup "client", embedded CA)   -> ktrustd a
#   node b: python3 http.server (cgroup "server", SVID from files) <- ktrustd b
#
# Needs root. Usage: svid_files_test.sh KTRUST KTRUSTD
set -euo pipefail

ktrust=$1
ktrustd=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
# shellcheck source=two_nodes.sh
source "$here/two_nodes.sh"
trap two_nodes_cleanup EXIT

two_nodes_up "$work" "$ktrust"
mkdir -p "$KT_CG"/a/client "$KT_CG"/b/server

write_config a '
  - name: client
    cgroup: client
    spiffe_id: spiffe://{trust_domain}/{node}/client' '
  []'
# Node b: the server's SVID is a file issued by node b's intermediate; peers
# are verified against the root, given as a trust bundle.
server_id=spiffe://example.org/node-b/server
"$ktrust" ca issue --ca-dir "$work/b/ca" --id "$server_id" --out "$work/b/svids/server" >/dev/null
KT_IDENTITY_SOURCE=svid_files KT_TRUST_BUNDLES="  - $work/root/bundle.crt" write_config b '
  - name: server
    cgroup: server
    spiffe_id: spiffe://{trust_domain}/{node}/server
    ports: [8080]' '
  - to: server
    ports: [8080]
    from: [spiffe://example.org/node-a/client]'

marker="KTRUST-SVID-FILES-$RANDOM$RANDOM"
mkdir "$work/www"
echo "$marker" >"$work/www/secret.txt"
run_in b server "$work/http.log" python3 -u -m http.server --bind 0.0.0.0 --directory "$work/www" 8080
wait_for "$work/http.log" "Serving HTTP"
start_agent a "$ktrustd"
start_agent b "$ktrustd"

expiry() { "$ktrust" --socket "$work/b/control.sock" workloads --json | jq -r '.workloads[0].svid_expires_at'; }
body=$(exec_in a client curl -sS --max-time 10 http://10.77.0.2:8080/secret.txt 2>&1 || true)
check "a client reaches the server whose SVID comes from files" test "$body" = "$marker"
conns=$(grep '"direction":"outbound"' "$work/a/agent.log" | grep '"event":"connection_closed"' | tail -1)
check "node a saw the file-based server identity" grep -q "\"peer_id\":\"$server_id\"" <<<"$conns"
first=$(expiry)
check "ktrust workloads shows the file SVID's expiry ($first)" test "$first" -gt 0

# A renewed SVID in the same directory (what cert-manager does): picked up
# without a restart, and traffic goes on.
sleep 1  # a new notAfter needs a later second
"$ktrust" ca issue --ca-dir "$work/b/ca" --id "$server_id" --out "$work/b/svids/server.new" >/dev/null
for f in tls.crt tls.key ca.crt; do mv -f "$work/b/svids/server.new/$f" "$work/b/svids/server/$f"; done
renewed=$first
# The files are polled every 5 s.
for _ in $(seq 200); do
  renewed=$(expiry)
  [[ $renewed != "$first" ]] && break
  sleep 0.1
done
check "the renewed SVID is in use without a restart ($first -> $renewed)" test "$renewed" -gt "$first"
body=$(exec_in a client curl -sS --max-time 10 http://10.77.0.2:8080/secret.txt 2>&1 || true)
check "and the client still reaches the server" test "$body" = "$marker"

two_nodes_results
