"""Everything on <domain> outside <devices>: identity, KubeVirt metadata, memory, vCPUs and
their pinning, iothreads, SMBIOS, firmware and boot, hypervisor features, the guest CPU,
the clock and the lifecycle actions.

Matched KubeVirt behaviour (pkg/virt-launcher/virtwrap/converter: converter.go, compute/)
- SMBIOS system entries from virt-handler's SMBios options plus uuid and
  firmware.serial; spec.domain.chassis; <smbios mode='sysinfo'/> on x86_64.
- Firmware: bios (useSerial), efi (OVMF_CODE[.secboot].fd under --ovmf-path, secure boot
  by default, which forces SMM; NVRAM from the OVMF_VARS template as
  <vmi name>_VARS.fd), kernel boot from the kernel-boot container
  (<container-disks>/kernel-boot/<basename of the path>, as virt-handler mounts the
  artifacts there).
- Metadata: <kubevirt xmlns='http://kubevirt.io'> with the VMI uid and the grace period
  (terminationGracePeriodSeconds, default 30), as KubeVirt's manager adds it.
- rebootPolicy (Terminate: <on_reboot>destroy), startStrategy Paused (a 10 s boot menu),
  firmware.acpi (a SLIC table from a secret volume, <private>/secret/<volume>/slic.bin).
- Memory: launcher.converter.memory; vCPUs and the guest CPU: launcher.converter.cpu;
  features and the clock: launcher.converter.features.
- Refused naming the field: launchSecurity (SEV/SNP/TDX hardware), firmware.acpi
  msdmNameRef (libvirt 9 has only SLIC tables).

Deliberate differences
- The domain UUID is always set (KubeVirt leaves it to libvirt, which takes the SMBIOS
  uuid): spec.domain.firmware.uuid; else the VMI uid when it is a UUID (unique and stable
  for the VMI's life, which is the domain's); else uuid5 under KubeVirt's firmware UUID
  namespace of the uid, or of the VMI name when there is no uid, which is exactly the
  firmware UUID KubeVirt's VM controller assigns a VM of that name.
- NVRAM lives under the private dir (<private>/libvirt/qemu/nvram, KubeVirt's non-root
  location) so it follows the runtime root; persistent EFI (backend storage) is refused.
- Names KubeVirt would pass through unchecked (CPU model and features, machine type,
  timezone, kernel paths) are checked against libvirt's schema so a bad value names its
  field instead of failing at define time.
"""

from __future__ import annotations

import os
import re
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from launcher.converter import cloudinit, cpu, features, memory
from launcher.converter.context import Context
from launcher.converter.errors import ConversionError
from launcher.converter.plan import ExistingFile
from launcher.converter.spec import DNS1123_LABEL, Node
from launcher.converter.xmlutil import (
    INT64,
    ONE_LINE,
    XML_CHARS,
    arch,
    is_arm,
    is_x86,
    q,
    sub,
    text,
    yes_no,
)

KUBEVIRT_NS = "http://kubevirt.io"
# A readable prefix in the XML; libvirt matches metadata by namespace URI only.
ET.register_namespace("kubevirt", KUBEVIRT_NS)

# KubeVirt's firmwareUUIDns (virt-controller): firmware UUID = uuid5(this, VM name).
FIRMWARE_UUID_NAMESPACE = uuidlib.UUID("6a1a24a1-4061-4607-8bf4-a3963d0c5895")
DEFAULT_GRACE_PERIOD = 30  # KubeVirt's v1.DefaultGracePeriodSeconds
KERNEL_BOOT_DIR = "kernel-boot"  # KubeVirt's containerdisk.KernelBootName
KERNEL_BOOT_VOLUME = "kernel-boot"
DEFAULT_MACHINE = {"x86_64": "q35", "aarch64": "virt", "s390x": "s390-ccw-virtio",
                   "ppc64le": "pseries"}
REBOOT_POLICIES = {"Reboot": "restart", "Terminate": "destroy"}
START_STRATEGIES = ("Paused",)
BOOT_MENU_TIMEOUT_MS = "10000"  # KubeVirt's bootMenuTimeoutMS with startStrategy Paused
SECRET_SOURCE_DIR = "secret"  # <private>/secret/<volume>: KubeVirt's config.SecretSourceDir
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}|[0-9a-fA-F]{32}")
_MACHINE_RE = re.compile(r"[A-Za-z0-9_.+-]+")


