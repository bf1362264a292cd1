"""The command API's handlers (kubevirt.cmd.v1.Cmd): what each rpc does to the domain.

Semantics follow KubeVirt's cmd-server and LibvirtDomainManager (pkg/virt-launcher/virtwrap):
- Pause / Unpause check the state first: pausing a domain that is not running, or
  unpausing one that is not paused, is a successful no-op.
- Shutdown asks a running or paused guest to power off (ACPI power button; the agent when
  the domain has no ACPI), thawing a frozen guest first; Kill destroys (graceful flag) a
  running, paused or shutting-down domain; Delete undefines keeping NVRAM. A domain that
  is gone, already off or (Delete) no longer defined makes each of them a success.
- SoftReboot reboots through the guest agent when it is connected, else ACPI (refused when
  the VMI disabled ACPI); an unresponsive agent is not an error (KubeVirt's choice).
- Reset is a hard reset; Freeze/Unfreeze go through launcher.guest.freeze.FreezeManager.
- GetGuestInfo / GetUsers / GetFilesystems come from the agent cache, never the agent.
- GetDomainStats is cached 3.25 s, GetDomainDirtyRateStats 3 s (KubeVirt's caches).
- Errors: Response{success: false, message} for every rpc, except Exec and GuestPing which
  answer a real gRPC status (as KubeVirt, whose handlers return the Go error there).
  Messages carry libvirt's code, symbolic name and text. virt-handler prefixes them with
  the command's name itself, so ours do not repeat it.
- Requests naming a VMI are validated first (launcher.cmd.vmi): malformed JSON or another
  VMI than ours is refused before libvirt is touched.
- SyncVirtualMachine goes through launcher.vm.sync.Syncer (convert, prepare the disks, define
  and start; on a running domain, update the definition and say what needs a restart).
  Beyond KubeVirt, a VMI whose uid differs from --uid (another incarnation of the same
  name) is refused. Migration, hotplug, SEV, backup, checkpoint and device rpcs answer
  "<Rpc> is not supported by this launcher"; GetVMStats answers gRPC UNIMPLEMENTED.

Beyond KubeVirt, each documented where it happens: explicit "domain not running/paused"
messages instead of libvirt's generic ones, Exec arguments JSON-encoded (KubeVirt splices
them into a string) and a signal-killed command reported as 128+signal, GuestPing honours
timeoutSeconds, memory dumps only into the hotplug volume directory (and the rpc answers
within virt-handler's deadline while a long dump goes on), Delete of an already undefined
(transient) domain succeeds, flags a driver cannot honour fall back to the conservative
default.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
import os
import stat
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import libvirt
import libvirt_qemu
import structlog

from launcher import paths
from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from launcher.cmd.server import MAX_MESSAGE_BYTES, Handler, failure
from launcher.cmd.vmi import VMI, VMIError
from launcher.cmd.vmi import parse as parse_vmi
from launcher.flags import Options
from launcher.guest import info as guest_info
from launcher.guest.freeze import FreezeError, FreezeManager
from launcher.guest.poller import AgentCache
from launcher.libvirt.connection import Connection
from launcher.libvirt.errors import libvirt_message, unsupported_flags
from launcher.notify.domain_state import State, status_and_reason
from launcher.notify.relay import DomainRead, DomainRelay
from launcher.vm.sync import Syncer, SyncError, uid_mismatch

T = TypeVar("T")

CMD_SERVICE = cmd_pb2.DESCRIPTOR.services_by_name["Cmd"]
UNSUPPORTED = (
    "MigrateVirtualMachine", "SyncMigrationTarget", "CancelVirtualMachineMigration",
    "SignalTargetPodCleanup", "FinalizeVirtualMachineMigration", "HotplugHostDevices",
    "SyncVirtualMachineCPUs", "SyncVirtualMachineMemory", "GetSEVInfo",
    "GetLaunchMeasurement", "InjectLaunchSecret", "BackupVirtualMachine",
    "RedefineCheckpoint", "GetDevices",
)
UNIMPLEMENTED_STATUS = ("GetVMStats",)  # KubeVirt answers these with gRPC status codes

DOMAIN_STATS_CACHE_S = 3.25  # KubeVirt's domainStatsCache
DIRTY_RATE_CACHE_S = 3.0  # KubeVirt's domainDirtyRateStatsCache
DIRTY_RATE_CALC_S = 1  # KubeVirt's dirtyRateCalculationTime
DIRTY_RATE_WAIT_S = 5.0  # beyond the calculation period, for QEMU to report
AGENT_TIMEOUT_S = 5  # libvirt's timeout for one agent command
AGENT_GUARD_S = 5.0  # asyncio-side margin over libvirt's own timeout
EXEC_POLL_S = 0.1
SHUTDOWN_THAW_TIMEOUT_S = 12.0  # a Shutdown rpc thaws a frozen guest first; bounded
MEMORY_DUMP_WAIT_S = 15.0  # answer before virt-handler's 20 s deadline; the dump goes on
SCREENSHOT_CHUNK = 256 * 1024
SCREENSHOT_MAX_BYTES = MAX_MESSAGE_BYTES - 64 * 1024  # room for the rest of the message

_ALIVE = (State.RUNNING, State.BLOCKED, State.PAUSED, State.SHUTDOWN, State.PMSUSPENDED)
_RUNNING = (State.RUNNING, State.BLOCKED)


def _with_flags(fn: Callable[[int], T], preferred: int, fallback: int) -> T:
    """fn(preferred); if the driver rejects those flags, fn(fallback). Blocking.

    Only drivers other than QEMU (libvirt's test driver, used by the integration tests)
    reject the flags KubeVirt passes; each fallback is the conservative choice (undefine
    without flags refuses rather than deletes NVRAM; shutdown without flags lets the
    driver pick its method; stats without NOWAIT waits for a busy domain)."""
    try:
        return fn(preferred)
    except libvirt.libvirtError as exc:
        if not unsupported_flags(exc):
            raise
    return fn(fallback)


class RpcFailure(Exception):
    """An rpc refused or failed with a specific message for the client."""


class RpcStatus(Exception):
    """An Exec/GuestPing failure carried as a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _status_code(exc: libvirt.libvirtError) -> grpc.StatusCode:
    """gRPC status for a libvirt error in Exec/GuestPing (KubeVirt: always UNKNOWN, its
    handlers return the bare Go error; virt-handler only checks err != nil)."""
    code = exc.get_error_code()
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return grpc.StatusCode.NOT_FOUND
    if code == libvirt.VIR_ERR_AGENT_UNRESPONSIVE:
        return grpc.StatusCode.UNAVAILABLE
    if code in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
                libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED):
        # domain not running / agent not configured / driver without an agent
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.UNKNOWN


