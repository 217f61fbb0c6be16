#!/usr/bin/env bash
# The manifests of tools/kubernetes, rendered by `kubectl kustomize` and
# checked offline by check_manifests.js (the kubernetes-models schemas,
# unknown fields, API server rules, ktrust's own rules): as shipped, then
# with the uninstall step (tools/kubernetes/uninstall) and the CA Secret
# `ktrust ca kubernetes-secret` prints. Then the same checker must refuse
# the same manifests with one defect each: a checker that passes everything
# would pass here too, and fail this test.
#
# The uninstall step's script runs here too, against a stand-in pin
# directory: it refuses while a `ktrustd run` is alive, then unpins.
#
# Last, the OCI bundle generator k8s_image_test runs the DaemonSet with
# (bundle_from_daemonset.js) must translate it, and refuse what it cannot.
#
# Usage: manifests_test.sh SOURCE_DIR NPM_MODULES_DIR KTRUST KTRUSTD
set -euo pipefail

src=$1
modules=$2
ktrust=$3
ktrustd=$4
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=checks.sh
source "$here/checks.sh"
require kubectl node jq /bin/busybox

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

kubectl kustomize "$src/tools/kubernetes" >"$work/rendered.yaml"
echo "# kubectl kustomize: $(grep -c '^kind:' "$work/rendered.yaml") objects ($(grep '^kind:' "$work/rendered.yaml" | cut -d' ' -f2 | tr '\n' ' '))"
if node "$here/check_manifests.js" "$modules" "$work/rendered.yaml" >"$work/check.out" 2>&1; then
  ok "the rendered manifests pass the checker"
else
  not_ok "the rendered manifests pass the checker"
fi
sed 's/^/#   /' "$work/check.out"
if grep -n 'uninstall' "$work/rendered.yaml" | grep -v '^ *[0-9]*: *#'; then
  not_ok "kubectl apply -k tools/kubernetes unpins nothing (no uninstall in it)"
else
  ok "kubectl apply -k tools/kubernetes unpins nothing (no uninstall in it)"
fi

# The CA Secret, as an operator makes it (docs/kubernetes.md, "The CA").
"$ktrust" ca init --trust-domain cluster.local --dir "$work/root" >/dev/null
"$ktrust" ca intermediate --ca-dir "$work/root" --name cluster --dir "$work/cluster-ca" \
  --scope 'spiffe://cluster.local/ns/*' >/dev/null
"$ktrust" ca kubernetes-secret --ca-dir "$work/cluster-ca" >"$work/secret.yaml" 2>"$work/secret.err"
sed 's/^/#   /' "$work/secret.err"
kubectl kustomize "$src/tools/kubernetes/uninstall" >"$work/uninstall.yaml"
{
  cat "$work/rendered.yaml"
  echo ---
  cat "$work/uninstall.yaml"
  echo ---
  cat "$work/secret.yaml"
} >"$work/all.yaml"
if node "$here/check_manifests.js" "$modules" "$work/all.yaml" >"$work/check.out" 2>&1 &&
  grep -q '^ok v1 Secret/ktrust-ca' "$work/check.out" &&
  grep -q '^ok apps/v1 DaemonSet/ktrust-uninstall' "$work/check.out"; then
  ok "with tools/kubernetes/uninstall and ktrust ca kubernetes-secret's Secret, they pass the checker"
else
  not_ok "with tools/kubernetes/uninstall and ktrust ca kubernetes-secret's Secret, they pass the checker"
fi
sed 's/^/#   /' "$work/check.out"

# Each case: a sed edit of the rendered manifests, and what the checker
# must say about it.
broken() {
  local what=$1 edit=$2 expected=$3
  sed -E "$edit" "$work/all.yaml" >"$work/broken.yaml"
  if cmp -s "$work/all.yaml" "$work/broken.yaml"; then
    not_ok "$what: the edit changed nothing (the manifests moved?)"
    return
  fi
  local out status=0
  out=$(node "$here/check_manifests.js" "$modules" "$work/broken.yaml" 2>&1) || status=$?
  grep '^problem:' <<<"$out" | sed 's/^/#   /' || true
  if ((status == 1)) && grep -qF -- "$expected" <<<"$out"; then
    ok "$what: refused"
  else
    not_ok "$what: expected exit 1 and \"$expected\", got exit $status"
    sed 's/^/#   /' <<<"$out"
  fi
}
broken "misspelled key (hostPid)" \
  's/^      hostPID: true/      hostPid: true/' \
  'unknown field spec.template.spec.hostPid'
broken "misspelled nested key (readOnlyRootFileSystem)" \
  '0,/readOnlyRootFilesystem: true/s//readOnlyRootFileSystem: true/' \
  'securityContext.readOnlyRootFileSystem'
broken "misspelled key in metadata (namepsace)" \
  '0,/^  namespace: ktrust-system/s//  namepsace: ktrust-system/' \
  'unknown field metadata.namepsace'
broken "wrong type (terminationGracePeriodSeconds: \"40\")" \
  's/terminationGracePeriodSeconds: 40/terminationGracePeriodSeconds: "40"/' \
  'terminationGracePeriodSeconds must be integer'
