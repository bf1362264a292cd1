"""SyncVirtualMachine and STANDALONE_VMI: a VMI becomes a running libvirt domain.

KubeVirt's SyncVMI, for the parts this launcher supports:
- the VMI goes through the converter (launcher.converter) with virt-handler's
  VirtualMachineOptions and the launcher's flags and paths (`options_from_request`);
- a domain that is not running: the disks and ISOs the XML relies on are prepared
  (launcher.vm.disks, in a worker thread: qemu-img and file I/O), the domain is defined and
  started (paused when spec.startStrategy is "Paused", as KubeVirt). A start that fails
  leaves libvirt as it was: a domain defined by this sync is undefined again, an earlier
  definition is restored. As KubeVirt, a down domain of a VMI whose phase says it ran
  already (Running, Succeeded, Failed) is not started again;
- a running domain: its persistent definition is replaced by the new XML (it takes effect
  at the next start), the parts that can change live are applied live (the kubevirt
  metadata, the memory balloon's statistics period), and every other top-level part that
  differs from what the domain was started with is reported as needing a restart. Live
  device hotplug is not done here (KubeVirt hotplugs volumes and interfaces).
- Syncs are serialized; each answers with a message saying what it did.

Emulation: KubeVirt's --allow-emulation falls back to TCG when /dev/kvm is missing. Here
KVM must also be usable: a CPU without vmx/svm (e.g. a PVM guest, whose /dev/kvm opens but
cannot run guests) or a /dev/kvm that does not answer KVM_GET_API_VERSION counts as
unusable (`kvm_usable`). Without --allow-emulation, an unusable KVM fails the Sync with the
reason.

STANDALONE_VMI (environment, YAML or JSON): the launcher syncs it itself once the command
server is up, as KubeVirt does (`parse_standalone`, `adopt_identity`).
"""

from __future__ import annotations

import asyncio
import copy
import fcntl
import functools
import json
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import libvirt
import structlog

from launcher.converter import (
    ClusterConfig,
    Conversion,
    ConversionError,
    ConvertOptions,
    DiskInfo,
    SMBios,
    convert,
    defaults,
)
from launcher.converter.plan import Prep
from launcher.flags import Options
from launcher.libvirt.connection import Connection
from launcher.libvirt.errors import libvirt_message, unsupported_flags
from launcher.paths import Paths, agent_socket_too_long, reroot
from launcher.vm import disks

STANDALONE_ENV = "STANDALONE_VMI"
KUBEVIRT_NS = "http://kubevirt.io"
KVM_DEVICE = "/dev/kvm"
# Where Kubernetes mounts the pod's service account token (a serviceAccount volume's data).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
CPUINFO = "/proc/cpuinfo"
KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00)
KVM_API_VERSION = 12  # the only stable KVM API there has ever been
# Where hardware virtualization shows in /proc/cpuinfo's flags (Intel VT-x, AMD-V).
X86_VIRT_FLAGS = ("vmx", "svm")
X86_ARCHES = ("x86_64", "i386", "i686", "amd64")
# A VMI in one of these phases ran already: its down domain is not started again (KubeVirt:
# `IsDown(domState) && !vmi.IsRunning() && !vmi.IsFinal()`).
RAN_PHASES = ("Running", "Succeeded", "Failed")
XML_FLAGS = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
# The one top-level part applied live besides the balloon period; never a restart reason.
LIVE_PARTS = ("metadata",)


class SyncError(Exception):
    """A Sync that could not be carried out. The message is the client's: the converter's
    "<field path>: <reason>", the disk preparation's, or libvirt's with its code. `field`:
    the VMI field at fault, when one is."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class StandaloneError(ValueError):
    """STANDALONE_VMI cannot be used; the message names the field (also in `field`)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# --- emulation ------------------------------------------------------------------------------
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


# --- options ----------------------------------------------------------------------------------
def pod_cpus() -> tuple[int, ...]:
    """The CPUs this pod may run on: the kernel applies the pod's cgroup cpuset to our
    affinity, so this is KubeVirt's GetPodCPUSet without parsing cgroup files."""
    return tuple(sorted(os.sched_getaffinity(0)))


