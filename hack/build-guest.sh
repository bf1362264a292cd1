#!/usr/bin/env bash
# Build the tiny test guest used by py-virt-launcher's integration tests:
# the Debian kernel (downloaded, not installed) + a busybox-static initramfs that runs
# qemu-ga on the virtio-serial port org.qemu.guest_agent.0, plus a small ext4 data disk.
#
# usage: hack/build-guest.sh [OUTDIR]        (default OUTDIR: <repo>/.cache/guest)
#
# Outputs in OUTDIR: vmlinuz, initramfs.cpio.gz, data.ext4 (16M ext4, label pvldata,
# contains hello.txt) and guest.env (shell KEY="VALUE" lines, see the end of this file).
# Work files go to OUTDIR/work. Cached: when the input hash in OUTDIR/inputs.sha256 matches
# and the outputs exist, nothing is done. The unpacked kernel package is kept in
# OUTDIR/work/kpkg-<version>, so only a kernel version change downloads again.
# Needs (Debian): busybox-static qemu-guest-agent cpio gzip e2fsprogs (hack/install-deps.sh).
# The guest's own files (rootfs templates, moddeps.py) live in hack/guest/.
set -euo pipefail

SELF=$(realpath "${BASH_SOURCE[0]}")
HACK=$(dirname "$SELF")
REPO=$(dirname "$HACK")
GUEST_SRC="$HACK/guest"
export PATH="$PATH:/usr/sbin:/sbin"
export LC_ALL=C

