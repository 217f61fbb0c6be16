#!/usr/bin/env bash
# What the agent still enforces on zero-hop connections it holds no fd of,
# end to end on two simulated nodes (two_nodes.sh, set up as zerohop_test.sh):
#
#   node a: client.py as "client" and "client2" (cgroups of those names,
#           zero_hop, root), later as "nobody" (uid 65534)  -> ktrustd a
#   node b: server.py, a line echo server on :9000 (cgroup "server",
#           zero_hop)                                       <- ktrustd b
#
# 1. A reload that no longer allows a live peer ends its connection: node
#    b's policy drops "client" while client and client2 each hold a
#    connection sending a line every 100 ms. client's connection ends, the
#    server application sees it end, a new connect from client gets nothing
#    and the server never accepts it, client2 goes on. On a kernel with
#    kernel TLS (the vm tier, KTRUST_VM=1) both connections are zero-hop:
#    the agent holds no fd of them and resets client's with SOCK_DESTROY
#    (`zero_hop_connection_reset`, result denied_after_reload), which the
#    client sees as ECONNRESET and the server as ECONNABORTED. Without it
#    (the host tier) they are proxied and the proxy's recheck closes
#    client's (`denied_after_reload`).
#    In the VM a new agent first takes node b over (a handover, issue 12)
#    with both connections live and the journal removed, so that it learns
#    them only over the handover socket: it lists them as zero-hop with
#    their original start time, and the reload above is its own.
# 2. An agent without CAP_SYS_PTRACE cannot take the sockets of a process
#    of another uid: node a's agent restarted without it, and a zero-hop
#    workload running as uid 65534, is served by the proxy (never in
#    plaintext) and `ktrust status` / `ktrust workloads` say why. On the
#    host the reason given is the missing kernel TLS, which comes first.
# 3. (VM) The AEAD record limit: node b's agent runs with
#    KTRUST_TEST_RECORD_LIMIT=4000, and a stream of 16 KiB records is reset
#    between 3000 and 4000 records (`record_limit`).
# 4. (VM) Revocation: node b reads the root's CRL; `ktrust ca revoke` of
#    node a's intermediate resets a live zero-hop connection from node a
#    (`revoked`, in `ktrust denials` with the reason in words) and refuses a
#    new one.
#
# Needs root. Usage: zerohop_enforcement_test.sh KTRUST KTRUSTD
set -euo pipefail

ktrust=$1
ktrustd=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
# shellcheck source=two_nodes.sh
source "$here/two_nodes.sh"
trap two_nodes_cleanup EXIT

replies() { grep -c '^reply' "$work/$1.log" || true; }
replies_above() { (($(replies "$1") > $2)); }
zexec() {  # NODE CGROUP LOG CMD...: run_in, started by ktrust exec
  local node=$1 cg=$2 log=$3
  shift 3
  run_in "$node" "$cg" "$log" "$ktrust" exec --holder-socket "$work/$node/holder/zerohop.sock" -- "$@"
}

two_nodes_up "$work" "$ktrust"
# uid 65534 must reach the holder's socket and the scripts in here.
chmod 711 "$work"
mkdir -p "$KT_CG"/a/{client,client2,nobody,holder} "$KT_CG"/b/{server,holder}
ktls=${KTRUST_VM:+yes}
marker="KTRUST-ENFORCE-MARKER-$RANDOM$RANDOM"

KT_AGENT_EXTRA="  holder_socket: $work/a/holder/holder.sock" write_config a '
  - name: client
    cgroup: client
    spiffe_id: spiffe://{trust_domain}/{node}/client
    data_path: zero_hop
  - name: client2
    cgroup: client2
    spiffe_id: spiffe://{trust_domain}/{node}/client2
    data_path: zero_hop
  - name: nobody
    cgroup: nobody
    spiffe_id: spiffe://{trust_domain}/{node}/nobody
    data_path: zero_hop' '
  []'
config_b() {  # ALLOWED_CLIENTS (YAML flow list items)
  KT_AGENT_EXTRA="  holder_socket: $work/b/holder/holder.sock" write_config b '
  - name: server
    cgroup: server
    spiffe_id: spiffe://{trust_domain}/{node}/server
    ports: [9000]
    data_path: zero_hop' "
  - to: server
    ports: [9000]
    from: [$1]"
}
A=spiffe://example.org/node-a
config_b "$A/client, $A/client2, $A/nobody"
start_holder a "$ktrustd"
start_holder b "$ktrustd"
start_agent a "$ktrustd"
KTRUST_TEST_RECORD_LIMIT=4000 start_agent b "$ktrustd"