broken "wrong type (hostNetwork: \"true\")" \
  's/^      hostNetwork: true/      hostNetwork: "true"/' \
  'hostNetwork must be boolean'
broken "Bidirectional propagation in the unprivileged agent" \
  '0,/mountPropagation: HostToContainer/s//mountPropagation: Bidirectional/' \
  'container agent: mountPropagation Bidirectional on /sys/fs/bpf is allowed only in privileged containers'
broken "an httpGet readiness probe (on the node's port, not the pod's agent)" \
  '/^        readinessProbe:$/,/^            - ready$/c\        readinessProbe:\n          httpGet:\n            host: 127.0.0.1\n            path: /readyz\n            port: 9464' \
  'readinessProbe is a httpGet probe; it must be an exec of ktrust'
broken "a readiness probe that asks only whether the agent answers" \
  's/^            - ready$/            - health/' \
  'readinessProbe runs `ktrust health`, expected `ktrust ready`'
broken "a probe on another control socket than agent.control_socket" \
  '0,/^            - \/run\/ktrust\/control.sock$/s//            - \/run\/ktrust\/other.sock/' \
  'livenessProbe asks the control socket /run/ktrust/other.sock, but agent.control_socket is /run/ktrust/control.sock'
broken "a probe whose timeoutSeconds does not outlast ktrust's --timeout" \
  '0,/timeoutSeconds: 5/s//timeoutSeconds: 1/' \
  "livenessProbe: ktrust's --timeout (3) must be below timeoutSeconds (1)"
broken "agent.cgroup_root not the mounted host cgroup root" \
  's#cgroup_root: /host/sys/fs/cgroup#cgroup_root: /sys/fs/cgroup#' \
  'agent.cgroup_root /sys/fs/cgroup is not'
broken "the handover socket in the pod's own emptyDir (a surge's agents never meet)" \
  's#handover_socket: /run/ktrust-handover/handover.sock#handover_socket: /run/ktrust/handover.sock#' \
  "the handover socket's directory /run/ktrust is not a hostPath"
broken "a grace period the agent's drain does not fit in" \
  's/terminationGracePeriodSeconds: 40/terminationGracePeriodSeconds: 30/' \
  'terminationGracePeriodSeconds 30 does not outlast agent.drain_timeout (30 s)'
broken "a write verb in the ClusterRole" \
  's/^  - watch$/  - watch\n  - delete/' \
  'verbs beyond list/watch: delete'
broken "get in the ClusterRole (the agent only lists and watches)" \
  's/^  - list$/  - get\n  - list/' \
  'verbs beyond list/watch: get'
broken "a capability beyond the documented set" \
  's/^            - SYS_PTRACE$/            - SYS_PTRACE\n            - DAC_OVERRIDE/' \
  'the agent'"'"'s capabilities are'
broken "the CA Secret mounted readable by others (Kubernetes' default 0644)" \
  's/defaultMode: 256/defaultMode: 420/' \
  "the CA Secret's defaultMode is 0644"
broken "the CA Secret without ca.key" \
  '/^  ca.key: /d' \
  'Secret/ktrust-ca: holds ["bundle.crt","ca.crt"], the agent reads exactly'
broken "the CA Secret in another namespace than the DaemonSet" \
  '/^kind: Secret$/,/^type:/s/namespace: ktrust-system/namespace: default/' \
  'Secret/ktrust-ca: is in namespace default'
broken "the CA Secret of another trust domain than the ConfigMap's" \
  's/^    trust_domain: cluster.local$/    trust_domain: example.org/' \
  "ca.crt is a CA of URI:spiffe://cluster.local, the ConfigMap's trust_domain is example.org"
broken "ktrustd uninstall in the agents' own DaemonSet" \
  '0,/^        - run$/s//        - uninstall/' \
  'container agent runs ktrustd uninstall'
broken "the uninstall step on another pin directory than agent.bpf_pin_dir" \
  's#ktrustd uninstall --pin-dir /sys/fs/bpf/ktrust#ktrustd uninstall --pin-dir /sys/fs/bpf/other#' \
  'does not run `/usr/sbin/ktrustd uninstall --pin-dir /sys/fs/bpf/ktrust`'
broken "the uninstall step without hostPID (blind to a live agent)" \
  '/name: ktrust-uninstall$/,$s/hostPID: true/hostPID: false/' \
  'DaemonSet/ktrust-uninstall: hostPID must be true'
broken "the uninstall step with SYS_ADMIN" \
  '/name: ktrust-uninstall$/,$s/^( *)- NET_ADMIN$/\1- NET_ADMIN\n\1- SYS_ADMIN/' \
  "the uninstall container's capabilities are"

