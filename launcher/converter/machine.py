"""Everything on <domain> outside <devices>: identity, KubeVirt metadata, memory, vCPUs and
their pinning, iothreads, SMBIOS, firmware and boot, hypervisor features, the guest CPU,
the clock and the lifecycle actions.

Matched KubeVirt behaviour (pkg/virt-launcher/virtwrap/converter: converter.go, compute/,
vcpu/)
- Memory: spec.domain.memory.guest, else resources.requests.memory, else
  resources.limits.memory, in bytes (<memory unit='b'>).
- vCPUs (vcpu.GetCPUTopology): sockets * cores * threads, each 1 when unset (0 is unset,
  as Go's zero value); with none set, sockets come from the CPU limit, else the CPU request,
  rounded up. <topology> always carries dies='1'.
- CPU model: host-model by default (host-passthrough on aarch64); host-model and
  host-passthrough become the mode, any other name mode='custom' with the model; features
  keep their policy (default require); named x86 models get mpx disabled unless the VMI
  names mpx (libvirt refuses models whose cpu_map lists mpx on hosts without it).
- dedicatedCpuPlacement: each vCPU pinned to one of the pod's CPUs in order, the emulator
  to the next one with isolateEmulatorThread, iothreads pinned as KubeVirt's
  FormatDomainIOThreadPin does.
- iothreads: KubeVirt 1.2's count (the version seed 001 ran): a pool of 1 (shared, the
  default) or 2 x CPU request (auto), shared by the disks without dedicatedIOThread, plus
  one per dedicated disk. IOThreads.assign gives the disks their ids.
- SMBIOS system entries from virt-handler's SMBios options plus uuid and
  firmware.serial; spec.domain.chassis; <smbios mode='sysinfo'/> on x86_64.
- Firmware: bios (useSerial), efi (OVMF_CODE[.secboot].fd under --ovmf-path, secure boot
  by default, which forces SMM; NVRAM from the OVMF_VARS template as
  <vmi name>_VARS.fd), kernel boot from the kernel-boot container
  (<container-disks>/kernel-boot/<basename of the path>, as virt-handler mounts the
  artifacts there).
- Features: ACPI unless disabled; apic, smm, Hyper-V enlightenments, kvm hidden and
  pvspinlock only when asked (no vmport: KubeVirt 1.2, seed 001, emits none).
- Clock: utc (adjustment from offsetSeconds, else reset) or timezone; timers rtc, pit,
  kvmclock, hpet, hypervclock.
- Metadata: <kubevirt xmlns='http://kubevirt.io'> with the VMI uid and the grace period
  (terminationGracePeriodSeconds, default 30), as KubeVirt's manager adds it.

Deliberate differences
- The domain UUID is always set (KubeVirt leaves it to libvirt, which takes the SMBIOS
  uuid): spec.domain.firmware.uuid; else the VMI uid when it is a UUID (unique and stable
  for the VMI's life, which is the domain's); else uuid5 under KubeVirt's firmware UUID
  namespace of the uid, or of the VMI name when there is no uid, which is exactly the
  firmware UUID KubeVirt's VM controller assigns a VM of that name.
- Emulation (TCG): the CPU mode stays KubeVirt's (host-model by default, which libvirt
  expands to a named model TCG can run); a mode libvirt does not support for TCG domains
  (its domcapabilities: host-passthrough here) becomes <cpu mode='maximum'/>; see _cpu_mode.
- Hugepages carry their page size (<page size unit='KiB'/>) instead of KubeVirt's bare
  <hugepages/> plus memfd backing and a NUMA cell.
- NVRAM lives under the private dir (<private>/libvirt/qemu/nvram, KubeVirt's non-root
  location) so it follows the runtime root; persistent EFI (backend storage) and the
  supplementalPool iothread policy are refused; memory.maxGuest (memory hotplug) is
  ignored.
- Names KubeVirt would pass through unchecked (CPU model and features, machine type,
  timezone, kernel paths) are checked against libvirt's schema so a bad value names its
  field instead of failing at define time.
"""

from __future__ import annotations

import json
import os
import re
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING

from launcher.converter.context import Context
from launcher.converter.errors import ConversionError
from launcher.converter.plan import ExistingFile
from launcher.converter.spec import Node

KUBEVIRT_NS = "http://kubevirt.io"
# A readable prefix in the XML; libvirt matches metadata by namespace URI only.
ET.register_namespace("kubevirt", KUBEVIRT_NS)

# KubeVirt's firmwareUUIDns (virt-controller): firmware UUID = uuid5(this, VM name).
FIRMWARE_UUID_NAMESPACE = uuidlib.UUID("6a1a24a1-4061-4607-8bf4-a3963d0c5895")
DEFAULT_GRACE_PERIOD = 30  # KubeVirt's v1.DefaultGracePeriodSeconds
MAX_VCPUS = 4096
MIN_MEMORY = 2**20
MAX_MEMORY = 2**50  # 1Pi: far above any host, far below libvirt's unsigned long long KiB
INT64 = 2**63 - 1
UINT32 = 2**32 - 1
HOST_MODEL = "host-model"
HOST_PASSTHROUGH = "host-passthrough"
CPU_POLICIES = ("force", "require", "optional", "disable", "forbid")
IOTHREAD_POLICIES = ("shared", "auto")
KERNEL_BOOT_DIR = "kernel-boot"  # KubeVirt's containerdisk.KernelBootName
KERNEL_BOOT_VOLUME = "kernel-boot"
DEFAULT_MACHINE = {"x86_64": "q35", "aarch64": "virt", "s390x": "s390-ccw-virtio",
                   "ppc64le": "pseries"}
HUGEPAGE_SIZES = {"x86_64": (2 * 2**20, 2**30),
                  "aarch64": (64 * 2**10, 2 * 2**20, 32 * 2**20, 2**30)}
HYPERV_FLAGS = ("relaxed", "vapic", "vpindex", "runtime", "synic", "reset", "frequencies",
                "reenlightenment", "tlbflush", "ipi", "evmcs")
# (KubeVirt field, libvirt timer, tick policies KubeVirt's API allows or None)
TIMERS: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("rtc", "rtc", ("delay", "catchup")),
    ("pit", "pit", ("delay", "catchup", "discard")),
    ("kvm", "kvmclock", None),
    ("hpet", "hpet", ("delay", "catchup", "merge", "discard")),
    ("hyperv", "hypervclock", None),
)
RTC_TRACKS = ("guest", "wall")

# XML 1.0's characters: anything else makes the document unparsable.
_XML_CHARS = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")
_ONE_LINE = re.compile("[^\n\r]+")
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}|[0-9a-fA-F]{32}")
_MACHINE_RE = re.compile(r"[A-Za-z0-9_.+-]+")
_CPU_MODEL_RE = re.compile(r"[A-Za-z0-9_.+-]+")
_CPU_FEATURE_RE = re.compile(r"[A-Za-z0-9_.-]+")  # libvirt's featureName
_TIMEZONE_RE = re.compile(r"[A-Za-z0-9_.+/-]+")  # libvirt's timeZone
_VENDOR_ID_RE = re.compile(r"[^,\n\r]{1,12}")


def _q(value: object) -> str:
    return json.dumps(value)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _on_off(value: bool | None) -> str:
    return "on" if value else "off"


def _yes_no(value: bool | None) -> str:
    return "yes" if value else "no"


def _text(node: Node, key: str, pattern: re.Pattern[str] | None = None,
          expected: str = "") -> str | None:
    """A string the XML will carry: only XML characters, and matching `pattern` when not
    empty ("" is Go's unset)."""
    value = node.str(key)
    if not value:
        return value
    if _XML_CHARS.fullmatch(value) is None or (
            pattern is not None and pattern.fullmatch(value) is None):
        node.fail(f"{_q(value)} is not valid" + (f" ({expected})" if expected else ""), key)
    return value


def _arch(ctx: Context) -> str:
    """libvirt's name for the guest architecture (KubeVirt and Go say arm64)."""
    return "aarch64" if ctx.opts.arch == "arm64" else ctx.opts.arch


def _arm(ctx: Context) -> bool:
    return _arch(ctx) == "aarch64"