def _ok(rpc: str, message: str = "") -> Any:
    method = CMD_SERVICE.methods_by_name[rpc]
    resp = cmd_pb2.Response(success=True, message=message)
    if method.output_type.name == "Response":
        return resp
    return getattr(cmd_pb2, method.output_type.name)(response=resp)


def _status_name(read: DomainRead) -> str:
    return status_and_reason(read.state, read.reason)[0]


def _compact(doc: Any) -> str:
    # Go's encoding/json output: no spaces.
    return json.dumps(doc, separators=(",", ":"))


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


class _TimedCache:
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


@dataclass
class _Dump:
    path: str
    task: asyncio.Task[None]


class Commands:
    def __init__(self, opts: Options, conn: Connection, relay: DomainRelay, agent: AgentCache,
                 freeze: FreezeManager, *, syncer: Syncer | None = None,
                 agent_conn: Connection | None = None) -> None:
        self.opts = opts
        self.conn = conn
        # Guest agent calls (Exec, GuestPing, soft reboot): on a connection of their own
        # when given (see launcher.supervisor), so a silent agent holds up nothing else.
        self.agent_conn = agent_conn or conn
        self.relay = relay
        self.agent = agent
        self.freeze = freeze
        self.domain = relay.domain
        self._paths = paths.derive(opts)
        self.syncer = syncer or Syncer(opts=opts, paths=self._paths, conn=conn,
                                       domain=self.domain)
        self._modify = asyncio.Lock()  # check-then-act on the domain state, one at a time
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stats = _TimedCache(DOMAIN_STATS_CACHE_S, self._domain_stats, self._tasks)
        self._dirty = _TimedCache(DIRTY_RATE_CACHE_S, self._dirty_rate, self._tasks)
        self._dump: _Dump | None = None
        self._dumped: set[str] = set()  # paths dumped successfully (KubeVirt: not redone)
        # GetGuestInfo's JSON, rebuilt only when the cache or the agent's presence changes.
        self._guest_info_json: tuple[tuple[int, bool], str] | None = None
        self._log = structlog.get_logger().bind(part="commands", domain=self.domain)

    # --- registry -----------------------------------------------------------------------
    def handlers(self) -> dict[str, Handler]:
        table: dict[str, Handler] = {
            "SyncVirtualMachine": self._vmi_rpc("SyncVirtualMachine", self._sync),
            "PauseVirtualMachine": self._vmi_rpc("PauseVirtualMachine", self._pause),
            "UnpauseVirtualMachine": self._vmi_rpc("UnpauseVirtualMachine", self._unpause),
            "FreezeVirtualMachine": self._vmi_rpc("FreezeVirtualMachine", self._freeze),
            "UnfreezeVirtualMachine": self._vmi_rpc("UnfreezeVirtualMachine", self._unfreeze),
            "ResetVirtualMachine": self._vmi_rpc("ResetVirtualMachine", self._reset),
            "SoftRebootVirtualMachine": self._vmi_rpc("SoftRebootVirtualMachine",
                                                      self._soft_reboot),
            "ShutdownVirtualMachine": self._vmi_rpc("ShutdownVirtualMachine", self._shutdown),
            "KillVirtualMachine": self._vmi_rpc("KillVirtualMachine", self._kill),
            "DeleteVirtualMachine": self._vmi_rpc("DeleteVirtualMachine", self._delete),
            "GetScreenshot": self._vmi_rpc("GetScreenshot", self._screenshot),
            "VirtualMachineMemoryDump": self._vmi_rpc("VirtualMachineMemoryDump",
                                                      self._memory_dump),
            "GetDomain": self._query("GetDomain", self._get_domain),
            "GetDomainStats": self._query("GetDomainStats", self._get_domain_stats),
            "GetGuestInfo": self._query("GetGuestInfo", self._get_guest_info),
            "GetUsers": self._query("GetUsers", self._get_users),
            "GetFilesystems": self._query("GetFilesystems", self._get_filesystems),
            "GetQemuVersion": self._query("GetQemuVersion", self._get_qemu_version),
            "GetDomainDirtyRateStats": self._query("GetDomainDirtyRateStats",
                                                   self._get_dirty_rate),
            "Ping": self._ping,
            "Exec": self._exec,
            "GuestPing": self._guest_ping,
        }
        for rpc in UNSUPPORTED:
            table[rpc] = self._unsupported(rpc)
        for rpc in UNIMPLEMENTED_STATUS:
            table[rpc] = self._unimplemented(rpc)
        missing = {m.name for m in CMD_SERVICE.methods} - set(table)
        if missing:  # a new rpc in the proto must be decided on, not silently defaulted
            raise RuntimeError(f"rpcs without a handler: {sorted(missing)}")
        return table

    async def close(self) -> None:
        """Cancel the work this object owns (cache refreshes, a memory dump's wait).
        A libvirt call already running in the executor finishes on its own."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        # Outcomes were logged where they happened; here only wait for the ends.
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- rpc plumbing -------------------------------------------------------------------
    def _vmi_rpc(self, rpc: str, body: Callable[[VMI, Any], Awaitable[Any]]) -> Handler:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                vmi = parse_vmi(request.vmi.vmiJson, domain=self.domain)
                result = await body(vmi, request)
            except (VMIError, RpcFailure, FreezeError, SyncError, ConnectionError) as exc:
                self._log.warning("rpc refused", rpc=rpc, error=str(exc))
                return failure(rpc, str(exc))
            except libvirt.libvirtError as exc:
                self._log.warning("rpc failed", rpc=rpc, error=libvirt_message(exc))
                return failure(rpc, libvirt_message(exc))
            return _ok(rpc) if result is None else result

        return handle

    def _query(self, rpc: str, body: Callable[[], Awaitable[Any]]) -> Handler:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await body()
            except (RpcFailure, ConnectionError) as exc:
                return failure(rpc, str(exc))
            except libvirt.libvirtError as exc:
                return failure(rpc, libvirt_message(exc))

        return handle

    @staticmethod
    def _unsupported(rpc: str) -> Handler:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return failure(rpc, f"{rpc} is not supported by this launcher")

        return handle

    @staticmethod
    def _unimplemented(rpc: str) -> Handler:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                f"{rpc} is not supported by this launcher")

        return handle

    # --- libvirt helpers ----------------------------------------------------------------
    def _lookup(self, via: Connection | None = None) -> Any:
        """Blocking (executor): our virDomain."""
        conn = (via or self.conn).conn
        if conn is None:
            raise ConnectionError("libvirt is not connected")
        return conn.lookupByName(self.domain)

    async def _on_domain(self, fn: Callable[[Any], T], *, agent: bool = False) -> T:
        """fn(our virDomain) in the executor; `agent`: it waits for the guest agent, so it
        runs on the agent connection."""
        via = self.agent_conn if agent else self.conn

        def run() -> T:
            return fn(self._lookup(via))

        result: T = await via.call(run)
        return result

    async def _read(self) -> DomainRead:
        read = await self.relay.read()
        if read is None:
            raise RpcFailure(f"domain {self.domain} not found")
        return read

    def _require(self, read: DomainRead, states: tuple[State, ...], action: str) -> None:
        if read.state in states:
            return
        if read.state == State.PAUSED:
            raise RpcFailure(f"cannot {action}: domain {self.domain} is paused; unpause first")
        raise RpcFailure(f"cannot {action}: domain {self.domain} is not running "
                         f"({_status_name(read)})")

    # --- VMI rpcs -----------------------------------------------------------------------
    async def _sync(self, vmi: VMI, request: Any) -> Any:
        mismatch = uid_mismatch(vmi.uid, self.opts.uid)
        if mismatch is not None:
            raise RpcFailure(f"vmi: {mismatch}")
        options = request.options if request.HasField("options") else None
        result = await self.syncer.sync(vmi.raw, options)
        return _ok("SyncVirtualMachine", result.message)

    async def _pause(self, vmi: VMI, request: Any) -> None:
        async with self._modify:
            read = await self._read()
            if read.state != State.RUNNING:
                self._log.info("domain is not running; nothing to pause",
                               status=_status_name(read))
                return
            await self._on_domain(lambda dom: dom.suspend())
            self._log.info("paused the domain")

    async def _unpause(self, vmi: VMI, request: Any) -> None:
        async with self._modify:
            read = await self._read()
            if read.state != State.PAUSED:
                self._log.info("domain is not paused; nothing to unpause",
                               status=_status_name(read))
                return
            await self._on_domain(lambda dom: dom.resume())
            self._log.info("unpaused the domain")

    async def _freeze(self, vmi: VMI, request: Any) -> None:
        await self.freeze.freeze(int(request.unfreezeTimeoutSeconds))

    async def _unfreeze(self, vmi: VMI, request: Any) -> None:
        await self.freeze.thaw()

    async def _reset(self, vmi: VMI, request: Any) -> None:
        read = await self._read()
        # A paused domain resets (and stays paused), as QEMU does.
        self._require(read, _ALIVE, "reset")
        await self._on_domain(lambda dom: dom.reset(0))
        self._log.info("reset the domain")

    async def _soft_reboot(self, vmi: VMI, request: Any) -> None:
        # KubeVirt looks at the VMI's AgentConnected condition; the relay's own view of
        # the agent-lifecycle events counts too (it is at least as fresh).
        agent = self.relay.agent_connected or vmi.agent_connected_condition()
        if not agent and vmi.acpi_disabled():
            raise RpcFailure("VMI neither have the agent connected nor the ACPI feature "
                             "enabled")
        read = await self._read()
        if read.state == State.PAUSED:
            raise RpcFailure(f"cannot soft-reboot: domain {self.domain} is paused and its "
                             "guest cannot act on the request; unpause first")
        self._require(read, _RUNNING, "soft-reboot")
        flag = (libvirt.VIR_DOMAIN_REBOOT_GUEST_AGENT if agent
                else libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
        try:
            await self._on_domain(lambda dom: dom.reboot(flag), agent=agent)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_AGENT_UNRESPONSIVE:
                raise
            # KubeVirt's choice: the agent going silent is what a rebooting guest does.
            self._log.warning("agent unresponsive during soft reboot", error=str(exc))
        self._log.info("soft-rebooted the domain", via="agent" if agent else "acpi")

    async def _shutdown(self, vmi: VMI, request: Any) -> None:
        read = await self.relay.read()
        if read is not None and read.state == State.RUNNING:
            # A frozen guest cannot write while it shuts down: thaw it first. Outside the
            # modify lock: a Kill must not wait behind this.
            await self.freeze.thaw_if_frozen(SHUTDOWN_THAW_TIMEOUT_S)
        async with self._modify:
            read = await self.relay.read()
            if read is None or read.state not in (State.RUNNING, State.PAUSED):
                self._log.info("domain not running or paused; nothing to shut down",
                               status=None if read is None else _status_name(read))
                return
            # ACPI power button; the agent instead when the domain has no ACPI (as the
            # launcher's own graceful shutdown). KubeVirt passes libvirt's default, which
            # prefers the agent whenever it is connected.
            use_agent = self.relay.agent_connected and "<acpi/>" not in read.xml
            flag = (libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT if use_agent
                    else libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            await self._on_domain(lambda dom: _with_flags(dom.shutdownFlags, flag, 0),
                                  agent=use_agent)
            self._log.info("asked the guest to shut down", via="agent" if use_agent else "acpi")
            # virt-handler counts its grace period from this (KubeVirt's SignalShutdownVMI).
            self.relay.graceful_shutdown_signalled()

    async def _kill(self, vmi: VMI, request: Any) -> None:
        await self.kill_domain()

    async def kill_domain(self) -> None:
        """Destroy (graceful flag) a running, paused or shutting-down domain; anything else
        is nothing to do (KubeVirt's KillVMI). Also the launcher's own last resort."""
        async with self._modify:
            read = await self.relay.read()
            if read is None or read.state not in (State.RUNNING, State.PAUSED,
                                                  State.SHUTDOWN):
                self._log.info("domain not running, paused or shutting down; nothing to kill")
                return
            try:
                await self._on_domain(
                    lambda dom: dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
            self._log.info("destroyed the domain")

    async def _delete(self, vmi: VMI, request: Any) -> None:
        await self.delete_domain()

    async def delete_domain(self) -> None:
        """Undefine, keeping NVRAM (KubeVirt's DeleteVMI); a domain already gone is done.
        Also what the launcher does itself at the end of a STANDALONE_VMI."""
        flags = (libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
                 | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)

        def undefine(dom: Any) -> bool:
            # Beyond KubeVirt: a running domain that was undefined already is transient;
            # undefining it again is libvirt's "cannot undefine transient domain", but
            # there is nothing left to delete: success (idempotent).
            if not dom.isPersistent():
                return False
            _with_flags(dom.undefineFlags, flags, 0)
            return True

        async with self._modify:
            try:
                undefined = await self._on_domain(undefine)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                undefined = False
            if undefined:
                self._log.info("undefined the domain (NVRAM kept)")
            else:
                self._log.info("domain not defined (gone or transient); nothing to delete")

    async def _screenshot(self, vmi: VMI, request: Any) -> Any:
        read = await self._read()
        self._require(read, _ALIVE, "take a screenshot")

        def shoot(dom: Any) -> tuple[str, bytes]:
            stream = self.conn.conn.newStream(0)
            finished = False
            try:
                mime: str = dom.screenshot(stream, 0, 0)
                chunks: list[bytes] = []
                size = 0
                while True:
                    chunk = stream.recv(SCREENSHOT_CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > SCREENSHOT_MAX_BYTES:
                        raise RpcFailure(f"screenshot larger than {SCREENSHOT_MAX_BYTES} "
                                         "bytes; it cannot be sent")
                    chunks.append(chunk)
                stream.finish()
                finished = True
                return mime, b"".join(chunks)
            finally:
                if not finished:
                    with contextlib.suppress(libvirt.libvirtError):
                        stream.abort()

        mime, data = await self._on_domain(shoot)
        return cmd_pb2.ScreenshotResponse(response=cmd_pb2.Response(success=True),
                                          mime=mime, data=data)

    # --- memory dump --------------------------------------------------------------------
    def _dump_target(self, raw: str) -> str:
        """The file to dump to. Only inside a volume directory under the hotplug disk dir,
        where virt-handler mounts the memory-dump volume
        (<hotplug-disk-dir>/<volume>/<file>): this rpc writes a file as the launcher, so it
        must not write anywhere else. KubeVirt's spelling is re-rooted under --runtime-root
        like every other path."""
        if not raw:
            raise RpcFailure("dumpPath: required")
        if "\0" in raw or not os.path.isabs(raw) or ".." in raw.split("/"):
            raise RpcFailure(f"dumpPath {raw!r}: must be an absolute path without '..'")
        target = os.path.normpath(raw)
        allowed = os.path.normpath(self._paths.hotplug_disk_dir)
        spelled = os.path.normpath(self.opts.hotplug_disk_dir)
        if os.path.commonpath([target, allowed]) != allowed:
            if os.path.commonpath([target, spelled]) != spelled:
                raise RpcFailure(f"dumpPath {raw!r}: memory dumps are only written under "
                                 f"{spelled} (the memory-dump volume); refusing")
            target = paths.reroot(self._paths.root, target)
        parent = os.path.dirname(target)
        if parent == allowed:
            raise RpcFailure(f"dumpPath {raw!r}: expected <hotplug-disk-dir>/<volume>/<file>")
        real_allowed = os.path.realpath(allowed)
        real_parent = os.path.realpath(parent)
        if os.path.commonpath([real_parent, real_allowed]) != real_allowed:
            raise RpcFailure(f"dumpPath {raw!r}: its directory resolves outside "
                             f"{allowed}; refusing")
        if not os.path.isdir(parent):
            raise RpcFailure(f"dumpPath {raw!r}: directory {parent} does not exist "
                             "(is the memory-dump volume mounted?)")
        # The file itself: libvirt (root, in the daemon) opens the path and would follow a
        # symlink planted in the volume (vol/x -> /etc/shadow) and overwrite its target.
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(target)
            if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
                raise RpcFailure(f"dumpPath {raw!r}: {target} exists and is not a regular "
                                 "file (a symlink?); refusing")
        return target

    async def _memory_dump(self, vmi: VMI, request: Any) -> Any:
        rpc = "VirtualMachineMemoryDump"
        target = self._dump_target(request.dumpPath)
        read = await self._read()
        self._require(read, _ALIVE, "dump memory")
        running = self._dump
        if running is not None and not running.task.done():
            if running.path == target:  # KubeVirt: a repeated request is not an error
                return _ok(rpc, f"memory dump to {target} in progress")
            raise RpcFailure(f"another memory dump is in progress ({running.path})")
        if target in self._dumped:  # KubeVirt does not redo a completed dump
            return _ok(rpc, f"memory dump to {target} already completed")
        task = asyncio.create_task(self._dump_to(target), name="memory-dump")
        self._tasks.add(task)
        task.add_done_callback(self._dump_done)
        self._dump = _Dump(target, task)
        # Answer within virt-handler's deadline; a longer dump goes on, owned by us, and
        # its outcome is logged (KubeVirt reports it through domain metadata instead).
        done, _ = await asyncio.wait({task}, timeout=MEMORY_DUMP_WAIT_S)
        if not done:
            return _ok(rpc, f"memory dump to {target} started; still running")
        task.result()  # its libvirt error becomes this rpc's answer
        return None

    async def _dump_to(self, target: str) -> None:
        def dump(dom: Any) -> None:
            # As KubeVirt: one dump per volume; earlier ones are removed first.
            directory = os.path.dirname(target)
            for name in os.listdir(directory):
                path = os.path.join(directory, name)
                if "memory.dump" in name and os.path.isfile(path):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            dom.coreDumpWithFormat(target, libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW,
                                   libvirt.VIR_DUMP_MEMORY_ONLY)

        self._log.info("memory dump started", path=target)
        await self._on_domain(dump)
        self._dumped.add(target)
        self._log.info("memory dump completed", path=target)

    def _dump_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            error = libvirt_message(exc) if isinstance(exc, libvirt.libvirtError) else str(exc)
            self._log.error("memory dump failed", error=error)

    # --- queries ------------------------------------------------------------------------
    async def _ping(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return cmd_pb2.Response(success=True)

    async def _get_domain(self) -> Any:
        read = await self.relay.read()
        if read is None:
            # KubeVirt answers success with no domain when it does not exist.
            return cmd_pb2.DomainResponse(response=cmd_pb2.Response(success=True))
        _, raw = await self.relay.snapshot()
        doc = json.loads(raw)
        status = doc.get("Status")
        if isinstance(status, dict) and status.get("Reason") != "NonExistent":
            # KubeVirt's GetDomain adds the agent's OS info and interfaces.
            status.update(guest_info.domain_status_fields(self.agent.raw()))
        return cmd_pb2.DomainResponse(response=cmd_pb2.Response(success=True),
                                      domain=_compact(doc))

    async def _get_domain_stats(self) -> Any:
        text: str = await self._stats.get()
        return cmd_pb2.DomainStatsResponse(response=cmd_pb2.Response(success=True),
                                           domainStats=text)

    async def _domain_stats(self) -> str:
        read = await self.relay.read()
        if read is None or read.state not in (State.RUNNING, State.PAUSED, State.BLOCKED):
            return ""  # KubeVirt collects running and paused domains only: no stats
        types = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_BALLOON
                 | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_VCPU
                 | libvirt.VIR_DOMAIN_STATS_INTERFACE | libvirt.VIR_DOMAIN_STATS_BLOCK
                 | libvirt.VIR_DOMAIN_STATS_DIRTYRATE)

        def collect(dom: Any) -> tuple[str, str, dict[str, Any], Any]:
            records = _with_flags(
                lambda flags: self.conn.conn.domainListGetStats([dom], types, flags),
                libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT, 0)
            stats = records[0][1] if records else {}
            # The vCPU -> host CPU map, as KubeVirt's GetVcpuPinInfo (CPUMap).
            cpu_map = dom.vcpuPinInfo(libvirt.VIR_DOMAIN_AFFECT_CURRENT)
            return dom.name(), dom.UUIDString(), stats, cpu_map

        try:
            name, uuid, stats, cpu_map = await self._on_domain(collect)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return ""
            raise
        load = self.agent.get(guest_info.LOAD)
        doc = domain_stats_json(name=name, uuid=uuid, stats=stats,
                                aliases=device_aliases(read.xml),
                                load=None if load is None else load.value, cpu_map=cpu_map)
        return _compact(doc)

    async def _get_guest_info(self) -> Any:
        key = (self.agent.version, self.relay.agent_connected)
        if self._guest_info_json is None or self._guest_info_json[0] != key:
            raw = self.agent.raw()
            if not self.relay.agent_connected:
                # The agent is gone (now): no agent version, so virt-freezer reports "No
                # guest agent" and a backup hook succeeds instead of failing on a freeze that
                # cannot work. The rest of what it last said stays (no flapping).
                raw.pop("guest-info", None)
            self._guest_info_json = (key, _compact(guest_info.guest_info_json(raw)))
        return cmd_pb2.GuestInfoResponse(response=cmd_pb2.Response(success=True),
                                         guestInfoResponse=self._guest_info_json[1])

    async def _get_users(self) -> Any:
        return cmd_pb2.GuestUserListResponse(
            response=cmd_pb2.Response(success=True),
            guestUserListResponse=_compact(guest_info.users_json(self.agent.raw())))

    async def _get_filesystems(self) -> Any:
        return cmd_pb2.GuestFilesystemsResponse(
            response=cmd_pb2.Response(success=True),
            guestFilesystemsResponse=_compact(guest_info.filesystems_json(self.agent.raw())))

    async def _get_qemu_version(self) -> Any:
        def version() -> int:
            conn = self.conn.conn
            if conn is None:
                raise ConnectionError("libvirt is not connected")
            value: int = conn.getVersion()
            return value

        value = await self.conn.call(version)
        # KubeVirt's format: major*1000000 + minor*1000 + release -> "QEMU x.y.z"
        major, rest = divmod(value, 1_000_000)
        minor, release = divmod(rest, 1_000)
        return cmd_pb2.QemuVersionResponse(response=cmd_pb2.Response(success=True),
                                           version=f"QEMU {major}.{minor}.{release}")

    async def _get_dirty_rate(self) -> Any:
        rate: int = await self._dirty.get()
        return cmd_pb2.DirtyRateStatsResponse(response=cmd_pb2.Response(success=True),
                                              dirtyRateMbs=rate)

    async def _dirty_rate(self) -> int:
        read = await self._read()
        self._require(read, (State.RUNNING,), "measure the dirty rate")
        try:
            await self._on_domain(lambda dom: dom.startDirtyRateCalc(
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
            records = self.conn.conn.domainListGetStats(
                [dom], libvirt.VIR_DOMAIN_STATS_DIRTYRATE, 0)
            stats: dict[str, Any] = records[0][1] if records else {}
            return stats

        while True:
            stats = await self._on_domain(sample)
            if (stats.get("dirtyrate.calc_status") == libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED
                    and "dirtyrate.megabytes_per_second" in stats):
                return int(stats["dirtyrate.megabytes_per_second"])
            if loop.time() >= deadline:
                raise RpcFailure("the dirty rate calculation did not complete within "
                                 f"{DIRTY_RATE_CALC_S + DIRTY_RATE_WAIT_S:g}s")
            await asyncio.sleep(0.2)

    # --- guest agent: Exec and GuestPing (real gRPC status codes) -------------------------
    def _check_domain_name(self, rpc: str, name: str) -> None:
        if not name:
            raise RpcStatus(grpc.StatusCode.INVALID_ARGUMENT, f"{rpc}: domainName: required")
        if name != self.domain:
            raise RpcStatus(grpc.StatusCode.NOT_FOUND,
                            f'{rpc}: domain "{name}" is not this launcher\'s domain '
                            f'"{self.domain}"')

    async def _agent_command(self, command: str, timeout_s: int) -> str:
        def run(dom: Any) -> str:
            answer: str = libvirt_qemu.qemuAgentCommand(dom, command, timeout_s, 0)
            return answer

        try:
            async with asyncio.timeout(timeout_s + AGENT_GUARD_S):
                return await self._on_domain(run, agent=True)
        except TimeoutError:
            raise RpcStatus(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"the guest agent did not answer within {timeout_s}s") from None

    async def _agent_rpc(self, rpc: str, context: grpc.aio.ServicerContext,
                         body: Callable[[], Awaitable[Any]],
                         on_failure: Callable[[], None] | None = None) -> Any:
        try:
            return await body()
        except RpcStatus as exc:
            problem: tuple[grpc.StatusCode, str] = (exc.code, exc.message)
        except libvirt.libvirtError as exc:
            problem = (_status_code(exc), f"{rpc}: {libvirt_message(exc)}")
        except ConnectionError as exc:
            problem = (grpc.StatusCode.UNAVAILABLE, f"{rpc}: {exc}")
        self._log.info("agent rpc failed", rpc=rpc, code=problem[0].name, error=problem[1])
        if on_failure is not None:
            on_failure()
        await context.abort(*problem)

    async def _agent_domain(self, rpc: str) -> DomainRead:
        read = await self.relay.read()
        if read is None:
            raise RpcStatus(grpc.StatusCode.NOT_FOUND, f"{rpc}: domain {self.domain} not found")
        return read

    async def _exec(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def body() -> Any:
            self._check_domain_name("Exec", request.domainName)
            if not request.Command:
                raise RpcStatus(grpc.StatusCode.INVALID_ARGUMENT, "Exec: Command: required")
            if request.timeoutSeconds <= 0:
                raise RpcStatus(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Exec: timeoutSeconds must be > 0, got {request.timeoutSeconds}")
            read = await self._agent_domain("Exec")
            if read.state not in _RUNNING:
                raise RpcStatus(grpc.StatusCode.FAILED_PRECONDITION,
                                f"Exec: domain {self.domain} is {_status_name(read)}; the "
                                "guest agent can only run commands in a running guest")
            exit_code, out = await self._guest_exec(request.Command, list(request.Args),
                                                    int(request.timeoutSeconds))
            # A non-zero exit is the command's answer, not an rpc error.
            return cmd_pb2.ExecResponse(response=cmd_pb2.Response(success=True),
                                        exitCode=exit_code, stdOut=out)

        return await self._agent_rpc("Exec", context, body)

    async def _guest_exec(self, path: str, args: list[str], timeout_s: int) -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s

        def agent_timeout() -> int:
            return max(1, min(AGENT_TIMEOUT_S, math.ceil(deadline - loop.time())))

        # json.dumps, not string splicing (KubeVirt's): quotes in arguments stay arguments.
        start = json.dumps({"execute": "guest-exec",
                            "arguments": {"path": path, "arg": args, "capture-output": True}})
        answer = await self._agent_command(start, agent_timeout())
        try:
            pid = json.loads(answer)["return"]["pid"]
        except (ValueError, KeyError, TypeError):
            pid = None
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise RpcStatus(grpc.StatusCode.UNKNOWN,
                            f"Exec: invalid pid returned by the guest agent: {answer[:200]}")
        status_cmd = json.dumps({"execute": "guest-exec-status", "arguments": {"pid": pid}})
        while True:
            answer = await self._agent_command(status_cmd, agent_timeout())
            try:
                ret = json.loads(answer)["return"]
            except (ValueError, KeyError, TypeError):
                ret = None
            if not isinstance(ret, dict):
                raise RpcStatus(grpc.StatusCode.UNKNOWN,
                                f"Exec: unexpected guest-exec-status answer: {answer[:200]}")
            if ret.get("exited") is True:
                return self._exec_result(ret)
            if loop.time() >= deadline:
                raise RpcStatus(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"Exec: timed out after {timeout_s}s waiting for guest pid "
                                f"[{pid}] for command [{path}] to exit")
            await asyncio.sleep(min(EXEC_POLL_S, max(0.0, deadline - loop.time())))

    @staticmethod
    def _exec_result(ret: dict[str, Any]) -> tuple[int, str]:
        try:
            out = base64.b64decode(ret.get("out-data") or "", validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise RpcStatus(grpc.StatusCode.UNKNOWN,
                            "Exec: the guest agent returned undecodable output") from None
        code = ret.get("exitcode")
        if not isinstance(code, int) or isinstance(code, bool):
            # Killed by a signal: qemu-ga reports "signal" instead; the shell's convention
            # (KubeVirt would report 0 here).
            signal = ret.get("signal")
            code = 128 + signal if isinstance(signal, int) and not isinstance(signal, bool) \
                else 0
        return code, out.decode("utf-8", errors="replace")

    async def _guest_ping(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """As KubeVirt's: the agent command goes to libvirt whatever the domain's state, so
        a paused (or shut-off) domain fails with libvirt's own error ("domain is not
        running"): the guest-agent readiness probe and virt-probe rely on failing there.
        Every failure also raises a Warning K8s event GuestAgentPingFailed."""
        async def body() -> Any:
            self._check_domain_name("GuestPing", request.domainName)
            read = await self._agent_domain("GuestPing")
            status, reason = status_and_reason(read.state, read.reason)
            if read.state not in _ALIVE:
                raise RpcStatus(grpc.StatusCode.FAILED_PRECONDITION,
                                f"GuestPing: domain {self.domain} is {status} ({reason})")
            # Beyond KubeVirt: the request's timeout is honoured (KubeVirt uses libvirt's
            # default whatever the probe asked for).
            timeout = request.timeoutSeconds if request.timeoutSeconds > 0 else AGENT_TIMEOUT_S
            await self._agent_command('{"execute":"guest-ping"}', int(timeout))
            return _ok("GuestPing")

        def failed() -> None:
            self.relay.k8s_warning("GuestAgentPingFailed",
                                   f"GuestAgentPing probe failed for VMI {self.opts.name}")

        return await self._agent_rpc("GuestPing", context, body, on_failure=failed)