# --- build ----------------------------------------------------------------------------------
def build(ctx: Context, dom: ET.Element) -> str:
    """Fill `dom` with everything but <devices>; return the domain UUID."""
    _check_identity(ctx)
    uuid = domain_uuid(ctx)
    dom.set("type", "qemu" if ctx.opts.emulation else "kvm")
    sub(dom, "name", ctx.domain_name)
    sub(dom, "uuid", uuid)
    _metadata(ctx, dom)
    _refuse_launch_security(ctx)
    cloudinit.refuse_access_credentials(ctx)
    _check_architecture(ctx)
    memory.build(ctx, dom)
    topology = cpu.cpu_topology(ctx)
    cpu.build_vcpus(ctx, dom, topology)
    threads = cpu.iothreads(ctx)
    if threads.count:
        sub(dom, "iothreads", str(threads.count))
    cpu.cputune(ctx, dom, topology, threads)
    _sysinfo(ctx, dom, uuid)
    secure_boot = _os(ctx, dom)
    features.build_features(ctx, dom, secure_boot=secure_boot)
    cpu.build_cpu(ctx, dom, topology)
    features.build_clock(ctx, dom)
    sub(dom, "on_poweroff", "destroy")
    sub(dom, "on_reboot", _on_reboot(ctx))
    sub(dom, "on_crash", "destroy")
    return uuid


def _on_reboot(ctx: Context) -> str:
    """spec.domain.rebootPolicy (KubeVirt's RebootPolicyDomainConfigurator): Terminate
    destroys the domain when the guest reboots, so QEMU exits and the launcher ends the VM
    as it does for any QEMU exit; unset or Reboot restarts the guest."""
    policy = ctx.domain_spec.str("rebootPolicy")
    if not policy:
        return "restart"
    ctx.domain_spec.str("rebootPolicy", choices=REBOOT_POLICIES)
    return REBOOT_POLICIES[policy]


def _refuse_launch_security(ctx: Context) -> None:
    """SEV, SEV-SNP and TDX need the host's memory encryption firmware and a launch
    measurement exchange with virt-handler: neither exists here."""
    launch = ctx.domain_spec.obj("launchSecurity")
    if launch.present:
        kinds = [key for key in ("sev", "snp", "tdx") if launch.has(key)] or ["launchSecurity"]
        ctx.domain_spec.fail(f"confidential computing ({', '.join(kinds)}) is not supported "
                             "by this launcher: it needs AMD SEV/SNP or Intel TDX hardware "
                             "and the launch measurement flow, which these hosts lack",
                             "launchSecurity")


# KubeVirt's spec.architecture values and libvirt's names for them.
ARCHITECTURES = {"amd64": "x86_64", "arm64": "aarch64", "s390x": "s390x",
                 "ppc64le": "ppc64le", "x86_64": "x86_64", "aarch64": "aarch64"}


def _check_architecture(ctx: Context) -> None:
    """spec.architecture must be the launcher's: KubeVirt schedules a VMI onto a node of
    its architecture and converts for the node it runs on (runtime.GOARCH), so a mismatch
    never reaches its launcher; here it would silently give a guest of another
    architecture."""
    given = ctx.spec.str("architecture")
    if not given:
        return
    if ARCHITECTURES.get(given) != arch(ctx):
        ctx.spec.fail(f"{q(given)} is not this launcher's architecture ({arch(ctx)})",
                      "architecture")


# --- identity -------------------------------------------------------------------------------
def _check_identity(ctx: Context) -> None:
    meta = ctx.vmi.obj("metadata")
    for key, value in (("name", ctx.name), ("namespace", ctx.namespace), ("uid", ctx.uid)):
        if value and (XML_CHARS.fullmatch(value) is None or
                      ONE_LINE.fullmatch(value) is None):
            meta.fail(f"{q(value)} contains characters a libvirt domain cannot carry", key)


