#!/usr/bin/env bash
# ktrustd tunnels between unmodified programs, with a wire capture:
#
#   curl -> ktrustd (outbound) ==mTLS==> ktrustd (inbound) -> python3 http.server
#
# Asserts what an operator would check: the request works, the capture of the
# TLS port holds no plaintext marker in either direction (while a capture of
# the application port does: the method can see it), and a client whose
# identity the server does not allow gets nothing and leaves no trace in the
# application's log. Needs root (tcpdump). Usage: tunnel_test.sh KTRUST KTRUSTD
set -euo pipefail

ktrust=$1
ktrustd=$2
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

failures=0
passed=0
ok() { echo "ok - $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - $*"; failures=$((failures + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else not_ok "$what"; fi; }

# Waits for a line matching $2 in file $1 (a readiness signal), at most 20 s.
wait_for() {
  for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}
# The first address a ktrustd "ready" log line lists under key $2.
ready_address() { grep '"event":"ready"' "$1" | sed 's/^[^{]*//' | jq -r ".$2[0]"; }

# Identities from one embedded CA.
"$ktrust" ca init --trust-domain example.org --dir "$work/ca" >/dev/null
"$ktrust" ca issue --ca-dir "$work/ca" --id spiffe://example.org/ns/demo/sa/client --out "$work/client" >/dev/null
"$ktrust" ca issue --ca-dir "$work/ca" --id spiffe://example.org/ns/demo/sa/server --out "$work/server" >/dev/null
"$ktrust" ca issue --ca-dir "$work/ca" --id spiffe://example.org/ns/other/sa/intruder --out "$work/intruder" >/dev/null

# The application: a static file server with a secret in its content.
marker_down="KTRUST-PLAINTEXT-MARKER-DOWN-$RANDOM$RANDOM"
marker_up="KTRUST-PLAINTEXT-MARKER-UP-$RANDOM$RANDOM"
mkdir "$work/www"
echo "$marker_down" > "$work/www/secret.txt"
app_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$work/www" && exec python3 -u -m http.server --bind 127.0.0.1 "$app_port") >"$work/app.log" 2>&1 &
pids+=($!)
wait_for "$work/app.log" "Serving HTTP"


"$ktrustd" tunnel --identity "$work/server" --inbound "127.0.0.1:0=127.0.0.1:$app_port" \
  --allow 'spiffe://example.org/ns/demo/*' --workload web 2>"$work/server.log" &
pids+=($!)
wait_for "$work/server.log" '"event":"ready"'
wire=$(ready_address "$work/server.log" inbound)

"$ktrustd" tunnel --identity "$work/client" --outbound "127.0.0.1:0=$wire" \
  --expect-server 'spiffe://example.org/ns/demo/sa/server' --workload curl 2>"$work/client.log" &
pids+=($!)
wait_for "$work/client.log" '"event":"ready"'
entry=$(ready_address "$work/client.log" outbound)

"$ktrustd" tunnel --identity "$work/intruder" --outbound "127.0.0.1:0=$wire" 2>"$work/intruder.log" &
pids+=($!)
wait_for "$work/intruder.log" '"event":"ready"'
intruder_entry=$(ready_address "$work/intruder.log" outbound)

# Capture the TLS port and, as a control, the application port.
tcpdump -i lo --immediate-mode -U -s 0 -w "$work/wire.pcap" "tcp port ${wire##*:}" 2>"$work/tcpdump-wire.log" &
pids+=($!)
tcpdump -i lo --immediate-mode -U -s 0 -w "$work/app.pcap" "tcp port $app_port" 2>"$work/tcpdump-app.log" &
pids+=($!)
wait_for "$work/tcpdump-wire.log" "listening on"
wait_for "$work/tcpdump-app.log" "listening on"

# Inside the vm tier the kernel does the crypto; count its records.
tls_counter() { awk -v k="$1" '$1 == k { print $2 }' /proc/net/tls_stat 2>/dev/null || echo 0; }
tx_before=$(tls_counter TlsTxSw)
rx_before=$(tls_counter TlsRxSw)

body=$(curl -s --max-time 10 -X POST -d "$marker_up" "http://$entry/secret.txt" -o /dev/null -w '%{http_code}' || true)
got=$(curl -s --max-time 10 "http://$entry/secret.txt" || true)
check "curl through the tunnel gets the file" test "$got" = "$marker_down"
check "the POST reached the application (501: http.server has no POST)" test "$body" = 501

if [[ -n ${KTRUST_VM:-} ]]; then
  check "ktrustd chose kernel TLS" grep -q '"data_path":"ktls"' "$work/server.log"
  check "the request's connections ran on ktls-sw (client side)" \
    bash -c "grep '\"result\":\"ok\"' '$work/client.log' | grep -q '\"data_path\":\"ktls-sw\"'"
  check "the request's connections ran on ktls-sw (server side)" \
    bash -c "grep '\"result\":\"ok\"' '$work/server.log' | grep -q '\"data_path\":\"ktls-sw\"'"
  check "the kernel's TLS TX counter rose" test "$(tls_counter TlsTxSw)" -gt "$tx_before"
  check "the kernel's TLS RX counter rose" test "$(tls_counter TlsRxSw)" -gt "$rx_before"
  # Hold a connection open (an unfinished request) and look at it as an
  # operator would.
  exec 3<>"/dev/tcp/${entry%:*}/${entry##*:}"
  printf 'GET /secret.txt HTTP/1.1\r\nHost: x\r\n' >&3
  for _ in $(seq 100); do
    ss -tien "( sport = :${wire##*:} )" > "$work/ss.txt"
    grep -q tcp-ulp-tls "$work/ss.txt" && break
    sleep 0.1
  done
  check "ss -tie shows the wire socket as tcp-ulp-tls with aes-gcm-128" \
    bash -c "grep -q 'tcp-ulp-tls' '$work/ss.txt' && grep -q 'aes-gcm-128' '$work/ss.txt'"
  exec 3>&-
fi

refused=0
intruder_path="/intruder-$RANDOM$RANDOM"
curl -s --max-time 10 "http://$intruder_entry$intruder_path" -o "$work/intruder.out" || refused=$?
check "a client with a disallowed identity gets no response (curl exit $refused)" test "$refused" -ne 0
check "... and not one byte" test ! -s "$work/intruder.out"
check "... and the application never saw its request" bash -c "! grep -q '$intruder_path' '$work/app.log'"
check "the server logged the denial with the reason in words" \
  bash -c "grep '\"result\":\"denied\"' '$work/server.log' | grep -q 'intruder is not allowed for web'"

kill -INT "${pids[-1]}" "${pids[-2]}"
wait "${pids[-1]}" "${pids[-2]}" 2>/dev/null || true
check "the application-port capture sees the plaintext (control)" grep -qa "$marker_down" "$work/app.pcap"
check "the wire capture holds TLS traffic" test "$(stat -c %s "$work/wire.pcap")" -gt 4000
check "the wire capture has no plaintext response marker" bash -c "! grep -qa '$marker_down' '$work/wire.pcap'"
check "the wire capture has no plaintext request marker" bash -c "! grep -qa '$marker_up' '$work/wire.pcap'"
check "the wire capture has no plaintext HTTP" bash -c "! grep -qa 'HTTP/1' '$work/wire.pcap'"

echo "$passed passed, $failures failed"
[[ $failures -eq 0 ]]
