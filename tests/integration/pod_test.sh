#!/usr/bin/env bash
# Workloads in network namespaces of their own (pods, the DaemonSet case):
# two simulated nodes, one ktrustd each, serving pods the way it serves
# workloads in its own namespace.
#
#   node a: curl (cgroup "client", node namespace)            -> ktrustd a
#           pod c1 (10.77.1.2): curl as "pod-client" and as "intruder"
#           curl (cgroup "bystander", not enrolled)
#   node b: pods w1 (10.77.2.2), w2 (10.77.2.3) and later w3 (10.77.2.4),
#           replicas of workload "web" (python3 http.server :8080)   <- ktrustd b
#           curl (cgroup "bystander", not enrolled), on the pods' links
#
# Asserts what an operator would check: each replica is reached through its
# own listeners, from the node and from a pod, over IPv4 and IPv6; the pod
# client's wire connection leaves from the pod's address; the application
# sees the agent's upstream source; a disallowed identity and a plaintext
# client never reach a pod, over any of its addresses (link-local ones, and
# ones added while it is served); an address two pods carry refuses in both; the wire holds no plaintext; a deleted pod is
# released; a restarted agent serves the pods again; a killed one leaves
# the pods' enforced ports refusing. Needs root.
# Usage: pod_test.sh KTRUST KTRUSTD
set -euo pipefail

ktrust=$1
ktrustd=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
# shellcheck source=two_nodes.sh
source "$here/two_nodes.sh"
trap two_nodes_cleanup EXIT

two_nodes_up "$work" "$ktrust"
add_pod a c1 2
add_pod b w1 2
add_pod b w2 3
mkdir -p "$KT_CG"/a/{client,pod-client,intruder,bystander} "$KT_CG"/b/{web-1,web-2,web-3}

write_config a '
  - name: client
    cgroup: client
    spiffe_id: spiffe://{trust_domain}/{node}/client
  - name: pod-client
    cgroup: pod-client
    spiffe_id: spiffe://{trust_domain}/{node}/pod-client
  - name: intruder
    cgroup: intruder
    spiffe_id: spiffe://{trust_domain}/{node}/intruder' '
  []'
