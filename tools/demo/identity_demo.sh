#!/usr/bin/env bash
# The main demo (tools/dev demo): ktrust's embedded CA issues SPIFFE X.509-SVIDs
# that stock OpenSSL speaks mutual TLS 1.3 with, and a client whose SVID comes
# from another CA is refused. Loopback only; everything it creates lives in
# one temp dir and is removed, with the server process, when it exits.
#   usage: tools/demo/identity_demo.sh /path/to/ktrust
# Exits 0 only if everything behaved as expected.
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 /path/to/ktrust" >&2; exit 2; }
ktrust=$(realpath "$1")
work=$(mktemp -d)
server_pid=
cleanup() {
  if [[ -n $server_pid ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP # so that the EXIT trap runs on signals too
cd "$work"

say() { printf '\n== %s\n' "$*"; }
die() { printf '\ndemo FAILED: %s\n' "$*" >&2; exit 1; }
kt() { "$ktrust" "$@" | sed 's/^/   /'; }
td=spiffe://example.org/ns/demo/sa

say "A root CA for example.org, and one intermediate per node so the root key stays off the nodes"
say "Each intermediate may sign only its node's IDs (--scope)"
kt ca init --trust-domain example.org --dir root
kt ca intermediate --ca-dir root --name node-a --dir node-a --scope "$td/client"
kt ca intermediate --ca-dir root --name node-b --dir node-b --scope "$td/server"

say "SVIDs: the client workload runs on node-a, the server workload on node-b"
kt ca issue --ca-dir node-a --id "$td/client" --out client
kt ca issue --ca-dir node-b --id "$td/server" --out server
if "$ktrust" ca issue --ca-dir node-a --id "$td/server" --out stolen 2>/dev/null; then
  die "node-a's intermediate issued node-b's server identity"
fi
echo "   node-a's intermediate refuses to issue $td/server: outside its scope"

say "What ktrust sees in the client's SVID (leaf + node-a intermediate)"
kt cert inspect client/tls.crt --bundle root/bundle.crt

# openssl's -cert reads one certificate; the intermediates go in -cert_chain.
split_chain() { awk '/BEGIN CERTIFICATE/ {n++} {print > (n == 1 ? "leaf.pem" : "chain.pem")}' tls.crt; }
(cd client && split_chain) && (cd server && split_chain)

say "Stock OpenSSL as the server: TLS 1.3 only, a client certificate chaining to the root required"
# -Verify 1: a client certificate is mandatory, with at most one intermediate.
openssl s_server -accept 127.0.0.1:0 -tls1_3 -Verify 1 -verify_return_error \
  -CAfile root/bundle.crt -cert server/leaf.pem -cert_chain server/chain.pem \
  -key server/tls.key -www >server.log 2>&1 &
server_pid=$!
# Port 0 lets the kernel pick a free port; s_server reports it on its ACCEPT line.
for _ in $(seq 100); do
  port=$(sed -n 's/^ACCEPT 127\.0\.0\.1:\([0-9]*\)$/\1/p' server.log)
  [[ -z $port ]] || break
  kill -0 "$server_pid" 2>/dev/null || die "openssl s_server exited: $(cat server.log)"
  sleep 0.05
done
[[ -n $port ]] || die "openssl s_server did not start listening"
echo "   openssl s_server listening on 127.0.0.1:$port"

# connect NAME: an HTTP request over mutual TLS 1.3 with NAME's SVID; the
# transcript goes to NAME.log. The server's -www page reports the client's certificate.
connect() {
  local args=(-cert "$1/leaf.pem" -key "$1/tls.key")
  [[ ! -s $1/chain.pem ]] || args+=(-cert_chain "$1/chain.pem")
  printf 'GET / HTTP/1.0\r\n\r\n' |
    timeout 10 openssl s_client -connect "127.0.0.1:$port" -tls1_3 "${args[@]}" \
      -CAfile root/bundle.crt -verify_return_error -ign_eof >"$1.log" 2>&1
}

say "The client connects with its SVID (openssl s_client)"
connect client || die "the trusted client's connection failed: $(tail -3 client.log)"
grep -q 'HTTP/1.0 200 ok' client.log || die "no reply from the server"
server_id=$(sed -n '/^Server certificate/,/END CERTIFICATE/p' client.log | sed 1d |
  openssl x509 -noout -ext subjectAltName | grep -o 'URI:.*')
client_id=$(awk '/^Client certificate/ { c = 1 }
  c && match($0, /URI:spiffe:\/\/[^ <]*/) { print substr($0, RSTART, RLENGTH); exit }' client.log)
echo "   handshake: $(grep -m1 '^New, TLSv1.3' client.log)"
echo "   the client verified the server as $server_id"
echo "   the server verified the client as $client_id and answered HTTP/1.0 200"
[[ $server_id == "URI:$td/server" ]] || die "unexpected server identity: $server_id"
[[ $client_id == "URI:$td/client" ]] || die "unexpected client identity: $client_id"

say "An impostor: the same SPIFFE ID, but from a CA the server does not trust"
kt ca init --trust-domain example.org --dir rogue-root
kt ca issue --ca-dir rogue-root --id "$td/client" --out rogue
(cd rogue && split_chain)
if connect rogue; then die "the impostor's connection succeeded"; fi
grep -q 'HTTP/1.0' rogue.log && die "the impostor got an HTTP reply"
grep -q 'alert unknown ca' rogue.log || die "expected an 'unknown ca' alert: $(tail -3 rogue.log)"
echo "   refused: the server sent the TLS alert 'unknown ca'; no application data reached the client"
echo "   server log: $(grep -m1 'verify error' server.log)"
"$ktrust" cert inspect rogue/tls.crt --bundle root/bundle.crt >inspect.txt &&
  die "ktrust accepted the impostor's SVID"
echo "   ktrust agrees: $(tail -1 inspect.txt)"

say "Done: ktrust's SVIDs work with standard TLS 1.3 peers, and a foreign CA's SVID is refused"
