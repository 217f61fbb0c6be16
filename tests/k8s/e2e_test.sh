#!/usr/bin/env bash
# Issue 14 end to end: the agent's image under runc as the DaemonSet runs it,
# on two simulated nodes, against a fake API server, with pods that are runc
# containers in kubelet-shaped cgroups.
#
#   image    tools/image/build.sh from this build, unpacked as a runtime does
#   agents   the DaemonSet's init container (bpffs) and agent container as OCI
#            bundles derived from the rendered manifest (bundle_from_daemonset.js):
#            its capabilities, read-only root, host PID namespace, mounts and
#            their propagation; `ktrustd run` with the ConfigMap's ktrustd.yaml
#            (Kubernetes mode turned on, the test's trust domain, mesh CIDRs and
#            policy laid over it), the cluster intermediate as the ktrust-ca
#            Secret's files, NODE_NAME, and what the kubelet adds to any pod: the
#            service-account token and CA at /var/run/secrets/kubernetes.io/
#            serviceaccount and KUBERNETES_SERVICE_HOST/PORT. Each agent is in
#            a pod cgroup of its own (the pod is in the fake API server as
#            ktrust-system/ktrust-<node>, hostNetwork). A simulated node's
#            "host" network namespace is the node's own (two_nodes.sh), its
#            "host" root a stand-in directory (shared mount) whose
#            sys/fs/cgroup is the node's cgroup subtree.
#   API      a fake API server per node (fake_api_server: recorded pod and
#            namespace objects replayed over HTTPS as list + watch)
#   pods     runc containers whose read-only root holds only the host's /usr
#            (python3 http.server, curl): no image registry is reachable here.
#            Network namespace and veth made by two_nodes.sh's add_pod (as a
#            CNI plugin would), cgroups in the systemd driver's layout,
#            guaranteed and burstable QoS.
#
#   node a: mesh/client (sa client), mesh/intruder (sa intruder),
#           plain/plainclient; 30 pods mesh/churn-N created and deleted
#   node b: mesh/web (sa web, declares 8080), plain/plainweb (8080)
#   policy: web's 8080 from spiffe://example.org/ns/mesh/sa/client only
#
# Needs root. Usage: e2e_test.sh SOURCE_DIR NPM_MODULES_DIR KTRUST KTRUSTD FAKE_API_SERVER
set -euo pipefail

# Everything in a private mount namespace: the stand-in hosts' mounts, the
# bpffs the init containers make, and the netns mounts die with it.
if [[ -z ${K8S_E2E_PRIVATE_MOUNTS:-} ]]; then
  exec env K8S_E2E_PRIVATE_MOUNTS=1 unshare --mount --propagation private "$0" "$@"
fi

src=$1
modules=$2
ktrust=$3
ktrustd=$4
FAKE_API_SERVER=$5
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../integration/two_nodes.sh
source "$src/tests/integration/two_nodes.sh"
# shellcheck source=../integration/fake_cluster.sh
source "$src/tests/integration/fake_cluster.sh"

for tool in buildah jq kubectl node runc tcpdump bpftool curl python3 unshare; do
  command -v "$tool" >/dev/null || { echo "not ok - $tool is missing: run tools/dev setup"; exit 1; }
done

