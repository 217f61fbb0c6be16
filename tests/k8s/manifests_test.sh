#!/usr/bin/env bash
# The manifests of tools/kubernetes, rendered by `kubectl kustomize` and
# checked offline by check_manifests.js (the kubernetes-models schemas,
# unknown fields, API server rules, ktrust's own rules). Then the same
# checker must refuse the same manifests with one defect each: a checker
# that passes everything would pass here too, and fail this test.
#
# Last, the OCI bundle generator k8s_image_test runs the DaemonSet with
# (bundle_from_daemonset.js) must translate it, and refuse what it cannot.
#
# Usage: manifests_test.sh SOURCE_DIR NPM_MODULES_DIR
set -euo pipefail

src=$1
modules=$2
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=checks.sh
source "$here/checks.sh"
require kubectl node

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

# Each case: a sed edit of the rendered manifests, and what the checker
# must say about it.
broken() {
  local what=$1 edit=$2 expected=$3
  sed -E "$edit" "$work/rendered.yaml" >"$work/broken.yaml"
  if cmp -s "$work/rendered.yaml" "$work/broken.yaml"; then
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
broken "wrong type (terminationGracePeriodSeconds: \"30\")" \
  's/terminationGracePeriodSeconds: 30/terminationGracePeriodSeconds: "30"/' \
  'terminationGracePeriodSeconds must be integer'
broken "wrong type (hostNetwork: \"true\")" \
  's/^      hostNetwork: true/      hostNetwork: "true"/' \
  'hostNetwork must be boolean'
broken "Bidirectional propagation in the unprivileged agent" \
  '0,/mountPropagation: HostToContainer/s//mountPropagation: Bidirectional/' \
  'container agent: mountPropagation Bidirectional on /sys/fs/bpf is allowed only in privileged containers'
broken "a probe on another port than agent.metrics_address" \
  '0,/port: 9464/s//port: 9465/' \
  'asks 127.0.0.1:9465, but agent.metrics_address is 127.0.0.1:9464'
broken "agent.cgroup_root not the mounted host cgroup root" \
  's#cgroup_root: /host/sys/fs/cgroup#cgroup_root: /sys/fs/cgroup#' \
  'agent.cgroup_root /sys/fs/cgroup is not'
broken "a write verb in the ClusterRole" \
  's/^  - watch$/  - watch\n  - delete/' \
  'verbs beyond get/list/watch: delete'
broken "a capability beyond the documented set" \
  's/^            - SYS_PTRACE$/            - SYS_PTRACE\n            - DAC_OVERRIDE/' \
  'the agent'"'"'s capabilities are'

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
