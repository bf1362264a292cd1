"""The guest's vCPUs: topology, the CPU model and features, dedicated CPUs (pinning) and
iothreads (KubeVirt's converter: compute/cpu.go, vcpu/, iothreads/).

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
- maxSockets (vCPU hotplug, x86_64): <vcpu current> and <vcpus> as KubeVirt writes
  them, the topology's sockets = maxSockets; realtime: PMU off (features); dedicated CPUs
  on x86_64: <kvm><hint-dedicated state='on'/> (features).
- Refused: numa.guestMappingPassthrough (needs the host's NUMA topology).
- Emulation (TCG): the CPU mode stays KubeVirt's (host-model by default, which libvirt
  expands to a named model TCG can run); a mode libvirt does not support for TCG domains
  (its domcapabilities: host-passthrough here) becomes <cpu mode='maximum'/>; see _cpu_mode.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING

from launcher.converter import memory
from launcher.converter.context import Context
from launcher.converter.spec import Node
from launcher.converter.xmlutil import is_arm, is_x86, q, sub, text, yes_no

MAX_VCPUS = 4096
HOST_MODEL = "host-model"
HOST_PASSTHROUGH = "host-passthrough"
CPU_POLICIES = ("force", "require", "optional", "disable", "forbid")
IOTHREAD_POLICIES = ("shared", "auto")
_CPU_MODEL_RE = re.compile(r"[A-Za-z0-9_.+-]+")
_CPU_FEATURE_RE = re.compile(r"[A-Za-z0-9_.-]+")  # libvirt's featureName
_MASK_RE = re.compile(r"[0-9,^ -]+")  # libvirt's cpuset syntax


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
            node.fail(f"{q(node.child('cpu').value)} is more than {MAX_VCPUS} CPUs", "cpu")
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


def max_sockets(ctx: Context, topology: Topology) -> int | None:
    """spec.domain.cpu.maxSockets (vCPU hotplug): the sockets the domain can grow to, None
    when unset (0) or not x86_64 (KubeVirt's SupportCPUHotplug is amd64 only)."""
    cpu = ctx.domain_spec.obj("cpu")
    value = cpu.int("maxSockets", 0, minimum=0, maximum=MAX_VCPUS) or 0
    if not value or not is_x86(ctx):
        return None
    if value < topology.sockets:
        cpu.fail(f"must not be less than the sockets ({topology.sockets})", "maxSockets")
    if value * topology.cores * topology.threads > MAX_VCPUS:
        cpu.fail(f"{value} sockets x {topology.cores} cores x {topology.threads} threads is "
                 f"more than {MAX_VCPUS} vCPUs", "maxSockets")
    return value


def total_vcpus(ctx: Context, topology: Topology) -> int:
    """The domain's vCPU count including hotpluggable ones (the <vcpu> value)."""
    sockets = max_sockets(ctx, topology)
    return topology.vcpus if sockets is None else sockets * topology.cores * topology.threads


def build_vcpus(ctx: Context, dom: ET.Element, topology: Topology) -> None:
    """<vcpu>, and with maxSockets KubeVirt's <vcpus>: the first sockets' vCPUs enabled,
    the first socket's not hotpluggable (it cannot be unplugged), the rest hotpluggable."""
    total = total_vcpus(ctx, topology)
    vcpu = sub(dom, "vcpu", str(total), placement="static")
    if max_sockets(ctx, topology) is None:
        return
    vcpu.set("current", str(topology.vcpus))
    fixed = topology.cores * topology.threads
    vcpus = sub(dom, "vcpus")
    for index in range(total):
        sub(vcpus, "vcpu", id=str(index), enabled=yes_no(index < topology.vcpus),
            hotpluggable=yes_no(index >= fixed))


def realtime(ctx: Context) -> bool:
    """spec.domain.cpu.realtime: needs dedicated CPUs (virt-api's rule). KubeVirt's launcher
    only turns the PMU off for it; the vCPU threads' real-time scheduling is set by
    virt-handler, outside the launcher."""
    cpu = ctx.domain_spec.obj("cpu")
    node = cpu.obj("realtime")
    if not node.present:
        return False
    if not cpu.bool("dedicatedCpuPlacement", False):
        cpu.fail("requires dedicatedCpuPlacement: true", "realtime")
    text(node, "mask", _MASK_RE, "a libvirt vCPU set such as 0-3,^1")
    return True


def dedicated_cpus(ctx: Context) -> bool:
    return _dedicated(ctx)[0]


def _refuse_numa(ctx: Context) -> None:
    numa = ctx.domain_spec.obj("cpu").obj("numa")
    if numa.has("guestMappingPassthrough"):
        numa.fail("not supported by this launcher: it needs the host's NUMA topology "
                  "(virt-handler's node topology), which a pure conversion does not have",
                  "guestMappingPassthrough")


def cputune(ctx: Context, dom: ET.Element, topology: Topology, threads: IOThreads) -> None:
    """Pinning for dedicatedCpuPlacement. With vCPU hotplug only the enabled vCPUs are
    pinned: the pod owns exactly as many CPUs as the VMI requests."""
    _refuse_numa(ctx)
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
    tune = sub(dom, "cputune")
    vcpu_cpus = host[:topology.vcpus]
    for vcpu, cpu in enumerate(vcpu_cpus):
        sub(tune, "vcpupin", vcpu=str(vcpu), cpuset=str(cpu))
    emulator = str(host[topology.vcpus]) if isolate else None
    if emulator is not None:
        sub(tune, "emulatorpin", cpuset=emulator)
    for thread, cpuset in _iothread_pins(threads.count, vcpu_cpus, emulator):
        sub(tune, "iothreadpin", iothread=str(thread), cpuset=cpuset)



# --- CPU --------------------------------------------------------------------------------------
def _cpu_mode(ctx: Context, model: str) -> str:
    if not ctx.opts.emulation or model in ctx.opts.tcg_cpu_modes:
        return model
    # TCG has no host CPU to pass through: libvirt's domcapabilities for type 'qemu' say
    # which modes it supports (the launcher reads them); for one it refuses, 'maximum'
    # (QEMU's -cpu max, "everything this accelerator implements") is what the mode asks
    # for. The launcher logs that it fell back.
    return "maximum"


def build_cpu(ctx: Context, dom: ET.Element, topology: Topology) -> None:
    cpu = ctx.domain_spec.obj("cpu")
    # libvirt has no host-model on aarch64; KubeVirt defaults arm guests to passthrough.
    default = HOST_PASSTHROUGH if is_arm(ctx) else HOST_MODEL
    model = text(cpu, "model", _CPU_MODEL_RE, "host-model, host-passthrough or a libvirt "
                                               "CPU model name") or default
    el = sub(dom, "cpu")
    custom = model not in (HOST_MODEL, HOST_PASSTHROUGH)
    if custom:
        el.set("mode", "custom")
        el.set("match", "exact")
        sub(el, "model", model, fallback="allow")
    else:
        el.set("mode", _cpu_mode(ctx, model))
    sockets = max_sockets(ctx, topology) or topology.sockets
    sub(el, "topology", sockets=str(sockets), dies="1",
        cores=str(topology.cores), threads=str(topology.threads))
    named = _cpu_features(cpu, el)
    if custom and is_x86(ctx) and "mpx" not in named:
        sub(el, "feature", policy="disable", name="mpx")
    memory.numa_cell(ctx, el, total_vcpus(ctx, topology))


def _cpu_features(cpu: Node, el: ET.Element) -> set[str]:
    seen: dict[str, str] = {}
    for feature in cpu.items("features"):
        name = text(feature, "name", _CPU_FEATURE_RE, "a libvirt CPU feature name")
        if not name:
            feature.fail("required", "name")
        if name in seen:
            feature.fail(f"{q(name)} is already listed at {seen[name]}", "name")
        seen[name] = feature.path
        policy = feature.str("policy") or "require"
        if policy not in CPU_POLICIES:
            feature.fail(f"{q(policy)} is not supported (expected one of: "
                         f"{', '.join(CPU_POLICIES)})", "policy")
        sub(el, "feature", policy=policy, name=name)
    return set(seen)


