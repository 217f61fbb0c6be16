#!/usr/bin/env bash
# The agent's image (tools/image/build.sh), built offline from this build
# tree, unpacked as a runtime would, and run from its own root filesystem:
# the binaries are this build's, every file is one the binaries need, both
# start with nothing but the image's libraries, and the DaemonSet's init
# container script mounts bpffs with the image's busybox.
#
# Needs root (buildah, chroot, a private mount namespace).
# Usage: image_test.sh SOURCE_DIR NPM_MODULES_DIR KTRUST KTRUSTD
set -euo pipefail

src=$1
modules=$2
ktrust=$3
ktrustd=$4
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=checks.sh
source "$here/checks.sh"
require buildah jq kubectl node chroot unshare readelf

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

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
version=$(chroot "$work/rootfs" /usr/bin/ktrust --version 2>&1) || true
echo "# chroot ktrust --version: $version"
check "ktrust runs from the image ($version)" grep -qE '^ktrust [0-9]+\.[0-9]+' <<<"$version"
help_status=0
help=$(chroot "$work/rootfs" /usr/sbin/ktrustd --help 2>&1) || help_status=$?
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

# The init container's script, run twice from the image in a private mount
# namespace (the bpffs it mounts dies with it): first it mounts, then it
# sees the mount and leaves it.
jq -r "$spec | .initContainers[] | select(.name == \"mount-bpffs\") | .command[3]" \
  "$work/rendered.json" >"$work/rootfs/mount-bpffs.sh"
mkdir -p "$work/rootfs/proc" "$work/rootfs/sys/fs/bpf"
mounted=$(unshare --mount --propagation private sh -ec '
  mount -t proc proc "$1/proc"
  chroot "$1" /bin/busybox sh -e /mount-bpffs.sh
  chroot "$1" /bin/busybox sh -e /mount-bpffs.sh
  echo "fs: $(stat -f -c %T "$1/sys/fs/bpf")"' sh "$work/rootfs" 2>&1) || true
sed 's/^/#   /' <<<"$mounted"
check "the init script mounts bpffs with the image's busybox" \
  grep -qx "mounted bpffs on the host's /sys/fs/bpf" <<<"$mounted"
check "run again, it finds bpffs and mounts nothing" grep -qx "bpffs already mounted on the host's /sys/fs/bpf" <<<"$mounted"
check "/sys/fs/bpf is bpffs afterwards" grep -qx "fs: bpf_fs" <<<"$mounted"

results
