#!/usr/bin/env bash
# The agent's image (tools/image/build.sh), built offline from this build
# tree, unpacked as a runtime would, and run from its own root filesystem:
# the binaries are this build's, every file is one the binaries need, both
# start with nothing but the image's libraries, and the DaemonSet's init
# container script mounts bpffs with the image's busybox.
#
# Then the DaemonSet's two containers as OCI bundles derived from the
# manifest (bundle_from_daemonset.js), run by runc from the image, against a
# stand-in for the node's root: the init container's bpffs must reach the
# "host" (Bidirectional), and the agent's container must have exactly the
# documented capabilities, the host's network and PID namespaces, its own
# mount namespace, a read-only root, the ConfigMap, bpffs and the host's
# cgroup2 root where ktrustd.yaml says. The agent's process is replaced by a
# busybox script that reports what it sees; e2e_test.sh runs ktrustd itself
# from the same bundles, with pods and a fake API server.
#
# Needs root (buildah, chroot, runc, a private mount namespace).
# Usage: image_test.sh SOURCE_DIR NPM_MODULES_DIR KTRUST KTRUSTD
set -euo pipefail

src=$1
modules=$2
ktrust=$3
ktrustd=$4
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=checks.sh
source "$here/checks.sh"
require buildah jq kubectl node chroot unshare readelf runc

work=$(mktemp -d)
containers=()
cleanup() {
  local c
  for c in "${containers[@]}"; do runc --root "$work/runc" delete -f "$c" >/dev/null 2>&1 || true; done
  # runc made the container's cgroup in every hierarchy of a hybrid host.
  find /sys/fs/cgroup -maxdepth 2 -depth -type d -name "ktrust-test-k8s-$$-*" -exec rmdir {} \; 2>/dev/null || true
  # Mounts were made in a private mount namespace only: nothing to unmount.
  rm -rf "$work"
}
trap cleanup EXIT

"$src/tools/image/build.sh" "$ktrust" "$ktrustd" "$work/ktrust.oci.tar"
echo "# image: $(du -h "$work/ktrust.oci.tar" | cut -f1) ($(stat -c %s "$work/ktrust.oci.tar") bytes)"

# Unpack as a runtime would: index -> manifest -> layers, in order.
mkdir "$work/oci" "$work/rootfs"
tar -xf "$work/ktrust.oci.tar" -C "$work/oci"
blob() { echo "$work/oci/blobs/${1/://}"; }
manifest=$(blob "$(jq -r '.manifests[0].digest' "$work/oci/index.json")")
config=$(blob "$(jq -r '.config.digest' "$manifest")")
check "the index names the image localhost/ktrust:dev" \
  test "$(jq -r '.manifests[0].annotations["org.opencontainers.image.ref.name"]' "$work/oci/index.json")" = localhost/ktrust:dev
layers=0
while read -r type digest; do
  case $type in
    *tar+gzip) tar -xzf "$(blob "$digest")" -C "$work/rootfs" ;;
    *tar) tar -xf "$(blob "$digest")" -C "$work/rootfs" ;;
    *) not_ok "a layer of unknown type $type" ;;
  esac
  layers=$((layers + 1))
done < <(jq -r '.layers[] | "\(.mediaType) \(.digest)"' "$manifest")
echo "# $layers layer(s), $(find "$work/rootfs" -type f | wc -l) files, $(du -sh "$work/rootfs" | cut -f1) unpacked"

build_id() { readelf -n "$1" | awk '/Build ID/ {print $3}'; }
check "usr/sbin/ktrustd is this build's ($(build_id "$ktrustd"))" \
  test "$(build_id "$work/rootfs/usr/sbin/ktrustd")" = "$(build_id "$ktrustd")"
check "usr/bin/ktrust is this build's ($(build_id "$ktrust"))" \
  test "$(build_id "$work/rootfs/usr/bin/ktrust")" = "$(build_id "$ktrust")"

