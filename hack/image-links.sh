#!/usr/bin/env bash
# Lay out what KubeVirt runs from the launcher image at KubeVirt's paths. The Containerfile
# runs this in the image; tests/integration/test_image_layout.py runs it against a staged
# install, so the test checks exactly what the image gets.
#
#   hack/image-links.sh [--root DIR] [--kubevirt-helpers HELPERS] BINDIR
#
# BINDIR: where the console scripts are installed, as seen from inside the image (the
# Containerfile's venv: /opt/py-virt-launcher/bin). DIR: the image's root (default /).
#
# - /usr/bin/virt-launcher-monitor, virt-launcher, virt-freezer: relative symlinks to
#   BINDIR's entry points (relative, so they resolve the same inside the image and under a
#   staged root). KubeVirt's pod template runs /usr/bin/virt-launcher-monitor; Velero hook
#   annotations run /usr/bin/virt-freezer; the monitor finds virt-launcher beside itself.
# - /usr/bin/node-labeller.sh: virt-handler's init container runs it from this image.
# - /usr/share/OVMF/OVMF_VARS.secboot.fd: the secure-boot NVRAM template under the name
#   KubeVirt's converter uses (Debian calls it OVMF_VARS.ms.fd: Microsoft keys enrolled, as
#   in KubeVirt's image), when the ovmf package is installed.
# - /usr/bin/container-disk, virt-tail, virt-probe: KubeVirt's helpers, copied from the
#   directory HELPERS (as seen by this script) when it holds them: all three, or none (an
#   empty directory: the image is built without them, KUBEVIRT_HELPERS=absent). Either way
#   /usr/share/py-virt-launcher/kubevirt-helpers says which.
# Idempotent. Exits non-zero naming what is missing.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
COMMANDS=(virt-launcher-monitor virt-launcher virt-freezer)
HELPERS=(container-disk virt-tail virt-probe)

usage() { echo "usage: $0 [--root DIR] [--kubevirt-helpers HELPERS] BINDIR" >&2; exit 2; }
die() { echo "image-links: $*" >&2; exit 1; }

root=/
helpers=
while (($#)); do
  case $1 in
    --root) (($# >= 2)) || usage; root=$2; shift 2 ;;
    --kubevirt-helpers) (($# >= 2)) || usage; helpers=$2; shift 2 ;;
    -h|--help) usage ;;
    -*) usage ;;
    *) break ;;
  esac
done
(($# == 1)) || usage
bindir=${1%/}
[[ $bindir == /* ]] || die "BINDIR must be absolute (as seen inside the image): $bindir"
root=${root%/}

mkdir -p "$root/usr/bin"
for name in "${COMMANDS[@]}"; do
  [[ -f $root$bindir/$name && -x $root$bindir/$name ]] ||
    die "no executable $bindir/$name under root ${root:-/} (is the project installed?)"
  # /usr/bin is two levels below the root.
  ln -sfn "../..$bindir/$name" "$root/usr/bin/$name"
  [[ -x $root/usr/bin/$name ]] || die "/usr/bin/$name does not resolve to $bindir/$name"
done

install -m 0755 "$HERE/node-labeller.sh" "$root/usr/bin/node-labeller.sh"

ovmf=$root/usr/share/OVMF
if [[ -e $ovmf/OVMF_VARS.ms.fd && ! -e $ovmf/OVMF_VARS.secboot.fd ]]; then
  ln -sfn OVMF_VARS.ms.fd "$ovmf/OVMF_VARS.secboot.fd"
fi
installed_helpers=absent
if [[ -n $helpers ]]; then
  [[ -d $helpers ]] || die "no directory $helpers (--kubevirt-helpers)"
  found=()
  for entry in "$helpers"/* "$helpers"/.[!.]*; do
    [[ -e $entry || -L $entry ]] || continue
    case ${entry##*/} in
      container-disk|virt-tail|virt-probe) found+=("${entry##*/}") ;;
      *) die "unexpected in $helpers: ${entry##*/} (only ${HELPERS[*]})" ;;
    esac
  done
  if ((${#found[@]} == ${#HELPERS[@]})); then
    for name in "${HELPERS[@]}"; do
      install -m 0755 "$helpers/$name" "$root/usr/bin/$name"
    done
    installed_helpers=kubevirt
  elif ((${#found[@]} > 0)); then
    die "$helpers has ${found[*]} but not all of ${HELPERS[*]}"
  fi
fi
mkdir -p "$root/usr/share/py-virt-launcher"
if [[ $installed_helpers == kubevirt ]]; then
  echo "kubevirt: ${HELPERS[*]} in /usr/bin" > "$root/usr/share/py-virt-launcher/kubevirt-helpers"
else
  echo "absent: ${HELPERS[*]} are not in this image" \
    > "$root/usr/share/py-virt-launcher/kubevirt-helpers"
fi
echo "image-links: ${COMMANDS[*]} and node-labeller.sh in ${root:-}/usr/bin;" \
  "KubeVirt's helpers: $installed_helpers"