# The echo server: one thread per connection, says whose it is (the first
# line names the client) and how it ended.
cat >"$work/server.py" <<'EOF'
import errno, socket, sys, threading
lock = threading.Lock()
def say(line):  # whole lines: print() writes the text and its newline apart
    with lock:
        sys.stdout.write(line + '\n'); sys.stdout.flush()
def why(e):
    return errno.errorcode.get(e.errno, repr(e)) if getattr(e, 'errno', None) else repr(e)
def serve(c, k):
    try:
        first = True
        while True:
            b = c.recv(4096)
            if not b:
                say(f'conn {k} ended: eof'); return
            if first:
                say(f'conn {k} from {b.split()[1].decode()}'); first = False
            c.sendall(b)
    except OSError as e:
        say(f'conn {k} ended: {why(e)}')
s = socket.create_server(('0.0.0.0', 9000)); say('listening')
k = 0
# A naive server: any error from accept() ends it. An agent handing over
# answers the accept it holds with EINTR, which python retries by itself.
while True:
    c, _ = s.accept()
    k += 1
    say(f'accepted {k}')
    threading.Thread(target=serve, args=(c, k), daemon=True).start()
EOF
# The client: a line every 100 ms and its echo, until the connection ends;
# then one new connect, and what it got.
cat >"$work/client.py" <<'EOF'
import errno, socket, sys, time
name, marker = sys.argv[1], sys.argv[2]
def why(e):
    return errno.errorcode.get(e.errno, repr(e)) if getattr(e, 'errno', None) else repr(e)
s = socket.create_connection(('10.77.0.2', 9000)); s.settimeout(10)
print('connected', flush=True)
i = 0
try:
    while True:
        s.sendall(f'{marker} {name} {i}\n'.encode())
        b = s.recv(4096)
        if not b:
            print('ended: eof', flush=True); break
        print('reply', i, flush=True); i += 1
        time.sleep(0.1)
except OSError as e:
    print(f'ended: {why(e)}', flush=True)
try:
    s = socket.create_connection(('10.77.0.2', 9000), timeout=5); s.settimeout(5)
    s.sendall(f'{marker} {name} again\n'.encode())
    print('again:', 'reply' if s.recv(4096) else 'eof', flush=True)
except OSError as e:
    print(f'again: {why(e)}', flush=True)
EOF
chmod 644 "$work/server.py" "$work/client.py"

ip netns exec "$KT_NS_A" tcpdump -i a0 --immediate-mode -U -s 0 -w "$work/wire.pcap" 'tcp port 9000' \
  2>"$work/tcpdump.log" &
KT_PIDS+=($!)
tcpdump_pid=$!
wait_for "$work/tcpdump.log" "listening on"

zexec b server "$work/server.log" python3 -u "$work/server.py"
server_pid=${KT_PIDS[-1]}  # run_in execs: ip, sh, ktrust exec, python
wait_for "$work/server.log" listening
zexec a client "$work/client.log" python3 -u "$work/client.py" client "$marker"
zexec a client2 "$work/client2.log" python3 -u "$work/client.py" client2 "$marker"
check "client gets echoes" wait_until 20 replies_above client 2
check "client2 gets echoes" wait_until 20 replies_above client2 2
conn_of() { sed -n "s/^conn \([0-9]*\) from $1\$/\1/p" "$work/server.log"; }
client_conn=$(conn_of client)
check "the server application has client's connection (conn $client_conn)" test -n "$client_conn"