# Exactly what the binaries need: the binaries, busybox, and the libraries
# ldd resolves for them here. Nothing else (no shell, no package manager).
{
  echo /usr/sbin/ktrustd
  echo /usr/bin/ktrust
  echo /bin/busybox
  ldd "$ktrustd" "$ktrust" | awk '/:$/ {next} $2 == "=>" && $3 ~ /^\// {print $3; next} $1 ~ /^\// {print $1}'
} | sort -u >"$work/expected"
(cd "$work/rootfs" && find . -type f -o -type l | sed 's/^\.//' | sort) >"$work/actual"
if cmp -s "$work/expected" "$work/actual"; then
  ok "the image holds the binaries, busybox and the $(($(wc -l <"$work/expected") - 3)) libraries ldd names, nothing else"
else
  not_ok "the image's files differ from what the binaries need"
  diff "$work/expected" "$work/actual" | sed 's/^/#   /' || true
fi

# Run from the image's root alone: a library it lacks stops the loader.
# With the image's environment only, as a runtime would start them.
image_env=$(jq -r '.config.Env[]' "$config")
in_image() { env -i $image_env chroot "$work/rootfs" "$@"; }
version=$(in_image /usr/bin/ktrust --version 2>&1) || true
echo "# chroot ktrust --version: $version"
check "ktrust runs from the image ($version)" grep -qE '^ktrust [0-9]+\.[0-9]+' <<<"$version"
help_status=0
help=$(in_image /usr/sbin/ktrustd --help 2>&1) || help_status=$?
echo "# chroot ktrustd --help: exit $help_status, $(grep -c . <<<"$help") lines"
# ktrustd has no --version; --help proves the same: it loads and runs.
check "ktrustd runs from the image (--help lists run)" \
  test "$help_status" = 0 -a -n "$(grep -E '^ +run ' <<<"$help")"

# The DaemonSet's commands use what the image has.
kubectl kustomize "$src/tools/kubernetes" >"$work/rendered.yaml"
node "$here/yaml_to_json.js" "$modules" "$work/rendered.yaml" >"$work/rendered.json"
spec='.[] | select(.kind == "DaemonSet" and .metadata.name == "ktrust") | .spec.template.spec'
agent_cmd=$(jq -r "$spec | .containers[] | select(.name == \"agent\") | .command[0]" "$work/rendered.json")
check "the agent's command $agent_cmd is in the image" test -x "$work/rootfs$agent_cmd"
check "the image's default command is the agent's" \
  test "$(jq -c '.config.Cmd' "$config")" = \
  "$(jq -c "$spec | .containers[] | select(.name == \"agent\") | .command" "$work/rendered.json")"
init_cmd=$(jq -r "$spec | .initContainers[] | select(.name == \"mount-bpffs\") | .command[0]" "$work/rendered.json")
check "the init container's command $init_cmd is in the image" test -x "$work/rootfs$init_cmd"
# The probes run from the image too: with no agent behind the socket they
# fail, with the reason, rather than pass.
for probe in startupProbe livenessProbe readinessProbe; do
  mapfile -t probe_cmd < <(jq -r "$spec | .containers[] | select(.name == \"agent\") | .$probe.exec.command[]" "$work/rendered.json")
  probe_status=0
  probe_out=$(in_image "${probe_cmd[@]}" 2>&1) || probe_status=$?
  check "the $probe (${probe_cmd[*]}) runs from the image and fails with no agent: exit $probe_status, $probe_out" \
    test "$probe_status" = 1 -a -n "$(grep -E '^(not ready|unhealthy): cannot reach ktrustd' <<<"$probe_out")"
done

# The init container's script, run twice from the image in a private mount
# namespace (the bpffs it mounts dies with it): first it mounts, then it
# sees the mount and leaves it.
jq -r "$spec | .initContainers[] | select(.name == \"mount-bpffs\") | .command[3]" \
  "$work/rendered.json" >"$work/rootfs/mount-bpffs.sh"