def _x86(ctx: Context) -> bool:
    return ctx.opts.arch == "x86_64"


def _human(size: int) -> str:
    for suffix, unit in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


# --- build ----------------------------------------------------------------------------------
def build(ctx: Context, dom: ET.Element) -> str:
    """Fill `dom` with everything but <devices>; return the domain UUID."""
    _check_identity(ctx)
    uuid = domain_uuid(ctx)
    dom.set("type", "qemu" if ctx.opts.emulation else "kvm")
    _sub(dom, "name", ctx.domain_name)
    _sub(dom, "uuid", uuid)
    _metadata(ctx, dom)
    _memory(ctx, dom)
    topology = cpu_topology(ctx)
    _sub(dom, "vcpu", str(topology.vcpus), placement="static")
    threads = iothreads(ctx)
    if threads.count:
        _sub(dom, "iothreads", str(threads.count))
    _cputune(ctx, dom, topology, threads)
    _sysinfo(ctx, dom, uuid)
    secure_boot = _os(ctx, dom)
    _features(ctx, dom, secure_boot=secure_boot)
    _cpu(ctx, dom, topology)
    _clock(ctx, dom)
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    return uuid


# --- identity -------------------------------------------------------------------------------
def _check_identity(ctx: Context) -> None:
    meta = ctx.vmi.obj("metadata")
    for key, value in (("name", ctx.name), ("namespace", ctx.namespace), ("uid", ctx.uid)):
        if value and (_XML_CHARS.fullmatch(value) is None or
                      _ONE_LINE.fullmatch(value) is None):
            meta.fail(f"{_q(value)} contains characters a libvirt domain cannot carry", key)


def domain_uuid(ctx: Context) -> str:
    """The domain (and SMBIOS system) UUID, lower-case canonical; see the module doc."""
    firmware = ctx.domain_spec.obj("firmware")
    given = firmware.str("uuid")
    if given:
        if _UUID_RE.fullmatch(given) is None:
            firmware.fail(f"{_q(given)} is not a UUID", "uuid")
        return str(uuidlib.UUID(given))
    if _UUID_RE.fullmatch(ctx.uid):
        return str(uuidlib.UUID(ctx.uid))
    return str(uuidlib.uuid5(FIRMWARE_UUID_NAMESPACE, ctx.uid or ctx.name))


def grace_period_seconds(ctx: Context) -> int:
    value = ctx.spec.int("terminationGracePeriodSeconds", DEFAULT_GRACE_PERIOD, minimum=0,
                         maximum=INT64)
    assert value is not None
    return value


def _metadata(ctx: Context, dom: ET.Element) -> None:
    kubevirt = _sub(_sub(dom, "metadata"), f"{{{KUBEVIRT_NS}}}kubevirt")
    _sub(kubevirt, f"{{{KUBEVIRT_NS}}}uid", ctx.uid)
    grace = _sub(kubevirt, f"{{{KUBEVIRT_NS}}}graceperiod")
    _sub(grace, f"{{{KUBEVIRT_NS}}}deletionGracePeriodSeconds", str(grace_period_seconds(ctx)))


# --- memory ---------------------------------------------------------------------------------
def guest_memory(ctx: Context) -> tuple[int, str]:
    """The guest's memory in bytes and the field it came from."""
    resources = ctx.domain_spec.obj("resources")
    sources = ((ctx.domain_spec.obj("memory"), "guest"),
               (resources.obj("requests"), "memory"), (resources.obj("limits"), "memory"))
    for node, key in sources:
        size = node.byte_size(key)
        if size is None:
            continue
        if size < MIN_MEMORY:
            node.fail(f"{_q(node.child(key).value)} is too little memory (at least 1Mi)", key)
        if size > MAX_MEMORY:
            node.fail(f"{_q(node.child(key).value)} is more memory than supported (at most "
                      f"1Pi)", key)
        return size, node.child(key).path
    resources.obj("requests").fail("required: the guest's memory (or set "
                                   "spec.domain.memory.guest)", "memory")


