#!/usr/bin/env bash
# node-labeller.sh, installed in the image as /usr/bin/node-labeller.sh (hack/image-links.sh).
#
# virt-operator gives every virt-handler pod an init container named "virt-launcher" that
# runs `/bin/sh -c node-labeller.sh` in the launcher image (privileged, as root). It writes
# the node's libvirt capabilities under /var/lib/kubevirt-node-labeller, a host directory
# virt-handler reads when it starts (capabilities.xml) and turns into node labels (CPU
# models and features, machine types) that VMs are scheduled by. Without these files
# virt-handler does not come up, so an image used as KubeVirt's launcher image must have
# this script. Same contract as KubeVirt's; it starts whichever libvirt daemon the image
# has (Debian: libvirtd) instead of virtqemud.
#
# Environment (virt-operator sets both): PREFERRED_VIRTTYPE (default kvm): the domain type
# to ask for when the hypervisor device exists (else qemu, i.e. TCG); HYPERVISOR_DEVICE
# (default kvm): the device under /dev.
# For tests only: PVL_NODE_LABELLER_DIR (output directory), PVL_DEV_DIR (/dev),
# PVL_PROC_MISC (/proc/misc), PVL_CPU_MAP_DIR (libvirt's cpu_map), PVL_ARCH (uname -m),
# PVL_DAEMON_WAIT_S (how long to wait for the daemon, 30).
set -euo pipefail

out=${PVL_NODE_LABELLER_DIR:-/var/lib/kubevirt-node-labeller}
dev_dir=${PVL_DEV_DIR:-/dev}
proc_misc=${PVL_PROC_MISC:-/proc/misc}
cpu_map=${PVL_CPU_MAP_DIR:-/usr/share/libvirt/cpu_map}
arch=${PVL_ARCH:-$(uname -m)}
wait_s=${PVL_DAEMON_WAIT_S:-30}
device=${HYPERVISOR_DEVICE:-kvm}
preferred=${PREFERRED_VIRTTYPE:-kvm}
uri=qemu:///system

log() { echo "node-labeller: $*" >&2; }

case $arch in
  x86_64) machine=q35 ;;
  aarch64) machine=virt ;;
  s390x) machine=s390-ccw-virtio ;;
  *) log "no capabilities collected on $arch"; exit 0 ;;
esac

# The hypervisor device: made from its /proc/misc minor when the container has no node for
# it, and opened to everyone, since QEMU probes it as the unprivileged qemu user. Best
# effort: where the container may not change it (rootless runtimes map "root" to a user
# that does not own it), a device we can already use still counts, else we report TCG
# rather than fail; without these files virt-handler does not start at all.
dev=$dev_dir/$device
if [[ ! -e $dev && -r $proc_misc ]]; then
  while read -r minor name; do
    if [[ $name == "$device" ]]; then
      mknod "$dev" c 10 "$minor" || log "cannot create $dev"
      break
    fi
  done < "$proc_misc"
fi
virttype=qemu
if [[ -e $dev ]]; then
  if chmod o+rw "$dev" || [[ -r $dev && -w $dev ]]; then
    virttype=$preferred
  else
    log "$dev is not usable here; reporting capabilities for $virttype"
  fi
fi
if [[ -e $dev_dir/sev ]]; then
  # QEMU needs it read-write to report SEV capabilities.
  chmod o+rw "$dev_dir/sev" || log "cannot open $dev_dir/sev to QEMU"
fi

daemon=
for candidate in virtqemud libvirtd; do
  if daemon=$(command -v "$candidate"); then
    break
  fi
  daemon=
done
[[ -n $daemon ]] || { log "no libvirt daemon (virtqemud or libvirtd) on PATH"; exit 1; }
log "starting $daemon; domain type $virttype, machine $machine, arch $arch"
"$daemon" --daemon

# The daemon forks into the background; wait until it answers. It is left running: it dies
# with the init container's PID namespace when this script exits.
deadline=$((SECONDS + wait_s))
until virsh --quiet --connect "$uri" version >/dev/null 2>&1; do
  if ((SECONDS >= deadline)); then
    log "$daemon did not answer on $uri within ${wait_s}s"
    exit 1
  fi
  sleep 0.2
done

mkdir -p "$out"
caps_args=(--machine "$machine" --arch "$arch" --virttype "$virttype")
virsh --quiet --connect "$uri" domcapabilities "${caps_args[@]}" \
  > "$out/virsh_domcapabilities.xml"
# libvirt computes a baseline (the host-model CPU with its features expanded) only on x86
# and s390x.
if [[ $arch == x86_64 || $arch == s390x ]]; then
  virsh --quiet --connect "$uri" hypervisor-cpu-baseline --features "${caps_args[@]}" \
    "$out/virsh_domcapabilities.xml" > "$out/supported_features.xml"
fi
virsh --quiet --connect "$uri" capabilities > "$out/capabilities.xml"
# Older virt-handlers read the CPU feature lists from a copy of libvirt's cpu_map.
if [[ -d $cpu_map ]]; then
  rm -rf "$out/cpu_map"
  cp -r "$cpu_map" "$out/cpu_map"
fi
log "wrote $(cd "$out" && echo *.xml)"