work=$(mktemp -d)
RUNC=(runc --root "$work/runc")
containers=()
e2e_cleanup() {
  local c
  # K8S_E2E_LOGS=DIR keeps the agents', pods' and traffic logs for a post-mortem.
  [[ -n ${K8S_E2E_LOGS:-} ]] && mkdir -p "$K8S_E2E_LOGS" && cp "$work"/*.log "$K8S_E2E_LOGS/" 2>/dev/null
  for c in "${containers[@]}"; do "${RUNC[@]}" delete -f "$c" >/dev/null 2>&1 || true; done
  [[ -n ${tcpdump_pid:-} ]] && kill "$tcpdump_pid" 2>/dev/null
  two_nodes_cleanup
  # runc also made the containers' cgroups in the v1 hierarchies of a hybrid host.
  find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -type d -name "ktrust-test-$KT_ID" \
    -exec find {} -depth -type d -delete \; 2>/dev/null || true
}
trap e2e_cleanup EXIT

two_nodes_up "$work" "$ktrust"
# The cgroup2 hierarchy's path of the nodes' subtrees, as runc's cgroupsPath.
cg_path=/ktrust-test-$KT_ID

# --- The image and the manifests ------------------------------------------
echo "# [${SECONDS}s] The image and the manifests"
"$src/tools/image/build.sh" "$ktrust" "$ktrustd" "$work/ktrust.oci.tar" 2>/dev/null
mkdir "$work/oci" "$work/rootfs"
tar -xf "$work/ktrust.oci.tar" -C "$work/oci"
blob() { echo "$work/oci/blobs/${1/://}"; }
manifest=$(blob "$(jq -r '.manifests[0].digest' "$work/oci/index.json")")
image_config=$(blob "$(jq -r '.config.digest' "$manifest")")
while read -r digest; do tar -xzf "$(blob "$digest")" -C "$work/rootfs"; done \
  < <(jq -r '.layers[].digest' "$manifest")
echo "# image: $(stat -c %s "$work/ktrust.oci.tar") bytes, unpacked $(du -sh "$work/rootfs" | cut -f1)"
kubectl kustomize "$src/tools/kubernetes" >"$work/rendered.yaml"
node "$here/yaml_to_json.js" "$modules" "$work/rendered.yaml" >"$work/rendered.json"

# The ConfigMap's ktrustd.yaml with what this test changes laid over it
# (written as JSON, which is YAML too).
jq -r '.[] | select(.kind == "ConfigMap" and .metadata.name == "ktrustd-config") | .data["ktrustd.yaml"]' \
  "$work/rendered.json" >"$work/configmap-ktrustd.yaml"
node "$here/yaml_to_json.js" "$modules" "$work/configmap-ktrustd.yaml" >"$work/configmap-ktrustd.json"
node_config() {  # NODE POLICY_JSON
  jq --argjson policy "$2" '.[0]
    | .trust_domain = "example.org"
    | .kubernetes = {enabled: true}
    | .mesh = {destinations: [{cidr: "10.77.0.0/16"}]}
    | .policy = $policy
    | .agent.log_level = "debug"' "$work/configmap-ktrustd.json"
}

# --- The simulated cluster -------------------------------------------------
echo "# [${SECONDS}s] The simulated cluster"
start_api a 7
start_api b 8
cluster_objects
namespace_json "$work/ns-ktrust.json" ktrust-system 6b1ee2a8-0cb5-4a94-9731-00000000000c '{}'
for n in a b; do
  cluster_namespaces "$n"
  api "$n" add namespaces "$work/ns-ktrust.json"
done

# A pod's root: only the host's /usr, read-only (bin, lib, lib64 are its
# symlinks, as on the host); /srv holds the test's scripts and files.
podroot=$work/podroot
mkdir -p "$podroot"/{usr,proc,dev,tmp,srv,etc} "$work/srv/www"
for l in bin lib lib64 sbin; do ln -s "usr/$l" "$podroot/$l"; done
echo "web pod" >"$work/srv/www/index.html"

# Pod $2 on node $1: a runc container in the pod's network namespace and a
# kubelet-shaped cgroup (QOS $3, UID $4, container number $5), running ARGS.
# Its log is $work/pod-<pod>.log.
run_pod() {  # NODE POD QOS UID NUMBER ARGS...
  local node=$1 pod=$2 qos=$3 uid=$4 number=$5
  shift 5
  local id=pod-$pod cgroup
  cgroup=$(container "$(pod_cgroup "$qos" "$uid")" "$number")
  mkdir -p "$work/$id"
  jq -n --arg root "$podroot" --arg netns "/run/netns/$(pod_ns "$node" "$pod")" \
    --arg cgroup "$cg_path/$node/$cgroup" --arg srv "$work/srv" --arg pod "$pod" \
    --argjson args "$(printf '%s\n' "$@" | jq -R . | jq -sc .)" '{
      ociVersion: "1.0.2",
      process: {terminal: false, user: {uid: 65534, gid: 65534}, args: $args, cwd: "/srv",
                env: ["PATH=/usr/bin", "HOME=/tmp"], noNewPrivileges: true,
                capabilities: {bounding: [], effective: [], permitted: []}},
      root: {path: $root, readonly: true},
      hostname: $pod,
      mounts: [
        {destination: "/proc", type: "proc", source: "proc"},
        {destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "mode=755"]},
        {destination: "/tmp", type: "tmpfs", source: "tmpfs", options: ["nosuid", "nodev"]},
        {destination: "/usr", type: "bind", source: "/usr", options: ["rbind", "ro"]},
        {destination: "/srv", type: "bind", source: $srv, options: ["rbind", "ro"]}],
      linux: {namespaces: [{type: "pid"}, {type: "ipc"}, {type: "uts"}, {type: "mount"},
                           {type: "cgroup"}, {type: "network", path: $netns}],
              cgroupsPath: $cgroup}}' >"$work/$id/config.json"
  containers+=("$id")
  "${RUNC[@]}" run --detach --bundle "$work/$id" "$id" >"$work/pod-$pod.log" 2>&1 </dev/null
}
# Runs ARGS in pod $1's container (kubectl exec), in the foreground.
exec_pod() { local pod=$1; shift; "${RUNC[@]}" exec "pod-$pod" "$@"; }
# The pod's container stopped and removed, its cgroups gone: what the
# kubelet does before the API server's object goes.
stop_pod() {  # NODE POD QOS UID NUMBER
  local pod_cg
  pod_cg=$(pod_cgroup "$3" "$4")
  "${RUNC[@]}" delete -f "pod-$2" >/dev/null
  rmdir "$KT_CG/$1/$pod_cg" 2>/dev/null || true
  [[ ! -d $KT_CG/$1/$pod_cg ]]
}

# Node $1's agent as the DaemonSet runs it; BUNDLE names it (agent-<node>).
agent_bundle() {  # NODE BUNDLE UID NUMBER
  local node=$1 id=$2 uid=$3 number=$4 host=$work/host-$1
  mkdir -p "$work/$id" "$work/$id-run"
  node "$here/bundle_from_daemonset.js" "$work/rendered.json" agent --image-config "$image_config" \
    --host-root "$host" --node-name "node-$node" \
    --cgroups-path "$cg_path/$node/$(container "$(pod_cgroup burstable "$uid")" "$number")" \
    --volume "config=$work/config-$node" --volume "ca=$work/ca-$node" --volume "run=$work/$id-run" \
    --service-account "$work/sa-$node" --kubernetes-service "127.0.0.1:$(api_port "$node")" |
    jq --arg root "$work/rootfs" --arg netns "/run/netns/$(node_ns "$node")" \
      '.root.path = $root | .linux.namespaces += [{type: "network", path: $netns}]' >"$work/$id/config.json"
}
start_agent_container() {  # NODE BUNDLE
  containers+=("$2")
  "${RUNC[@]}" run --detach --bundle "$work/$2" "$2" >"$work/$2.log" 2>&1 </dev/null
  wait_for "$work/$2.log" '"event":"ready"\|startup_failed' 30
  ! grep -q startup_failed "$work/$2.log"
}
agent_pid() { "${RUNC[@]}" state "$1" | jq -r .pid; }
kt() { local node=$1; shift; "$ktrust" --socket "$work/agent-$node-run/control.sock" "$@"; }

# The agent's own pod in the API server: ktrust-system, hostNetwork (its IP
# is the node's).
agent_pod_json() {  # NODE NAME UID NODE_IP
  pod_json "$work/pod-$2.json" "$2" ktrust-system ktrust "node-$1" "$3" "$4" '[]'
  jq '.spec.hostNetwork = true' "$work/pod-$2.json" >"$work/pod-$2.json.tmp"
  mv "$work/pod-$2.json.tmp" "$work/pod-$2.json"
  api "$1" add pods "$work/pod-$2.json"
}
stopped() { [[ $("${RUNC[@]}" state "$1" | jq -r .status) == stopped ]]; }
# The client pod asks web again and again, a marker in the URL, until
# $work/srv/stop exists; one line per request.
client_traffic() {  # LOG
  exec_pod client sh -c 'while [ ! -e /srv/stop ]; do
    curl -sS --max-time 5 -o /dev/null -w "http %{http_code}\n" "http://10.77.2.10:8080/index.html?m=PLAINTEXT-MARKER-e2e" 2>&1
  done' >"$1" 2>&1
}

node_up() {  # NODE POLICY_JSON AGENT_UID NODE_IP
  local node=$1 host=$work/host-$1
  # The stand-in host root: a shared mount, as systemd makes /, with the
  # node's cgroup subtree where the host's cgroup2 root would be.
  mkdir -p "$host/sys/fs/cgroup" "$work/config-$node" "$work/sa-$node"
  mount --bind "$host" "$host"
  mount --make-rshared "$host"
  mount --bind "$KT_CG/$node" "$host/sys/fs/cgroup"
  node_config "$node" "$2" >"$work/config-$node/ktrustd.yaml"
  # The ktrust-ca Secret's files (defaultMode 0400): the node's cluster
  # intermediate, scoped to the pods' IDs.
  "$ktrust" ca intermediate --ca-dir "$work/root" --name "k8s-$node" --dir "$work/ca-$node" \
    --scope 'spiffe://example.org/ns/*' >/dev/null
  chmod 0400 "$work/ca-$node"/*
  # The kubelet's service-account volume: the fake API server's CA and token.
  cp "$work/api-$node/ca.crt" "$work/api-$node/token" "$work/sa-$node/"
  echo ktrust-system >"$work/sa-$node/namespace"
  # The init container, then the agent.
  mkdir -p "$work/init-$node"
  node "$here/bundle_from_daemonset.js" "$work/rendered.json" mount-bpffs --image-config "$image_config" \
    --host-root "$host" --node-name "node-$node" --cgroups-path "$cg_path/$node/init" |
    jq --arg root "$work/rootfs" '.root.path = $root' >"$work/init-$node/config.json"
  containers+=("init-$node")
  local rc=0
  "${RUNC[@]}" run --bundle "$work/init-$node" "init-$node" >"$work/init-$node.log" 2>&1 </dev/null || rc=$?
  sed "s/^/#   node $node init: /" "$work/init-$node.log"
  check "node $node: the init container exits 0 and the stand-in host has bpffs (exit $rc, $(stat -f -c %T "$host/sys/fs/bpf"))" \
    test "$rc" = 0 -a "$(stat -f -c %T "$host/sys/fs/bpf")" = bpf_fs
  agent_pod_json "$node" "ktrust-$node" "$3" "$4"
  agent_bundle "$node" "agent-$node" "$3" 900
}

agent_a_uid=$(uid_of 901)
agent_b_uid=$(uid_of 902)

# --- Node b: web and plainweb, then its agent ------------------------------
echo "# [${SECONDS}s] Node b: web and plainweb, then its agent"
node_up b '[{"to": "spiffe://example.org/ns/mesh/sa/web", "ports": [8080],
            "from": ["spiffe://example.org/ns/mesh/sa/client"]}]' "$agent_b_uid" 10.77.0.2
cluster_pods b
run_pod b web guaranteed "$web_uid" 1 python3 -u -m http.server --directory /srv/www 8080
run_pod b plainweb burstable "$plainweb_uid" 2 python3 -u -m http.server --directory /srv/www 8080
wait_until 10 ip netns exec "$(pod_ns b web)" ss -Hltn 'sport = :8080'
wait_until 10 ip netns exec "$(pod_ns b plainweb)" ss -Hltn 'sport = :8080'
check "node b: ktrustd run from the image under runc is ready" start_agent_container b agent-b
check "node b enrols pod mesh/web as spiffe://example.org/ns/mesh/sa/web" wait_for "$work/agent-b.log" \
  '"event":"pod_enrolled".*"pod":"mesh/web".*"id":"spiffe://example.org/ns/mesh/sa/web"'
wait_for "$work/agent-b.log" '"event":"pod_netns_served".*10\.77\.2\.10' 10 >/dev/null || true
agent_b_pid=$(agent_pid agent-b)
echo "# node b agent: pid $agent_b_pid, $(grep -E '^(CapEff|NoNewPrivs)' /proc/"$agent_b_pid"/status | tr '\t\n' '  ')"
check "it runs with the DaemonSet's five capabilities (CapEff 000000c000281000)" \
  grep -qP '^CapEff:\t000000c000281000$' "/proc/$agent_b_pid/status"
check "in a cgroup namespace of its own, in its pod's cgroup on the node" \
  test "$(readlink "/proc/$agent_b_pid/ns/cgroup")" != "$(readlink /proc/self/ns/cgroup)" \
  -a -n "$(grep -l "^$agent_b_pid\$" "$KT_CG"/b/kubepods.slice/*/*/cri-containerd-*.scope/cgroup.procs)"