OUT=${1:-"$REPO/.cache/guest"}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
WORK="$OUT/work"
mkdir -p "$WORK"
case "$OUT" in
  *[\"\$\`\\]*) echo "build-guest: OUTDIR must not contain \" \$ \` or \\: $OUT" >&2; exit 1 ;;
esac

# memhp_default_state=online_movable: hot-added memory (virtio-mem) is onlined by the
# kernel at once, into ZONE_MOVABLE, so it can be unplugged again (there is no udev).
GUEST_CMDLINE_BASE="console=ttyS0 panic=-1 memhp_default_state=online_movable"
# Loaded in the guest in dependency order (virtio, virtio_pci, virtio_console are =m in
# Debian's kernel); crc32c is only a soft dependency of ext4, hence listed. For hotplug:
# virtio_scsi + sd_mod (disks) + sr_mod (CD-ROMs; pulls cdrom) + isofs, virtio_mem (memory).
# Built in (=y), so not listed: pciehp/acpiphp (PCIe/ACPI PCI hotplug), ACPI CPU and memory
# hotplug, memory hot-remove.
MODULES=(virtio_pci virtio_console virtio_blk virtio_net ext4 crc32c_generic button evdev virtio_rng
  virtio_scsi sd_mod sr_mod isofs virtio_mem)

log() { echo "build-guest: $*" >&2; }
die() { log "error: $*"; exit 1; }

# One build at a time per OUTDIR (tests may call this in parallel).
exec 9> "$OUT/.lock"
flock -w 900 9 || die "timed out waiting for the lock on $OUT/.lock"

# apt-cache re-parses the package lists on every call when the image disables apt's binary
# cache (Docker images do); keep our own copy so the up-to-date check stays fast.
apt_cache() { apt-cache -o "Dir::Cache::pkgcache=$WORK/apt-pkgcache.bin" "$@"; }
# These print nothing (and do not fail) when apt does not know the package.
candidate() {
  { apt_cache policy "$1" 2> /dev/null || true; } | awk '$1 == "Candidate:" && $2 != "(none)" {print $2; exit}'
}
kernel_dep() {
  { apt_cache depends linux-image-amd64 2> /dev/null || true; } \
    | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ {print $2; exit}'
}

# Sets KPKG and KPKG_VER: the kernel package linux-image-amd64 depends on, and its version.
# The answer is remembered per linux-image-amd64 version (apt-cache depends is slow).
resolve_kernel() {
  local memo="$WORK/kernel-pkg" meta_ver m_ver m_pkg m_pkgver
  meta_ver=$(candidate linux-image-amd64)
  if [[ -n $meta_ver && -f $memo ]] && read -r m_ver m_pkg m_pkgver < "$memo" \
    && [[ $m_ver == "$meta_ver" && -n $m_pkg && -n $m_pkgver ]]; then
    KPKG=$m_pkg KPKG_VER=$m_pkgver
    return
  fi
  KPKG=$(kernel_dep)
  if [[ -z $KPKG ]]; then
    [[ $(id -u) -eq 0 ]] || die "apt knows no linux-image-amd64 (empty package lists?); run 'apt-get update' as root"
    log "apt knows no linux-image-amd64; running apt-get update"
    apt-get update -qq
    meta_ver=$(candidate linux-image-amd64)
    KPKG=$(kernel_dep)
    [[ -n $KPKG ]] || die "apt-cache depends linux-image-amd64 finds no kernel package"
  fi
  KPKG_VER=$(candidate "$KPKG")
  [[ -n $KPKG_VER ]] || die "no candidate version for $KPKG"
  echo "$meta_ver $KPKG $KPKG_VER" > "$memo"
}

input_hash() {
  {
    echo "build-guest.sh $(sha256sum < "$SELF")"
    # Everything in hack/guest/ that goes into the guest (not the smoke test or docs).
    (cd "$GUEST_SRC" && find . -type f ! -name 'smoke*' ! -name '*.md' ! -path '*/__pycache__/*' -print0 \
      | sort -z | xargs -0 sha256sum)
    echo "kernel $KPKG $KPKG_VER"
    dpkg-query -W busybox-static qemu-guest-agent
  } | sha256sum | cut -d' ' -f1
}

OUTPUTS=(vmlinuz initramfs.cpio.gz data.ext4 guest.env)

dpkg-query -W busybox-static qemu-guest-agent > /dev/null 2>&1 \
  || die "busybox-static or qemu-guest-agent is not installed (run hack/install-deps.sh)"

resolve_kernel
HASH=$(input_hash)
if [[ -f $OUT/inputs.sha256 && $(< "$OUT/inputs.sha256") == "$HASH" ]]; then
  uptodate=1
  for f in "${OUTPUTS[@]}"; do [[ -s $OUT/$f ]] || uptodate=0; done
  if ((uptodate)); then
    echo "build-guest: up to date ($OUT)"
    exit 0
  fi
fi

T0=$(date +%s.%N)
rm -f "$OUT/inputs.sha256"
log "building $OUT (kernel $KPKG $KPKG_VER)"
for tool in busybox qemu-ga cpio gzip mkfs.ext4 dpkg apt-get python3; do
  command -v "$tool" > /dev/null || die "$tool not found (run hack/install-deps.sh)"
done

# --- 1. kernel: download the package (no install) and unpack it, once per version ---------
KDIR="$WORK/kpkg-${KPKG_VER//[^A-Za-z0-9.+~-]/_}"
if [[ ! -d $KDIR ]]; then
  dl=$(mktemp -d "$WORK/download.XXXXXX")
  apt_get_download() {
    local sandbox=()
    # As root apt downloads as _apt, which cannot write to our 0700 temp dir.
    [[ $(id -u) -eq 0 ]] && sandbox=(-o APT::Sandbox::User=root)
    (cd "$dl" && apt-get -q "${sandbox[@]}" -o "Dir::Cache::pkgcache=$WORK/apt-pkgcache.bin" \
      download "$KPKG=$KPKG_VER")
  }
  log "downloading $KPKG=$KPKG_VER"
  if ! apt_get_download; then
    # Stale package lists (the mirror dropped that version): refresh once and retry.
    [[ $(id -u) -eq 0 ]] || die "apt-get download $KPKG=$KPKG_VER failed"
    log "download failed; running apt-get update and retrying"
    apt-get update -qq
    apt_get_download || die "apt-get download $KPKG=$KPKG_VER failed"
  fi
  dpkg -x "$dl"/*.deb "$dl/unpack"
  mv "$dl/unpack" "$KDIR"
  rm -rf "$dl"
  # Older kernel unpacks are no longer needed.
  for old in "$WORK"/kpkg-*; do
    [[ $old == "$KDIR" ]] || rm -rf "$old"
  done
fi
MODBASE="$KDIR/lib/modules"
[[ -d $MODBASE ]] || MODBASE="$KDIR/usr/lib/modules"
KVERS=("$MODBASE"/*)
if ((${#KVERS[@]} != 1)) || [[ ! -d ${KVERS[0]} ]]; then
  die "expected one kernel under $MODBASE"
fi
MODROOT=${KVERS[0]}
KVER=${MODROOT##*/}
[[ -f $KDIR/boot/vmlinuz-$KVER ]] || die "no $KDIR/boot/vmlinuz-$KVER"

# --- 2. initramfs root tree -------------------------------------------------------------
R="$WORK/root"
rm -rf "$R"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,mnt/data,lib/modules,lib64,root,var/log}
install -d -m 1777 "$R/tmp"
ln -s ../run "$R/var/run"