if [[ -n $ktls ]]; then
  echo "# a handover on node b, both connections live: the new agent takes them over"
  # The journal goes first, so that the new agent can learn the two
  # connections only over the handover socket (the old agent appends
  # through the descriptor it holds; the new one writes a journal of its own).
  old_b=$(pgrep -f "ktrustd run --config $work/b/ktrustd.yaml")
  journal=$work/b/zero-hop-connections.journal
  check "node b's agent journals its zero-hop connections ($(grep -c '"op":"add"' "$journal" || true) added)" \
    test -f "$journal"
  rm -f "$journal"
  handover_at=$(date +%s.%N)
  run_in b agent "$work/b/successor.log" env KTRUST_TEST_RECORD_LIMIT=4000 \
    "$ktrustd" run --config "$work/b/ktrustd.yaml"
  wait_for "$work/b/successor.log" '"event":"ready"\|startup_failed' 60
  check "a new agent on node b took over from pid $old_b" \
    grep -q "\"predecessor_pid\":$old_b" "$work/b/successor.log"
  # Sums the "connections" of EVENT's lines in LOG.
  counted() {  # LOG EVENT
    awk -v e="\"event\":\"$2\"" 'index($0, e) && match($0, /"connections":[0-9]+/) {
      n += substr($0, RSTART + 14, RLENGTH - 14); seen = 1 } END { if (seen) print n }' "$1"
  }
  loaded=$(counted "$work/b/successor.log" zero_hop_journal_loaded)
  check "it found no journal to learn them from (zero_hop_journal_loaded: ${loaded:-none})" test "$loaded" = 0
  check "the old agent stopped answering zero-hop notifications" \
    wait_until 10 grep -q '"event":"zerohop_not_receiving"' "$work/b/agent.log"
  check "the old agent exited once it held nothing" wait_until 60 exited "$old_b"
  moved=$(counted "$work/b/agent.log" zero_hop_connections_moved)
  moved_in=$(counted "$work/b/successor.log" zero_hop_connections_moved_in)
  check "it passed its zero-hop connections over the handover socket (zero_hop_connections_moved ${moved:-none}, new agent's zero_hop_connections_moved_in ${moved_in:-none})" \
    test "${moved:-0}" -ge 2 -a "${moved_in:-0}" -ge 2
  n1=$(replies client)
  n2=$(replies client2)
  check "client's connection carries on after the old agent is gone" wait_until 10 replies_above client $((n1 + 5))
  check "and client2's" wait_until 10 replies_above client2 $((n2 + 5))
  check "the server application is still the same process" kill -0 "$server_pid"
  # From here on node b's log is the new agent's.
  mv "$work/b/agent.log" "$work/b/agent-predecessor.log"
  mv "$work/b/successor.log" "$work/b/agent.log"
  # Taken before the listing: an age above it started before the handover.
  since=$(awk -v now="$(date +%s.%N)" -v then="$handover_at" 'BEGIN { printf "%.3f", now - then }')
  conns_b=$(kt b conns --json)
  ages=$(jq -c --arg a "$A/" '[.connections[] | select(.peer_id | startswith($a)) | .age_seconds]' <<<"$conns_b")
  check "ktrust conns on the new agent lists both with their original start time, before the handover ${since}s ago (ages $ages)" \
    jq -e --argjson since "$since" 'length == 2 and all(.[]; . > $since)' <<<"$ages"
fi

echo "# a reload that no longer allows client$([[ -n $ktls ]] && echo ", on node b's new agent")"
conns_b=$(kt b conns --json)
# Connections listed for a peer: data paths, space-separated.
paths_of() { jq -r --arg p "$A/$1" '[.connections[] | select(.peer_id == $p) | .data_path] | join(" ")' <<<"$2"; }
before=$(paths_of client "$conns_b")
if [[ -n $ktls ]]; then
  check "ktrust conns on node b lists client's connection as zero-hop ($before)" test "$before" = zero-hop
  check "and client2's ($(paths_of client2 "$conns_b"))" test "$(paths_of client2 "$conns_b")" = zero-hop
  check "agent a handed client's socket over with kernel TLS" \
    grep -q '"event":"connection_handed_over".*"workload":"client"' "$work/a/agent.log"
else
  check "ktrust conns on node b lists client's connection, proxied ($before)" \
    sh -c "test -n '$before' && test '$before' != zero-hop"
fi
gen=$(generation b)
config_b "$A/client2, $A/nobody"
kill -HUP "$(pgrep -f "ktrustd run --config $work/b/ktrustd.yaml")"
check "node b reloads the policy without client" wait_until 10 generation_above b "$gen"
check "client's connection ends" wait_for "$work/client.log" '^ended' 10
ended=$(sed -n 's/^ended: //p' "$work/client.log")
server_ended=$(wait_for "$work/server.log" "^conn $client_conn ended" 10 >/dev/null 2>&1 &&
  sed -n "s/^conn $client_conn ended: //p" "$work/server.log")
check "the server application sees it end ($server_ended)" test -n "$server_ended"
if [[ -n $ktls ]]; then
  check "client saw a reset, not an orderly end ($ended)" grep -qx 'ECONNRESET\|ECONNABORTED' <<<"$ended"
  denied=$(grep '"event":"zero_hop_connection_reset"' "$work/b/agent.log" || true)
  echo "# $denied"
  check "node b logged one zero_hop_connection_reset" test "$(grep -c . <<<"$denied")" = 1
  check "naming the peer and the reason" jq -e --arg p "$A/client" \
    '.peer_id == $p and .result == "denied_after_reload" and (.reason | test("is not allowed for port 9000"))' \
    <<<"{${denied#*\{}"
  check "no reset failed (zero_hop_connection_reset_failed)" \
    lacks zero_hop_connection_reset_failed "$(cat "$work/b/agent.log")"
