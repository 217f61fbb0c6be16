#!/usr/bin/env bash
# Kubernetes mode (issue 14 item 4) on two simulated nodes. Each node's
# agent reads its pods and the namespaces from a fake API server replaying
# recorded objects (fake_api_server: tests/unit/kubernetes' FakeApiServer as
# a process, over HTTPS with a CA of its own and a bearer token, in the
# node's network namespace, serving that node's pods as the agent's
# fieldSelector asks). Pod objects are the recorded kuard pod
# (tests/testdata/kubernetes) with name, namespace, UID, node, service
# account, IP and declared ports changed; namespaces the recorded Docker
# Desktop ones plus "mesh" (labelled ktrust.io/mesh=enabled) and "plain".
# Pods are network namespaces of their own (add_pod) with their processes
# in kubelet-shaped cgroups (systemd driver, guaranteed and burstable QoS).
#
#   node a: pod mesh/client (sa client, 10.77.1.10)
#           pod mesh/intruder (sa intruder, 10.77.1.12)
#           pod plain/plainclient (10.77.1.11)
#   node b: pod mesh/web (sa web, 10.77.2.10, declares 8080): a line server
#           pod plain/plainweb (10.77.2.11, 8080): the same, not opted in
#           policy: web's 8080 from spiffe://example.org/ns/mesh/sa/client
#
# Asserts: before node a's first sync its pod's mesh connection is refused
# with kubernetes_not_synced in `ktrust denials`; once synced the client
# reaches web with ns/sa IDs on both sides (`ktrust conns`, with the pod
# columns); the intruder's service account is refused and web never sees its
# bytes; the plain pods talk in plaintext, untouched; a deleted pod is
# released (workload, listeners in its namespace, its sk_lookup link); node
# b's agent restarted before its API server answers keeps web's port
# enforced (plaintext to it refused).
# Needs root. Usage: kubernetes_test.sh KTRUST KTRUSTD FAKE_API_SERVER
set -euo pipefail

ktrust=$1
ktrustd=$2
FAKE_API_SERVER=$3
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
# shellcheck source=two_nodes.sh
source "$here/two_nodes.sh"
# shellcheck source=fake_cluster.sh
source "$here/fake_cluster.sh"
trap two_nodes_cleanup EXIT

two_nodes_up "$work" "$ktrust"
# The pods' IDs are spiffe://example.org/ns/...: each node's intermediate
# is scoped to them, as docs/kubernetes.md installs it.
for n in a b; do
  "$ktrust" ca intermediate --ca-dir "$work/root" --name "k8s-$n" --dir "$work/$n/k8s-ca" \
    --scope 'spiffe://example.org/ns/*' >/dev/null
done

cluster_objects

kubernetes_config() {  # NODE
  cat <<EOF
kubernetes:
  enabled: true
  node_name: node-$1
  api_server: https://127.0.0.1:$(api_port "$1")
  token_file: $work/api-$1/token
  ca_file: $work/api-$1/ca.crt
EOF
}

cat >"$work/line_server.py" <<'EOF'
import socket, sys, threading
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[1])))
server.listen()
print("listening", flush=True)
def serve(conn):
    for line in conn.makefile("rb"):
        print("got", line.decode(errors="replace").strip(), flush=True)
        conn.sendall(b"hello " + line)
    conn.close()
while True:
    conn, _ = server.accept()
    print("accepted", flush=True)
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
EOF
cat >"$work/line_client.py" <<'EOF'
import socket, sys, time
try:
    conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    conn.sendall(sys.argv[3].encode() + b"\n")
    reply = conn.recv(200).decode(errors="replace").strip()
    print("reply:", reply or "(closed)", flush=True)
    time.sleep(float(sys.argv[4]) if len(sys.argv) > 4 else 0)
except OSError as e:
    print("error:", e, flush=True)
EOF

# --- The API servers, then node b with its pods ---------------------------
start_api a 7
start_api b 8
cluster_namespaces a
cluster_namespaces b

web_cg=$(container "$(pod_cgroup guaranteed "$web_uid")" 1)
plainweb_cg=$(container "$(pod_cgroup burstable "$plainweb_uid")" 2)
client_pod_cg=$(pod_cgroup burstable "$client_uid")
client_cg=$(container "$client_pod_cg" 3)
plainclient_cg=$(container "$(pod_cgroup besteffort "$plainclient_uid")" 4)
intruder_cg=$(container "$(pod_cgroup burstable "$intruder_uid")" 5)

