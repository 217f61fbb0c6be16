# shellcheck shell=bash
# A simulated cluster for the nodes of two_nodes.sh: each node's fake API
# server (fake_api_server, replaying recorded objects), pod and namespace
# objects made from the recorded ones (tests/testdata/kubernetes, only
# their values changed), and kubelet-shaped cgroup paths. Source it after
# two_nodes.sh; FAKE_API_SERVER names the binary.

KT_RECORDED=$(cd "$(dirname "${BASH_SOURCE[0]}")/../testdata/kubernetes" && pwd)

# A pod object: the recorded kuard pod with this pod's fields.
pod_json() {  # FILE NAME NAMESPACE SERVICE_ACCOUNT NODE UID IP PORTS_JSON
  jq --arg name "$2" --arg ns "$3" --arg sa "$4" --arg node "$5" --arg uid "$6" --arg ip "$7" \
    --argjson ports "$8" '.items[0]
      | .metadata.name = $name | .metadata.namespace = $ns | .metadata.uid = $uid
      | .spec.serviceAccountName = $sa | .spec.serviceAccount = $sa | .spec.nodeName = $node
      | .status.podIP = $ip | .status.podIPs = [{ip: $ip}]
      | .spec.containers[0].ports = $ports' "$KT_RECORDED/kuard_minikube_pod_list.json" >"$1"
}
# A namespace object: the recorded "default" with another name, UID and labels.
namespace_json() {  # FILE NAME UID LABELS_JSON
  jq --arg name "$2" --arg uid "$3" --argjson labels "$4" '.items[0]
      | .metadata.name = $name | .metadata.uid = $uid
      | .metadata.labels = ({"kubernetes.io/metadata.name": $name} + $labels)' \
    "$KT_RECORDED/docker_desktop_namespaces.json" >"$1"
}
# Node $1's fake API server, fed commands through a FIFO on fd 7 (a) or 8 (b).
start_api() {  # NODE FD
  local node=$1 fd=$2
  mkdir -p "$KT_WORK/api-$node"
  mkfifo "$KT_WORK/api-$node/in"
  eval "exec $fd<>\"$KT_WORK/api-$node/in\""
  run_in "$node" apiserver "$KT_WORK/api-$node/log" "$FAKE_API_SERVER" "$KT_WORK/api-$node" \
    "$KT_WORK/api-$node/in"
  wait_for "$KT_WORK/api-$node/log" '^listening '
}
api() {  # NODE COMMAND...: sends it, waits until applied
  local node=$1 fd=7
  shift
  [[ $node == b ]] && fd=8
  echo "$*" >&"$fd"
  wait_for "$KT_WORK/api-$node/log" "^done $*\$" 10
}
api_port() { awk '/^listening/ {print $2}' "$KT_WORK/api-$1/log"; }

# Kubelet's pod cgroup (systemd driver) and a container scope in it.
uid_of() { printf '%08x-0000-4000-8000-%012x' "$1" "$1"; }  # a pod UID from a number
pod_cgroup() {  # QOS(burstable|guaranteed) UID
  local escaped=${2//-/_}
  if [[ $1 == guaranteed ]]; then
    echo "kubepods.slice/kubepods-pod$escaped.slice"
  else
    echo "kubepods.slice/kubepods-$1.slice/kubepods-$1-pod$escaped.slice"
  fi
}
container() { printf '%s/cri-containerd-%064x.scope' "$1" "$2"; }  # POD_CGROUP NUMBER

# The pods both Kubernetes tests run, and their namespaces:
#   node a: mesh/client (sa client, 10.77.1.10), plain/plainclient
#           (10.77.1.11), mesh/intruder (sa intruder, 10.77.1.12)
#   node b: mesh/web (sa web, 10.77.2.10, declares TCP 8080),
#           plain/plainweb (10.77.2.11, 8080)
#   mesh is labelled ktrust.io/mesh=enabled, plain is not
web_uid=$(uid_of 1)
plainweb_uid=$(uid_of 2)
client_uid=$(uid_of 3)
plainclient_uid=$(uid_of 4)
intruder_uid=$(uid_of 5)
# Their objects, in $KT_WORK/pod-<pod>.json and $KT_WORK/ns-<namespace>.json.
cluster_objects() {
  local port8080='[{"name": "http", "containerPort": 8080, "protocol": "TCP"}]'
  namespace_json "$KT_WORK/ns-mesh.json" mesh 6b1ee2a8-0cb5-4a94-9731-00000000000a \
    '{"ktrust.io/mesh": "enabled"}'
  namespace_json "$KT_WORK/ns-plain.json" plain 6b1ee2a8-0cb5-4a94-9731-00000000000b '{}'
  pod_json "$KT_WORK/pod-web.json" web mesh web node-b "$web_uid" 10.77.2.10 "$port8080"
  pod_json "$KT_WORK/pod-plainweb.json" plainweb plain default node-b "$plainweb_uid" 10.77.2.11 "$port8080"
  pod_json "$KT_WORK/pod-client.json" client mesh client node-a "$client_uid" 10.77.1.10 '[]'
  pod_json "$KT_WORK/pod-plainclient.json" plainclient plain default node-a "$plainclient_uid" 10.77.1.11 '[]'
  pod_json "$KT_WORK/pod-intruder.json" intruder mesh intruder node-a "$intruder_uid" 10.77.1.12 '[]'
}
# Node $1's API server gets the recorded namespaces, mesh and plain.
cluster_namespaces() {  # NODE
  api "$1" add namespaces "$KT_RECORDED/docker_desktop_namespaces.json"
  api "$1" add namespaces "$KT_WORK/ns-mesh.json"
  api "$1" add namespaces "$KT_WORK/ns-plain.json"
}
# Node $1's pods: their network namespaces (add_pod, as a CNI plugin would)
# and their objects in its API server; with "hold", the API server holds
# its lists first, so that the agent cannot sync yet.
cluster_pods() {  # NODE [hold]
  local pod host=10 pods=(web plainweb)
  [[ $1 == a ]] && pods=(client plainclient intruder)
  for pod in "${pods[@]}"; do
    add_pod "$1" "$pod" "$host"
    host=$((host + 1))
  done
  [[ ${2:-} == hold ]] && api "$1" hold
  for pod in "${pods[@]}"; do api "$1" add pods "$KT_WORK/pod-$pod.json"; done
}
# Node $1's `ktrust denials` (kt) gives pod $2's refusal before the first
# sync, in words.
check_not_synced_denial() {  # NODE POD_UID
  local denials
  denials=$(kt "$1" denials --json)
  echo "# node $1 denials: $(jq -c '[.denials[] | {workload, result, reason}]' <<<"$denials")"
  check "ktrust denials says kubernetes_not_synced, in words" \
    grep -q "kubernetes_not_synced (pod:$2): the agent has not read this node.s pods" <<<"$denials"
}
