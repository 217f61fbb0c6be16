#!/usr/bin/env bash
# The main act of the demo (tools/dev demo): two simulated nodes on this host,
# each with its own ktrustd on the embedded CA (one root, one intermediate per
# node). An unmodified curl on node a reaches an unmodified python3
# http.server on node b; neither knows ktrust exists. Then a workload the
# server's policy does not allow is refused, and `ktrust denials` says why.
# Last, a replica of the api starts in a pod (a network namespace of its
# own, as on Kubernetes) and is served from inside it.
# Everything it creates (namespaces, cgroups, bpffs mounts, files) is removed
# when it exits. Needs root.
#   usage: tools/demo/mesh_demo.sh /path/to/ktrust /path/to/ktrustd
set -euo pipefail

[[ $# -eq 2 ]] || { echo "usage: $0 /path/to/ktrust /path/to/ktrustd" >&2; exit 2; }
ktrust=$(realpath "$1")
ktrustd=$(realpath "$2")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
# shellcheck source=../../tests/integration/two_nodes.sh
source "$here/../../tests/integration/two_nodes.sh"
trap two_nodes_cleanup EXIT
trap 'exit 130' INT TERM HUP

say() { printf '\n== %s\n' "$*"; }
die() { printf '\ndemo FAILED: %s\n' "$*" >&2; exit 1; }
show() { printf '$ %s\n' "$*"; "$@"; }

say "Two nodes: netns $KT_NS_A (10.77.0.1) and $KT_NS_B (10.77.0.2), one CA, one intermediate each"
two_nodes_up "$work" "$ktrust"
mkdir -p "$KT_CG"/a/{frontend,batch} "$KT_CG"/b/api
write_config a '
  - name: frontend
    cgroup: frontend
    spiffe_id: spiffe://{trust_domain}/{node}/frontend
  - name: batch
    cgroup: batch
    spiffe_id: spiffe://{trust_domain}/{node}/batch' '
  []'
write_config b '
  - name: api
    cgroup: api*
    spiffe_id: spiffe://{trust_domain}/{node}/api
    ports: [8080]' '
  - to: api
    ports: [8080]
    from: [spiffe://example.org/node-a/frontend]'
sed -n '/^policy:/,/^agent:/p' "$work/b/ktrustd.yaml" | sed '$d'

say "Node b runs an unmodified python3 http.server in cgroup api; the agents start"
mkdir "$work/www"
echo "hello from the api on node b, over mutual TLS" >"$work/www/index.txt"
run_in b api "$work/http.log" python3 -u -m http.server --bind 0.0.0.0 --directory "$work/www" 8080
wait_for "$work/http.log" "Serving HTTP" || die "http.server did not start"
start_agent a "$ktrustd" || die "ktrustd on node a did not start"
start_agent b "$ktrustd" || die "ktrustd on node b did not start"
echo "both agents ready"

say "frontend (node a) -> api (node b): plain curl, no certificates, no proxy settings"
out=$(exec_in a frontend curl -sS --max-time 10 http://10.77.0.2:8080/index.txt) || die "curl failed"
echo "$out"
[[ $out == hello* ]] || die "unexpected answer: $out"

say "A connection held open, as ktrust conns shows it on both nodes"
exec_in a frontend python3 -c "
import socket, time
s = socket.create_connection(('10.77.0.2', 8080))
s.sendall(b'GET /index.txt HTTP/1.1\r\nHost: x\r\n\r\n'); s.recv(4096); time.sleep(120)" &
holder=$!
KT_PIDS+=($holder)
# Established on both nodes: the handshake is done and the data path chosen.
established() {
  "$ktrust" --socket "$work/$1/control.sock" conns --json |
    jq -e '.connections | map(select(.state == "established")) | length > 0' >/dev/null
}
for _ in $(seq 100); do
  established a && established b && break
  sleep 0.1
done
established a && established b || die "the held connection is not established on both nodes"
show "$ktrust" --socket "$work/a/control.sock" conns
show "$ktrust" --socket "$work/b/control.sock" conns
kill "$holder" 2>/dev/null || true

say "batch (node a) -> api (node b): a valid identity the policy does not allow"
served=$(grep -c 'GET /index.txt' "$work/http.log" || true)
if out=$(exec_in a batch curl -sS --max-time 10 http://10.77.0.2:8080/index.txt 2>&1); then
  die "batch was served: $out"
fi
echo "curl: $out"
[[ $(grep -c 'GET /index.txt' "$work/http.log" || true) == "$served" ]] ||
  die "http.server saw the refused request"
show "$ktrust" --socket "$work/b/control.sock" denials
show "$ktrust" --socket "$work/b/control.sock" policy check --from spiffe://example.org/node-a/batch \
  --to api --port 8080 || true

say "A replica of api starts in a pod on node b: its own network namespace, address 10.77.2.2"
add_pod b api-pod 2
mkdir -p "$work/www-pod"
echo "hello from the api's pod on node b, over mutual TLS" >"$work/www-pod/index.txt"
run_in_pod b api-pod api-2 "$work/pod-http.log" \
  python3 -u -m http.server --bind 0.0.0.0 --directory "$work/www-pod" 8080
wait_for "$work/pod-http.log" "Serving HTTP" || die "the pod's http.server did not start"
wait_for "$work/b/agent.log" '"event":"pod_netns_served"' || die "node b did not serve the pod"
out=$(exec_in a frontend curl -sS --max-time 10 http://10.77.2.2:8080/index.txt) ||
  die "curl to the pod failed"
echo "$out"
[[ $out == "hello from the api's pod"* ]] || die "unexpected answer: $out"
show "$ktrust" --socket "$work/b/control.sock" workloads

say "Done: the requests crossed the nodes with both SPIFFE IDs, to a pod too; the refused one never reached http.server"