def domain_uuid(ctx: Context) -> str:
    """The domain (and SMBIOS system) UUID, lower-case canonical; see the module doc."""
    firmware = ctx.domain_spec.obj("firmware")
    given = firmware.str("uuid")
    if given:
        if _UUID_RE.fullmatch(given) is None:
            firmware.fail(f"{q(given)} is not a UUID", "uuid")
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
    kubevirt = sub(sub(dom, "metadata"), f"{{{KUBEVIRT_NS}}}kubevirt")
    sub(kubevirt, f"{{{KUBEVIRT_NS}}}uid", ctx.uid)
    grace = sub(kubevirt, f"{{{KUBEVIRT_NS}}}graceperiod")
    sub(grace, f"{{{KUBEVIRT_NS}}}deletionGracePeriodSeconds", str(grace_period_seconds(ctx)))


# --- SMBIOS ---------------------------------------------------------------------------------
def _entries(parent: ET.Element, entries: Sequence[tuple[str, str]]) -> None:
    for name, value in entries:
        if value:
            sub(parent, "entry", value, name=name)


def _sysinfo(ctx: Context, dom: ET.Element, uuid: str) -> None:
    serial = text(ctx.domain_spec.obj("firmware"), "serial") or ""
    smbios = ctx.opts.smbios
    for key in ("manufacturer", "product", "version", "sku", "family"):
        # virt-handler's VirtualMachineOptions, not the VMI: named as the request has it.
        value = getattr(smbios, key)
        if XML_CHARS.fullmatch(value) is None:
            raise ConversionError(f"options.VirtualMachineSMBios.{key}",
                                  f"{q(value)} contains characters a libvirt domain cannot "
                                  "carry")
    sysinfo = sub(dom, "sysinfo", type="smbios")
    # libvirt refuses a sysinfo uuid that differs from <uuid>: they are the same value.
    _entries(sub(sysinfo, "system"), (
        ("manufacturer", smbios.manufacturer), ("product", smbios.product),
        ("version", smbios.version), ("serial", serial), ("uuid", uuid),
        ("sku", smbios.sku), ("family", smbios.family)))
    chassis = ctx.domain_spec.obj("chassis")
    values = [(key, text(chassis, key) or "")
              for key in ("manufacturer", "version", "serial", "asset", "sku")]
    if any(value for _, value in values):
        _entries(sub(sysinfo, "chassis"), values)


# --- OS and firmware ------------------------------------------------------------------------
def machine_type(ctx: Context) -> str:
    chosen = text(ctx.domain_spec.obj("machine"), "type", _MACHINE_RE,
                   "a QEMU machine type such as q35")
    return chosen or DEFAULT_MACHINE.get(arch(ctx), "q35")


def efi_firmware(ctx: Context, *, secure: bool) -> tuple[str, str]:
    """(loader code, NVRAM template) under --ovmf-path, KubeVirt's file names."""
    if is_arm(ctx):
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
    os_el = sub(dom, "os")
    sub(os_el, "type", "hvm", arch=arch(ctx), machine=machine_type(ctx))
    secure_boot = _bootloader(ctx, os_el)
    _kernel_boot(ctx, os_el)
    _acpi_tables(ctx, os_el)
    _boot_menu(ctx, os_el)
    if is_x86(ctx):
        sub(os_el, "smbios", mode="sysinfo")
    return secure_boot


def _boot_menu(ctx: Context, os_el: ET.Element) -> None:
    """KubeVirt gives a VMI started paused a boot menu (10 s) to reach the firmware."""
    strategy = ctx.spec.str("startStrategy")
    if not strategy:
        return
    ctx.spec.str("startStrategy", choices=START_STRATEGIES)
    sub(os_el, "bootmenu", enable="yes", timeout=BOOT_MENU_TIMEOUT_MS)


def acpi_table_volumes(ctx: Context) -> set[str]:
    """The secret volumes spec.domain.firmware.acpi names (they need no disk)."""
    acpi = ctx.domain_spec.obj("firmware").obj("acpi")
    return {name for key in ("slicNameRef", "msdmNameRef") if (name := acpi.str(key))}