mkdir -p "$work/rootfs/proc" "$work/rootfs/sys/fs/bpf"
mounted=$(env -i $image_env unshare --mount --propagation private /bin/sh -ec '
  /bin/mount -t proc proc "$1/proc"
  /usr/sbin/chroot "$1" /bin/busybox sh -e /mount-bpffs.sh
  /usr/sbin/chroot "$1" /bin/busybox sh -e /mount-bpffs.sh
  echo "fs: $(/usr/bin/stat -f -c %T "$1/sys/fs/bpf")"' sh "$work/rootfs" 2>&1) || true
sed 's/^/#   /' <<<"$mounted"
check "the init script mounts bpffs with the image's busybox" \
  grep -qx "mounted bpffs on the host's /sys/fs/bpf" <<<"$mounted"
check "run again, it finds bpffs and mounts nothing" grep -qx "bpffs already mounted on the host's /sys/fs/bpf" <<<"$mounted"
check "/sys/fs/bpf is bpffs afterwards" grep -qx "fs: bpf_fs" <<<"$mounted"

# --- The DaemonSet's containers under runc, from bundles derived from it.
# The node's root, as hostPath volumes see it: bpffs is mounted there by the
# init container; the host's cgroup2 mount is bound at sys/fs/cgroup.
cgroup2=$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)
echo "# the host's cgroup2 mount: ${cgroup2:-none}"
host=$work/host
mkdir -p "$host/sys/fs/cgroup" "$work/volumes/config" "$work/volumes/ca" "$work/runc"
jq -r '.[] | select(.kind == "ConfigMap" and .metadata.name == "ktrustd-config") | .data["ktrustd.yaml"]' \
  "$work/rendered.json" >"$work/volumes/config/ktrustd.yaml"
bundle() {  # NAME CONTAINER: a bundle whose root is the unpacked image
  mkdir -p "$work/$1"
  node "$here/bundle_from_daemonset.js" "$work/rendered.json" "$2" --image-config "$config" \
    --host-root "$host" --node-name "node-$$" --cgroups-path "/ktrust-test-k8s-$$-$1" \
    --volume "config=$work/volumes/config" --volume "ca=$work/volumes/ca" >"$work/$1/config.json.derived"
  jq --arg root "$work/rootfs" '.root.path = $root' "$work/$1/config.json.derived" >"$work/$1/config.json"
  containers+=("ktrust-test-k8s-$$-$1")
}
bundle init mount-bpffs
bundle agent agent
echo "# agent bundle: $(jq -c '{caps: .process.capabilities.effective, namespaces: [.linux.namespaces[].type], readonly: .root.readonly}' "$work/agent/config.json")"
# What the agent's container reports instead of running ktrustd (that is
# e2e_test.sh's).
jq '.process.args = ["/bin/busybox", "sh", "-c", "
  /bin/busybox grep -E \"^(CapEff|CapBnd|NoNewPrivs):\" /proc/self/status
  for ns in net pid mnt; do echo \"ns $ns $(/bin/busybox readlink /proc/self/ns/$ns)\"; done
  echo \"fs /sys/fs/bpf $(/bin/busybox stat -f -c %t /sys/fs/bpf)\"
  echo \"fs /host/sys/fs/cgroup $(/bin/busybox stat -f -c %t /host/sys/fs/cgroup)\"
  /bin/busybox awk \"\\$5 == \\\"/host/sys/fs/cgroup\\\" || \\$5 == \\\"/sys/fs/bpf\\\" {print \\\"mount\\\", \\$5, \\$6, \\$7}\" /proc/self/mountinfo
  for dir in / /run/ktrust; do
    /bin/busybox touch $dir/ktrust-probe 2>/dev/null && echo \"writable $dir\" || echo \"read-only $dir\"
  done
  echo \"config $(/bin/busybox md5sum < /etc/ktrust/ktrustd.yaml)\"
  echo \"env NODE_NAME=$NODE_NAME\"
"]' "$work/agent/config.json" >"$work/agent/config.json.probe"
mv "$work/agent/config.json.probe" "$work/agent/config.json"