write_config b '
  - name: web
    cgroup: web-*
    spiffe_id: spiffe://{trust_domain}/{node}/web
    ports: [8080]' '
  - to: web
    ports: [8080]
    from: [spiffe://example.org/node-a/client, spiffe://example.org/node-a/pod-client]'

marker1="KTRUST-POD1-MARKER-$RANDOM$RANDOM"
marker2="KTRUST-POD2-MARKER-$RANDOM$RANDOM"
mkdir -p "$work/www1" "$work/www2" "$work/www-open"
# Port 9099 of pod w1 is not enforced: its file must not be a marker.
echo "open" >"$work/www-open/open.txt"
echo "$marker1" >"$work/www1/secret.txt"
echo "$marker2" >"$work/www2/secret.txt"

start_agent a "$ktrustd"
start_agent b "$ktrustd"

# The replicas start after the agent, as pods do on a running node.
run_in_pod b w1 web-1 "$work/w1.log" python3 -u -m http.server --bind :: --directory "$work/www1" 8080
run_in_pod b w1 web-1 "$work/w1-extra.log" \
  python3 -u -m http.server --bind :: --directory "$work/www-open" 9099
run_in_pod b w2 web-2 "$work/w2.log" python3 -u -m http.server --bind :: --directory "$work/www2" 8080
w2_pid=${KT_PIDS[-1]}
for f in w1 w1-extra w2; do wait_for "$work/$f.log" "Serving HTTP"; done
wait_for "$work/b/agent.log" '"event":"pod_netns_served".*10\.77\.2\.2'
wait_for "$work/b/agent.log" '"event":"pod_netns_served".*10\.77\.2\.3'
# Node a serves its pod once a process of an enrolled cgroup lives there.
run_in_pod a c1 pod-client "$work/c1-idle.log" sleep 600
wait_for "$work/a/agent.log" '"event":"pod_netns_served".*10\.77\.1\.2'
# Issue 10, finding 2, in a pod: an unprivileged process in pod c1 listens
# on the outbound port on every address, agent up (now) and down (at the
# end). The pod's mesh connections must never reach it.
run_in_pod a c1 pod-bystander "$work/c1-impostor.log" \
  setpriv --reuid 65534 --regid 65534 --clear-groups socat -u TCP6-LISTEN:15001,reuseaddr,fork STDOUT
for _ in $(seq 50); do
  ip netns exec "$(pod_ns a c1)" ss -Hltn 'sport = :15001' | grep -q . && break
  sleep 0.1
done

# --immediate-mode: every packet is written as it comes, so the few seconds
# of traffic are all in the file when tcpdump is stopped.
ip netns exec "$KT_NS_A" tcpdump -i a0 --immediate-mode -U -s 0 -w "$work/wire.pcap" 'tcp' \
  2>"$work/tcpdump.log" &
KT_PIDS+=($!)
tcpdump_pid=$!
wait_for "$work/tcpdump.log" "listening on"

get() {  # WHERE... URL: curl's output, or its error
  "$@" 2>&1 || true
}
from_node() { get exec_in a client curl -sS --max-time 10 -g "$1"; }
from_pod() { get exec_in_pod a c1 "$1" curl -sS --max-time 10 -g "$2"; }

echo "# each replica is reached through its own listeners"
check "node a's client reaches pod w1 over IPv4" test "$(from_node http://10.77.2.2:8080/secret.txt)" = "$marker1"
check "node a's client reaches pod w2 over IPv4" test "$(from_node http://10.77.2.3:8080/secret.txt)" = "$marker2"
check "node a's client reaches pod w1 over IPv6" \
  test "$(from_node 'http://[fd77:2::2]:8080/secret.txt')" = "$marker1"
check "pod c1's client reaches pod w2 over IPv4" \
  test "$(from_pod pod-client http://10.77.2.3:8080/secret.txt)" = "$marker2"
check "pod c1's client reaches pod w1 over IPv6" \
  test "$(from_pod pod-client 'http://[fd77:2::2]:8080/secret.txt')" = "$marker1"
peer=$(get exec_in_pod a c1 pod-client python3 -c "
import socket
s = socket.create_connection(('10.77.2.2', 8080), timeout=5)
print('%s:%d' % s.getpeername()[:2])")
check "getpeername in the pod shows the original server ($peer)" test "$peer" = "10.77.2.2:8080"
# An agent logs a connection once both of its directions have ended.
check "node b's agent saw pod c1's connection come from the pod's address" wait_for "$work/b/agent.log" \
  '"event":"connection_closed".*"local_id":"spiffe://example.org/node-b/web","peer_id":"spiffe://example.org/node-a/pod-client".*"wire_peer":"10\.77\.1\.2:'
# http.server bound to :: shows an IPv4 client in its mapped form.
check "the application in w1 saw the agent's upstream source (127.0.0.6)" \
  grep -q '^::ffff:127\.0\.0\.6 ' "$work/w1.log"
check "and over IPv6 the agent's IPv6 upstream source" grep -q '^fd00:6b74::6 ' "$work/w1.log"

if [[ -n ${KTRUST_VM:-} ]]; then
  echo "# kernel TLS (the vm tier)"
  # The wire sockets of pod connections live in the pods' namespaces, so
  # their kernel TLS records are counted there.
  for pod in "a c1" "b w1" "b w2"; do
    # shellcheck disable=SC2086
    tls_stat=$(ip netns exec "$(pod_ns $pod)" cat /proc/net/tls_stat 2>&1 || true)
    check "pod ${pod#* }'s namespace counted kernel TLS records (TlsTxSw and TlsRxSw > 0)" \
      awk '$1 ~ /^Tls(Tx|Rx)Sw$/ && $2 > 0 { n++ } END { exit n != 2 }' <<<"$tls_stat"
  done
  curls=$(grep '"event":"connection_closed".*"peer_id":"spiffe://example.org/node-a/pod-client"' \
    "$work/b/agent.log" | grep -c '"data_path":"ktls-sw"' || true)
  check "node b carried pod c1's curl requests on ktls-sw ($curls)" test "$curls" -ge 2
fi

workloads=$("$ktrust" --socket "$work/b/control.sock" workloads)
check "ktrust workloads on node b shows replica 1's pod address" grep -q 'web-1 .*pod 10.77.2.2' <<<"$workloads"
check "and replica 2's" grep -q 'web-2 .*pod 10.77.2.3' <<<"$workloads"
metrics=$(ip netns exec "$KT_NS_B" curl -sS --max-time 5 http://127.0.0.1:9464/metrics)
check "node b's metrics count two served pod namespaces" \
  grep -q '^ktrust_pod_namespaces{state="served"} 2$' <<<"$metrics"

echo "# refusals"
requests_before=$(grep -c 'GET /secret.txt' "$work/w1.log" || true)
out=$(from_pod intruder http://10.77.2.2:8080/secret.txt)
check "a disallowed identity in a pod gets nothing" lacks "$marker1" "$out"
out=$(get exec_in a bystander curl -sS --max-time 10 http://10.77.2.2:8080/secret.txt)
check "a plaintext client gets nothing from a pod's enforced port" lacks "$marker1" "$out"
check "pod w1's application saw neither" \
  test "$(grep -c 'GET /secret.txt' "$work/w1.log" || true)" = "$requests_before"
out=$(get exec_in a bystander curl -sS --max-time 10 http://10.77.2.2:9099/open.txt)
check "a port the pod does not enforce is untouched (control)" test "$out" = "open"
denials=$("$ktrust" --socket "$work/b/control.sock" denials --json)
check "ktrust denials on node b names the intruder" jq -e \
  '.denials | map(select(.result == "denied" and .peer_id == "spiffe://example.org/node-a/intruder")) | length >= 1' \
  <<<"$denials"
check "ktrust denials on node b names the plaintext client" jq -e \
  '.denials | map(select(.result == "plaintext_refused")) | length >= 1' <<<"$denials"

echo "# every address of a served pod is enforced, link-local ones too"
# Node b's unenrolled curl, on the pod's link: what any neighbour there can do.
on_link() { get exec_in b bystander curl -sS --max-time 10 -g "$1"; }
requests() { grep -c 'GET /secret.txt' "$work/w1.log" || true; }
# Polls (at most $1 tenths of a second) until node b's `ktrust workloads`
# shows web-1's network matching $2 (with a third argument: no longer).
await_network() {  # TENTHS PATTERN [gone]
  local shown
  for _ in $(seq "$1"); do
    shown=$("$ktrust" --socket "$work/b/control.sock" workloads | grep 'web-1 ' || true)
    if grep -q -- "$2" <<<"$shown"; then [[ -z ${3:-} ]] && return 0; else [[ -n ${3:-} ]] && return 0; fi
    sleep 0.1
  done
  echo "web-1: $shown" >&2
  return 1
}
w1_ns=$(pod_ns b w1)
w1_ll=$(ip -n "$w1_ns" -6 -o addr show dev eth0 scope link | awk '{ sub("/.*", "", $4); print $4 }')
check "pod w1 has a link-local address ($w1_ll)" test -n "$w1_ll"
check "ktrust workloads lists it as enforced" await_network 50 "pod .*$w1_ll"
check "a port pod w1 does not enforce answers over it (control)" \
  test "$(on_link "http://[$w1_ll%25pw1]:9099/open.txt")" = "open"
requests_before=$(requests)
out=$(on_link "http://[$w1_ll%25pw1]:8080/secret.txt")
check "a plaintext client gets nothing from pod w1's enforced port over its link-local address" \
  lacks "$marker1" "$out"
check "pod w1's application saw no request" test "$(requests)" = "$requests_before"

echo "# an address added to a served pod is enforced at once"
ip -n "$w1_ns" addr add 169.254.77.2/32 dev eth0
ip -n "$w1_ns" addr add fd77:2::99/128 dev eth0 nodad
ip -n "$KT_NS_B" route add 169.254.77.2/32 dev pw1
ip -n "$KT_NS_B" route add fd77:2::99/128 dev pw1
# Within 5 s: the address events, not the 30 s full rescan.
check "ktrust workloads lists the new addresses within 5 s" \
  await_network 50 'pod .*169\.254\.77\.2.*fd77:2::99'
check "the new address answers on a port pod w1 does not enforce (control)" \
  test "$(on_link http://169.254.77.2:9099/open.txt)" = "open"
out=$(on_link http://169.254.77.2:8080/secret.txt)
check "a plaintext client gets nothing from the added IPv4 link-local address" lacks "$marker1" "$out"
out=$(on_link 'http://[fd77:2::99]:8080/secret.txt')
check "nor from the added IPv6 address" lacks "$marker1" "$out"
check "pod w1's application saw neither" test "$(requests)" = "$requests_before"
ip -n "$w1_ns" addr del fd77:2::99/128 dev eth0
check "a removed address leaves ktrust workloads" await_network 50 'fd77:2::99' gone

echo "# an address two served pods carry refuses in both"
ip -n "$w1_ns" addr add fe80::77/64 dev eth0 nodad
ip -n "$(pod_ns b w2)" addr add fe80::77/64 dev eth0 nodad
check "ktrust workloads says web-1's fe80::77 is on another pod too" \
  await_network 50 'refused, on another pod too: fe80::77'
out=$(on_link 'http://[fe80::77%25pw1]:8080/secret.txt')
check "a plaintext client gets nothing from it" lacks "$marker1" "$out"
check "pod w1's application saw no request" test "$(requests)" = "$requests_before"
ip -n "$(pod_ns b w2)" addr del fe80::77/64 dev eth0
check "once pod w2 drops it, web-1 has it alone" await_network 50 'another pod' gone

echo "# the wire"
kill -INT "$tcpdump_pid"
wait "$tcpdump_pid" 2>/dev/null || true
check "the capture saw the pods' traffic to port 8080" \
  sh -c "tcpdump -r '$work/wire.pcap' -nn 'tcp port 8080 and net 10.77.1.0/24' 2>/dev/null | grep -q ."
check "and no plaintext marker of either pod" \
  sh -c "! grep -aq -e '$marker1' -e '$marker2' '$work/wire.pcap'"

echo "# a deleted pod is released"
w2_inode=$(grep '"event":"pod_netns_served".*10\.77\.2\.3' "$work/b/agent.log" | head -1 |
  sed 's/.*"netns_inode":\([0-9]*\).*/\1/')
kill -9 "$w2_pid"
wait "$w2_pid" 2>/dev/null || true
ip netns del "$(pod_ns b w2)"
wait_for "$work/b/agent.log" "\"event\":\"pod_netns_released\".*\"netns_inode\":$w2_inode"
check "its sk_lookup link is unpinned" \
  sh -c "! ls '$work/b/bpffs/ktrust/links' | grep -q 'netns-$w2_inode-'"
check "pod w1 is still served" test "$(from_node http://10.77.2.2:8080/secret.txt)" = "$marker1"

echo "# a pod whose address comes after its first process (the CNI's order)"
add_pod_netns b w3
run_in_pod b w3 web-3 "$work/w3.log" python3 -u -m http.server --bind :: --directory "$work/www2" 8080
wait_for "$work/w3.log" "Serving HTTP"
wait_for "$work/b/agent.log" '"event":"pod_netns_served","netns_inode":[0-9]*,"addresses":""'
add_pod b w3 4
wait_for "$work/b/agent.log" '"event":"pod_addresses_changed".*10\.77\.2\.4'
check "node a's client reaches pod w3 once it has its address" \
  test "$(from_node http://10.77.2.4:8080/secret.txt)" = "$marker2"
out=$(get exec_in a bystander curl -sS --max-time 10 http://10.77.2.4:8080/secret.txt)
check "and a plaintext client gets nothing from it" lacks "$marker2" "$out"
check "pod w3's application saw only the agent's request" \
  test "$(grep -c 'GET /secret.txt' "$work/w3.log" || true)" = 1

echo "# agent b killed: the pods' enforced ports refuse"
agent_b=$(pgrep -f "ktrustd run --config $work/b/ktrustd.yaml")
kill -9 "$agent_b"
wait "$agent_b" 2>/dev/null || true
requests_before=$(grep -c 'GET /secret.txt' "$work/w1.log" || true)
out=$(from_node http://10.77.2.2:8080/secret.txt)
check "a request to pod w1 fails without its agent ($out)" lacks "$marker1" "$out"
check "and never reached the application" \
  test "$(grep -c 'GET /secret.txt' "$work/w1.log" || true)" = "$requests_before"

echo "# agent b restarted: pod w1 is served again, its link adopted"
mv "$work/b/agent.log" "$work/b/agent-1.log"
start_agent b "$ktrustd"
wait_for "$work/b/agent.log" '"event":"pod_netns_served".*10\.77\.2\.2'
check "the restarted agent adopted w1's pinned link" \
  grep -q '"event":"bpf_adopted".*sk_lookup_pod' "$work/b/agent.log"
check "node a's client reaches pod w1 again" test "$(from_node http://10.77.2.2:8080/secret.txt)" = "$marker1"

echo "# agent a killed: pod c1's mesh connections refused, never the impostor's"
check "the impostor in pod c1 listens on port 15001" \
  sh -c "ip netns exec '$(pod_ns a c1)' ss -Hltn 'sport = :15001' | grep -q ."
agent_a=$(pgrep -f "ktrustd run --config $work/a/ktrustd.yaml")
kill -9 "$agent_a"
wait "$agent_a" 2>/dev/null || true
token="KTRUST-BEARER-$RANDOM$RANDOM"
for url in http://10.77.2.3:8080/secret.txt 'http://[fd77:2::2]:8080/secret.txt'; do
  out=$(get exec_in_pod a c1 pod-client curl -sS --max-time 5 -g -H "Authorization: Bearer $token" "$url")
  check "pod c1's request to $url is refused without its agent ($out)" \
    grep -q "Connection refused\|Couldn't connect" <<<"$out"
done
stolen=$(cat "$work/c1-impostor.log")
check "the impostor on the pod's outbound port never received a byte ($stolen)" test -z "$stolen"

two_nodes_results
