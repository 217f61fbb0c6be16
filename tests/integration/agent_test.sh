#!/usr/bin/env bash
# The node agent's life after start, against two real ktrustd processes
# (two_nodes.sh): the CLI and metrics against a live agent, reloads (valid,
# invalid, a policy that closes live connections), SVID renewal and a CA
# rotation under continuous traffic.
#
#   node a: enrolled cgroups client, client2, holder (one identity each);
#           bystander (not enrolled) for openssl s_client as a non-mesh peer;
#           odd-ok and odd-a@b, workload odd, whose {cgroup} template gives
#           no valid SPIFFE ID for odd-a@b ('@')
#   node b: cgroup server: python3 http.server :8080, an echo server :8081;
#           cgroup plain (not enrolled): a plaintext sink on :8082
#
# SVIDs live one minute (renewed every 15 s), so renewals happen throughout.
# Needs root. Usage: agent_test.sh KTRUST KTRUSTD
set -euo pipefail

ktrust=$1
ktrustd=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
# shellcheck source=two_nodes.sh
source "$here/two_nodes.sh"
trap two_nodes_cleanup EXIT

agent_pid() { pgrep -f "ktrustd run --config $work/$1/ktrustd.yaml"; }
svid_expiry() { kt "$1" workloads --json | jq -r --arg w "$2" '.workloads[] | select(.name == $w) | .svid_expires_at'; }
expiry_above() { (($(svid_expiry "$1" "$2") > $3)); }
log_count() { grep -c -- "$2" "$work/$1/agent.log" || true; }

two_nodes_up "$work" "$ktrust"
mkdir -p "$KT_CG"/a/{client,client2,holder,bystander,odd-ok,odd-a@b} "$KT_CG"/b/{server,plain}
# shellcheck disable=SC2034  # read by write_config
KT_SVID_TTL=1m
A=spiffe://example.org/node-a

config_a() {
  write_config a '
  - name: client
    cgroup: client
    spiffe_id: spiffe://{trust_domain}/{node}/client
  - name: client2
    cgroup: client2
    spiffe_id: spiffe://{trust_domain}/{node}/client2
  - name: holder
    cgroup: holder
    spiffe_id: spiffe://{trust_domain}/{node}/holder
  - name: odd
    cgroup: odd-*
    spiffe_id: spiffe://{trust_domain}/{node}/{cgroup}' '
  []'
}
config_b() {  # the SPIFFE IDs allowed to reach the server, one YAML flow list
  write_config b '
  - name: server
    cgroup: server
    spiffe_id: spiffe://{trust_domain}/{node}/server
    ports: [8080, 8081]' "
  - to: server
    ports: [8080, 8081]
    from: [$1]"
}
policy_start="$A/client, $A/holder"
policy_wider="$A/client, $A/holder, $A/client2"
policy_tight="$A/client, $A/client2"
config_a
config_b "$policy_start"

marker="KTRUST-AGENT-TEST-$RANDOM$RANDOM"
mkdir "$work/www"
echo "$marker" >"$work/www/secret.txt"
run_in b server "$work/http.log" python3 -u -m http.server --bind 0.0.0.0 --directory "$work/www" 8080
wait_for "$work/http.log" "Serving HTTP"
run_in b server "$work/echo.log" python3 -u -c "
import socket, threading
def serve(c):
    with c:
        while (d := c.recv(4096)):
            c.sendall(d)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 8081)); s.listen(64); print('listening', flush=True)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()"
