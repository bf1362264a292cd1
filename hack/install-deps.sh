#!/usr/bin/env bash
# Install the Debian packages py-virt-launcher needs (run as root). Idempotent: packages
# already present are not fetched again, and apt-get update runs only when a package is missing.
#
#   hack/install-deps.sh           what make setup needs (the launcher, its tests, the guest)
#   hack/install-deps.sh --image   only what make image needs (hack/build-image.sh)
set -euo pipefail

PKGS=(
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  qemu-system-x86 qemu-utils qemu-guest-agent
  libvirt-dev pkg-config gcc
  busybox-static cpio gzip e2fsprogs
  util-linux procps iproute2 libxml2-utils passwd genisoimage
  python3 python3-venv python3-dev make
)

# make image: buildah builds the Containerfile (chroot isolation, no OCI runtime needed) and
# mmdebstrap makes the Debian base image when none can be pulled.
IMAGE_PKGS=(buildah mmdebstrap)

case ${1:-} in
  "") ;;
  --image) PKGS=("${IMAGE_PKGS[@]}") ;;
  *) echo "usage: $0 [--image]" >&2; exit 2 ;;
esac

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

ensure_qemu_user() {
  # A system-mode libvirtd resolves its compiled-in QEMU user (Debian: libvirt-qemu) before
  # it reads qemu.conf, and fails without it. libvirt-daemon-system's postinst creates it;
  # we do not install that package (init scripts, polkit rules), so create it the same way.
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  getent passwd libvirt-qemu >/dev/null ||
    useradd --system --gid libvirt-qemu --no-create-home --home-dir /var/lib/libvirt \
      --shell /usr/sbin/nologin libvirt-qemu
}

if ((${#missing[@]} == 0)); then
  echo "install-deps: all Debian packages present"
else
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing packages (${missing[*]}); run as root" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: recommends would pull systemd units, dnsmasq, etc. that a
  # container entrypoint does not use.
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [[ $(id -u) -eq 0 && -z ${1:-} ]]; then
  ensure_qemu_user
fi