def _acpi_tables(ctx: Context, os_el: ET.Element) -> None:
    """spec.domain.firmware.acpi (KubeVirt's configureACPI): each table is <name>.bin in
    the secret volume it names, mounted at <private>/secret/<volume>."""
    acpi = ctx.domain_spec.obj("firmware").obj("acpi")
    if not acpi.present:
        return
    slic, msdm = acpi.str("slicNameRef"), acpi.str("msdmNameRef")
    if not slic and not msdm:
        acpi.fail("no ACPI tables were set, expecting at least one (slicNameRef or "
                  "msdmNameRef)")
    if msdm:
        acpi.fail("the MSDM table is not supported by this launcher (libvirt 9 knows only "
                  "SLIC tables)", "msdmNameRef")
    assert slic is not None
    if DNS1123_LABEL.fullmatch(slic) is None:
        acpi.fail(f"{q(slic)} is not a volume name (a DNS-1123 label)", "slicNameRef")
    volumes = {v.str("name"): v for v in ctx.spec.items("volumes")}
    volume = volumes.get(slic)
    if volume is None:
        acpi.fail(f"no volume named {q(slic)} in spec.volumes", "slicNameRef")
    if not volume.has("secret"):
        acpi.fail(f"volume {q(slic)} must be a secret volume", "slicNameRef")
    path = os.path.join(ctx.opts.private_dir, SECRET_SOURCE_DIR, slic, "slic.bin")
    sub(sub(os_el, "acpi"), "table", path, type="slic")
    ctx.preps.append(ExistingFile(volume=slic, path=path))


def _bootloader(ctx: Context, os_el: ET.Element) -> bool:
    bootloader = ctx.domain_spec.obj("firmware").obj("bootloader")
    bios, efi = bootloader.obj("bios"), bootloader.obj("efi")
    if bios.present and efi.present:
        bootloader.fail("set only one of bios and efi")
    if bios.present and is_arm(ctx):
        bootloader.fail("aarch64 guests boot with UEFI only (use efi)", "bios")
    # aarch64 has no BIOS: KubeVirt boots every arm guest with UEFI.
    if efi.present or is_arm(ctx):
        return _efi(ctx, os_el, efi)
    if bios.bool("useSerial", False):
        sub(os_el, "bios", useserial="yes")
    return False


def _efi(ctx: Context, os_el: ET.Element, efi: Node) -> bool:
    secure = bool(efi.bool("secureBoot", not is_arm(ctx)))
    if secure and is_arm(ctx):
        efi.fail("secure boot is not available on aarch64 (set secureBoot: false)",
                 "secureBoot")
    if efi.bool("persistent", False):
        efi.fail("persistent EFI variables need KubeVirt's backend storage, which this "
                 "launcher does not provide", "persistent")
    code, template = efi_firmware(ctx, secure=secure)
    sub(os_el, "loader", code, readonly="yes", secure=yes_no(secure), type="pflash")
    sub(os_el, "nvram", nvram_path(ctx), template=template)
    return secure


def _kernel_artifact(ctx: Context, container: Node, key: str) -> str | None:
    """Where virt-handler mounts a kernel-boot artifact: by its file name under
    <container-disks>/kernel-boot."""
    path = text(container, key, ONE_LINE)
    if not path:
        return None
    parts = path.split("/")
    if not path.startswith("/"):
        container.fail(f"{q(path)} must be an absolute path in the container image", key)
    if ".." in parts or parts[-1] in ("", "."):
        container.fail(f"{q(path)} must name a file without \"..\" components", key)
    return os.path.join(ctx.opts.container_disk_dir, KERNEL_BOOT_DIR, parts[-1])


def _kernel_boot(ctx: Context, os_el: ET.Element) -> None:
    kernel_boot = ctx.domain_spec.obj("firmware").obj("kernelBoot")
    if not kernel_boot.present:
        return
    container = kernel_boot.obj("container")
    kernel = _kernel_artifact(ctx, container, "kernelPath")
    initrd = _kernel_artifact(ctx, container, "initrdPath")
    args = text(kernel_boot, "kernelArgs")
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
    sub(os_el, "kernel", kernel)
    ctx.preps.append(ExistingFile(volume=KERNEL_BOOT_VOLUME, path=kernel))
    if initrd is not None:
        sub(os_el, "initrd", initrd)
        ctx.preps.append(ExistingFile(volume=KERNEL_BOOT_VOLUME, path=initrd))
    if args:
        sub(os_el, "cmdline", args)