for probe in startupProbe readinessProbe livenessProbe; do
  mapfile -t probe_cmd < <(jq -r ".[] | select(.kind == \"DaemonSet\") | .spec.template.spec.containers[]
    | select(.name == \"agent\") | .$probe.exec.command[]" "$work/rendered.json")
  probe_rc=0
  probe_out=$("${RUNC[@]}" exec agent-b "${probe_cmd[@]}" 2>&1) || probe_rc=$?
  check "the DaemonSet's $probe (${probe_cmd[*]}) passes in the agent's container: exit $probe_rc, $probe_out" \
    test "$probe_rc" = 0
done
workloads_b=$(kt b workloads --json)
echo "# node b workloads: $(jq -c '[.workloads[] | {name, spiffe_id, pod: .pod.name}]' <<<"$workloads_b")"
check "the plain pod and the agent's own pod are not enrolled" \
  test -z "$(jq -r '.workloads[] | select(.pod.name == "plainweb" or .pod.name == "ktrust-b")' <<<"$workloads_b")"

# --- Node a: its agent starts before the API server answers ----------------
echo "# [${SECONDS}s] Node a: its agent starts before the API server answers"
node_up a '[]' "$agent_a_uid" 10.77.0.1
cluster_pods a hold
run_pod a client burstable "$client_uid" 3 sleep infinity
run_pod a plainclient burstable "$plainclient_uid" 4 sleep infinity
run_pod a intruder guaranteed "$intruder_uid" 5 sleep infinity
check "node a: ktrustd run from the image under runc is ready" start_agent_container a agent-a
check "node a refuses the client pod until the first sync" wait_for "$work/agent-a.log" \
  "\"event\":\"pod_refused\".*\"pod_uid\":\"$client_uid\".*\"result\":\"kubernetes_not_synced\"" 10
wait_for "$work/agent-a.log" '"event":"pod_netns_served".*10\.77\.1\.10' 10 >/dev/null || true
curl_web() {  # POD URL_PATH
  exec_pod "$1" curl -sS --max-time 5 -o /dev/null -w 'http %{http_code}\n' "http://10.77.2.10:8080/index.html?m=$2" 2>&1 || true
}
early=$(curl_web client before-sync)
echo "# before the sync the client got: $early"
check "before the first sync the client's request gets no answer" lacks "http 200" "$early"
check_not_synced_denial a "$client_uid"
check "web saw nothing of it" lacks before-sync "$(cat "$work/pod-web.log")"

api a release
check "once synced, node a enrols mesh/client" wait_for "$work/agent-a.log" \
  '"event":"pod_enrolled".*"pod":"mesh/client".*"id":"spiffe://example.org/ns/mesh/sa/client"' 10
wait_until 10 grep -q '"event":"pod_netns_served".*10\.77\.1\.12' "$work/agent-a.log" || true

# --- Traffic ---------------------------------------------------------------
echo "# [${SECONDS}s] Traffic"
reply=$(curl_web client from-client)
echo "# client got: $reply"
check "the client pod reaches web on the other node" grep -qx 'http 200' <<<"$reply"
# A connection held open until $work/srv/release exists, to see it in
# `ktrust conns` on both nodes.
exec_pod client python3 -c 'import os, socket, time
s = socket.create_connection(("10.77.2.10", 8080), timeout=10)
s.sendall(b"GET /index.html HTTP/1.1\r\nHost: web\r\n\r\n")
print(s.recv(100).split(b"\r\n")[0].decode(), flush=True)
while not os.path.exists("/srv/release"):
    time.sleep(0.1)' >"$work/held.log" 2>&1 &
held_pid=$!
wait_for "$work/held.log" 'HTTP/1' 10 >/dev/null || true
conns_a=$(kt a conns --json)
conns_b=$(kt b conns --json)
echo "# node a conns: $(jq -c '[.connections[] | {direction, local_id, peer_id, pod: .pod.name}]' <<<"$conns_a")"
echo "# node b conns: $(jq -c '[.connections[] | {direction, local_id, peer_id, pod: .pod.name}]' <<<"$conns_b")"
check "node a: outbound ns/mesh/sa/client -> ns/mesh/sa/web, pod mesh/client" \
  grep -qx "spiffe://example.org/ns/mesh/sa/client spiffe://example.org/ns/mesh/sa/web mesh client client" \
  <<<"$(jq -r '.connections[] | select(.direction == "outbound") | [.local_id, .peer_id, .pod.namespace, .pod.name, .pod.service_account] | join(" ")' <<<"$conns_a")"
check "node b: inbound ns/mesh/sa/web <- ns/mesh/sa/client, pod mesh/web" \
  grep -qx "spiffe://example.org/ns/mesh/sa/web spiffe://example.org/ns/mesh/sa/client mesh web web" \
  <<<"$(jq -r '.connections[] | select(.direction == "inbound") | [.local_id, .peer_id, .pod.namespace, .pod.name, .pod.service_account] | join(" ")' <<<"$conns_b")"
touch "$work/srv/release"
wait "$held_pid" || true

intruder=$(curl_web intruder SECRET-intruder)
echo "# intruder got: $intruder"
check "the intruder's service account gets no answer" lacks "http 200" "$intruder"
refused_intruder() {
  kt b denials --json |
    jq -e '.denials[] | select(.peer_id == "spiffe://example.org/ns/mesh/sa/intruder" and .result == "denied")'
}
check "node b refused spiffe://example.org/ns/mesh/sa/intruder (policy)" wait_until 5 refused_intruder
check "web saw nothing of it" lacks SECRET-intruder "$(cat "$work/pod-web.log")"

plain=$(exec_pod plainclient curl -sS --max-time 5 -o /dev/null -w 'http %{http_code}\n' \
  "http://10.77.2.11:8080/index.html?m=plain-hello" 2>&1 || true)
echo "# plain client got: $plain"
check "the pods of a namespace not opted in talk, untouched" grep -qx 'http 200' <<<"$plain"
check "neither agent carried it" lacks 10.77.2.11 "$(kt a conns --json)$(kt b conns --json)"

# --- 30 pods created and deleted while the client's traffic flows ----------
echo "# [${SECONDS}s] 30 pods created and deleted while the client's traffic flows"
agent_a_pid=$(agent_pid agent-a)
sockets() { find "/proc/$1/fd" -lname 'socket:*' 2>/dev/null | wc -l; }
links() { kt "$1" status --json | jq '.bpf.attachments | length'; }
# Entries of every map the agent pinned on node a's bpffs.
map_entries() {
  local map
  for map in $(find "$work/host-a/sys/fs/bpf/ktrust" -type f | sort); do
    echo "$(basename "$map")=$(bpftool -j map dump pinned "$map" 2>/dev/null | jq length)"
  done | tr '\n' ' '
}
state_a() { echo "sockets $(sockets "$agent_a_pid"), links $(links a), maps: $(map_entries)"; }
# Compared with no connection open: a connection has sockets and map
# entries of its own while it lives.
no_connections() { [[ $(kt a conns --json | jq '.connections | length') == 0 ]]; }
check "node a carries no connection before the churn" wait_until 15 no_connections
before=$(state_a)
echo "# node a before: $before"
# The wire between the nodes, captured while it happens.
ip netns exec "$(node_ns a)" tcpdump -i a0 -nn -U -w "$work/wire.pcap" tcp >"$work/tcpdump.log" 2>&1 &
tcpdump_pid=$!
wait_for "$work/tcpdump.log" 'listening on' 10
# The client asks web again and again, marker in the URL, until told to stop.
client_traffic "$work/traffic.log" &
traffic_pid=$!
exec_pod plainclient curl -sS --max-time 5 -o /dev/null "http://10.77.2.11:8080/index.html?m=PLAIN-CONTROL-e2e" || true
churn_pod() { echo "churn-$1"; }
for i in $(seq 1 30); do
  uid=$(uid_of $((100 + i)))
  qos=burstable
  ((i % 2)) && qos=guaranteed
  add_pod a "$(churn_pod "$i")" $((100 + i))
  pod_json "$work/pod-churn-$i.json" "$(churn_pod "$i")" mesh churn node-a "$uid" "10.77.1.$((100 + i))" '[]'
  api a add pods "$work/pod-churn-$i.json"
  run_pod a "$(churn_pod "$i")" "$qos" "$uid" $((100 + i)) sleep infinity
  wait_for "$work/agent-a.log" "\"event\":\"pod_enrolled\".*\"pod\":\"mesh/churn-$i\"" 10 >/dev/null ||
    not_ok "churn pod $i was not enrolled"
done
enrolled=$(kt a workloads --json | jq '[.workloads[] | select(.pod.name // "" | startswith("churn-"))] | length')
echo "# $enrolled churn cgroups enrolled on node a, $(state_a)"
check "all 30 churn pods enrolled (pod and container cgroups: $enrolled)" test "$enrolled" -eq 60
for i in $(seq 1 30); do
  uid=$(uid_of $((100 + i)))
  qos=burstable
  ((i % 2)) && qos=guaranteed
  stop_pod a "$(churn_pod "$i")" "$qos" "$uid" $((100 + i)) || not_ok "churn pod $i's cgroup stayed"
  api a delete pods "$uid"
  wait_for "$work/agent-a.log" "\"event\":\"pod_released\",\"pod_uid\":\"$uid\"" 10 >/dev/null ||
    not_ok "churn pod $i was not released"
  ip netns del "$(pod_ns a "$(churn_pod "$i")")"
done
touch "$work/srv/stop"
wait "$traffic_pid" || true
exec_pod plainclient curl -sS --max-time 5 -o /dev/null "http://10.77.2.11:8080/index.html?m=PLAIN-CONTROL-e2e" || true
kill "$tcpdump_pid"
wait "$tcpdump_pid" || true
tcpdump_pid=
answers=$(grep -c '^http 200$' "$work/traffic.log" || true)
failures=$(grep -vc '^http 200$' "$work/traffic.log" || true)
echo "# client traffic during the churn: $answers answered, $failures not: $(grep -v '^http 200$' "$work/traffic.log" | sort | uniq -c | tr '\n' ' ')"
check "the client's requests were answered throughout ($answers answered)" test "$answers" -gt 0 -a "$failures" -eq 0
check "web saw them" grep -q PLAINTEXT-MARKER-e2e "$work/pod-web.log"
wire=$(tcpdump -nn -A -r "$work/wire.pcap" 2>/dev/null)
echo "# capture: $(tcpdump -nn -r "$work/wire.pcap" 2>/dev/null | wc -l) packets, $(grep -c 'PLAIN-CONTROL-e2e' <<<"$wire") with the plain pods' control marker, $(grep -c 'PLAINTEXT-MARKER-e2e' <<<"$wire") with the client's"
check "the capture sees plaintext where there is some (the plain pods' request)" grep -q PLAIN-CONTROL-e2e <<<"$wire"
check "and not one of the client's requests in plaintext on the wire" lacks PLAINTEXT-MARKER-e2e "$wire"
same_as_before() { no_connections && [[ $(state_a) == "$before" ]]; }
wait_until 15 same_as_before || true
after=$(state_a)
echo "# node a after: $after"
check "no leaked socket, link or map entry after the 30 pods" test "$after" = "$before"

# --- Surge: a second agent beside the first --------------------------------
echo "# [${SECONDS}s] Surge: a second agent beside the first"
# A rolling update with maxSurge: 1: the new pod's agent takes over through
# the handover socket on the shared hostPath, then the old pod gets its
# SIGTERM.
b_agent=agent-b
surge() {
  local watcher slots
  uid=$(uid_of 903)
  agent_pod_json b ktrust-b2 "$uid" 10.77.0.2
  agent_bundle b agent-b2 "$uid" 903
  rm -f "$work/srv/stop"
  client_traffic "$work/surge-traffic.log" &
  traffic=$!
  # The slot web's port names in node b's pinned rule, read over and over
  # (every few microseconds) through the takeover.
  "$here/watch_rule.py" "$work/host-b/sys/fs/bpf/ktrust/maps/ktrust_inbound" 10.77.2.10 8080 \
    "$work/srv/stop" "$work/watching" >"$work/surge-slots.log" &
  watcher=$!
  wait_until 30 test -e "$work/watching" || not_ok "surge: the slot watcher did not start"
  check "surge: a second agent on node b is ready beside the first" start_agent_container b agent-b2
  check "surge: it took over from the first through the shared handover socket" \
    grep -q "\"predecessor_pid\":$agent_b_pid" "$work/agent-b2.log"
  # The kubelet deletes the old pod once the new one is ready.
  "${RUNC[@]}" kill agent-b TERM
  check "surge: the old agent exits on SIGTERM" wait_until 30 stopped agent-b
  check "surge: it left its programs pinned" test -n "$(find "$work/host-b/sys/fs/bpf/ktrust" -type f)"
  touch "$work/srv/stop"
  wait "$traffic" "$watcher" || true
  # The new agent's listener took web's slot in place: the rule never named
  # another slot, empty or not (a takeover used to point every pod rule at
  # a slot nothing fills until the pod was served again, which refused the
  # connections that came meanwhile).
  slots=$(cat "$work/surge-slots.log")
  check "surge: web's port named one listener slot throughout (slot:reads $slots)" \
    grep -Eq '^[0-9]+:[0-9]+$' "$work/surge-slots.log"
  answers=$(grep -c '^http 200$' "$work/surge-traffic.log" || true)
  failures=$(grep -vc '^http 200$' "$work/surge-traffic.log" || true)
  echo "# client traffic during the surge: $answers answered, $failures not: $(grep -v '^http 200$' "$work/surge-traffic.log" | sort | uniq -c | head -3 | tr '\n' ' ')"
  check "surge: no request refused during the takeover" test "$answers" -gt 0 -a "$failures" -eq 0
  b_agent=agent-b2
}
surge

# --- A pod deleted: its listeners and link released -----------------------
echo "# [${SECONDS}s] A pod deleted: its listeners and link released"
client_ns=$(pod_ns a client)
listeners_in_client() { ip netns exec "$client_ns" ss -Hltn | wc -l; }
links_before=$(links a)
listeners_before=$(listeners_in_client)
echo "# client pod: $listeners_before listeners in its namespace, $links_before links on node a"
stop_pod a client burstable "$client_uid" 3
api a delete pods "$client_uid"
check "the deleted client pod is released" wait_for "$work/agent-a.log" \
  "\"event\":\"pod_released\",\"pod_uid\":\"$client_uid\"" 10
check "its listeners are closed ($listeners_before before)" wait_until 10 test "$(listeners_in_client)" -eq 0
links_after=$(links a)
echo "# after: $(listeners_in_client) listeners, $links_after links"
check "its link is gone ($links_before -> $links_after)" test "$links_after" -lt "$links_before"

# --- Agent killed: enrolled pods fail closed ------------------------------
echo "# [${SECONDS}s] Agent killed: enrolled pods fail closed"
# Web's port 8080 is enforced: plaintext from a pod outside the mesh is
# refused while the agent runs, and must stay refused once it is killed.
plain_to_web() {
  exec_pod plainclient curl -sS --max-time 5 -o /dev/null -w 'http %{http_code}\n' \
    "http://10.77.2.10:8080/index.html?m=$1" 2>&1 || true
}
alive=$(plain_to_web BEFORE-KILL-e2e)
echo "# plaintext to web with node b's agent running: $alive"
check "plaintext to web's enforced port is refused while the agent runs" lacks "http 200" "$alive"
"${RUNC[@]}" kill "$b_agent" KILL 2>/dev/null || true
check "node b's agent killed (SIGKILL)" wait_until 10 stopped "$b_agent"
pins=$(find "$work/host-b/sys/fs/bpf/ktrust" -type f | wc -l)
echo "# node b's bpffs keeps $pins pinned objects"
check "its programs stay pinned" test "$pins" -gt 0
killed=$(plain_to_web AFTER-KILL-e2e)
echo "# plaintext to web with node b's agent dead: $killed"
check "plaintext to web is still refused (fail closed)" lacks "http 200" "$killed"
check "web saw none of it" lacks "KILL-e2e" "$(cat "$work/pod-web.log")"
plain=$(exec_pod plainclient curl -sS --max-time 5 -o /dev/null -w 'http %{http_code}\n' \
  "http://10.77.2.11:8080/index.html?m=plain-after-kill" 2>&1 || true)
check "the plain pods still talk ($plain)" grep -qx 'http 200' <<<"$plain"

two_nodes_results