status=0
# A private mount namespace whose stand-in host root is a shared mount, as
# systemd makes / on a node: what propagates out of a container lands there.
unshare --mount --propagation private bash -ec '
  work=$1 host=$2 cgroup2=$3 pid=$4
  mount --bind "$host" "$host"
  mount --make-rshared "$host"
  mount --bind "$cgroup2" "$host/sys/fs/cgroup"
  rc=0
  runc --root "$work/runc" run --bundle "$work/init" "ktrust-test-k8s-$pid-init" >"$work/init.out" 2>&1 || rc=$?
  echo "init exit $rc" >>"$work/init.out"
  echo "host bpffs $(stat -f -c %T "$host/sys/fs/bpf")" >>"$work/init.out"
  rc=0
  runc --root "$work/runc" run --bundle "$work/agent" "ktrust-test-k8s-$pid-agent" >"$work/agent.out" 2>&1 || rc=$?
  echo "agent exit $rc" >>"$work/agent.out"
' sh "$work" "$host" "$cgroup2" "$$" || status=$?
sed 's/^/#   init: /' "$work/init.out"
sed 's/^/#   agent: /' "$work/agent.out"
check "runc ran both containers (unshare exit $status)" test "$status" = 0
check "the init container exited 0 after mounting bpffs" grep -qx "init exit 0" "$work/init.out"
check "its bpffs reached the host's /sys/fs/bpf (Bidirectional)" grep -qx "host bpffs bpf_fs" "$work/init.out"
check "the agent's container ran" grep -qx "agent exit 0" "$work/agent.out"
# BPF 39, PERFMON 38, SYS_ADMIN 21, SYS_PTRACE 19, NET_ADMIN 12.
caps=000000c000281000
check "the agent's effective capabilities are exactly the documented five ($caps)" \
  grep -qP "^CapEff:\t$caps$" "$work/agent.out"
check "its bounding set is the same five" grep -qP "^CapBnd:\t$caps$" "$work/agent.out"
check "the host's network namespace (hostNetwork)" \
  grep -qxF "ns net $(readlink /proc/self/ns/net)" "$work/agent.out"
check "the host's PID namespace (hostPID)" grep -qxF "ns pid $(readlink /proc/self/ns/pid)" "$work/agent.out"
container_mnt=$(sed -n 's/^ns mnt //p' "$work/agent.out")
check "a mount namespace of its own (${container_mnt:-none})" \
  test -n "$container_mnt" -a "$container_mnt" != "$(readlink /proc/self/ns/mnt)"
# Filesystem magic numbers (busybox's stat names neither): BPF_FS_MAGIC,
# CGROUP2_SUPER_MAGIC.
check "bpffs at /sys/fs/bpf (the init container's, HostToContainer)" \
  grep -qx "fs /sys/fs/bpf cafe4a11" "$work/agent.out"
check "the host's cgroup2 root at agent.cgroup_root" grep -qx "fs /host/sys/fs/cgroup 63677270" "$work/agent.out"
check "the cgroup root is read-only, a slave of the host's mount" \
  grep -qE "^mount /host/sys/fs/cgroup ro,.* master:[0-9]+$" "$work/agent.out"
check "bpffs at /sys/fs/bpf is a slave of the host's (HostToContainer)" \
  grep -qE "^mount /sys/fs/bpf rw,.* master:[0-9]+$" "$work/agent.out"
check "the root filesystem is read-only" grep -qx "read-only /" "$work/agent.out"
check "/run/ktrust is writable" grep -qx "writable /run/ktrust" "$work/agent.out"
check "the ConfigMap's ktrustd.yaml at /etc/ktrust" \
  grep -qx "config $(md5sum <"$work/volumes/config/ktrustd.yaml" | cut -d' ' -f1)  -" "$work/agent.out"
check "NODE_NAME from the downward API" grep -qx "env NODE_NAME=node-$$" "$work/agent.out"

results