def tcg_cpu_modes(domcapabilities_xml: str) -> frozenset[str]:
    """The CPU modes libvirt's domain capabilities (for virttype 'qemu') mark supported."""
    root = ET.fromstring(domcapabilities_xml)
    return frozenset(mode.get("name", "") for mode in root.iterfind("cpu/mode")
                     if mode.get("supported") == "yes")


def options_from_request(options: Any | None, *, opts: Options, paths: Paths,
                         emulation: bool, arch: str | None = None,
                         dedicated_cpus: tuple[int, ...] = (),
                         tcg_modes: frozenset[str] | None = None) -> ConvertOptions:
    """ConvertOptions from virt-handler's VirtualMachineOptions (None: not sent, e.g.
    STANDALONE_VMI) and the launcher's flags and paths.

    - SMBios fields left empty by virt-handler get KubeVirt's defaults (KubeVirt itself
      sends an empty SMBios for STANDALONE_VMI).
    - MemBalloonStatsPeriod is taken as sent (0 switches the statistics off, as in
      KubeVirt) when options are sent at all; without options the default (10 s).
    - The directories are the runtime-root ones (launcher.paths); the OVMF path is not
      re-rooted: firmware is part of the image, like QEMU itself."""
    base = ConvertOptions()
    fields: dict[str, Any] = {
        "emulation": emulation,
        "hypervisor": opts.hypervisor,
        "arch": arch or os.uname().machine,
        "ovmf_path": opts.ovmf_path,
        "private_dir": paths.private_dir,
        "ephemeral_disk_dir": paths.ephemeral_disk_dir,
        "container_disk_dir": paths.container_disk_dir,
        "hotplug_disk_dir": paths.hotplug_disk_dir,
        "block_device_dir": reroot(paths.root, "/dev"),
        "service_account_dir": reroot(paths.root, SERVICE_ACCOUNT_DIR),
        "dedicated_cpus": dedicated_cpus,
    }
    if tcg_modes is not None:
        fields["tcg_cpu_modes"] = tcg_modes
    if options is None:
        return replace(base, **fields)
    if options.HasField("VirtualMachineSMBios"):
        sent = options.VirtualMachineSMBios
        default = SMBios()
        fields["smbios"] = SMBios(
            manufacturer=sent.manufacturer or default.manufacturer,
            product=sent.product or default.product,
            family=sent.family or default.family,
            version=sent.version or default.version,
            sku=sent.sku or default.sku)
    cluster = options.clusterConfig
    fields["cluster"] = ClusterConfig(
        expand_disks=bool(cluster.ExpandDisksEnabled or options.ExpandDisksEnabled),
        free_page_reporting_disabled=bool(cluster.FreePageReportingDisabled),
        bochs_display_for_efi_guests=bool(cluster.BochsDisplayForEFIGuests),
        serial_console_log_disabled=bool(cluster.SerialConsoleLogDisabled))
    fields["mem_balloon_stats_period"] = int(options.MemBalloonStatsPeriod)
    fields["disks_info"] = {
        name: DiskInfo(format=info.format, backing_file=info.backingFile,
                       actual_size=int(info.actualSize), virtual_size=int(info.virtualSize))
        for name, info in options.DisksInfo.items()}
    fields["preallocated_volumes"] = frozenset(options.PreallocatedVolumes)
    fields["interface_attachment"] = dict(options.interfaceDomainAttachment)
    return replace(base, **fields)


def disk_directories(paths: Paths) -> tuple[str, ...]:
    """Where the converter puts the files a domain uses (launcher.converter.volumes,
    machine): PVC / DataVolume / hostDisk mounts, ephemeral disks, container disks and
    kernel-boot artifacts, the mounted configMap / secret / downwardAPI / sysprep
    directories and their ISOs, the service account token, and /dev for block-mode PVCs."""
    private = [os.path.join(paths.private_dir, sub) for sub in (
        "vmi-disks", "config-map", "config-map-disks", "secret", "secret-disks",
        "downwardapi", "downwardapi-disks", "sysprep", "sysprep-disks",
        "service-account-disk")]
    return (*private, paths.ephemeral_disk_dir, paths.container_disk_dir,
            reroot(paths.root, SERVICE_ACCOUNT_DIR), reroot(paths.root, "/dev"))


