"""SyncVirtualMachine: a VMI becomes a running libvirt domain.

KubeVirt's SyncVMI, for the parts this launcher supports:
- the VMI goes through the converter (launcher.converter) with virt-handler's
  VirtualMachineOptions and the launcher's flags and paths (launcher.vm.options);
- a domain that is not running: the disks and ISOs the XML relies on are prepared
  (launcher.vm.disks, in a worker process: qemu-img and file I/O), the domain is defined
  and started (paused when spec.startStrategy is "Paused", as KubeVirt). A start that fails
  leaves libvirt as it was: a domain defined by this sync is undefined again, an earlier
  definition is restored. As KubeVirt, a down domain of a VMI whose phase says it ran
  already (Running, Succeeded, Failed) is not started again;
- a running domain: its persistent definition is replaced by the new XML (it takes effect
  at the next start), the parts that can change live are applied live (the kubevirt
  metadata, the memory balloon's statistics period), and every other top-level part that
  differs from what the domain was started with is reported as needing a restart
  (launcher.vm.xmldiff). Live device hotplug is not done here (KubeVirt hotplugs volumes
  and interfaces).
- hook sidecars (launcher.hooks): a sync first waits for them to be collected; before
  anything is prepared, PreCloudInitIso sees the cloud-init data and OnDefineDomain the
  domain XML of every definition (a start, and a running domain's new definition; the
  latter only when its input changed since the last call, so virt-handler's periodic
  re-syncs do not call every sidecar each time).
- Syncs are serialized; each answers with a message saying what it did.
Emulation: launcher.vm.kvm. STANDALONE_VMI: launcher.vm.standalone.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import libvirt
import structlog

from launcher.converter import Conversion, ConversionError, ConvertOptions, convert
from launcher.converter.plan import CloudInitIso, Prep
from launcher.flags import Options
from launcher.hooks.api import PRE_CLOUD_INIT_ISO
from launcher.hooks.discovery import HookAborted, HookError
from launcher.hooks.manager import HookManager
from launcher.libvirt.connection import Connection
from launcher.libvirt.errors import libvirt_message, unsupported_flags
from launcher.paths import Paths, agent_socket_too_long
from launcher.vm import disks, hostdevices, hotplug, resources
from launcher.vm.errors import SyncAborted, SyncError
from launcher.vm.kvm import kvm_usable, use_emulation
from launcher.vm.options import disk_directories, options_from_request, pod_cpus, tcg_cpu_modes
from launcher.vm.xmldiff import (
    KUBEVIRT_NS,
    balloon_period,
    canonical,
    keep_addresses,
    keep_generated_macs,
    keep_root_ports,
    kubevirt_metadata,
    restart_needed,
    with_parts,
    with_virtio_mem_requested,
)

# A VMI in one of these phases ran already: its down domain is not started again (KubeVirt:
# `IsDown(domState) && !vmi.IsRunning() && !vmi.IsFinal()`).
RAN_PHASES = ("Running", "Succeeded", "Failed")
XML_FLAGS = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE


# --- the syncer -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SyncResult:
    action: str  # "started" | "updated" | "unchanged" | "not-started"
    message: str
    restart_needed: tuple[str, ...] = ()
    applied_live: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()  # hotplug devices whose source is not ready yet
    pending: tuple[str, ...] = ()  # detaches the guest has not completed yet


@dataclass(frozen=True)
class _Current:
    """The domain as libvirt has it before this sync."""

    exists: bool
    active: bool = False
    persistent: bool = False
    domain_id: int = -1
    xml: str | None = None  # inactive definition (the next start's), secure


ConvertFn = Callable[[Mapping[str, Any], ConvertOptions], Conversion]
# (preparations, confine=the directories their files must stay in)
PrepareFn = Callable[..., None]
ProbeFn = Callable[[], tuple[bool, str]]


class Syncer:
    """SyncVirtualMachine for one launcher's domain. One sync at a time."""

    def __init__(self, *, opts: Options, paths: Paths, conn: Connection, domain: str,
                 convert_fn: ConvertFn = convert, prepare_fn: PrepareFn = disks.prepare_isolated,
                 kvm_probe: ProbeFn = kvm_usable,
                 accepting: Callable[[], bool] = lambda: True,
                 hooks: HookManager | None = None) -> None:
        self.opts = opts
        self.paths = paths
        self.conn = conn
        self.domain = domain
        self._convert = convert_fn
        self._prepare = prepare_fn
        # Every file a VMI makes us touch stays in the launcher's disk directories
        # (launcher.vm.disks: a symlink out of a mounted volume is refused), whatever
        # preparation is given: it gets them on every call.
        self._confine = disk_directories(paths)
        self._probe_fn = kvm_probe
        self._probe: tuple[bool, str] | None = None  # KVM does not come and go in a pod
        self._tcg_modes: frozenset[str] | None = None
        self._slots: int | None = None
        self._accepting = accepting
        self._hooks = hooks if hooks is not None else HookManager("", 0, 0.0)
        # (converted XML, VMI JSON) -> the XML the sidecars made of it, for the last
        # definition of a running domain.
        self._hooked: tuple[tuple[str, str], str, list[str]] | None = None
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
                raise SyncAborted("the launcher is shutting down; not syncing the VMI")
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

    async def _max_memory_slots(self) -> int:
        """<maxMemory slots> for this libvirt (launcher.converter.options)."""
        if self._slots is None:
            def version() -> int:
                return int(self._virconn().getLibVersion())
            try:
                self._slots = 1 if await self.conn.call(version) < 10_000_000 else 0
            except (libvirt.libvirtError, ConnectionError):
                return 0  # not cached: asked again once libvirt answers
        return self._slots

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

    async def prepare_target(self, vmi: Mapping[str, Any], options: Any | None) -> Conversion:
        """SyncMigrationTarget: everything a start does before the define (conversion,
        hooks, the cloud-init ISO, overlays and disks, the private directory), so the
        incoming migration finds every file the domain uses; nothing is defined (the
        migration creates the domain). Raises SyncError."""
        async with self._lock:
            if not self._accepting():
                raise SyncAborted("the launcher is shutting down; not preparing a target")
            await self._hooks_ready()
            # No SR-IOV VFs on a target, as KubeVirt: they are attached after the migration
            # (HotplugHostDevices); the domain XML comes from the source.
            conversion = await self._convert_vmi(vmi, options, host_devices=False)
            if (too_long := agent_socket_too_long(self.paths, self.domain)) is not None:
                raise SyncError(too_long)
            conversion = await self._pre_cloud_init_iso(conversion, vmi)
            # KubeVirt calls OnDefineDomain here for the sidecars' side effects; the XML
            # that runs is the one the source sends.
            await self._on_define_domain(conversion, vmi, memo=False)
            await self._prepare_disks(conversion.preps, str(_metadata(vmi).get("uid") or ""))
            return conversion

    # --- vCPU, memory and host device hotplug (their own rpcs) -----------------------------
    async def sync_vcpus(self, vmi: Mapping[str, Any], options: Any | None) -> str:
        """SyncVirtualMachineCPUs (launcher.vm.resources). Raises SyncError."""
        async with self._lock:
            conversion = await self._convert_vmi(vmi, options)
            message: str = await self._libvirt("updating the vCPUs", self._set_vcpus,
                                               conversion)
            self._log.info("vCPUs synced", message=message)
            return message

    async def sync_memory(self, vmi: Mapping[str, Any], options: Any | None) -> str:
        """SyncVirtualMachineMemory (launcher.vm.resources). Raises SyncError."""
        async with self._lock:
            await self._convert_vmi(vmi, options)  # the VMI is checked as for a sync
            message: str = await self._libvirt("updating the guest memory",
                                               self._set_memory, vmi)
            self._log.info("guest memory synced", message=message)
            return message

    async def hotplug_host_devices(self, vmi: Mapping[str, Any]) -> str:
        """HotplugHostDevices (launcher.vm.hostdevices). Raises SyncError."""
        async with self._lock:
            live_xml: str = await self._libvirt(
                "reading the domain", lambda: self._running_domain().XMLDesc(0))
            try:
                # File reads and network-info's poll (up to 1 s) in a worker thread, not
                # in the libvirt connection's executor, which other rpcs wait on.
                devices = await asyncio.to_thread(hostdevices.to_attach, vmi, live_xml,
                                                  self.paths.network_info)
            except hostdevices.HostDeviceError as exc:
                raise SyncError(str(exc)) from None
            message: str = await self._libvirt("hot-plugging host devices",
                                               self._attach_host_devices, devices)
            self._log.info("host devices synced", message=message)
            return message

    def _running_changed(self, patch: Callable[[str], str]) -> None:
        """Record a live change in what the running domain was started with (the base a
        sync's restart report compares against)."""
        if self._started is not None:
            self._started = (self._started[0], patch(self._started[1]))

    def _running_domain(self) -> Any:
        dom = self._virconn().lookupByName(self.domain)
        if not dom.isActive():
            raise SyncError(f"domain {self.domain} is not running")
        return dom

    def _set_vcpus(self, conversion: Conversion) -> str:
        dom = self._running_domain()
        live_xml = dom.XMLDesc(0)
        live_count = dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE)
        try:
            count = resources.check_vcpus(resources.vcpu_counts(conversion.xml),
                                          resources.vcpu_counts(live_xml), live_count)
        except resources.ResourceError as exc:
            raise SyncError(str(exc), exc.path) from None
        if count is None:
            return f"the domain has {live_count} vCPU(s) already"
        dom.setVcpusFlags(count, libvirt.VIR_DOMAIN_VCPU_LIVE | libvirt.VIR_DOMAIN_VCPU_CONFIG)
        for vcpu, cpuset in resources.vcpu_pins(conversion.xml):
            if vcpu < count and cpuset:  # dedicated CPUs: KubeVirt pins the new vCPUs too
                dom.pinVcpuFlags(vcpu, resources.cpu_map(cpuset),
                                 libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        # What runs now: a later sync must not report the vCPUs as waiting for a restart.
        self._running_changed(lambda xml: with_parts(xml, dom.XMLDesc(XML_FLAGS),
                                                     ("vcpu", "vcpus", "cputune")))
        return f"vCPUs {live_count} -> {count}"

    def _set_memory(self, vmi: Mapping[str, Any]) -> str:
        dom = self._running_domain()
        try:
            change = resources.memory_change(vmi, dom.XMLDesc(0))
        except resources.ResourceError as exc:
            raise SyncError(str(exc), exc.path) from None
        if change is None:
            return "the guest memory is as requested already"
        dom.updateDeviceFlags(change.xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        self._running_changed(lambda xml: with_virtio_mem_requested(xml, change.requested))
        return (f"virtio-mem requested {change.requested_before // 2**20} MiB -> "
                f"{change.requested // 2**20} MiB")

    def _attach_host_devices(self, devices: list[hostdevices.HostDevice]) -> str:
        dom = self._running_domain()
        for device in devices:
            try:
                dom.attachDeviceFlags(device.xml, libvirt.VIR_DOMAIN_AFFECT_LIVE
                                      | libvirt.VIR_DOMAIN_AFFECT_CONFIG)
            except libvirt.libvirtError as exc:
                raise SyncError(f"attaching SR-IOV device {device.pci} of interface "
                                f"{device.name}: {libvirt_message(exc)}") from None
        if not devices:
            return "no SR-IOV host device to attach"
        return "attached " + ", ".join(f"{d.name} ({d.pci})" for d in devices)

    async def _sync(self, vmi: Mapping[str, Any], options: Any | None) -> SyncResult:
        await self._hooks_ready()
        conversion = await self._convert_vmi(vmi, options)
        current = await self._libvirt("reading the domain", self._inspect)
        return await self._sync_converted(vmi, conversion, current)

    async def _convert_vmi(self, vmi: Mapping[str, Any], options: Any | None, *,
                           host_devices: bool = True) -> Conversion:
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
        conv_opts = replace(conv_opts, max_memory_slots=await self._max_memory_slots())
        try:
            # In a worker thread: a large VMI's conversion must not hold up Ping and the
            # relay on the loop (the GIL still switches every few milliseconds).
            conversion = await asyncio.to_thread(self._probe_and_convert, vmi, conv_opts,
                                                 host_devices)
        except ConversionError as exc:
            raise SyncError(str(exc), exc.path) from None
        except hostdevices.HostDeviceError as exc:
            raise SyncError(str(exc)) from None
        if kvm_error is not None:
            raise kvm_error
        if conversion.name != self.domain:  # launcher.cmd.vmi refused this already
            raise SyncError(f'the VMI converts to domain "{conversion.name}", not this '
                            f'launcher\'s "{self.domain}"')
        return conversion

    async def _sync_converted(self, vmi: Mapping[str, Any], conversion: Conversion,
                              current: _Current) -> SyncResult:
        if current.active:
            conversion, hooked_by = await self._on_define_domain(conversion, vmi, memo=True)
            updated: SyncResult = await self._libvirt(
                "updating the running domain" + _by(hooked_by), self._update_running,
                conversion, current)
            return updated
        phase = _status_phase(vmi)
        if phase in RAN_PHASES:
            # KubeVirt's rule: the VMI ran already; its stopped domain stays stopped.
            return SyncResult("not-started", f"domain {self.domain} is not running and the "
                              f'VMI\'s phase is "{phase}": not started again')
        if (too_long := agent_socket_too_long(self.paths, self.domain)) is not None:
            # libvirt's own error comes only after the disks were prepared, at start
            raise SyncError(too_long)
        conversion = await self._pre_cloud_init_iso(conversion, vmi)
        conversion, hooked_by = await self._on_define_domain(conversion, vmi, memo=False)
        self._check_accepting("preparing the disks")
        await self._prepare_disks(conversion.preps, str(_metadata(vmi).get("uid") or ""))
        # The disk preparation can take a while; a stop that came meanwhile wins.
        self._check_accepting("defining and starting the domain")
        paused = _start_paused(vmi)
        started: SyncResult = await self._libvirt(
            "starting the domain" + _by(hooked_by), self._define_and_start, conversion,
            current, paused)
        return started

    # --- hook sidecars ----------------------------------------------------------------------
    async def _hooks_ready(self) -> None:
        try:
            await self._hooks.ready()
        except HookAborted as exc:
            raise SyncAborted(str(exc)) from None
        except HookError as exc:
            raise SyncError(str(exc)) from None

    async def _on_define_domain(self, conversion: Conversion, vmi: Mapping[str, Any], *,
                                memo: bool) -> tuple[Conversion, list[str]]:
        """The conversion with the OnDefineDomain sidecars' XML, and who changed it. With
        `memo`, an input identical to the last call's reuses its result."""
        if not self._hooks.enabled:
            return conversion, []
        key = (conversion.xml, json.dumps(vmi, sort_keys=True))
        if memo and self._hooked is not None and self._hooked[0] == key:
            _, xml, changed = self._hooked
            return replace(conversion, xml=xml), changed
        try:
            xml, changed = await self._hooks.on_define_domain(conversion.xml, vmi)
        except HookError as exc:
            raise SyncError(str(exc)) from None
        self._hooked = (key, xml, changed)
        return replace(conversion, xml=xml), changed

    async def _pre_cloud_init_iso(self, conversion: Conversion,
                                  vmi: Mapping[str, Any]) -> Conversion:
        if not self._hooks.subscribed(PRE_CLOUD_INIT_ISO):
            return conversion
        preps = list(conversion.preps)
        for i, prep in enumerate(preps):
            if not isinstance(prep, CloudInitIso):
                continue
            try:
                resolved = await asyncio.to_thread(disks.resolve_cloud_init, prep,
                                                   confine=self._confine)
                preps[i] = await self._hooks.pre_cloud_init_iso(resolved, vmi)
            except disks.DiskError as exc:
                raise SyncError(str(exc)) from None
            except HookError as exc:
                raise SyncError(str(exc)) from None
        return replace(conversion, preps=tuple(preps))

    def _check_accepting(self, step: str) -> None:
        if not self._accepting():
            self._log.info("the launcher is shutting down; sync stopped", before=step)
            raise SyncAborted(f"the launcher is shutting down; stopped before {step}")

    def _probe_and_convert(self, vmi: Mapping[str, Any], opts: ConvertOptions,
                           host_devices: bool = True) -> Conversion:
        """The block-mode volumes found in the pod (KubeVirt's isBlockDeviceVolume: the
        converter stays pure and takes them as input), then the conversion."""
        block = disks.block_volumes(vmi, opts.block_device_dir)
        hotplug_block = disks.block_volumes(vmi, opts.hotplug_disk_dir)
        # SR-IOV VFs Multus reports, checked to be in the pod (KubeVirt's CreateHostDevices)
        sriov = (hostdevices.addresses(vmi, self.paths.network_info) if host_devices
                 else {})
        return self._convert(vmi, replace(opts, block_volumes=block,
                                          hotplug_block_volumes=hotplug_block,
                                          sriov_addresses=sriov))

    async def _prepare_disks(self, preps: Sequence[Prep], uid: str) -> None:
        def run() -> None:
            # The VMI's private directory (serial console and other sockets QEMU binds):
            # QEMU does not create it. Private, as KubeVirt's.
            os.makedirs(os.path.join(self.paths.private_dir, uid or "unknown-uid"),
                        mode=0o700, exist_ok=True)
            self._prepare(preps, confine=self._confine)

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
        hotplug_dir = self.paths.hotplug_disk_dir
        wanted = keep_generated_macs(conversion.xml, current.xml or "")
        wanted = hotplug.stable_targets(wanted, live_xml)
        plan = hotplug.plan(live_xml, wanted, hotplug_dir)
        outcome = hotplug.apply(
            dom, plan.changes, lambda change: hotplug.device_present(dom.XMLDesc(0), change))
        running_xml = dom.XMLDesc(0) if plan.changes else live_xml
        # An attached interface without a MAC got one from libvirt: the persistent
        # definition keeps it, so a restart does not change the guest's MAC; and every
        # device keeps the address it runs at.
        wanted = keep_generated_macs(wanted, running_xml)
        wanted = hotplug.persistent_xml(wanted, live_xml, plan, outcome, hotplug_dir)
        wanted = keep_addresses(keep_root_ports(wanted, running_xml), running_xml)
        new_xml: str = conn.defineXML(wanted).XMLDesc(XML_FLAGS)
        managed = hotplug.managed_keys(*(x for x in (started_with, new_xml) if x),
                                       hotplug_dir=hotplug_dir)
        restart = (restart_needed(started_with, new_xml, managed) if started_with
                   else ["<unknown>"])
        live, failed = self._apply_live(dom, live_xml, new_xml)
        live = [*outcome.applied, *live]
        restart = sorted({*restart, *failed})
        parts = []
        if live:
            parts.append(f"applied live: {', '.join(live)}")
        if outcome.pending:
            parts.append("detach requested, not yet completed by the guest: "
                         + ", ".join(outcome.pending))
        if plan.waiting:
            parts.append("waiting for their source (attached by a later sync): "
                         + ", ".join(plan.waiting))
        if restart:
            parts.append("the definition is updated; these parts take effect after a "
                         f"restart: {', '.join(restart)}")
        problems = list(plan.refused)
        if outcome.failed is not None:
            problems.append(f"{outcome.failed.action} of {outcome.failed.label} failed: "
                            f"{outcome.error} (it and the {len(outcome.not_applied) - 1} "
                            "device change(s) after it were not applied)")
        if problems:
            done = "; ".join(parts) if parts else "nothing else changed"
            raise SyncError(f"hotplug on running domain {self.domain}: "
                            f"{'; '.join(problems)}; {done}")
        if not parts:
            return SyncResult("unchanged", "no change")
        return SyncResult("updated", f"domain {self.domain} is running; " + "; ".join(parts),
                          restart_needed=tuple(restart), applied_live=tuple(live),
                          waiting=plan.waiting, pending=tuple(outcome.pending))

    def _apply_live(self, dom: Any, live_xml: str, new_xml: str) -> tuple[list[str], list[str]]:
        """(parts applied to the running domain, parts that could not be)."""
        applied: list[str] = []
        failed: list[str] = []
        new_meta, live_meta = kubevirt_metadata(new_xml), kubevirt_metadata(live_xml)
        if new_meta is not None and (live_meta is None
                                     or canonical(new_meta) != canonical(live_meta)):
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
        new_period, live_period = balloon_period(new_xml), balloon_period(live_xml)
        if new_period is not None and live_period is not None and new_period != live_period:
            try:
                dom.setMemoryStatsPeriod(new_period, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                applied.append("devices/memballoon stats period")
            except libvirt.libvirtError as exc:
                self._log.warning("cannot change the balloon statistics period live",
                                  error=libvirt_message(exc))
                failed.append("devices/memballoon")
        return applied, failed


def _by(sidecars: list[str]) -> str:
    """Names the sidecars whose XML libvirt judges, in its error."""
    return f" (domain XML as modified by hook sidecars {', '.join(sidecars)})" if sidecars else ""


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