else
  # The proxy's own recheck of its connections, as for any workload.
  check "client's connection ended ($ended)" test -n "$ended"
  closed=$(grep '"result":"denied_after_reload"' "$work/b/agent.log" || true)
  check "node b's proxy closed it as denied_after_reload" grep -q "\"peer_id\":\"$A/client\"" <<<"$closed"
fi
conns_b=$(kt b conns --json)
check "ktrust conns on node b no longer lists client's connection" test -z "$(paths_of client "$conns_b")"
check "but still client2's ($(paths_of client2 "$conns_b"))" test -n "$(paths_of client2 "$conns_b")"
accepted=$(grep -c '^accepted' "$work/server.log" || true)
check "a new connect from client gets nothing" wait_for "$work/client.log" '^again' 10
again=$(sed -n 's/^again: //p' "$work/client.log")
check "no echo for it ($again)" test -n "$again" -a "$again" != reply
if [[ -n $ktls ]]; then
  check "its connect was refused ($again)" test "$again" = ECONNREFUSED
fi
check "the server application never accepted it" \
  test "$(grep -c '^accepted' "$work/server.log" || true)" = "$accepted"
n=$(replies client2)
check "client2's connection goes on" wait_until 10 replies_above client2 $((n + 5))
check "client2 saw no end" lacks ended "$(cat "$work/client2.log")"

if [[ -n $ktls ]]; then
  echo "# the record limit: node b ends a connection before it"
  # KTRUST_TEST_RECORD_LIMIT=4000 on node b: it ends connections at 3000
  # records in a direction. stream.py echoes 16 KiB records, at most 500 a
  # second, so the agent (it looks once a second) sees 3000 pass before 4000.
  cat >"$work/stream.py" <<'EOF'
import errno, socket, sys, time
marker = sys.argv[1]
def why(e):
    return errno.errorcode.get(e.errno, repr(e)) if getattr(e, 'errno', None) else repr(e)
s = socket.create_connection(('10.77.0.2', 9000)); s.settimeout(10)
chunk = (f'{marker} stream\n'.encode() * 1024)[:16384]
try:
    for i in range(6000):
        s.sendall(chunk); got = 0
        while got < len(chunk):
            b = s.recv(65536)
            if not b: raise OSError('eof')
            got += len(b)
        if i % 500 == 0: print('records', i, flush=True)
        time.sleep(0.002)
    print('ended: completed', flush=True)
except OSError as e:
    print(f'ended: {why(e)}', flush=True)
EOF
  chmod 644 "$work/stream.py"
  zexec a client2 "$work/stream.log" python3 -u "$work/stream.py" "$marker"
  check "the stream ends" wait_for "$work/stream.log" '^ended' 120
  ended=$(sed -n 's/^ended: //p' "$work/stream.log")
  check "with a reset, before its 6000 records ($ended)" grep -qx 'ECONNRESET\|ECONNABORTED' <<<"$ended"
  reset=$(grep '"event":"zero_hop_connection_reset".*"result":"record_limit"' "$work/b/agent.log" || true)
  echo "# $reset"
  check "node b logged the reset as record_limit" test "$(grep -c . <<<"$reset")" = 1
  records=$(sed -n 's/.*carried \([0-9]*\) TLS records.*/\1/p' <<<"$reset")
  check "at 3000 records or more, before the limit of 4000 (${records:-none})" \
    test "${records:-0}" -ge 3000 -a "${records:-0}" -lt 4000

fi

echo "# an agent without CAP_SYS_PTRACE, a workload of another uid"
kill "$(pgrep -f "ktrustd run --config $work/a/ktrustd.yaml")"
gone() { ! pgrep -f "ktrustd run --config $work/a/ktrustd.yaml"; }
check "agent a stops" wait_until 10 gone
start_agent a "$ktrustd" setpriv --inh-caps -sys_ptrace --bounding-set -sys_ptrace
agent_a=$(pgrep -f "ktrustd run --config $work/a/ktrustd.yaml")
capeff=$(sed -n 's/^CapEff:\t//p' "/proc/$agent_a/status")
check "agent a runs without CAP_SYS_PTRACE (CapEff $capeff)" \
  test $((0x$capeff >> 19 & 1)) = 0
