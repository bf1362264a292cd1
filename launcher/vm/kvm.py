"""Is KVM usable, or is this a case for emulation (TCG)?

KubeVirt's --allow-emulation falls back to TCG when /dev/kvm is missing. Here KVM must also
be usable: a CPU without vmx/svm (e.g. a PVM guest, whose /dev/kvm opens but cannot run
guests) or a /dev/kvm that does not answer KVM_GET_API_VERSION counts as unusable
(`kvm_usable`). Without --allow-emulation, an unusable KVM fails the Sync with the reason.
"""

from __future__ import annotations

import fcntl
import os

from launcher.vm.errors import SyncError

KVM_DEVICE = "/dev/kvm"
CPUINFO = "/proc/cpuinfo"
KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00)
KVM_API_VERSION = 12  # the only stable KVM API there has ever been
# Where hardware virtualization shows in /proc/cpuinfo's flags (Intel VT-x, AMD-V).
X86_VIRT_FLAGS = ("vmx", "svm")
X86_ARCHES = ("x86_64", "i386", "i686", "amd64")


def cpu_virt_missing(arch: str, cpuinfo: str) -> str | None:
    """Why this CPU cannot run KVM guests according to /proc/cpuinfo, or None. Only x86
    advertises hardware virtualization there; other architectures are not judged here."""
    if arch not in X86_ARCHES:
        return None
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            if any(flag in X86_VIRT_FLAGS for flag in value.split()):
                return None
            return ("the CPU advertises neither vmx nor svm (no hardware virtualization: "
                    "nested virtualization off, or a paravirtualized guest such as PVM)")
    return "no CPU flags found in /proc/cpuinfo"


def kvm_device_problem(device: str = KVM_DEVICE) -> str | None:
    """Why `device` is not a usable KVM device, or None. Blocking (tiny)."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"{device} does not exist"
    except OSError as exc:
        return f"{device} cannot be opened: {exc.strerror or exc}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return f"{device} is not a KVM device (KVM_GET_API_VERSION: {exc.strerror or exc})"
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return f"{device} reports KVM API version {version}, expected {KVM_API_VERSION}"
    return None


def kvm_usable(*, arch: str | None = None, cpuinfo_path: str = CPUINFO,
               device: str = KVM_DEVICE) -> tuple[bool, str]:
    """(usable, reason when not). Blocking (reads /proc/cpuinfo, opens the device)."""
    arch = arch or os.uname().machine
    try:
        with open(cpuinfo_path, errors="replace") as f:
            cpuinfo = f.read()
    except OSError as exc:
        cpuinfo = ""
        problem: str | None = f"cannot read {cpuinfo_path}: {exc.strerror or exc}"
    else:
        problem = cpu_virt_missing(arch, cpuinfo)
    problem = problem or kvm_device_problem(device)
    return problem is None, problem or ""


def use_emulation(allow_emulation: bool, probe: tuple[bool, str]) -> bool:
    """KubeVirt's rule with our probe: KVM when usable; else TCG if allowed; else an error."""
    usable, reason = probe
    if usable:
        return False
    if allow_emulation:
        return True
    raise SyncError(f"KVM is not usable on this host ({reason}); start the launcher with "
                    "--allow-emulation to run the VM under software emulation (TCG)")
