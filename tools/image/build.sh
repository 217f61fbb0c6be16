#!/usr/bin/env bash
# Builds ktrust's container image offline, from binaries already built:
#   tools/image/build.sh KTRUST KTRUSTD OUT.oci.tar [REF]
# FROM scratch: ktrustd, ktrust, exactly the shared libraries ldd says they
# load, and a static busybox for the DaemonSet's init container (it mounts
# bpffs; see tools/kubernetes/daemonset.yaml). No shell is in the agent's
# command, and nothing is pulled from a registry. Written as an OCI archive
# (docs/kubernetes.md, "The image"). Needs root (buildah with the vfs driver
# in a private storage directory, removed afterwards).
set -euo pipefail

ktrust=$(realpath "${1:?usage: build.sh KTRUST KTRUSTD OUT.oci.tar [REF]}")
ktrustd=$(realpath "${2:?usage: build.sh KTRUST KTRUSTD OUT.oci.tar [REF]}")
out=${3:?usage: build.sh KTRUST KTRUSTD OUT.oci.tar [REF]}
ref=${4:-localhost/ktrust:dev}
busybox=/bin/busybox

log() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'image: %s\n' "$*" >&2; exit 1; }

command -v buildah >/dev/null || fail "buildah is missing: run tools/dev setup"
[[ -x $busybox ]] || fail "$busybox is missing: run tools/dev setup (busybox-static)"
# A dynamically linked busybox would need libraries the image does not carry.
[[ $(ldd "$busybox" 2>&1 || true) == *'not a dynamic executable'* ]] ||
  fail "$busybox is not static (install busybox-static, not busybox)"

work=$(mktemp -d /tmp/ktrust-image.XXXXXX)
storage=(--root "$work/storage" --runroot "$work/run" --storage-driver vfs)
container=""
cleanup() {
  [[ -n $container ]] && buildah "${storage[@]}" rm "$container" >/dev/null 2>&1
  # vfs layers are plain directories; buildah's own files may be immutable
  # to nothing else, so rm is enough.
  rm -rf "$work"
}
trap cleanup EXIT

rootfs=$work/rootfs
# Without their debug information (which stays in the build tree for
# debugging a core): 100 MiB less in the image.
install -D -m 0755 "$ktrustd" "$rootfs/usr/sbin/ktrustd"
install -D -m 0755 "$ktrust" "$rootfs/usr/bin/ktrust"
strip --strip-debug "$rootfs/usr/sbin/ktrustd" "$rootfs/usr/bin/ktrust"
install -D -m 0755 "$busybox" "$rootfs/bin/busybox"

# Every library the dynamic loader resolves for the two binaries, at the
# path it resolved (ldd follows DT_NEEDED recursively). A library ldd cannot
# find fails the build instead of an image that cannot start.
libraries=$(ldd "$ktrustd" "$ktrust" | awk '
  /:$/ { next }
  /not found/ { print "MISSING " $1; next }
  $2 == "=>" && $3 ~ /^\// { print $3; next }
  $1 ~ /^\// { print $1 }' | sort -u)
if grep -q '^MISSING' <<<"$libraries"; then
  fail "ldd cannot find: $(grep '^MISSING' <<<"$libraries" | cut -d' ' -f2 | tr '\n' ' ')"
fi
while read -r lib; do
  install -D -m 0755 "$(realpath "$lib")" "$rootfs$lib"
done <<<"$libraries"
log "rootfs: $(wc -l <<<"$libraries") shared libraries, $(du -sh "$rootfs" | cut -f1)"

container=$(buildah "${storage[@]}" from --pull-never scratch)
buildah "${storage[@]}" copy --quiet "$container" "$rootfs/" / >/dev/null
buildah "${storage[@]}" config \
  --env PATH=/usr/sbin:/usr/bin \
  --cmd '["/usr/sbin/ktrustd", "run", "--config", "/etc/ktrust/ktrustd.yaml"]' \
  --label org.opencontainers.image.title=ktrust \
  --label org.opencontainers.image.version="$("$ktrust" --version | awk '{print $2}')" \
  "$container"
mkdir -p "$(dirname "$out")"
rm -f "$out"
# --timestamp 0: the same binaries give the same image digest.
buildah "${storage[@]}" commit --quiet --format oci --squash --timestamp 0 --disable-compression=false \
  "$container" "oci-archive:$out:$ref" >/dev/null
log "wrote $out ($ref): $(du -h "$out" | cut -f1)"