KT_CONFIG_EXTRA=$(kubernetes_config b) KT_CA_DIR=$work/b/k8s-ca write_config b '  []' '
  - to: spiffe://example.org/ns/mesh/sa/web
    ports: [8080]
    from: [spiffe://example.org/ns/mesh/sa/client]'
cluster_pods b
run_in_pod b web "$web_cg" "$work/web.log" python3 -u "$work/line_server.py" 8080
run_in_pod b plainweb "$plainweb_cg" "$work/plainweb.log" python3 -u "$work/line_server.py" 8080
wait_for "$work/web.log" listening
wait_for "$work/plainweb.log" listening
start_agent b "$ktrustd"
check "node b enrols pod mesh/web as spiffe://example.org/ns/mesh/sa/web" wait_for "$work/b/agent.log" \
  '"event":"pod_enrolled".*"pod":"mesh/web".*"id":"spiffe://example.org/ns/mesh/sa/web","ports":"8080"'
wait_for "$work/b/agent.log" '"event":"pod_netns_served".*10\.77\.2\.10' 10 >/dev/null || true
workloads_b=$(kt b workloads --json)
echo "# node b workloads: $(jq -c '[.workloads[] | {name, spiffe_id, ports, pod}]' <<<"$workloads_b")"
check "ktrust workloads shows web's namespace, pod and service account" \
  test "$(jq -r '[.workloads[] | select(.pod.name == "web") | [.pod.namespace, .pod.service_account, .pod.uid] | join(" ")] | unique | join(",")' <<<"$workloads_b")" \
  = "mesh web $web_uid"
check "both its cgroups (pod slice and container scope) are enrolled" \
  test "$(jq '[.workloads[] | select(.name == "mesh/web")] | length' <<<"$workloads_b")" -eq 2
check "the pod of a namespace not opted in is not enrolled" lacks plainweb "$workloads_b"

# --- Node a: started while its API server holds the lists -----------------
KT_CONFIG_EXTRA=$(kubernetes_config a) KT_CA_DIR=$work/a/k8s-ca write_config a '  []' '  []'
cluster_pods a hold
# The pods' long-lived processes, as their containers would be.
run_in_pod a client "$client_cg" "$work/client-idle.log" sleep 600
run_in_pod a plainclient "$plainclient_cg" "$work/plainclient-idle.log" sleep 600
run_in_pod a intruder "$intruder_cg" "$work/intruder-idle.log" sleep 600
start_agent a "$ktrustd"
check "node a says it is not synced" grep -q '"event":"kubernetes_not_synced"' "$work/a/agent.log"
check "and refuses the client pod for it" wait_for "$work/a/agent.log" \
  "\"event\":\"pod_refused\".*\"pod_uid\":\"$client_uid\".*\"result\":\"kubernetes_not_synced\"" 10
wait_for "$work/a/agent.log" '"event":"pod_netns_served".*10\.77\.1\.10' 10 >/dev/null || true
early=$(exec_in_pod a client "$client_cg" python3 "$work/line_client.py" 10.77.2.10 8080 before-sync)
echo "# before the sync the client got: $early"
check "before the first sync the client's mesh connection gets nothing" lacks "reply: hello" "$early"
check_not_synced_denial a "$client_uid"
check "web never saw the early bytes" lacks before-sync "$(cat "$work/web.log")"
early_status=$(kt a status | grep -A1 '^kubernetes' || true)
echo "# node a's status before the sync: $early_status"
check "ktrust status says node a is not synced, and why its pods are refused" \
  grep -q '^kubernetes  *NOT synced (its pods. mesh connections are refused' <<<"$early_status"

api a release
check "once synced, node a enrols mesh/client" wait_for "$work/a/agent.log" \
  '"event":"pod_enrolled".*"pod":"mesh/client".*"id":"spiffe://example.org/ns/mesh/sa/client"' 10
check "and mesh/intruder, as its own service account" wait_for "$work/a/agent.log" \
  '"event":"pod_enrolled".*"pod":"mesh/intruder".*"id":"spiffe://example.org/ns/mesh/sa/intruder"' 10
wait_until 10 grep -q '"event":"pod_netns_served".*10\.77\.1\.12' "$work/a/agent.log" || true
synced_status() {
  kt a status --json | jq -e '.kubernetes | .synced and .pods_enrolled == 2 and .pods_refused == 0
    and .namespaces_opted_in >= 1 and .problem == ""'
}
wait_until 10 synced_status || true
check "ktrust status on node a: synced, its two mesh pods enrolled ($(kt a status | grep '^kubernetes'))" \
  synced_status

# --- Traffic ---------------------------------------------------------------
run_in_pod a client "$client_cg" "$work/client.log" python3 -u "$work/line_client.py" \
  10.77.2.10 8080 from-client 30
wait_for "$work/client.log" 'reply:\|error:' 15 || true
echo "# client: $(cat "$work/client.log")"
check "the client pod reaches web across the nodes" grep -q 'reply: hello from-client' "$work/client.log"
conns_a=$(kt a conns --json)
conns_b=$(kt b conns --json)
echo "# node a conns: $(jq -c '[.connections[] | {direction, workload, local_id, peer_id, pod}]' <<<"$conns_a")"
echo "# node b conns: $(jq -c '[.connections[] | {direction, workload, local_id, peer_id, pod}]' <<<"$conns_b")"
check "node a: outbound from ns/mesh/sa/client to ns/mesh/sa/web, pod mesh/client" \
  test "$(jq -r '.connections[] | select(.direction == "outbound") | [.local_id, .peer_id, .pod.namespace, .pod.name, .pod.service_account] | join(" ")' <<<"$conns_a")" \
  = "spiffe://example.org/ns/mesh/sa/client spiffe://example.org/ns/mesh/sa/web mesh client client"
check "node b: inbound to ns/mesh/sa/web from ns/mesh/sa/client, pod mesh/web" \
  test "$(jq -r '.connections[] | select(.direction == "inbound") | [.local_id, .peer_id, .pod.namespace, .pod.name, .pod.service_account] | join(" ")' <<<"$conns_b")" \
  = "spiffe://example.org/ns/mesh/sa/web spiffe://example.org/ns/mesh/sa/client mesh web web"
table=$(kt a conns)
echo "$table" | sed 's/^/#   /'
check "ktrust conns prints the pod columns" grep -q 'NAMESPACE *POD *SERVICE ACCOUNT' <<<"$table"

intruder=$(exec_in_pod a intruder "$intruder_cg" python3 "$work/line_client.py" 10.77.2.10 8080 SECRET-intruder)
echo "# intruder got: $intruder"
check "the intruder's service account gets no reply" lacks "reply: hello" "$intruder"
refused_intruder() {
  kt b denials --json |
    jq -e '.denials[] | select(.peer_id == "spiffe://example.org/ns/mesh/sa/intruder" and .result == "denied")'
}
check "node b refused spiffe://example.org/ns/mesh/sa/intruder (policy)" wait_until 5 refused_intruder
check "web saw none of the intruder's bytes" lacks SECRET-intruder "$(cat "$work/web.log")"

plain=$(exec_in_pod a plainclient "$plainclient_cg" python3 "$work/line_client.py" 10.77.2.11 8080 plain-hello)
echo "# plain client got: $plain"
check "the pods of a namespace not opted in talk in plaintext, untouched" grep -q 'reply: hello plain-hello' <<<"$plain"
check "node a does not enrol the plain pod" lacks plainclient "$(kt a workloads --json)"
check "neither agent carried it" lacks 10.77.2.11 "$(kt a conns --json)$(kt b conns --json)"

# --- Node b's agent restarted while its API server holds the lists --------
# Its first pass refuses every pod (not synced) and enforces none of their
# ports: the rules the last run left must stay, refusing, not be pruned as
# gone. The plain client (not intercepted on node a) dials web's enforced
# port directly meanwhile.
agent_b=$(pgrep -f -- " run --config $work/b/ktrustd.yaml$")
kill -9 "$agent_b"
wait_until 10 exited "$agent_b"
api b hold
start_agent b "$ktrustd"
wait_for "$work/b/agent.log" "\"event\":\"pinned_rules_kept\"" 10 >/dev/null || true
echo "# node b kept: $(grep -o "\"event\":\"pinned_rules_kept\".*" "$work/b/agent.log" | head -1)"
check "node b's new agent, not synced, keeps the rules the last run left" \
  grep -q '"event":"pinned_rules_kept".*before this node.s pods were read' "$work/b/agent.log"