# The uninstall step's script, with the stand-in pin directory and this
# build's ktrustd, in a PID namespace with its own /proc: the script looks
# for live agents in /proc and must see only the one started here (a
# `ktrustd run` blocked opening its configuration, a fifo no one writes),
# not other tests' agents on this host. Everything in the namespace ends
# with it.
script=$(node "$here/yaml_to_json.js" "$modules" "$work/uninstall.yaml" |
  jq -r '.[] | select(.kind == "DaemonSet") | .spec.template.spec.initContainers[] | select(.name == "uninstall") | .command[3]')
script=${script//\/sys\/fs\/bpf\/ktrust/$work/pins}
script=${script//\/usr\/sbin\/ktrustd/$ktrustd}
mkfifo "$work/config.fifo"
uninstall() {  # [with-agent]: exit status of the script, its output in uninstall.out
  unshare --pid --fork --mount-proc bash -c '
    ktrustd=$1 fifo=$2 script=$3
    if [[ $4 == with-agent ]]; then
      "$ktrustd" run --config "$fifo" &
      # Opening the fifo returns once the agent has opened it to read: its
      # readiness. Held open, it keeps the agent reading.
      exec 3>"$fifo"
      echo "agent pid $!"
    fi
    exec /bin/busybox sh -ec "$script"' _ "$ktrustd" "$work/config.fifo" "$script" "${1:-}" \
    >"$work/uninstall.out" 2>&1
}
mkdir -p "$work/pins/links" "$work/pins/maps"
status=0
uninstall with-agent || status=$?
sed 's/^/#   /' "$work/uninstall.out"
fake_agent=$(sed -n 's/^agent pid //p' "$work/uninstall.out")
if ((status == 1)) && grep -qF "ktrustd still runs on this node (pid $fake_agent)" "$work/uninstall.out" &&
  [[ -d $work/pins/links ]]; then
  ok "uninstall: refused while ktrustd run (pid $fake_agent) is alive, pins kept"
else
  not_ok "uninstall: refused while ktrustd run (pid $fake_agent) is alive: exit $status, pins $(ls "$work/pins" 2>&1 | tr '\n' ' ')"
fi
status=0
uninstall || status=$?
sed 's/^/#   /' "$work/uninstall.out"
if ((status == 0)) && [[ ! -e $work/pins ]] && grep -q '"event":"bpf_uninstalled"' "$work/uninstall.out"; then
  ok "uninstall: with no agent left, ktrustd uninstall removed the pin directory"
else
  not_ok "uninstall: with no agent left: exit $status, $work/pins $( [[ -e $work/pins ]] && echo still there || echo gone)"
fi
status=0
uninstall || status=$?
if ((status == 0)) && grep -qF "nothing pinned at $work/pins" "$work/uninstall.out"; then
  ok "uninstall: again, nothing left to unpin ($(cat "$work/uninstall.out"))"
else
  not_ok "uninstall: again: exit $status, $(cat "$work/uninstall.out")"
fi

# The bundle generator behind k8s_image_test translates the DaemonSet, or
# refuses: it never leaves out what it cannot translate.
mkdir -p "$work/host/sys/fs/cgroup" "$work/volume"
generate() {  # RENDERED.yaml [options]: the agent's config.json on stdout
  local rendered=$1
  shift
  node "$here/yaml_to_json.js" "$modules" "$rendered" >"$work/bundle-input.json"
  node "$here/bundle_from_daemonset.js" "$work/bundle-input.json" agent --host-root "$work/host" \
    --node-name n "$@"
}
volumes=(--volume "config=$work/volume" --volume "ca=$work/volume")
if generate "$work/rendered.yaml" "${volumes[@]}" >"$work/config.json" 2>"$work/generate.err"; then
  ok "bundle generator: the agent's bundle ($(jq -c '.process.capabilities.effective' "$work/config.json"))"
else
  not_ok "bundle generator: the agent's bundle: $(cat "$work/generate.err")"
fi
untranslatable() {
  local what=$1 edit=$2 expected=$3 out status=0
  shift 3
  sed -E "$edit" "$work/rendered.yaml" >"$work/broken.yaml"
  out=$(generate "$work/broken.yaml" "$@" 2>&1 >/dev/null) || status=$?
  echo "#   $out"
  if ((status != 0)) && grep -qF -- "$expected" <<<"$out"; then
    ok "bundle generator: $what: refused"
  else
    not_ok "bundle generator: $what: expected a failure saying \"$expected\", got exit $status"
  fi
}
untranslatable "a RuntimeDefault AppArmor profile" \
  '/appArmorProfile:/{n;s/type: Unconfined/type: RuntimeDefault/}' \
  'AppArmor {"type":"RuntimeDefault"} is not translated' "${volumes[@]}"
untranslatable "a RuntimeDefault seccomp profile" \
  '/seccompProfile:/{n;s/type: Unconfined/type: RuntimeDefault/}' \
  'seccomp {"type":"RuntimeDefault"} is not translated' "${volumes[@]}"
untranslatable "a Secret volume whose files it was not given" \
  's/^$//' 'volume ca needs --volume ca=DIR' --volume "config=$work/volume"
untranslatable "a hostPath that is not a directory" \
  's#path: /sys/fs/cgroup#path: /no/such/cgroup#' 'is not a directory' "${volumes[@]}"

results