# --- STANDALONE_VMI -----------------------------------------------------------------------
def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _check_json_shaped(value: Any, path: str) -> None:
    """YAML can say more than JSON (binary, sets, non-string keys, NaN keys...): the
    converter only takes what JSON can say, so anything else is an error naming the field."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise StandaloneError(f"{STANDALONE_ENV}: {path or '<vmi>'}: key {key!r} "
                                      "is not a string", path or "<vmi>")
            _check_json_shaped(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_shaped(item, f"{path}[{i}]")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise StandaloneError(f"{STANDALONE_ENV}: {path or '<vmi>'}: "
                              f"{_json_kind(value)} is not a JSON value", path or "<vmi>")


def _load_yaml(text: str) -> Any:
    # Imported here: only a standalone launcher needs YAML, and the launcher's RSS is part
    # of every VM's overhead.
    import yaml  # noqa: PLC0415

    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[misc]
        """Safe, and timestamps stay strings (Kubernetes decodes YAML into JSON, where
        creationTimestamp is a string; the converter expects JSON values)."""

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in base.yaml_implicit_resolvers.items()}
    try:
        return yaml.load(text, Loader=Loader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise StandaloneError(f"{STANDALONE_ENV}: invalid YAML{where}: "
                              f"{exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise StandaloneError(f"{STANDALONE_ENV}: invalid YAML: {exc}") from None


def parse_standalone(text: str, arch: str | None = None) -> dict[str, Any]:
    """The VMI in STANDALONE_VMI: JSON, else YAML (KubeVirt reads it with a YAML decoder,
    which takes both), with KubeVirt's admission defaults applied (launcher.converter.
    defaults: in a cluster the webhook did that; a VMI of SyncVirtualMachine is not
    re-defaulted). Raises StandaloneError naming what is wrong."""
    if not text.strip():
        raise StandaloneError(f"{STANDALONE_ENV}: is set but empty")
    try:
        doc = json.loads(text)
    except RecursionError:
        raise StandaloneError(f"{STANDALONE_ENV}: nested too deeply") from None
    except json.JSONDecodeError as json_error:
        try:
            doc = _load_yaml(text)
        except RecursionError:
            raise StandaloneError(f"{STANDALONE_ENV}: nested too deeply") from None
        except StandaloneError:
            if text.lstrip().startswith("{"):
                # Meant as JSON: its error is the useful one.
                raise StandaloneError(f"{STANDALONE_ENV}: invalid JSON: {json_error}") \
                    from None
            raise
    if not isinstance(doc, dict):
        raise StandaloneError(f"{STANDALONE_ENV}: expected a VirtualMachineInstance object, "
                              f"got {_json_kind(doc)}")
    try:
        _check_json_shaped(doc, "")
    except RecursionError:
        raise StandaloneError(f"{STANDALONE_ENV}: nested too deeply") from None
    defaulted: dict[str, Any] = defaults.apply(doc, arch or os.uname().machine)
    return defaulted


def _meta_string(doc: Mapping[str, Any], key: str, *, required: bool) -> str:
    meta = doc.get("metadata")
    if meta is None:
        raise StandaloneError(f"{STANDALONE_ENV}: metadata: required", "metadata")
    if not isinstance(meta, dict):
        raise StandaloneError(f"{STANDALONE_ENV}: metadata: expected an object, got "
                              f"{_json_kind(meta)}", "metadata")
    value = meta.get(key)
    if value is None or value == "":
        if required:
            raise StandaloneError(f"{STANDALONE_ENV}: metadata.{key}: required",
                                  f"metadata.{key}")
        return ""
    if not isinstance(value, str):
        raise StandaloneError(f"{STANDALONE_ENV}: metadata.{key}: expected a string, got "
                              f"{_json_kind(value)}", f"metadata.{key}")
    return value


def adopt_identity(opts: Options, doc: Mapping[str, Any]) -> Options:
    """The launcher's name/namespace/uid with the standalone VMI's metadata: a flag left
    empty takes the VMI's value; a flag given must match it (a launcher serves exactly one
    VMI, and its domain name, pid file and notify snapshots follow the flags)."""
    values = {}
    for key, flag in (("name", opts.name), ("namespace", opts.namespace), ("uid", opts.uid)):
        value = _meta_string(doc, key, required=key != "uid")
        if flag and value and flag != value:
            raise StandaloneError(f'{STANDALONE_ENV}: metadata.{key}: "{value}" does not match '
                                  f'--{key} "{flag}"', f"metadata.{key}")
        values[key] = flag or value
    return opts._replace(name=values["name"], namespace=values["namespace"],
                         uid=values["uid"])


def uid_mismatch(vmi_uid: str, flag_uid: str) -> str | None:
    """A Sync for another incarnation of the VMI (same name, other uid) is refused."""
    if vmi_uid and flag_uid and vmi_uid != flag_uid:
        return f'metadata.uid: "{vmi_uid}" does not match this launcher\'s --uid "{flag_uid}"'
    return None


# --- comparing definitions ------------------------------------------------------------------
def _canonical(elem: ET.Element) -> str:
    elem = copy.deepcopy(elem)
    for node in elem.iter():
        if node.text is not None and not node.text.strip():
            node.text = None
        node.tail = None
    return ET.tostring(elem, encoding="unicode")


def _without_stats(balloon: ET.Element) -> ET.Element:
    balloon = copy.deepcopy(balloon)
    for stats in balloon.findall("stats"):
        balloon.remove(stats)
    return balloon


def _parts(xml: str) -> dict[str, list[str]]:
    root = ET.fromstring(xml)
    parts: dict[str, list[str]] = {}
    for attr, value in sorted(root.attrib.items()):
        if attr != "id":  # the running instance's number, not configuration
            parts[f"domain@{attr}"] = [value]
    for child in root:
        if child.tag in LIVE_PARTS:
            continue
        if child.tag != "devices":
            parts.setdefault(child.tag, []).append(_canonical(child))
            continue
        for dev in child:
            # The balloon's statistics period changes live.
            kept = _without_stats(dev) if dev.tag == "memballoon" else dev
            parts.setdefault(f"devices/{dev.tag}", []).append(_canonical(kept))
    return parts


def restart_needed(started_with: str, new: str) -> list[str]:
    """The top-level parts (devices by kind) in which `new` differs from the definition
    the running domain was started with, e.g. ["devices/disk", "memory"]. Both are
    libvirt's own rendering (XMLDesc of the inactive definition), so equal input gives
    equal text."""
    old_parts, new_parts = _parts(started_with), _parts(new)
    return sorted(k for k in old_parts.keys() | new_parts.keys()
                  if old_parts.get(k) != new_parts.get(k))


def _kubevirt_metadata(xml: str) -> ET.Element | None:
    return ET.fromstring(xml).find(f"metadata/{{{KUBEVIRT_NS}}}kubevirt")


def _balloon_period(xml: str) -> int | None:
    balloon = ET.fromstring(xml).find("devices/memballoon")
    if balloon is None or balloon.get("model") == "none":
        return None
    stats = balloon.find("stats")
    if stats is None:
        return 0
    try:
        return int(stats.get("period", "0"))
    except ValueError:
        return None


# --- the syncer -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SyncResult:
    action: str  # "started" | "updated" | "unchanged" | "not-started"
    message: str
    restart_needed: tuple[str, ...] = ()
    applied_live: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Current:
    """The domain as libvirt has it before this sync."""

    exists: bool
    active: bool = False
    persistent: bool = False
    domain_id: int = -1
    xml: str | None = None  # inactive definition (the next start's), secure


ConvertFn = Callable[[Mapping[str, Any], ConvertOptions], Conversion]
PrepareFn = Callable[[Sequence[Prep]], None]
ProbeFn = Callable[[], tuple[bool, str]]


class Syncer:
    """SyncVirtualMachine for one launcher's domain. One sync at a time."""

    def __init__(self, *, opts: Options, paths: Paths, conn: Connection, domain: str,
                 convert_fn: ConvertFn = convert, prepare_fn: PrepareFn = disks.prepare_isolated,
                 kvm_probe: ProbeFn = kvm_usable,
                 accepting: Callable[[], bool] = lambda: True) -> None:
        self.opts = opts
        self.paths = paths
        self.conn = conn
        self.domain = domain
        self._convert = convert_fn
        if prepare_fn in (disks.prepare_isolated, disks.prepare):
            # Every file a VMI makes us touch stays in the launcher's disk directories
            # (launcher.vm.disks: a symlink out of a mounted volume is refused).
            prepare_fn = functools.partial(prepare_fn, confine=disk_directories(paths))
        self._prepare = prepare_fn
        self._probe_fn = kvm_probe
        self._probe: tuple[bool, str] | None = None  # KVM does not come and go in a pod
        self._tcg_modes: frozenset[str] | None = None
        self._accepting = accepting
        self._lock = asyncio.Lock()
        # (libvirt domain id, inactive definition) of the start this launcher did: what
        # the running domain was started with, to tell what a later Sync changes.
        self._started: tuple[int, str] | None = None
        self._log = structlog.get_logger().bind(part="sync", domain=domain)

    async def sync(self, vmi: Mapping[str, Any], options: Any | None = None) -> SyncResult:
        """Bring the domain in line with `vmi` (a decoded VMI document). `options`: the
        request's VirtualMachineOptions, None when not sent. Raises SyncError."""
        async with self._lock:
            if not self._accepting():
                raise SyncError("the launcher is shutting down; not syncing the VMI")
            t0 = time.monotonic()
            result = await self._sync(vmi, options)
            self._log.info("synced", action=result.action, message=result.message,
                           restart_needed=list(result.restart_needed),
                           applied_live=list(result.applied_live),
                           duration_s=round(time.monotonic() - t0, 3))
            return result

    async def _kvm(self) -> tuple[bool, str]:
        if self._probe is None:
            self._probe = await asyncio.to_thread(self._probe_fn)
            if not self._probe[0]:
                self._log.info("KVM is not usable", reason=self._probe[1],
                               allow_emulation=self.opts.allow_emulation)
        return self._probe

    async def _tcg_cpu_modes(self) -> frozenset[str] | None:
        """What libvirt supports for TCG domains (None: could not ask; the converter's
        defaults then apply). A CPU mode it lacks falls back to 'maximum'."""
        if self._tcg_modes is None:
            def ask() -> str:
                caps: str = self._virconn().getDomainCapabilities(None, None, None, "qemu", 0)
                return caps
            try:
                self._tcg_modes = tcg_cpu_modes(await self.conn.call(ask))
            except (libvirt.libvirtError, ConnectionError, ET.ParseError) as exc:
                self._log.warning("cannot read libvirt's CPU modes for emulation",
                                  error=str(exc))
                return None
            self._log.info("CPU modes libvirt supports under emulation (others become "
                           "'maximum')", modes=sorted(self._tcg_modes))
        return self._tcg_modes

    async def _sync(self, vmi: Mapping[str, Any], options: Any | None) -> SyncResult:
        kvm_error: SyncError | None = None
        try:
            emulation = use_emulation(self.opts.allow_emulation, await self._kvm())
        except SyncError as exc:
            # Reported after the conversion: a broken VMI is the first thing to fix.
            emulation, kvm_error = False, exc
        conv_opts = options_from_request(
            options, opts=self.opts, paths=self.paths, emulation=emulation,
            dedicated_cpus=pod_cpus(), tcg_modes=await self._tcg_cpu_modes() if emulation
            else None)
        try:
            # In a worker thread: a large VMI's conversion must not hold up Ping and the
            # relay on the loop (the GIL still switches every few milliseconds).
            conversion = await asyncio.to_thread(self._probe_and_convert, vmi, conv_opts)
        except ConversionError as exc:
            raise SyncError(str(exc), exc.path) from None
        if kvm_error is not None:
            raise kvm_error
        if conversion.name != self.domain:  # launcher.cmd.vmi refused this already
            raise SyncError(f'the VMI converts to domain "{conversion.name}", not this '
                            f'launcher\'s "{self.domain}"')
        current = await self._libvirt("reading the domain", self._inspect)
        if current.active:
            updated: SyncResult = await self._libvirt(
                "updating the running domain", self._update_running, conversion, current)
            return updated
        phase = _status_phase(vmi)
        if phase in RAN_PHASES:
            # KubeVirt's rule: the VMI ran already; its stopped domain stays stopped.
            return SyncResult("not-started", f"domain {self.domain} is not running and the "
                              f'VMI\'s phase is "{phase}": not started again')
        if (too_long := agent_socket_too_long(self.paths, self.domain)) is not None:
            # libvirt's own error comes only after the disks were prepared, at start
            raise SyncError(too_long)
        await self._prepare_disks(conversion.preps, str(_metadata(vmi).get("uid") or ""))
        paused = _start_paused(vmi)
        started: SyncResult = await self._libvirt(
            "starting the domain", self._define_and_start, conversion, current, paused)
        return started

    def _probe_and_convert(self, vmi: Mapping[str, Any], opts: ConvertOptions) -> Conversion:
        """The block-mode volumes found in the pod (KubeVirt's isBlockDeviceVolume: the
        converter stays pure and takes them as input), then the conversion."""
        block = disks.block_volumes(vmi, opts.block_device_dir)
        return self._convert(vmi, replace(opts, block_volumes=block))

    async def _prepare_disks(self, preps: Sequence[Prep], uid: str) -> None:
        def run() -> None:
            # The VMI's private directory (serial console and other sockets QEMU binds):
            # QEMU does not create it. Private, as KubeVirt's.
            os.makedirs(os.path.join(self.paths.private_dir, uid or "unknown-uid"),
                        mode=0o700, exist_ok=True)
            self._prepare(preps)

        t0 = time.monotonic()
        try:
            await asyncio.to_thread(run)
        except disks.DiskError as exc:
            raise SyncError(str(exc)) from None
        except OSError as exc:
            raise SyncError(f"preparing the VMI's files: {exc.strerror or exc}"
                            f"{f' ({exc.filename})' if exc.filename else ''}") from None
        self._log.info("disks prepared", count=len(preps),
                       duration_s=round(time.monotonic() - t0, 3))

    async def _libvirt(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await self.conn.call(fn, *args)
        except libvirt.libvirtError as exc:
            raise SyncError(f"{what}: {libvirt_message(exc)}") from None
        except ConnectionError as exc:
            raise SyncError(f"{what}: {exc}") from None

    # --- blocking libvirt parts (the connection's executor) ---------------------------
    def _virconn(self) -> Any:
        conn = self.conn.conn
        if conn is None:
            raise ConnectionError("libvirt is not connected")
        return conn

    def _inspect(self) -> _Current:
        try:
            dom = self._virconn().lookupByName(self.domain)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return _Current(exists=False)
            raise
        active = bool(dom.isActive())
        return _Current(exists=True, active=active, persistent=bool(dom.isPersistent()),
                        domain_id=dom.ID() if active else -1, xml=dom.XMLDesc(XML_FLAGS))

    def _define_and_start(self, conversion: Conversion, current: _Current,
                          paused: bool) -> SyncResult:
        conn = self._virconn()
        dom = conn.defineXML(conversion.xml)  # fails: nothing changed
        try:
            defined = dom.XMLDesc(XML_FLAGS)
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
            self._started = (dom.ID(), defined)
        except libvirt.libvirtError:
            self._roll_back(conn, dom, current)
            raise
        how = "started paused (spec.startStrategy)" if paused else "started"
        return SyncResult("started", f"domain {self.domain} defined and {how}")

    def _roll_back(self, conn: Any, dom: Any, current: _Current) -> None:
        """Leave libvirt as before the sync: no half-defined domain."""
        try:
            if current.exists and current.persistent and current.xml is not None:
                conn.defineXML(current.xml)
                self._log.info("start failed; restored the previous definition")
                return
            try:
                # NVRAM kept (a retry reuses it; KubeVirt never deletes it).
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)
            except libvirt.libvirtError as exc:
                if not unsupported_flags(exc):
                    raise
                dom.undefine()
            self._log.info("start failed; undefined the domain again")
        except libvirt.libvirtError as exc:
            # The start's error is the one the client gets; this one is logged.
            self._log.error("rolling back a failed start failed", error=libvirt_message(exc))

    def _update_running(self, conversion: Conversion, current: _Current) -> SyncResult:
        conn = self._virconn()
        dom = conn.lookupByName(self.domain)
        live_xml: str = dom.XMLDesc(0)
        if self._started is not None and self._started[0] == current.domain_id:
            started_with = self._started[1]
        else:
            # Started by someone else (or before a restart of ours): the persistent
            # definition is the best knowledge of what it runs with.
            started_with = current.xml or ""
        new_xml: str = conn.defineXML(conversion.xml).XMLDesc(XML_FLAGS)
        restart = restart_needed(started_with, new_xml) if started_with else ["<unknown>"]
        live, failed = self._apply_live(dom, live_xml, new_xml)
        restart = sorted({*restart, *failed})
        if not restart and not live:
            return SyncResult("unchanged", "no change")
        parts = []
        if live:
            parts.append(f"applied live: {', '.join(live)}")
        if restart:
            parts.append("the definition is updated; these parts take effect after a "
                         f"restart: {', '.join(restart)}")
        return SyncResult("updated", f"domain {self.domain} is running; " + "; ".join(parts),
                          restart_needed=tuple(restart), applied_live=tuple(live))

    def _apply_live(self, dom: Any, live_xml: str, new_xml: str) -> tuple[list[str], list[str]]:
        """(parts applied to the running domain, parts that could not be)."""
        applied: list[str] = []
        failed: list[str] = []
        new_meta, live_meta = _kubevirt_metadata(new_xml), _kubevirt_metadata(live_xml)
        if new_meta is not None and (live_meta is None
                                     or _canonical(new_meta) != _canonical(live_meta)):
            try:
                # libvirt adds the "kubevirt" prefix itself and refuses an element that
                # declares it already: the namespace goes in as the default one.
                text = ET.tostring(new_meta, encoding="unicode", default_namespace=KUBEVIRT_NS)
                dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, text, "kubevirt",
                                KUBEVIRT_NS, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                applied.append("metadata")
            except (libvirt.libvirtError, ValueError) as exc:
                # ValueError: an element outside the namespace (not from our converter).
                error = (libvirt_message(exc) if isinstance(exc, libvirt.libvirtError)
                         else str(exc))
                self._log.warning("cannot update the metadata live", error=error)
                failed.append("metadata")
        new_period, live_period = _balloon_period(new_xml), _balloon_period(live_xml)
        if new_period is not None and live_period is not None and new_period != live_period:
            try:
                dom.setMemoryStatsPeriod(new_period, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                applied.append("devices/memballoon stats period")
            except libvirt.libvirtError as exc:
                self._log.warning("cannot change the balloon statistics period live",
                                  error=libvirt_message(exc))
                failed.append("devices/memballoon")
        return applied, failed


def _metadata(vmi: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = vmi.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _status_phase(vmi: Mapping[str, Any]) -> str:
    status = vmi.get("status")
    phase = status.get("phase") if isinstance(status, dict) else None
    return phase if isinstance(phase, str) else ""


def _start_paused(vmi: Mapping[str, Any]) -> bool:
    spec = vmi.get("spec")
    return isinstance(spec, dict) and spec.get("startStrategy") == "Paused"