# busybox-static: a static binary, so it needs no libraries in the guest.
BUSYBOX=$(command -v busybox)
if ldd "$BUSYBOX" > /dev/null 2>&1; then
  die "$BUSYBOX is dynamically linked; install busybox-static"
fi
cp "$BUSYBOX" "$R/bin/busybox"
while read -r applet; do
  [[ -e $R/bin/$applet ]] || ln -s busybox "$R/bin/$applet"
done < <("$BUSYBOX" --list)
ln -s ../bin/busybox "$R/sbin/init"
ln -s ../bin/busybox "$R/sbin/hwclock" # qemu-ga's guest-set-time runs /sbin/hwclock
ln -s bin/busybox "$R/init" # the kernel runs /init from an initramfs

# qemu-ga and the shared libraries it links (ldd), including the dynamic loader.
QGA=$(command -v qemu-ga)
cp "$QGA" "$R/usr/sbin/qemu-ga"
while read -r lib; do
  mkdir -p "$R$(dirname "$lib")"
  cp -L "$lib" "$R$lib"
done < <(ldd "$QGA" | grep -o '/[^ ]*')
[[ -e $R/lib64/ld-linux-x86-64.so.2 ]] || cp -L /lib64/ld-linux-x86-64.so.2 "$R/lib64/"

# Kernel modules, in load order.
MODLIST=$(python3 "$GUEST_SRC/moddeps.py" "$MODROOT" "${MODULES[@]}") || die "module resolution failed"
: > "$R/etc/modules.list"
while read -r m; do
  [[ -n $m ]] || continue
  dest="$R/lib/modules/${m%.xz}"
  dest=${dest%.gz}
  mkdir -p "$(dirname "$dest")"
  case "$m" in
    *.xz) xz -dc "$MODROOT/$m" > "$dest" ;;
    *.gz) gzip -dc "$MODROOT/$m" > "$dest" ;;
    *) cp "$MODROOT/$m" "$dest" ;;
  esac
  echo "${dest#"$R/lib/modules/"}" >> "$R/etc/modules.list"
done <<< "$MODLIST"

# The guest's own files: inittab, rc scripts, ACPI handler, shutdown shim, os-release...
cp -R "$GUEST_SRC/rootfs/." "$R/"
chmod 0755 "$R/etc/rc.sysinit" "$R/etc/rc.shutdown" "$R/etc/acpi/PWRF/00000080" "$R/sbin/shutdown" \
  "$R/sbin/pvl-hotplugd"

(cd "$R" && find . | sort | cpio -o -H newc -R 0:0 --quiet) | gzip -1 > "$OUT/initramfs.cpio.gz.tmp"

# --- 3. data disk: 16M ext4 with hello.txt (for fsinfo/fsfreeze), no loop mount needed ---
rm -rf "$WORK/datadir"
mkdir -p "$WORK/datadir"
echo hello > "$WORK/datadir/hello.txt"
rm -f "$OUT/data.ext4.tmp"
mkfs.ext4 -q -F -L pvldata -d "$WORK/datadir" "$OUT/data.ext4.tmp" 16M > /dev/null

# --- 4. publish -------------------------------------------------------------------------
cp "$KDIR/boot/vmlinuz-$KVER" "$OUT/vmlinuz.tmp"
cat > "$OUT/guest.env.tmp" << EOF
GUEST_KERNEL="$OUT/vmlinuz"
GUEST_INITRD="$OUT/initramfs.cpio.gz"
GUEST_DATA_DISK="$OUT/data.ext4"
GUEST_KERNEL_VERSION="$KVER"
GUEST_CMDLINE_BASE="$GUEST_CMDLINE_BASE"
GUEST_HOSTNAME="testguest"
GUEST_OS_ID="pvlguest"
GUEST_DATA_LABEL="pvldata"
GUEST_AGENT_CHANNEL="org.qemu.guest_agent.0"
EOF
for f in "${OUTPUTS[@]}"; do
  mv -f "$OUT/$f.tmp" "$OUT/$f"
done
# Keep build output out of git status when OUTDIR is inside the repository.
[[ -e $OUT/.gitignore ]] || echo '*' > "$OUT/.gitignore"
echo "$HASH" > "$OUT/inputs.sha256"

T1=$(date +%s.%N)
log "built in $(awk -v a="$T0" -v b="$T1" 'BEGIN {printf "%.1f", b - a}') s:" \
  "kernel $KVER, $(wc -l < "$R/etc/modules.list") modules," \
  "initramfs $(du -h "$OUT/initramfs.cpio.gz" | cut -f1)"
echo "build-guest: built ($OUT)"
