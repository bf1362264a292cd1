#!/usr/bin/env bash
# Lay out what KubeVirt runs from the launcher image at KubeVirt's paths. The Containerfile
# runs this in the image; tests/integration/test_image_layout.py runs it against a staged
# install, so the test checks exactly what the image gets.
#
#   hack/image-links.sh [--root DIR] [--kubevirt-helpers] BINDIR
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
# - --kubevirt-helpers: KubeVirt's /usr/bin/container-disk, virt-tail and virt-probe (the
#   Containerfile copies them there, or not: KUBEVIRT_HELPERS) must be all there or all
#   absent; /usr/share/py-virt-launcher/kubevirt-helpers then says which.
# Idempotent. Exits non-zero naming what is missing.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
COMMANDS=(virt-launcher-monitor virt-launcher virt-freezer)
HELPERS=(container-disk virt-tail virt-probe)

usage() { echo "usage: $0 [--root DIR] [--kubevirt-helpers] BINDIR" >&2; exit 2; }
die() { echo "image-links: $*" >&2; exit 1; }

root=/
helpers=false
while (($#)); do
  case $1 in
    --root) (($# >= 2)) || usage; root=$2; shift 2 ;;
    --kubevirt-helpers) helpers=true; shift ;;
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
helpers_note=
if $helpers; then
  found=()
  for name in "${HELPERS[@]}"; do
    if [[ -e $root/usr/bin/$name ]]; then
      [[ -f $root/usr/bin/$name && -x $root/usr/bin/$name ]] ||
        die "/usr/bin/$name is not an executable file"
      found+=("$name")
    fi
  done
  mkdir -p "$root/usr/share/py-virt-launcher"
  note=$root/usr/share/py-virt-launcher/kubevirt-helpers
  if ((${#found[@]} == ${#HELPERS[@]})); then
    echo "kubevirt: ${HELPERS[*]} in /usr/bin" > "$note"
    helpers_note="; KubeVirt's helpers: present"
  elif ((${#found[@]} == 0)); then
    echo "absent: ${HELPERS[*]} are not in this image" > "$note"
    helpers_note="; KubeVirt's helpers: absent"
  else
    die "KubeVirt's helpers: /usr/bin has ${found[*]} but not all of ${HELPERS[*]}"
  fi
fi
echo "image-links: ${COMMANDS[*]} and node-labeller.sh in ${root:-}/usr/bin$helpers_note"