def _memory(ctx: Context, dom: ET.Element) -> None:
    size, source = guest_memory(ctx)
    _sub(dom, "memory", str(size), unit="b")
    _sub(dom, "currentMemory", str(size), unit="b")
    hugepages = ctx.domain_spec.obj("memory").obj("hugepages")
    if not hugepages.present:
        return
    page = hugepages.byte_size("pageSize", required=True)
    assert page is not None
    allowed = HUGEPAGE_SIZES.get(_arch(ctx), HUGEPAGE_SIZES["x86_64"])
    if page not in allowed:
        hugepages.fail(f"{_q(hugepages.child('pageSize').value)} is not supported on "
                       f"{_arch(ctx)} (expected one of: "
                       f"{', '.join(_human(p) for p in allowed)})", "pageSize")
    if size % page:
        hugepages.fail(f"the guest memory ({source} = {_human(size)}) is not a multiple of "
                       f"the page size {_human(page)}", "pageSize")
    backing = _sub(_sub(dom, "memoryBacking"), "hugepages")
    _sub(backing, "page", size=str(page // 1024), unit="KiB")


# --- vCPUs, iothreads, pinning --------------------------------------------------------------
@dataclass(frozen=True)
class Topology:
    sockets: int
    cores: int
    threads: int

    @property
    def vcpus(self) -> int:
        return self.sockets * self.cores * self.threads


def _resource_cpus(ctx: Context, sections: Sequence[str]) -> int | None:
    """The first CPU quantity among resources.<section>.cpu, rounded up like
    resource.Quantity.Value()."""
    resources = ctx.domain_spec.obj("resources")
    for section in sections:
        node = resources.obj(section)
        amount = node.quantity("cpu")
        if amount is None:
            continue
        count = int(amount.to_integral_value(rounding=ROUND_CEILING))
        if count > MAX_VCPUS:
            node.fail(f"{_q(node.child('cpu').value)} is more than {MAX_VCPUS} CPUs", "cpu")
        return count
    return None


def cpu_topology(ctx: Context) -> Topology:
    cpu = ctx.domain_spec.obj("cpu")
    sockets, cores, threads = (cpu.int(key, 0, minimum=0, maximum=MAX_VCPUS) or 0
                               for key in ("sockets", "cores", "threads"))
    if not (sockets or cores or threads):
        sockets = _resource_cpus(ctx, ("limits", "requests")) or 1
    topology = Topology(sockets or 1, cores or 1, threads or 1)
    if topology.vcpus > MAX_VCPUS:
        cpu.fail(f"{topology.sockets} sockets x {topology.cores} cores x {topology.threads} "
                 f"threads is {topology.vcpus} vCPUs (at most {MAX_VCPUS})")
    return topology


@dataclass(frozen=True)
class IOThreads:
    count: int  # <iothreads>
    shared: int  # ids 1..shared serve disks without a dedicated thread, round robin

    def assign(self, dedicated: Sequence[bool]) -> list[int]:
        """The iothread ids of the virtio disks, in disk order, given which of them have
        dedicatedIOThread: KubeVirt's round robin over the shared ids, dedicated ids after
        them."""
        ids: list[int] = []
        shared, next_dedicated = 1, self.shared + 1
        for own in dedicated:
            if own:
                ids.append(next_dedicated)
                next_dedicated += 1
            else:
                ids.append(shared)
                shared = shared % max(self.shared, 1) + 1
        return ids


def _dedicated(ctx: Context) -> tuple[bool, bool]:
    """(dedicatedCpuPlacement, isolateEmulatorThread)"""
    cpu = ctx.domain_spec.obj("cpu")
    dedicated = bool(cpu.bool("dedicatedCpuPlacement", False))
    isolate = bool(cpu.bool("isolateEmulatorThread", False))
    if isolate and not dedicated:
        cpu.fail("requires dedicatedCpuPlacement: true", "isolateEmulatorThread")
    return dedicated, isolate


def iothreads(ctx: Context) -> IOThreads:
    policy = ctx.domain_spec.str("ioThreadsPolicy", "shared", choices=IOTHREAD_POLICIES)
    disks = ctx.devices.items("disks")
    dedicated = sum(1 for disk in disks if disk.bool("dedicatedIOThread", False))
    shared = len(disks) - dedicated
    if policy == "auto":
        # With an isolated emulator thread KubeVirt lets one iothread share its CPU.
        pool = 1 if all(_dedicated(ctx)) else 2 * (
            _resource_cpus(ctx, ("requests", "limits")) or 1)
    else:
        pool = 1
    if shared + dedicated > pool:
        shared = max(pool - dedicated, 1)
    return IOThreads(count=shared + dedicated, shared=shared)


def _iothread_pins(count: int, vcpu_cpus: Sequence[int],
                   emulator: str | None) -> list[tuple[int, str]]:
    """KubeVirt's FormatDomainIOThreadPin: beside the isolated emulator thread, else
    spread over the vCPUs' CPUs."""
    if count == 0:
        return []
    if emulator is not None:
        return [(1, emulator)]
    vcpus = len(vcpu_cpus)
    if count >= vcpus:
        return [(t, str(vcpu_cpus[t % vcpus])) for t in range(1, count + 1)]
    pins: list[tuple[int, str]] = []
    start = 0
    for thread in range(1, count + 1):
        size = vcpus // count + (1 if thread <= vcpus % count else 0)
        pins.append((thread, ",".join(str(c) for c in vcpu_cpus[start:start + size])))
        start += size
    return pins


def _cputune(ctx: Context, dom: ET.Element, topology: Topology, threads: IOThreads) -> None:
    dedicated, isolate = _dedicated(ctx)
    if not dedicated:
        return
    host = ctx.opts.dedicated_cpus
    needed = topology.vcpus + (1 if isolate else 0)
    if len(host) < needed:
        ctx.domain_spec.obj("cpu").fail(
            f"needs {needed} dedicated host CPUs ({topology.vcpus} vCPUs"
            f"{' + the emulator thread' if isolate else ''}) but the pod has "
            f"{len(host)}", "dedicatedCpuPlacement")
    tune = _sub(dom, "cputune")
    vcpu_cpus = host[:topology.vcpus]
    for vcpu, cpu in enumerate(vcpu_cpus):
        _sub(tune, "vcpupin", vcpu=str(vcpu), cpuset=str(cpu))
    emulator = str(host[topology.vcpus]) if isolate else None
    if emulator is not None:
        _sub(tune, "emulatorpin", cpuset=emulator)
    for thread, cpuset in _iothread_pins(threads.count, vcpu_cpus, emulator):
        _sub(tune, "iothreadpin", iothread=str(thread), cpuset=cpuset)


# --- SMBIOS ---------------------------------------------------------------------------------
def _entries(parent: ET.Element, entries: Sequence[tuple[str, str]]) -> None:
    for name, value in entries:
        if value:
            _sub(parent, "entry", value, name=name)


def _sysinfo(ctx: Context, dom: ET.Element, uuid: str) -> None:
    serial = _text(ctx.domain_spec.obj("firmware"), "serial") or ""
    smbios = ctx.opts.smbios
    for key in ("manufacturer", "product", "version", "sku", "family"):
        # virt-handler's VirtualMachineOptions, not the VMI: named as the request has it.
        value = getattr(smbios, key)
        if _XML_CHARS.fullmatch(value) is None:
            raise ConversionError(f"options.VirtualMachineSMBios.{key}",
                                  f"{_q(value)} contains characters a libvirt domain cannot "
                                  "carry")
    sysinfo = _sub(dom, "sysinfo", type="smbios")
    # libvirt refuses a sysinfo uuid that differs from <uuid>: they are the same value.
    _entries(_sub(sysinfo, "system"), (
        ("manufacturer", smbios.manufacturer), ("product", smbios.product),
        ("version", smbios.version), ("serial", serial), ("uuid", uuid),
        ("sku", smbios.sku), ("family", smbios.family)))
    chassis = ctx.domain_spec.obj("chassis")
    values = [(key, _text(chassis, key) or "")
              for key in ("manufacturer", "version", "serial", "asset", "sku")]
    if any(value for _, value in values):
        _entries(_sub(sysinfo, "chassis"), values)


# --- OS and firmware ------------------------------------------------------------------------
def machine_type(ctx: Context) -> str:
    chosen = _text(ctx.domain_spec.obj("machine"), "type", _MACHINE_RE,
                   "a QEMU machine type such as q35")
    return chosen or DEFAULT_MACHINE.get(_arch(ctx), "q35")


def efi_firmware(ctx: Context, *, secure: bool) -> tuple[str, str]:
    """(loader code, NVRAM template) under --ovmf-path, KubeVirt's file names."""
    if _arm(ctx):
        code, variables = "AAVMF_CODE.fd", "AAVMF_VARS.fd"
    elif secure:
        code, variables = "OVMF_CODE.secboot.fd", "OVMF_VARS.secboot.fd"
    else:
        code, variables = "OVMF_CODE.fd", "OVMF_VARS.fd"
    return os.path.join(ctx.opts.ovmf_path, code), os.path.join(ctx.opts.ovmf_path, variables)


def nvram_path(ctx: Context) -> str:
    """KubeVirt's <nvram dir>/<vmi name>_VARS.fd, with the non-root dir under the private
    dir (it follows the launcher's runtime root)."""
    return os.path.join(ctx.opts.private_dir, "libvirt", "qemu", "nvram",
                        f"{ctx.name}_VARS.fd")


def _os(ctx: Context, dom: ET.Element) -> bool:
    """<os>; True when it boots with UEFI secure boot."""
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch=_arch(ctx), machine=machine_type(ctx))
    secure_boot = _bootloader(ctx, os_el)
    _kernel_boot(ctx, os_el)
    if _x86(ctx):
        _sub(os_el, "smbios", mode="sysinfo")
    return secure_boot


def _bootloader(ctx: Context, os_el: ET.Element) -> bool:
    bootloader = ctx.domain_spec.obj("firmware").obj("bootloader")
    bios, efi = bootloader.obj("bios"), bootloader.obj("efi")
    if bios.present and efi.present:
        bootloader.fail("set only one of bios and efi")
    if bios.present and _arm(ctx):
        bootloader.fail("aarch64 guests boot with UEFI only (use efi)", "bios")
    # aarch64 has no BIOS: KubeVirt boots every arm guest with UEFI.
    if efi.present or _arm(ctx):
        return _efi(ctx, os_el, efi)
    if bios.bool("useSerial", False):
        _sub(os_el, "bios", useserial="yes")
    return False


def _efi(ctx: Context, os_el: ET.Element, efi: Node) -> bool:
    secure = bool(efi.bool("secureBoot", not _arm(ctx)))
    if secure and _arm(ctx):
        efi.fail("secure boot is not available on aarch64 (set secureBoot: false)",
                 "secureBoot")
    if efi.bool("persistent", False):
        efi.fail("persistent EFI variables need KubeVirt's backend storage, which this "
                 "launcher does not provide", "persistent")
    code, template = efi_firmware(ctx, secure=secure)
    _sub(os_el, "loader", code, readonly="yes", secure=_yes_no(secure), type="pflash")
    _sub(os_el, "nvram", nvram_path(ctx), template=template)
    return secure


def _kernel_artifact(ctx: Context, container: Node, key: str) -> str | None:
    """Where virt-handler mounts a kernel-boot artifact: by its file name under
    <container-disks>/kernel-boot."""
    path = _text(container, key, _ONE_LINE)
    if not path:
        return None
    parts = path.split("/")
    if not path.startswith("/"):
        container.fail(f"{_q(path)} must be an absolute path in the container image", key)
    if ".." in parts or parts[-1] in ("", "."):
        container.fail(f"{_q(path)} must name a file without \"..\" components", key)
    return os.path.join(ctx.opts.container_disk_dir, KERNEL_BOOT_DIR, parts[-1])


def _kernel_boot(ctx: Context, os_el: ET.Element) -> None:
    kernel_boot = ctx.domain_spec.obj("firmware").obj("kernelBoot")
    if not kernel_boot.present:
        return
    container = kernel_boot.obj("container")
    kernel = _kernel_artifact(ctx, container, "kernelPath")
    initrd = _kernel_artifact(ctx, container, "initrdPath")
    args = _text(kernel_boot, "kernelArgs")
    if container.present:
        container.req_str("image", nonempty=True)
        if kernel is None and initrd is None:
            container.fail("required: kernelPath and/or initrdPath")
    if kernel is None:
        if args:
            kernel_boot.fail("kernel arguments need a kernel: set "
                             "spec.domain.firmware.kernelBoot.container.kernelPath",
                             "kernelArgs")
        if initrd is not None:
            container.fail("an initrd needs a kernel: set kernelPath too", "initrdPath")
        return
    _sub(os_el, "kernel", kernel)
    ctx.preps.append(ExistingFile(volume=KERNEL_BOOT_VOLUME, path=kernel))
    if initrd is not None:
        _sub(os_el, "initrd", initrd)
        ctx.preps.append(ExistingFile(volume=KERNEL_BOOT_VOLUME, path=initrd))
    if args:
        _sub(os_el, "cmdline", args)


# --- features -------------------------------------------------------------------------------
def _asked(features: Node, key: str) -> bool:
    """features.<key> is set and not disabled (enabled defaults to true)."""
    node = features.obj(key)
    return node.present and bool(node.bool("enabled", True))


def _features(ctx: Context, dom: ET.Element, *, secure_boot: bool) -> None:
    features = ctx.domain_spec.obj("features")
    el = _sub(dom, "features")
    if features.obj("acpi").bool("enabled", True):
        _sub(el, "acpi")
    if _asked(features, "apic"):
        _sub(el, "apic")
    _hyperv(features, el)
    kvm = features.obj("kvm")
    if kvm.present:
        _sub(_sub(el, "kvm"), "hidden", state=_on_off(kvm.bool("hidden", False)))
    pvspinlock = features.obj("pvspinlock")
    if pvspinlock.present:
        _sub(el, "pvspinlock", state=_on_off(pvspinlock.bool("enabled", True)))
    if _smm(features, secure_boot=secure_boot):
        _sub(el, "smm", state="on")
    if len(el) == 0:
        dom.remove(el)


def _smm(features: Node, *, secure_boot: bool) -> bool:
    smm = features.obj("smm")
    if secure_boot:
        if smm.present and smm.bool("enabled", True) is False:
            smm.fail("UEFI secure boot needs SMM (or set "
                     "spec.domain.firmware.bootloader.efi.secureBoot: false)", "enabled")
        return True
    return _asked(features, "smm")


def _hyperv(features: Node, parent: ET.Element) -> None:
    hyperv, passthrough = features.obj("hyperv"), features.obj("hypervPassthrough")
    if passthrough.bool("enabled", False):
        if hyperv.present:
            features.fail("set only one of hyperv and hypervPassthrough", "hypervPassthrough")
        _sub(parent, "hyperv", mode="passthrough")
        return
    if not hyperv.present:
        return
    el = _sub(parent, "hyperv", mode="custom")
    for key in HYPERV_FLAGS:
        node = hyperv.obj(key)
        if node.present:
            _sub(el, key, state=_on_off(node.bool("enabled", True)))
    _spinlocks(hyperv.obj("spinlocks"), el)
    _stimer(hyperv.obj("synictimer"), el)
    _vendor_id(hyperv.obj("vendorid"), el)


def _spinlocks(node: Node, hyperv: ET.Element) -> None:
    if not node.present:
        return
    enabled = bool(node.bool("enabled", True))
    spin = _sub(hyperv, "spinlocks", state=_on_off(enabled))
    if enabled:
        # libvirt refuses fewer than 4095 retries; 4096 is KubeVirt's default.
        retries = node.int("spinlocks", 4096, minimum=4095, maximum=UINT32)
        spin.set("retries", str(retries))


def _stimer(node: Node, hyperv: ET.Element) -> None:
    if not node.present:
        return
    stimer = _sub(hyperv, "stimer", state=_on_off(node.bool("enabled", True)))
    direct = node.obj("direct")
    if direct.present:
        _sub(stimer, "direct", state=_on_off(direct.bool("enabled", True)))


def _vendor_id(node: Node, hyperv: ET.Element) -> None:
    if not node.present:
        return
    enabled = bool(node.bool("enabled", True))
    value = _text(node, "vendorid", _VENDOR_ID_RE, "at most 12 characters, no commas")
    if enabled and not value:
        node.fail("required when the vendor id is enabled", "vendorid")
    vendor = _sub(hyperv, "vendor_id", state=_on_off(enabled))
    if value:
        vendor.set("value", value)


# --- CPU --------------------------------------------------------------------------------------
def _cpu_mode(ctx: Context, model: str) -> str:
    if not ctx.opts.emulation or model in ctx.opts.tcg_cpu_modes:
        return model
    # TCG has no host CPU to pass through: libvirt's domcapabilities for type 'qemu' say
    # which modes it supports (the launcher reads them); for one it refuses, 'maximum'
    # (QEMU's -cpu max, "everything this accelerator implements") is what the mode asks
    # for. The launcher logs that it fell back.
    return "maximum"


def _cpu(ctx: Context, dom: ET.Element, topology: Topology) -> None:
    cpu = ctx.domain_spec.obj("cpu")
    # libvirt has no host-model on aarch64; KubeVirt defaults arm guests to passthrough.
    default = HOST_PASSTHROUGH if _arm(ctx) else HOST_MODEL
    model = _text(cpu, "model", _CPU_MODEL_RE, "host-model, host-passthrough or a libvirt "
                                               "CPU model name") or default
    el = _sub(dom, "cpu")
    custom = model not in (HOST_MODEL, HOST_PASSTHROUGH)
    if custom:
        el.set("mode", "custom")
        el.set("match", "exact")
        _sub(el, "model", model, fallback="allow")
    else:
        el.set("mode", _cpu_mode(ctx, model))
    _sub(el, "topology", sockets=str(topology.sockets), dies="1",
         cores=str(topology.cores), threads=str(topology.threads))
    named = _cpu_features(cpu, el)
    if custom and _x86(ctx) and "mpx" not in named:
        _sub(el, "feature", policy="disable", name="mpx")


def _cpu_features(cpu: Node, el: ET.Element) -> set[str]:
    seen: dict[str, str] = {}
    for feature in cpu.items("features"):
        name = _text(feature, "name", _CPU_FEATURE_RE, "a libvirt CPU feature name")
        if not name:
            feature.fail("required", "name")
        if name in seen:
            feature.fail(f"{_q(name)} is already listed at {seen[name]}", "name")
        seen[name] = feature.path
        policy = feature.str("policy") or "require"
        if policy not in CPU_POLICIES:
            feature.fail(f"{_q(policy)} is not supported (expected one of: "
                         f"{', '.join(CPU_POLICIES)})", "policy")
        _sub(el, "feature", policy=policy, name=name)
    return set(seen)


# --- clock --------------------------------------------------------------------------------
def _clock(ctx: Context, dom: ET.Element) -> None:
    clock = ctx.domain_spec.obj("clock")
    el = _sub(dom, "clock", offset="utc")
    utc = clock.obj("utc")
    timezone = _text(clock, "timezone", _TIMEZONE_RE, "a time zone such as Europe/Berlin")
    if timezone and utc.present:
        clock.fail("set only one of utc and timezone", "timezone")
    if timezone:
        el.set("offset", "timezone")
        el.set("timezone", timezone)
    elif utc.present:
        offset = utc.int("offsetSeconds", minimum=-INT64, maximum=INT64)
        el.set("adjustment", "reset" if offset is None else str(offset))
    timer = clock.obj("timer")
    for key, name, policies in TIMERS:
        node = timer.obj(key)
        if node.present:
            _timer(node, el, name, policies)


def _timer(node: Node, clock: ET.Element, name: str,
           policies: tuple[str, ...] | None) -> None:
    attrs = {"name": name, "present": _yes_no(node.bool("enabled", True))}
    if policies is not None and node.str("tickPolicy"):
        attrs["tickpolicy"] = node.req_str("tickPolicy", choices=policies)
    if name == "rtc" and node.str("track"):
        attrs["track"] = node.req_str("track", choices=RTC_TRACKS)
    _sub(clock, "timer", **attrs)
