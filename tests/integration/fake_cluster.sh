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
