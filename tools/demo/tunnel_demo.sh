#!/usr/bin/env bash
# The second act of the demo (tools/dev demo): ktrustd tunnels carry an
# unmodified curl to an unmodified python3 http.server over mutual TLS 1.3,
# and a client whose identity the server's policy does not allow is refused
# before the server application sees anything. Loopback only; everything it
# starts or creates is removed when it exits.
#   usage: tools/demo/tunnel_demo.sh /path/to/ktrust /path/to/ktrustd
# Exits 0 only if everything behaved as expected.
set -euo pipefail

[[ $# -eq 2 ]] || { echo "usage: $0 /path/to/ktrust /path/to/ktrustd" >&2; exit 2; }
ktrust=$(realpath "$1")
ktrustd=$(realpath "$2")
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
cd "$work"

say() { printf '\n== %s\n' "$*"; }
die() { printf '\ndemo FAILED: %s\n' "$*" >&2; exit 1; }
# Waits for a line matching $2 in file $1: the processes' own readiness signal.
wait_for() {
  for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  die "no '$2' in $1: $(tail -3 "$1")"
}
# The JSON part of ktrustd's log lines matching $2 in log $1.
events() { grep "$2" "$1" | sed 's/^[^{]*//'; }
td=spiffe://example.org/ns/demo/sa

say "Identities: the web server, a frontend that may call it, and a batch job that may not"
"$ktrust" ca init --trust-domain example.org --dir ca >/dev/null
for who in web frontend batch; do "$ktrust" ca issue --ca-dir ca --id "$td/$who" --out "$who" >/dev/null; done
echo "   $td/web, $td/frontend, $td/batch"

say "The application: python3 -m http.server, unmodified, on loopback"
mkdir www && echo "hello from the web workload" > www/index.html
(cd www && exec python3 -u -m http.server --bind 127.0.0.1 0) >app.log 2>&1 &
pids+=($!)
wait_for app.log "Serving HTTP"
app_port=$(sed -n 's/.* port \([0-9]*\) .*/\1/p' app.log | head -1)

say "ktrustd in front of it: mutual TLS in, plaintext to the app, only the frontend allowed"
"$ktrustd" tunnel --identity web --inbound "127.0.0.1:0=127.0.0.1:$app_port" \
  --allow "$td/frontend" --workload web 2>web.log &
pids+=($!)
wait_for web.log '"event":"ready"'
wire=$(events web.log '"event":"ready"' | jq -r '.inbound[0]')
echo "   listening for TLS on $wire ($(events web.log '"event":"ready"' | jq -r '.data_path_reason'))"

say "ktrustd next to each client: plaintext in, mutual TLS out, the server must be $td/web"
for who in frontend batch; do
  "$ktrustd" tunnel --identity "$who" --outbound "127.0.0.1:0=$wire" \
    --expect-server "$td/web" --workload "$who" 2>"$who.log" &
  pids+=($!)
  wait_for "$who.log" '"event":"ready"'
done
frontend=$(events frontend.log '"event":"ready"' | jq -r '.outbound[0]')
batch=$(events batch.log '"event":"ready"' | jq -r '.outbound[0]')

say "curl from the frontend, through its tunnel"
got=$(curl -s --max-time 10 "http://$frontend/") || die "the frontend's request failed"
echo "   curl got: $got"
[[ $got == "hello from the web workload" ]] || die "unexpected reply: $got"
wait_for web.log '"event":"connection_closed"'
events web.log '"event":"connection_closed"' | head -1 |
  jq -r '"   web side access log: \(.peer_id) called \(.workload) over \(.cipher), data path \(.data_path), \(.bytes_from_wire) bytes in, \(.bytes_to_wire) bytes out"'

say "curl from the batch job: a valid SVID of the trust domain, but not allowed by the policy"
if out=$(curl -s --max-time 10 "http://$batch/"); then die "the batch job got a reply: $out"; fi
[[ -z $out ]] || die "the batch job received bytes: $out"
[[ $(grep -c '"GET / ' app.log) -eq 1 ]] || die "the application saw more than the frontend's request"
echo "   curl got nothing; the application's log shows only the frontend's request"
wait_for web.log '"result":"denied"'
events web.log '"result":"denied"' | head -1 | jq -r '"   web side: refused \(.peer_id): \(.reason)"'
wait_for batch.log '"result":"rejected_by_peer"'
events batch.log '"result":"rejected_by_peer"' | head -1 | jq -r '"   batch side: \(.reason)"'

say "Done: identity decides who reaches the application, and neither program was changed"
