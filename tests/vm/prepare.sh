#!/usr/bin/env bash
# prepare.sh CACHE_DIR
#
# Builds everything the kTLS VM needs into CACHE_DIR: Debian 12's own kernel
# (which has CONFIG_TLS=m, unlike the 6.18 host kernel) and a busybox initramfs
# that loads the needed modules, mounts the host / read-only over virtio-9p and
# chroots into it. Idempotent: a stamp keyed by kernel version and by this
# script's content skips work already done. Needs root only to install packages.
#
# Layout written:
#   CACHE_DIR/debs/linux-image-<kver>_*.deb   the downloaded kernel package
#   CACHE_DIR/<kver>/root/                    the unpacked package (+ depmod output)
#   CACHE_DIR/<kver>/vmlinuz, initramfs.gz    what run.sh boots
#   CACHE_DIR/<kver>/stamp                    present when the two above are complete
#   CACHE_DIR/current                         kernel version run.sh should use
set -euo pipefail

usage() { echo "usage: $0 CACHE_DIR" >&2; exit 2; }
[[ $# -eq 1 ]] || usage
mkdir -p "$1"
CACHE=$(cd "$1" && pwd)
SELF=$(readlink -f "${BASH_SOURCE[0]}")

log() { echo "prepare: $*" >&2; }

# Host tools: qemu runs the VM; busybox-static is the initramfs userland (static,
# so no libraries to copy); kmod gives depmod and modprobe --show-depends; the
# guest chroots into the host /, so the smoke test's python3/openssl come from here.
PACKAGES=(qemu-system-x86 busybox-static kmod cpio gzip python3 openssl)

# Modules loaded at boot, dependencies added from modules.dep.
#   virtio_pci, 9pnet_virtio, 9p: the root filesystem and the exchange share.
#   virtio_rng: entropy, so getrandom() never stalls TLS key generation.
#   tls + AEADs: kTLS itself; the kernel asks for "gcm(aes)" etc. lazily, and
#     aesni_intel/ghash_clmulni_intel are the fast implementations (-cpu max has them).
#   veth, bridge, sch_ingress, cls_bpf: what the simulated-node tests build on.
#   inet_diag, tcp_diag: `ss -tie` and the data path report (kTLS ULP info).
# Anything else is still found on demand: the kernel's modprobe helper runs in the
# initramfs root (init only chroots), whose /sbin/modprobe is busybox.
MODULES=(
  virtio_pci virtio_rng 9pnet_virtio 9p
  tls gcm ccm aesni_intel ghash_clmulni_intel
  chacha20poly1305 chacha_x86_64 poly1305_x86_64
  veth bridge sch_ingress cls_bpf
  inet_diag tcp_diag
)

# --- 1. host packages ---------------------------------------------------------
# One dpkg-query for all: unknown packages print nothing and count as missing.
installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${PACKAGES[@]}" 2>/dev/null \
            | awk '/ install ok installed$/ { print $1 }') || true
missing=()
for p in "${PACKAGES[@]}"; do
  grep -qx "$p" <<< "$installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Try from the current lists first; refresh them only if that fails (stale lists).
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
    || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
fi

# --- 2. which kernel ----------------------------------------------------------
# linux-image-amd64 is the metapackage; its dependency names the real image,
# e.g. linux-image-6.1.0-56-amd64. Fall back to the cached one when apt is unusable.
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
      | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }') || true
if [[ -z $pkg ]]; then
  [[ -s $CACHE/current ]] || { log "cannot resolve linux-image-amd64 and nothing cached"; exit 1; }
  pkg=linux-image-$(cat "$CACHE/current")
  log "apt-cache gave no kernel; reusing cached $pkg"
fi
KVER=${pkg#linux-image-}
KDIR=$CACHE/$KVER
ROOT=$KDIR/root
# The stamp changes whenever this script (module list, init script) changes.
STAMP_WANT="$KVER $(sha256sum "$SELF" | cut -d' ' -f1)"

if [[ -f $KDIR/stamp && $(cat "$KDIR/stamp") == "$STAMP_WANT" ]]; then
  log "up to date: $KVER"
  echo "$KVER" > "$CACHE/current"
  exit 0
fi

# --- 3. fetch and unpack the kernel ------------------------------------------
mkdir -p "$CACHE/debs"
shopt -s nullglob
debs=("$CACHE/debs/${pkg}_"*.deb)
if ((${#debs[@]} == 0)); then
  log "downloading $pkg"
  # apt-get download writes into the cwd; as root it warns about the sandbox user.
  (cd "$CACHE/debs" && apt-get download -q "$pkg" >&2) \
    || (apt-get update -q >&2 && cd "$CACHE/debs" && apt-get download -q "$pkg" >&2)
  debs=("$CACHE/debs/${pkg}_"*.deb)
  ((${#debs[@]})) || { log "apt-get download left no $pkg .deb"; exit 1; }
fi
deb=${debs[-1]}
if [[ ! -f $ROOT/boot/vmlinuz-$KVER || ! -s $ROOT/lib/modules/$KVER/modules.dep ]]; then
  log "unpacking $(basename "$deb")"
  rm -rf "$ROOT"
  mkdir -p "$ROOT"
  dpkg-deb -x "$deb" "$ROOT"
  # The package ships no modules.dep (postinst normally runs depmod).
  depmod -b "$ROOT" "$KVER"
fi
MODDIR=$ROOT/lib/modules/$KVER

# --- 4. initramfs ---------------------------------------------------------------
STAGE=$(mktemp -d "$KDIR/initramfs.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,newroot,etc,lib/modules/"$KVER"}
cp /bin/busybox "$STAGE/bin/busybox"
# Applets are linked at boot by "busybox --install"; modprobe must exist before
# that for the kernel's on-demand module helper, so link it now.
ln -s ../bin/busybox "$STAGE/sbin/modprobe"
# The kernel opens /dev/console before devtmpfs is mounted; without the node
# init starts with no stdio. mknod needs root; init redirects again anyway.
mknod -m 600 "$STAGE/dev/console" c 5 1 2>/dev/null || true

# modprobe --show-depends prints "insmod <path>" for the module and each
# dependency, or "builtin <name>" when it is compiled in.
: > "$STAGE/etc/modules"
for m in "${MODULES[@]}"; do
  out=$(modprobe -d "$ROOT" -S "$KVER" --show-depends "$m") \
    || { log "module $m not found in $KVER"; exit 1; }
  while read -r kind path _; do
    [[ $kind == insmod ]] || continue
    rel=${path#"$ROOT"}
    mkdir -p "$STAGE$(dirname "$rel")"
    cp -n "$path" "$STAGE$rel"
  done <<< "$out"
  echo "$m" >> "$STAGE/etc/modules"
done
# depmod over the subset so busybox modprobe finds dependencies and aliases
# (e.g. "crypto-gcm(aes)", "tcp-ulp-tls", "rtnl-link-veth").
cp "$MODDIR"/modules.{order,builtin,builtin.modinfo} "$STAGE/lib/modules/$KVER/"
depmod -b "$STAGE" "$KVER"

cat > "$STAGE/init" <<'INIT'
#!/bin/busybox sh
# PID 1 of the kTLS VM. Contract with run.sh (kernel command line):
#   ktrust.xchg=<tag>  9p share with "cmd" (run in the chroot), receives "rc".
/bin/busybox --install -s
export PATH=/sbin:/bin
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
# Raw output: the host reads this console, it should not get \r\n.
stty -F /dev/console -onlcr 2>/dev/null

die() {
  echo "ktrust-vm: $*"
  echo "ktrust-vm: powering off"
  poweroff -f
}

for m in $(cat /etc/modules); do
  modprobe "$m" || echo "ktrust-vm: warning: modprobe $m failed"
done

# Host / read-only. cache=loose: nothing changes under a short-lived VM, and
# TCG makes every 9p round-trip expensive. msize: fewer, larger messages.
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro \
  hostroot /newroot || die "cannot mount host root"
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mount -t tmpfs -o mode=1777 tmp $R/tmp
mount -t tmpfs -o mode=755 run $R/run
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup
mount -t bpf bpf $R/sys/fs/bpf
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs $R/sys/kernel/tracing 2>/dev/null
ip link set lo up
hostname ktrust-vm

xchg=$(sed -n 's/.*ktrust\.xchg=\([^ ]*\).*/\1/p' /proc/cmdline)
[ -n "$xchg" ] || die "no ktrust.xchg= on the kernel command line"
X=/run/ktrust-vm
mkdir -p $R$X
# cache=none: rc and any result files must reach the host before poweroff.
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none \
  "$xchg" $R$X || die "cannot mount exchange share $xchg"

echo "ktrust-vm: up after $(cut -d' ' -f1 /proc/uptime)s, running command"
# Interactive use (a tty on the host) gets the console as controlling tty.
if grep -q 'ktrust.tty=1' /proc/cmdline; then
  setsid -c chroot $R /bin/sh $X/cmd
else
  chroot $R /bin/sh $X/cmd </dev/null
fi
rc=$?
echo "$rc" > $R$X/rc
# Quiet the "reboot: Power down" line so the command's last line stays last.
echo 0 > /proc/sys/kernel/printk
sync
poweroff -f
INIT
chmod 755 "$STAGE/init"

log "packing initramfs ($(du -sh "$STAGE" | cut -f1) unpacked)"
(cd "$STAGE" && find . -print0 | LC_ALL=C sort -z \
  | cpio --null -o -H newc --quiet | gzip -6) > "$KDIR/initramfs.gz.tmp"
mv "$KDIR/initramfs.gz.tmp" "$KDIR/initramfs.gz"
cp "$ROOT/boot/vmlinuz-$KVER" "$KDIR/vmlinuz"
echo "$STAMP_WANT" > "$KDIR/stamp"
echo "$KVER" > "$CACHE/current"
log "ready: $KDIR"