wait_for "$work/echo.log" listening
# What reaches this sink came in plaintext: it is no workload's port.
run_in b plain "$work/plain.log" python3 -u -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 8082)); s.listen(64); print('listening', flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(5)
    try: print('got', c.recv(4096).decode(errors='replace').strip(), flush=True)
    except OSError: pass
    c.close()"
wait_for "$work/plain.log" listening

# One request for GET /secret.txt on node a in cgroup $1: the body, or the error.
get() { exec_in a "$1" curl -sS --max-time 10 http://10.77.0.2:8080/secret.txt 2>&1 || true; }
# A client that sends one line to the echo server and then holds the
# connection until the other side closes it.
hold() {  # LOG [CGROUP]
  run_in a "${2:-holder}" "$1" python3 -u -c "
import socket
s = socket.create_connection(('10.77.0.2', 8081), timeout=10)
s.sendall(b'ping\n')
print('reply', s.recv(100).decode().strip(), flush=True)
s.settimeout(None)
try:
    d = s.recv(100)
    print('closed: eof' if not d else 'data', flush=True)
except OSError as e:
    print('closed:', e, flush=True)"
}
# Continuous traffic from node a's client: a new connection (and handshake)
# per request until $work/NAME.stop exists; the tally goes to NAME.json.
cat >"$work/load.py" <<'EOF'
import json, os, socket, sys, time
stop, out, marker = sys.argv[1], sys.argv[2], sys.argv[3].encode()
ok, errors = 0, []
while not os.path.exists(stop):
    try:
        with socket.create_connection(('10.77.0.2', 8080), timeout=5) as s:
            s.sendall(b'GET /secret.txt HTTP/1.0\r\n\r\n')
            data = b''
            while (chunk := s.recv(65536)):
                data += chunk
        if marker in data:
            ok += 1
            print('ok', flush=True)  # progress, for the test to wait on
        else:
            errors.append('%.3f no marker in %r' % (time.time(), data[:80]))
    except OSError as e:
        errors.append('%.3f %s' % (time.time(), e))
    time.sleep(0.02)
json.dump({'ok': ok, 'failed': len(errors), 'errors': errors[:10]}, open(out + '.tmp', 'w'))
os.rename(out + '.tmp', out)
EOF
start_load() { rm -f "$work/$1.stop" "$work/$1.json"; run_in a client "$work/$1.log" python3 -u "$work/load.py" "$work/$1.stop" "$work/$1.json" "$marker"; }
stop_load() { touch "$work/$1.stop"; wait_until 20 test -e "$work/$1.json"; cat "$work/$1.json"; }
served() { grep -c '^ok$' "$work/$1.log" 2>/dev/null || true; }
served_above() { (($(served "$1") >= $2)); }
# Waits until load $1 has served N more requests: traffic flowed in this phase.
more_served() { local n=$(($(served "$1") + $2)); wait_until 30 served_above "$1" "$n"; }

start_agent a "$ktrustd"
start_agent b "$ktrustd"

echo "# the CLI against a live agent"
hold "$work/hold.log"
wait_for "$work/hold.log" "reply"
check "the holder got its echo through both agents" grep -q "reply ping" "$work/hold.log"
check "curl from the client gets the file" test "$(get client)" = "$marker"
status=$(kt b status)
check "ktrust status names the node" grep -q "node-b" <<<"$status"
check "ktrust status shows the userspace data path" grep -q "userspace" <<<"$status"
status=$(kt b status --json)
check "ktrust status --json: ready, programs attached" jq -e '.ready == true and .bpf.attached == true' <<<"$status"
check "ktrust ready (the DaemonSet's probe): exit 0, \"$(kt b ready)\"" kt b ready
check "ktrust health: exit 0, names the node" grep -q "^healthy: .* on node-b answers" <<<"$(kt b health)"
workloads=$(kt a workloads)
check "ktrust workloads lists the client" grep -q "^client " <<<"$workloads"
check "ktrust workloads shows its SPIFFE ID" grep -q "$A/client " <<<"$workloads"
conns=$(kt a conns --workload holder --json)
check "ktrust conns --workload holder: the held connection, to node b's server" jq -e \
  '.connections | length == 1 and .[0].workload == "holder" and .[0].peer_id == "spiffe://example.org/node-b/server"' \
  <<<"$conns"
check "ktrust conns --workload client2: nothing" jq -e '.connections == []' <<<"$(kt a conns --workload client2 --json)"
check "ktrust conns table: the holder's peer" grep -q "spiffe://example.org/node-b/server" <<<"$(kt a conns --workload holder)"
allowed=$(kt b policy check --from "$A/client" --to server --port 8080)
check "ktrust policy check: the client is allowed, by the rule in the file" \
  grep -q "allowed by policy rule $work/b/ktrustd.yaml:[0-9]" <<<"$allowed"
rc=0
denied=$(kt b policy check --from "$A/client2" --to server --port 8080) || rc=$?
check "ktrust policy check: client2 denied, exit 1 ($rc)" test "$rc" = 1
check "ktrust policy check says why" grep -q "$A/client2 is not allowed for port 8080" <<<"$denied"

echo "# a cgroup whose SPIFFE ID cannot be rendered is enrolled and refused"
# Sends one line to node b's plaintext sink from node a's cgroup $1.
to_sink() { exec_in a "$1" python3 -c "
import socket, sys
try:
    s = socket.create_connection(('10.77.0.2', 8082), timeout=5)
    s.sendall(sys.argv[1].encode() + b'\n'); s.recv(10); print('sent')
except OSError as e: print('refused', e)" "$2" 2>&1 || true; }
odd_marker="ODD-$RANDOM$RANDOM"
plain_marker="PLAIN-$RANDOM$RANDOM"
to_sink bystander "$plain_marker" >/dev/null
check "control: a cgroup outside the mesh reaches the sink in plaintext" \
  wait_until 5 grep -q "got $plain_marker" "$work/plain.log"
to_sink odd-a@b "$odd_marker" >/dev/null
# The sink prints what it got before it closes, so before to_sink returns.
check "the sink never received odd-a@b's bytes" lacks "$odd_marker" "$(cat "$work/plain.log")"
check "ktrust denials on node a: odd's connection refused, no SVID" jq -e \
  '[.denials[] | select(.workload == "odd" and .result == "no_identity")] | length >= 1' \
  <<<"$(kt a denials --json)"
workloads=$(kt a workloads)
check "ktrust workloads lists odd-a@b as refused, with the reason" \
  grep -q "odd-a@b .*refused, no SPIFFE ID: its SPIFFE ID template .* gives no valid ID" <<<"$workloads"
check "ktrust workloads --json: the problem in words" jq -e \
  '.workloads[] | select(.cgroup == "odd-a@b") | .spiffe_id == "" and (.problem | test("@"))' \
  <<<"$(kt a workloads --json)"
check "node a logged spiffe_id_render_failed once" \
  test "$(log_count a '"event":"spiffe_id_render_failed".*odd-a@b')" = 1
check "odd-ok, the same workload, has its ID" grep -q "$A/odd-ok " <<<"$workloads"

echo "# server identity not pinned: said at load and in ktrust status"
check "node a warned at load: any SVID of example.org is accepted as the server" \
  grep -q '"event":"server_identity_unpinned".*10.77.0.0/16.*any SVID of example.org' "$work/a/agent.log"
check "ktrust status repeats the warning" grep -q "^warnings .*10.77.0.0/16" <<<"$(kt a status)"
check "ktrust status --json: the warnings" jq -e '.warnings | length == 2' <<<"$(kt a status --json)"

echo "# metrics"
check "client2 (not allowed yet) gets nothing" lacks "$marker" "$(get client2)"
wait_until 5 grep -q '"result":"denied"' "$work/b/agent.log" || true
mb=$(metrics b /metrics)
ma=$(metrics a /metrics)
check "node b counts the served connection (result ok)" \
  grep -Eq '^ktrust_connections_total\{[^}]*result="ok"[^}]*\} [1-9]' <<<"$mb"
check "node b counts the refusal (ktrust_denials_total denied)" \
  grep -Eq '^ktrust_denials_total\{result="denied"\} [1-9]' <<<"$mb"
check "node b reports its SVID's seconds to expiry" \
  grep -Eq '^ktrust_svid_expiry_seconds\{[^}]*spiffe_id="spiffe://example.org/node-b/server"[^}]*\} [0-9]' <<<"$mb"
check "node a counts redirected connects in the kernel" \
  grep -Eq '^ktrust_bpf_events_total\{reason="connect_redirected"\} [1-9]' <<<"$ma"
check "node b's last reload is ok" grep -q '^ktrust_config_last_reload_ok 1' <<<"$mb"
code=$(ip netns exec "$KT_NS_B" curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9464/readyz)
check "/readyz answers 200 ($code)" test "$code" = 200

echo "# reload: a valid change"
gen=$(generation b)
config_b "$policy_wider"
check "node b reloads the new policy" wait_until 10 generation_above b "$gen"
check "client2 now gets the file" test "$(get client2)" = "$marker"
check "the held connection is still open" lacks closed "$(cat "$work/hold.log")"
check "a policy change applies in place (no restart_needed)" \
  lacks restart_needed "$(cat "$work/b/agent.log")"

echo "# reload: an invalid file"
gen=$(generation b)
good=$(cat "$work/b/ktrustd.yaml")
printf '%s\npolicy_typo: [unclosed\n' "$good" >"$work/b/ktrustd.yaml.tmp"
mv "$work/b/ktrustd.yaml.tmp" "$work/b/ktrustd.yaml"
failed_reload() { kt b status --json | jq -e '.config.last_reload_ok == false'; }
check "node b notices the broken file" wait_until 10 failed_reload
kill -HUP "$(agent_pid b)"
failed_reloads_b() { (($(log_count b config_reload_failed) >= $1)); }
check "SIGHUP with the broken file: a second failed reload is logged" wait_until 5 failed_reloads_b 2
check "the agent is still running" agent_pid b
status=$(kt b status --json)
check "ktrust status --json: the error with file:line:col, generation kept" jq -e \
  --arg f "$work/b/ktrustd.yaml" --argjson g "$gen" \
  '(.config.last_reload_error | test("^" + $f + ":[0-9]+:[0-9]+: ")) and .config.generation == $g' <<<"$status"
check "ktrust status shows the error to people" grep -q "$work/b/ktrustd.yaml:[0-9]*:[0-9]*" <<<"$(kt b status)"
check "metrics: ktrust_config_last_reload_ok 0" grep -q '^ktrust_config_last_reload_ok 0' <<<"$(metrics b /metrics)"
check "the running policy still serves the client" test "$(get client)" = "$marker"
check "and client2, as the last good file said" test "$(get client2)" = "$marker"
check "the held connection is still open" lacks closed "$(cat "$work/hold.log")"
config_b "$policy_wider"
reload_ok() { kt b status --json | jq -e '.config.last_reload_ok == true and .config.last_reload_error == ""'; }
check "fixing the file clears the error" wait_until 10 reload_ok
check "metrics: ktrust_config_last_reload_ok 1" grep -q '^ktrust_config_last_reload_ok 1' <<<"$(metrics b /metrics)"

echo "# reload: a tighter policy closes what it now denies"
config_b "$policy_tight"
check "the held connection is closed within a few seconds" wait_until 5 grep -q closed "$work/hold.log"
check "node b logged denied_after_reload" grep -q '"result":"denied_after_reload"' "$work/b/agent.log"
again=$(exec_in a holder python3 -c "
import socket
s = socket.create_connection(('10.77.0.2', 8081), timeout=5)
s.sendall(b'ping\n')
try: print('reply', s.recv(100))
except OSError as e: print('error', e)" 2>&1 || true)
check "a new connection from the holder gets no echo ($again)" lacks "ping" "$again"
check "the client is still served" test "$(get client)" = "$marker"

echo "# SVID renewal under continuous traffic"
before_a=$(svid_expiry a client)
before_b=$(svid_expiry b server)
renewals_failed=$(($(log_count a svid_renewal_failed) + $(log_count b svid_renewal_failed)))
start_load renew
check "node a renews the client's SVID" wait_until 40 expiry_above a client "$before_a"
check "node b renews the server's SVID" wait_until 40 expiry_above b server "$before_b"
check "requests go on with the renewed SVIDs" more_served renew 10
result=$(stop_load renew)
echo "# $result"
check "no request failed across the renewals" jq -e '.failed == 0 and .ok > 10' <<<"$result"
check "no renewal failed" test "$(($(log_count a svid_renewal_failed) + $(log_count b svid_renewal_failed)))" = "$renewals_failed"

echo "# CA rotation under continuous traffic"
"$ktrust" ca init --trust-domain example.org --dir "$work/root2" >/dev/null
for n in a b; do
  "$ktrust" ca intermediate --ca-dir "$work/root2" --name "node-$n" --dir "$work/$n/ca2" >/dev/null
done
# Rewrites both nodes' files with ca_dir $work/<node>/$1 and the caller's
# KT_TRUST_BUNDLES, then waits until both agents applied them.
reconfigure() {  # CA_SUBDIR
  local ga gb
  ga=$(generation a)
  gb=$(generation b)
  KT_CA_DIR=$work/a/$1 config_a
  KT_CA_DIR=$work/b/$1 config_b "$policy_tight"
  wait_until 10 generation_above a "$ga" && wait_until 10 generation_above b "$gb"
}
# openssl s_client from node a's non-enrolled cgroup to node b's enforced
# port: a peer outside the mesh.
s_client() {  # ARGS...
  printf 'GET /secret.txt HTTP/1.0\r\n\r\n' |
    exec_in a bystander timeout 10 openssl s_client -connect 10.77.0.2:8080 -quiet "$@" 2>&1 || true
}
verifies_with() { grep -q "verify return:1" <<<"$(s_client -verify_return_error -CAfile "$1")"; }
renewals_failed=$(($(log_count a svid_renewal_failed) + $(log_count b svid_renewal_failed)))
start_load rotate
check "the load runs before the rotation" more_served rotate 5
KT_TRUST_BUNDLES="  - $work/root2/ca.crt" \
  check "step 1: both nodes add the new root to their trust (reloaded)" reconfigure ca
check "step 1: node b still presents an SVID of the old root" verifies_with "$work/root/ca.crt"
# The new intermediates bring the new root in their bundle.crt; the old root
# stays trusted through trust_bundles while peers may still present it.
expiry_a=$(svid_expiry a client)
expiry_b=$(svid_expiry b server)
KT_TRUST_BUNDLES="  - $work/root/ca.crt" \
  check "step 2: both nodes issue from the new intermediates (reloaded)" reconfigure ca2
check "step 2: node a re-issued the client's SVID at once" expiry_above a client "$expiry_a"
check "step 2: node b re-issued the server's SVID at once" expiry_above b server "$expiry_b"
check "step 2: node b presents an SVID of the new root at once" verifies_with "$work/root2/ca.crt"
check "requests go on with the new CA" more_served rotate 5
check "step 3: both nodes drop the old root (reloaded)" reconfigure ca2
check "requests go on without the old root" more_served rotate 5
result=$(stop_load rotate)
echo "# $result"
check "no request failed during the rotation" jq -e '.failed == 0 and .ok > 10' <<<"$result"
check "no SVID renewal failed" \
  test "$(($(log_count a svid_renewal_failed) + $(log_count b svid_renewal_failed)))" = "$renewals_failed"
ca_changed() { grep -q '"event":"ca_changed".*"svids_reissued":[1-9]' "$work/$1/agent.log"; }
check "both agents logged the new CA with their SVIDs re-issued" eval 'ca_changed a && ca_changed b'
check "after the rotation node b's SVID does not verify against the old root" \
  lacks "verify return:1" "$(s_client -verify_return_error -CAfile "$work/root/ca.crt")"
# A peer outside the mesh with the client's ID: refused with an old-root
# SVID, served with a new-root one (the control).
"$ktrust" ca issue --ca-dir "$work/root" --id "$A/client" --out "$work/old-peer" >/dev/null
"$ktrust" ca issue --ca-dir "$work/root2" --id "$A/client" --out "$work/new-peer" >/dev/null
out=$(s_client -cert "$work/old-peer/tls.crt" -key "$work/old-peer/tls.key")
check "a peer with an SVID of the old root only is refused" lacks "$marker" "$out"
refusal=$(kt b denials --since 10s --json | jq -c '[.denials[] | select(.result == "unknown_authority")] | last')
check "ktrust denials on node b: unknown_authority, not in the trust bundle ($refusal)" \
  jq -e '.reason | test("spiffe://example.org/node-a/client is issued by an authority not in the trust bundle")' <<<"$refusal"
out=$(s_client -cert "$work/new-peer/tls.crt" -key "$work/new-peer/tls.key")
check "the same ID with an SVID of the new root is served" grep -q "$marker" <<<"$out"

echo "# mesh.require_expected_server: a server no rule pins is refused"
# Node a's current file (ca2), with the strict setting and $1 appended.
strict_a() {  # EXPECTED_SERVERS_YAML
  local g
  g=$(generation a)
  KT_CA_DIR=$work/a/ca2 config_a
  wait_until 10 generation_above a "$g" || return 1
  g=$(generation a)
  sed 's/^mesh:$/mesh:\n  require_expected_server: true/' "$work/a/ktrustd.yaml" >"$work/a/strict.tmp"
  printf '%s\n' "$1" >>"$work/a/strict.tmp"
  mv "$work/a/strict.tmp" "$work/a/ktrustd.yaml"
  wait_until 10 generation_above a "$g"
}
check "node a applies require_expected_server without rules" strict_a ""
check "the client's request is refused on node a" lacks "$marker" "$(get client)"
check "ktrust denials on node a says why (no_destination, require_expected_server)" jq -e \
  '[.denials[] | select(.result == "no_destination" and (.reason | test("no expected_servers rule covers 10.77.0.2:8080 \\(from workload client\\).*require_expected_server")))] | length >= 1' \
  <<<"$(kt a denials --since 30s --json)"
check "strict: ktrust status has no warnings" jq -e '.warnings == []' <<<"$(kt a status --json)"
check "node a applies a rule pinning node b's server" strict_a "expected_servers:
  - cidr: 10.77.0.2/32
    spiffe_id: spiffe://example.org/node-b/server"
check "the pinned server serves the client" test "$(get client)" = "$marker"
check "node a applies a rule naming another server" strict_a "expected_servers:
  - cidr: 10.77.0.2/32
    spiffe_id: spiffe://example.org/node-b/other"
check "a server with another ID is refused" lacks "$marker" "$(get client)"
check "ktrust denials on node a: unexpected_peer" jq -e \
  '[.denials[] | select(.workload == "client" and .result == "unexpected_peer")] | length >= 1' \
  <<<"$(kt a denials --since 30s --json)"
ga=$(generation a)
KT_CA_DIR=$work/a/ca2 config_a
check "node a is back to its plain file (reloaded)" wait_until 10 generation_above a "$ga"

echo "# revocation drill: the root revokes node a's intermediate under traffic"
# ca init wrote root2's crl.pem (empty): node b trusts it from now on.
gb=$(generation b)
KT_CA_DIR=$work/b/ca2 KT_CRLS="  - $work/root2/crl.pem" config_b "$policy_tight"
check "node b reads root2's CRL (reloaded)" wait_until 10 generation_above b "$gb"
hold "$work/hold2.log" client2
wait_for "$work/hold2.log" "reply"
check "a held connection from node a is open" grep -q "reply ping" "$work/hold2.log"
start_load drill
check "the load runs before the revocation" more_served drill 5
gb=$(generation b)
check "ktrust ca revoke --cert names what it revoked" grep -q "revoked .*CN = node-a" \
  <<<"$("$ktrust" ca revoke --ca-dir "$work/root2" --cert "$work/a/ca2/ca.crt")"
# Nothing but the CRL file changed: the agent notices it on its own.
check "node b reloads when the CRL file changes" wait_until 10 generation_above b "$gb"
check "a new request from node a is refused after that one reload" lacks "$marker" "$(get client)"
check "the held connection from node a is closed" wait_until 5 grep -q closed "$work/hold2.log"
result=$(stop_load drill)
echo "# $result"
check "the load saw refusals" jq -e '.failed > 0' <<<"$result"
revoked=$(kt b denials --json | jq -c '[.denials[] | select(.result == "revoked")]')
check "ktrust denials on node b: revoked handshakes, naming node-a's intermediate" jq -e \
  'any(.[]; (.reason | test("CA certificate \"O = ktrust, OU = example.org, CN = node-a\" .*is revoked")))' <<<"$revoked"
check "ktrust denials on node b: the live connection closed as revoked after the reload" jq -e \
  'any(.[]; (.reason | startswith("after a reload: ")))' <<<"$revoked"
check "ktrust denials shows revoked to people" grep -q "revoked" <<<"$(kt b denials)"

two_nodes_results