# setpriv outside ktrust exec: the process registers as uid 65534.
run_in a nobody "$work/nobody.log" setpriv --reuid 65534 --regid 65534 --clear-groups \
  "$ktrust" exec --holder-socket "$work/a/holder/zerohop.sock" -- \
  python3 -u "$work/client.py" nobody "$marker"
check "nobody's requests are served" wait_until 20 replies_above nobody 2
nobody_pid=${KT_PIDS[-1]}  # run_in execs: ip, sh, setpriv, ktrust exec, python
conns_a=$(kt a conns --json)
path=$(jq -r '[.connections[] | select(.workload == "nobody") | .data_path] | join(" ")' <<<"$conns_a")
check "by node a's proxy (ktrust conns: $path)" sh -c "test -n '$path' && test '$path' != zero-hop"
listener=$(kt a status --json | jq -r --argjson pid "$nobody_pid" \
  '.zero_hop.listeners[] | select(.pid == $pid) | .data_path')
workload=$(kt a workloads --json | jq -r '.workloads[] | select(.name == "nobody") | .data_path')
if [[ -n $ktls ]]; then
  why='proxy (the agent lacks CAP_SYS_PTRACE, needed to take the sockets of uid 65534)'
else
  why='proxy (zero-hop unavailable: .*kernel TLS'
fi
check "ktrust status on node a says why for its process ($listener)" grep -q "^$why" <<<"$listener"
check "ktrust workloads on node a says why for the workload ($workload)" grep -q "^$why" <<<"$workload"

if [[ -n $ktls ]]; then
  # Root is not enough either: the kernel wants the agent to hold every
  # capability the process has, and a root process has them all.
  zexec a client2 "$work/root.log" python3 -u "$work/client.py" client2 "$marker"
  check "a root process's requests are served" wait_until 20 replies_above root 2
  root_pid=${KT_PIDS[-1]}
  listener=$(kt a status --json | jq -r --argjson pid "$root_pid" \
    '.zero_hop.listeners[] | select(.pid == $pid) | .data_path')
  check "ktrust status on node a says why for it too ($listener)" grep -q \
    '^proxy (the agent lacks CAP_SYS_PTRACE, needed to take the sockets of a process with capabilities' \
    <<<"$listener"
fi

if [[ -n $ktls ]]; then
  # Agent a with CAP_SYS_PTRACE again: client2 (root) must be zero-hop.
  kill "$(pgrep -f "ktrustd run --config $work/a/ktrustd.yaml")"
  check "agent a stops" wait_until 10 gone
  start_agent a "$ktrustd"
  echo "# revocation: node b's CRL revokes node a's intermediate"
  gen=$(generation b)
  KT_CRLS="  - $work/root/crl.pem" config_b "$A/client2, $A/nobody"
  kill -HUP "$(pgrep -f "ktrustd run --config $work/b/ktrustd.yaml")"
  check "node b reloads with the root's CRL" wait_until 10 generation_above b "$gen"
  zexec a client2 "$work/revoked.log" python3 -u "$work/client.py" revoked "$marker"
  check "a new connection from client2 gets echoes" wait_until 20 replies_above revoked 2
  gen=$(generation b)
  "$ktrust" ca revoke --ca-dir "$work/root" --cert "$work/a/ca/ca.crt" >/dev/null
  # Nothing but the CRL file changed: node b notices it on its own.
  check "node b reloads when the CRL changes" wait_until 15 generation_above b "$gen"
  check "the connection ends" wait_for "$work/revoked.log" '^ended' 10
  ended=$(sed -n 's/^ended: //p' "$work/revoked.log")
  check "with a reset ($ended)" grep -qx 'ECONNRESET\|ECONNABORTED' <<<"$ended"
  check "node b logged the reset as revoked" \
    grep -q '"event":"zero_hop_connection_reset".*"result":"revoked"' "$work/b/agent.log"
  revoked=$(kt b denials --json | jq -c '[.denials[] | select(.result == "revoked")]')
  check "ktrust denials on node b says why, in words" jq -e \
    'any(.[]; .reason | test("^after a reload: .*revoked"))' <<<"$revoked"
  again=$(sed -n 's/^again: //p' "$work/revoked.log")
  check "and a new connect is refused ($again)" test "$again" = ECONNREFUSED
fi

echo "# the wire"
kill -INT "$tcpdump_pid"
wait "$tcpdump_pid" 2>/dev/null || true
check "the capture saw traffic to port 9000" \
  sh -c "tcpdump -r '$work/wire.pcap' -nn 'tcp port 9000' 2>/dev/null | grep -q ."
check "the wire never carried a line in plaintext" sh -c "! grep -aq '$marker' '$work/wire.pcap'"

two_nodes_results