unsynced=$(exec_in_pod a plainclient "$plainclient_cg" python3 "$work/line_client.py" 10.77.2.10 8080 SECRET-unsynced)
echo "# plaintext to web while node b is not synced got: $unsynced"
check "web's enforced port takes no plaintext while node b's new agent is not synced" \
  lacks "reply: hello" "$unsynced"
check "web saw none of those bytes" lacks SECRET-unsynced "$(cat "$work/web.log")"
api b release
check "once synced, node b's new agent enrols mesh/web again" wait_until 10 grep -q \
  '"event":"pod_enrolled".*"pod":"mesh/web".*"ports":"8080"' "$work/b/agent.log"

# --- The client pod deleted ------------------------------------------------
# As kubelet does: the containers stop, their cgroups go, then the API
# server's object; the network namespace is kept here to look inside it.
client_ns=$(pod_ns a client)
listeners_in_pod() { ip netns exec "$client_ns" ss -Hltn | wc -l; }
links() { kt a status --json | jq '.bpf.attachments | length'; }
links_before=$(links)
echo "# before: $(listeners_in_pod) listeners in the client pod, $links_before pinned links on node a"
check "node a serves the client pod with listeners in its namespace" test "$(listeners_in_pod)" -gt 0
echo 1 >"$KT_CG/a/$client_pod_cg/cgroup.kill"
wait_until 10 grep -qx 'populated 0' "$KT_CG/a/$client_pod_cg/cgroup.events"
rmdir "$KT_CG/a/$client_cg" "$KT_CG/a/$client_pod_cg"
api a delete pods "$client_uid"
check "the deleted pod is released" wait_for "$work/a/agent.log" \
  "\"event\":\"pod_released\",\"pod_uid\":\"$client_uid\"" 10
client_listed() { kt a workloads --json | grep -q mesh/client; }
check "ktrust workloads no longer lists it" wait_until 10 eval '! client_listed'
check "its listeners are closed" wait_until 10 test "$(listeners_in_pod)" -eq 0
links_after=$(links)
echo "# after: $(listeners_in_pod) listeners in the client pod, $links_after pinned links on node a"
check "its pinned link is gone" test "$links_after" -lt "$links_before"
check "the intruder pod is still enrolled" grep -q mesh/intruder <<<"$(kt a workloads --json)"

two_nodes_results
