"""Stats rpcs: GetDomainStats (KubeVirt's stats.DomainStats JSON from libvirt's bulk stats,
cached 3.25 s) and GetDomainDirtyRateStats (cached 3 s): KubeVirt's caches, which also
share one computation between concurrent callers.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from typing import Any

import libvirt

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from launcher.cmd.base import CmdContext, RpcFailure, compact, query, with_flags
from launcher.cmd.server import Handler
from launcher.guest import info as guest_info
from launcher.libvirt.errors import libvirt_message
from launcher.notify.domain_state import State

DOMAIN_STATS_CACHE_S = 3.25  # KubeVirt's domainStatsCache
DIRTY_RATE_CACHE_S = 3.0  # KubeVirt's domainDirtyRateStatsCache
DIRTY_RATE_CALC_S = 1  # KubeVirt's dirtyRateCalculationTime
DIRTY_RATE_WAIT_S = 5.0  # beyond the calculation period, for QEMU to report


# --- domain stats as KubeVirt's stats.DomainStats (Go field names, XxxSet flags) -----------
def _set(out: dict[str, Any], stats: dict[str, Any], key: str, field: str) -> None:
    value = stats.get(key)
    out[f"{field}Set"] = value is not None
    out[field] = value if value is not None else (0 if field != "Name" else "")


def _indexed(stats: dict[str, Any], prefix: str, count_key: str) -> int:
    count = stats.get(count_key)
    if isinstance(count, int):
        return count
    indexes = [int(k.split(".")[1]) for k in stats
               if k.startswith(prefix) and k.split(".")[1].isdigit()]
    return max(indexes) + 1 if indexes else 0


def device_aliases(domain_xml: str) -> dict[str, str]:
    """target dev -> alias (KubeVirt's user alias, "ua-" stripped) for disks and NICs."""
    aliases: dict[str, str] = {}
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError:
        return aliases
    for dev in (*root.iterfind("devices/disk"), *root.iterfind("devices/interface")):
        target, alias = dev.find("target"), dev.find("alias")
        if target is None or alias is None:
            continue
        name, dev_name = alias.get("name", ""), target.get("dev", "")
        if name and dev_name:
            aliases[dev_name] = name.removeprefix("ua-")
    return aliases


def domain_stats_json(*, name: str, uuid: str, stats: dict[str, Any],
                      aliases: dict[str, str], load: Any,
                      cpu_map: Any = None) -> dict[str, Any]:
    """stats.DomainStats from libvirt's bulk stats (virDomainListGetStats typed params) and
    the vCPU pinning map (virDomainGetVcpuPinInfo: one row of host CPUs per vCPU)."""
    cpu: dict[str, Any] = {}
    for key, field in (("cpu.time", "Time"), ("cpu.user", "User"), ("cpu.system", "System")):
        _set(cpu, stats, key, field)
    memory: dict[str, Any] = {}
    for key, field in (("balloon.unused", "Unused"), ("balloon.disk_caches", "Cached"),
                       ("balloon.available", "Available"),
                       ("balloon.current", "ActualBalloon"), ("balloon.rss", "RSS"),
                       ("balloon.swap_in", "SwapIn"), ("balloon.swap_out", "SwapOut"),
                       ("balloon.major_fault", "MajorFault"),
                       ("balloon.minor_fault", "MinorFault"), ("balloon.usable", "Usable"),
                       ("balloon.maximum", "Total")):
        _set(memory, stats, key, field)
    vcpus = []
    for i in range(_indexed(stats, "vcpu.", "vcpu.current")):
        vcpu: dict[str, Any] = {}
        for sub, field in (("state", "State"), ("time", "Time"), ("wait", "Wait"),
                           ("delay", "Delay")):
            _set(vcpu, stats, f"vcpu.{i}.{sub}", field)
        vcpus.append(vcpu)
    nets = []
    for i in range(_indexed(stats, "net.", "net.count")):
        net: dict[str, Any] = {}
        _set(net, stats, f"net.{i}.name", "Name")
        alias = aliases.get(net["Name"]) if net["NameSet"] else None
        net["AliasSet"], net["Alias"] = alias is not None, alias or ""
        for sub, field in (("rx.bytes", "RxBytes"), ("rx.pkts", "RxPkts"),
                           ("rx.errs", "RxErrs"), ("rx.drop", "RxDrop"),
                           ("tx.bytes", "TxBytes"), ("tx.pkts", "TxPkts"),
                           ("tx.errs", "TxErrs"), ("tx.drop", "TxDrop")):
            _set(net, stats, f"net.{i}.{sub}", field)
        nets.append(net)
    blocks = []
    for i in range(_indexed(stats, "block.", "block.count")):
        block: dict[str, Any] = {}
        _set(block, stats, f"block.{i}.name", "Name")
        block["Alias"] = aliases.get(block["Name"], "") if block["NameSet"] else ""
        for sub, field in (("backingIndex", "BackingIndex"), ("path", "Path"),
                           ("rd.reqs", "RdReqs"), ("rd.bytes", "RdBytes"),
                           ("rd.times", "RdTimes"), ("wr.reqs", "WrReqs"),
                           ("wr.bytes", "WrBytes"), ("wr.times", "WrTimes"),
                           ("fl.reqs", "FlReqs"), ("fl.times", "FlTimes"),
                           ("errors", "Errors"), ("allocation", "Allocation"),
                           ("capacity", "Capacity"), ("physical", "Physical")):
            _set(block, stats, f"block.{i}.{sub}", field)
        if not block["PathSet"]:
            block["Path"] = ""
        blocks.append(block)
    dirty_rate: dict[str, Any] | None = None
    if any(k.startswith("dirtyrate.") for k in stats):
        dirty_rate = {}
        for key, field in (("dirtyrate.calc_status", "CalcStatus"),
                           ("dirtyrate.calc_start_time", "CalcStartTime"),
                           ("dirtyrate.calc_period", "CalcPeriod"),
                           ("dirtyrate.megabytes_per_second", "MegabytesPerSecond")):
            _set(dirty_rate, stats, key, field)
    load_stats: dict[str, Any] | None = None
    if isinstance(load, dict):
        load_stats = {}
        for key, field in (("load1m", "Load1m"), ("load5m", "Load5m"),
                           ("load15m", "Load15m")):
            value = load.get(key)
            number = (float(value) if isinstance(value, int | float)
                      and not isinstance(value, bool) else None)
            load_stats[f"{field}Set"] = number is not None
            load_stats[field] = 0.0 if number is None else number
    return {
        "Name": name, "UUID": uuid, "Cpu": cpu, "Memory": memory,
        "MigrateDomainJobInfo": None, "Vcpu": vcpus, "Net": nets, "Block": blocks,
        "CPUMapSet": cpu_map is not None,
        "CPUMap": None if cpu_map is None else [[bool(b) for b in row] for row in cpu_map],
        "DirtyRate": dirty_rate, "Load": load_stats,
    }


class TimedCache:
    """One value, recomputed at most every `ttl_s`; concurrent callers share one
    computation. Failures are not cached (as KubeVirt's TimeDefinedCache)."""

    def __init__(self, ttl_s: float, compute: Callable[[], Awaitable[Any]],
                 owner: set[asyncio.Task[Any]]) -> None:
        self._ttl_s = ttl_s
        self._compute = compute
        self._owner = owner
        self._value: Any = None
        self._at: float | None = None
        self._inflight: asyncio.Task[Any] | None = None

    async def get(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._at is not None and loop.time() - self._at < self._ttl_s:
            return self._value
        if self._inflight is None:
            task = asyncio.create_task(self._refresh(), name="cache-refresh")
            self._inflight = task
            self._owner.add(task)
            task.add_done_callback(self._done)
        # Shielded: one impatient client must not cancel the computation others await.
        return await asyncio.shield(self._inflight)

    async def _refresh(self) -> Any:
        value = await self._compute()
        self._value, self._at = value, asyncio.get_running_loop().time()
        return value

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._owner.discard(task)
        self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have given up



class Stats:
    def __init__(self, ctx: CmdContext) -> None:
        self.ctx = ctx
        self._stats = TimedCache(DOMAIN_STATS_CACHE_S, self._domain_stats, ctx.tasks)
        self._dirty = TimedCache(DIRTY_RATE_CACHE_S, self._dirty_rate, ctx.tasks)

    def handlers(self) -> dict[str, Handler]:
        return {
            "GetDomainStats": query("GetDomainStats", self._get_domain_stats),
            "GetDomainDirtyRateStats": query("GetDomainDirtyRateStats", self._get_dirty_rate),
        }

    async def _get_domain_stats(self) -> Any:
        text: str = await self._stats.get()
        return cmd_pb2.DomainStatsResponse(response=cmd_pb2.Response(success=True),
                                           domainStats=text)

    async def _domain_stats(self) -> str:
        read = await self.ctx.relay.read()
        if read is None or read.state not in (State.RUNNING, State.PAUSED, State.BLOCKED):
            return ""  # KubeVirt collects running and paused domains only: no stats
        types = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_BALLOON
                 | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_VCPU
                 | libvirt.VIR_DOMAIN_STATS_INTERFACE | libvirt.VIR_DOMAIN_STATS_BLOCK
                 | libvirt.VIR_DOMAIN_STATS_DIRTYRATE)

        def collect(dom: Any) -> tuple[str, str, dict[str, Any], Any]:
            # dom.connect(): the connection the domain was found on, not the current one
            # (which may be gone or replaced by now).
            records = with_flags(
                lambda flags: dom.connect().domainListGetStats([dom], types, flags),
                libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT, 0)
            stats = records[0][1] if records else {}
            # The vCPU -> host CPU map, as KubeVirt's GetVcpuPinInfo (CPUMap).
            cpu_map = dom.vcpuPinInfo(libvirt.VIR_DOMAIN_AFFECT_CURRENT)
            return dom.name(), dom.UUIDString(), stats, cpu_map

        try:
            name, uuid, stats, cpu_map = await self.ctx.libvirt.call(collect)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return ""
            raise
        load = self.ctx.agent.get(guest_info.LOAD)
        doc = domain_stats_json(name=name, uuid=uuid, stats=stats,
                                aliases=device_aliases(read.xml),
                                load=None if load is None else load.value, cpu_map=cpu_map)
        return compact(doc)

    async def _get_dirty_rate(self) -> Any:
        rate: int = await self._dirty.get()
        return cmd_pb2.DirtyRateStatsResponse(response=cmd_pb2.Response(success=True),
                                              dirtyRateMbs=rate)

    async def _dirty_rate(self) -> int:
        read = await self.ctx.read()
        self.ctx.require(read, (State.RUNNING,), "measure the dirty rate")
        try:
            await self.ctx.libvirt.call(lambda dom: dom.startDirtyRateCalc(
                DIRTY_RATE_CALC_S, libvirt.VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT,
                                        libvirt.VIR_ERR_OPERATION_UNSUPPORTED):
                raise RpcFailure("dirty rate measurement is not supported by this "
                                 f"hypervisor: {libvirt_message(exc)}") from None
            raise
        await asyncio.sleep(DIRTY_RATE_CALC_S)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DIRTY_RATE_WAIT_S

        def sample(dom: Any) -> dict[str, Any]:
            records = dom.connect().domainListGetStats(
                [dom], libvirt.VIR_DOMAIN_STATS_DIRTYRATE, 0)
            stats: dict[str, Any] = records[0][1] if records else {}
            return stats

        while True:
            stats = await self.ctx.libvirt.call(sample)
            if (stats.get("dirtyrate.calc_status") == libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED
                    and "dirtyrate.megabytes_per_second" in stats):
                return int(stats["dirtyrate.megabytes_per_second"])
            if loop.time() >= deadline:
                raise RpcFailure("the dirty rate calculation did not complete within "
                                 f"{DIRTY_RATE_CALC_S + DIRTY_RATE_WAIT_S:g}s")
            await asyncio.sleep(0.2)
