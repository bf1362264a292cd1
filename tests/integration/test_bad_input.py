"""Bad input on the command socket: what a broken or hostile virt-handler (or anything else
that can open the launcher socket) can send, against the real command server on a real
UNIX socket, the real handlers (launcher.cmd.commands, launcher.vm.sync with the real converter
and disk preparation) and libvirt's test:///default driver underneath, all in this
process (so psutil on this process sees the server's threads and file descriptors).

What every answer must be:
- a well-formed response of the rpc's type: success true, or success false with a
  non-empty message that is never the handler boundary's "internal error" (that one means
  a bug in a handler);
- for Exec, GuestPing and GetVMStats (KubeVirt's status-code rpcs): a gRPC status other
  than UNKNOWN and INTERNAL;
- a request that cannot be decoded at all: grpc.aio's own refusal (UNKNOWN "Unexpected
  <class 'google.protobuf.message.DecodeError'>: Error parsing message ...", before any
  handler runs);
- never a hang: every call has a deadline and DEADLINE_EXCEEDED is a failure.

Figures (this file): per rpc (37 of Cmd, plus CmdInfo.Info) 25 random byte bodies, 40
truncations of a request with every field set and, for the rpcs carrying a VMI, 9 more
with the VMI JSON cut short (~2,200 calls); unknown fields of every wire type on every rpc;
a 16 MiB + 1 KiB message; 1,000 concurrent calls on 10 connections (bounds: FD_BOUND,
THREAD_BOUND); hypothesis (derandomized) with 30 generated requests plus one fully set
per rpc (1,147 requests), each followed by a Ping.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import json
import random
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import libvirt
import psutil
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from launcher._proto.kubevirt.cmd.info import info_pb2
from launcher._proto.kubevirt.cmd.v1 import cmd_pb2, cmd_pb2_grpc
from launcher.cmd.server import MAX_MESSAGE_BYTES
from tests.integration.notify_support import run_uvloop
from tests.support.rigs import CALL_TIMEOUT_S, CMD, SyncedRig, method_path
from tests.support.rigs import small_vmi as vmi_doc
from tests.support.rigs import synced_rig as rig
from tests.unit.converter.strategies import vmis

pytestmark = pytest.mark.timeout(180)

URI = "test:///default"
NAMESPACE = "pvl"
UID = "uid-1"
RPCS = [m.name for m in CMD.methods]
STATUS_CODE_RPCS = frozenset({"Exec", "GuestPing", "GetVMStats"})
# grpc.aio's answer to a request body the message's parser refuses (before any handler
# runs; gRPC also logs it): UNKNOWN "Unexpected <class '...DecodeError'>: Error parsing...".
UNDECODABLE_CODE = grpc.StatusCode.UNKNOWN
UNDECODABLE_DETAILS = "Unexpected <class 'google.protobuf.message.DecodeError'>: Error parsing"


def undecodable(exc: grpc.aio.AioRpcError) -> bool:
    return exc.code() == UNDECODABLE_CODE and (exc.details() or "").startswith(
        UNDECODABLE_DETAILS)
# Bounds for the 1,000-call burst, measured on this process after a warm-up round of the
# same mix (executors at their working size): the burst may add at most this many.
FD_BOUND = 8
THREAD_BOUND = 4




def in_cls(rpc: str) -> Any:
    return GetMessageClass(CMD.methods_by_name[rpc].input_type)


def out_cls(rpc: str) -> Any:
    return GetMessageClass(CMD.methods_by_name[rpc].output_type)


def inner(resp: Any) -> Any:
    return resp if resp.DESCRIPTOR.name == "Response" else resp.response




# --- the rig: the launcher's command server, in this process --------------------------------




# --- what an answer must look like ----------------------------------------------------------
def check_answer(rpc: str, outcome: bytes | grpc.aio.AioRpcError, what: Any,
                 *, decodable: bool = True) -> str:
    """Assert `outcome` is an acceptable answer of `rpc`; returns a short class of it.
    `decodable`: the request was a valid message (so gRPC's refusal is not acceptable)."""
    if isinstance(outcome, grpc.aio.AioRpcError):
        code, details = outcome.code(), outcome.details() or ""
        assert code != grpc.StatusCode.DEADLINE_EXCEEDED, (rpc, what, "hung")
        if undecodable(outcome):
            assert not decodable, (rpc, what, "a valid message was refused as undecodable")
            return "undecodable"
        assert rpc in STATUS_CODE_RPCS, (rpc, what, code, details)
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), \
            (rpc, what, code, details)
        assert details, (rpc, what, code)
        return f"status:{code.name}"
    resp = inner(out_cls(rpc).FromString(outcome))
    if resp.success:
        return "success"
    assert resp.message, (rpc, what, "success=false without a message")
    assert "internal error" not in resp.message, (rpc, what, resp.message)
    return "refused"


def full_message(rpc: str, vmi_json: bytes, domain: str) -> Any:
    """The rpc's request with every field set (nested messages, maps, repeated fields)."""
    msg = in_cls(rpc)()
    _fill(msg, vmi_json, domain, depth=0)
    return msg


def _fill(msg: Any, vmi_json: bytes, domain: str, depth: int) -> None:
    for f in msg.DESCRIPTOR.fields:
        if f.name == "vmiJson":
            msg.vmiJson = vmi_json
        elif f.message_type is not None and f.message_type.GetOptions().map_entry:
            value_field = f.message_type.fields_by_name["value"]
            target = getattr(msg, f.name)
            if value_field.message_type is not None:
                _fill(target["k1"], vmi_json, domain, depth + 1)
            else:
                target["k1"] = _scalar(value_field, domain)
        elif f.message_type is not None:
            if depth < 4:
                child = getattr(msg, f.name).add() if _repeated(f) else getattr(msg, f.name)
                _fill(child, vmi_json, domain, depth + 1)
        elif _repeated(f):
            getattr(msg, f.name).extend([_scalar(f, domain), _scalar(f, domain)])
        else:
            setattr(msg, f.name, _scalar(f, domain))


def _repeated(f: FieldDescriptor) -> bool:
    return bool(f.is_repeated)


def _scalar(f: FieldDescriptor, domain: str) -> Any:
    if f.type == FieldDescriptor.TYPE_STRING:
        if f.name == "domainName":
            return domain
        if f.name == "dumpPath":
            return "/var/run/kubevirt/hotplug-disks/vol/x.memory.dump"
        return "value-\u00e9"
    if f.type == FieldDescriptor.TYPE_BYTES:
        return b"\x00\x01bytes"
    if f.type == FieldDescriptor.TYPE_BOOL:
        return True
    if f.type == FieldDescriptor.TYPE_ENUM:
        assert f.enum_type is not None
        return f.enum_type.values[-1].number
    if f.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return 1.5
    return 3  # every integer type


# --- random bytes, truncations, unknown fields ----------------------------------------------
def test_random_bytes_and_truncated_messages_on_every_rpc() -> None:
    rng = random.Random(20261122)

    async def scenario() -> None:
        async with rig() as r:
            classes: dict[str, int] = {}
            calls = 0
            for rpc in [*RPCS, "CmdInfo.Info"]:
                if rpc == "CmdInfo.Info":
                    # CmdInfo's handshake: bytes in, CmdInfoResponse or gRPC's refusal.
                    call = r.channel.unary_unary("/kubevirt.cmd.info.CmdInfo/Info",
                                                 request_serializer=None,
                                                 response_deserializer=None)
                    for _ in range(25):
                        body = rng.randbytes(rng.randrange(0, 200))
                        try:
                            answer = await call(body, timeout=CALL_TIMEOUT_S)
                        except grpc.aio.AioRpcError as exc:
                            assert undecodable(exc), (body, exc)
                        else:
                            info = info_pb2.CmdInfoResponse.FromString(answer)
                            assert list(info.supportedCmdVersions) == [1]
                        calls += 1
                    await r.ping()
                    continue
                bodies: list[tuple[bytes, bool]] = []
                for _ in range(25):
                    bodies.append((rng.randbytes(rng.randrange(0, 300)), False))
                # A real VMI of another domain: a state-changing rpc must refuse it, so the
                # truncations below do not kill our domain half-way through the test.
                other = vmi_doc("someone-else")
                full = full_message(rpc, json.dumps(other).encode(), r.domain)
                encoded = full.SerializeToString()
                cuts = sorted({len(encoded) * i // 40 for i in range(40)})
                bodies += [(encoded[:cut], False) for cut in cuts]
                bodies.append((encoded, True))
                if "vmi" in full.DESCRIPTOR.fields_by_name:
                    # Well-framed messages whose VMI JSON (ours, this time) is cut short.
                    ours = json.dumps(vmi_doc(r.name)).encode()
                    for i in range(1, 10):
                        cut_vmi = full_message(rpc, ours[:len(ours) * i // 10], r.domain)
                        bodies.append((cut_vmi.SerializeToString(), True))
                for body, decodable in bodies:
                    outcome = await r.raw(rpc, body)
                    kind = check_answer(rpc, outcome, body[:80], decodable=decodable)
                    if decodable and "vmi" in full.DESCRIPTOR.fields_by_name:
                        # another domain's VMI, or a truncated one: never acted on
                        assert kind == "refused", (rpc, kind)
                    classes[kind] = classes.get(kind, 0) + 1
                    calls += 1
                await r.ping()
            print(f"{calls} calls: {classes}")
            assert calls > 40 * len(RPCS)
            # Every class of outcome was really exercised.
            assert classes.get("undecodable", 0) > 100, classes
            assert classes.get("refused", 0) > 200, classes
            assert classes.get("success", 0) > 10, classes
            dom_state = await asyncio.get_running_loop().run_in_executor(
                None, lambda: r.operator.lookupByName(r.domain).state()[0])
            assert dom_state == libvirt.VIR_DOMAIN_RUNNING

    run_uvloop(scenario())


def unknown_fields() -> bytes:
    """Fields numbered 1000+ of every wire type (varint, fixed64, length-delimited, group,
    fixed32): no message of the contract has them."""
    return (b"\xc0\x3e\x96\x01"  # 1000: varint 150
            b"\xc9\x3e" + b"\x01" * 8  # 1001: fixed64
            + b"\xd2\x3e\x05hello"  # 1002: length-delimited
            + b"\xdb\x3e\xe0\x3e\x01\xdc\x3e"  # 1003: group holding 1004: varint 1
            + b"\xe5\x3e" + b"\x02" * 4)  # 1004: fixed32


def test_unknown_fields_are_tolerated_on_every_rpc() -> None:
    """The same request with unknown fields appended (at the top level, and inside the
    nested VMI / options messages) gets the same answer as without them."""
    extra = unknown_fields()

    async def scenario() -> None:
        async with rig() as r:
            for rpc in RPCS:
                plain = in_cls(rpc)().SerializeToString()
                first = await r.raw(rpc, plain)
                second = await r.raw(rpc, plain + extra)
                check_answer(rpc, first, "plain")
                check_answer(rpc, second, "unknown fields")
                if isinstance(first, grpc.aio.AioRpcError):
                    assert isinstance(second, grpc.aio.AioRpcError), rpc
                    assert (first.code(), first.details()) == (second.code(),
                                                               second.details()), rpc
                else:
                    assert not isinstance(second, grpc.aio.AioRpcError), (rpc, second)
                    a = inner(out_cls(rpc).FromString(first))
                    b = inner(out_cls(rpc).FromString(second))
                    assert (a.success, a.message) == (b.success, b.message), rpc
            # A real Sync with unknown protobuf fields everywhere and unknown JSON fields
            # at several levels of the VMI: accepted as without them.
            doc = vmi_doc(r.name)
            doc["futureTopLevel"] = {"x": [1, 2]}
            doc["metadata"]["futureMeta"] = "y"
            doc["spec"]["futureSpec"] = True
            doc["spec"]["domain"]["futureDomain"] = {"nested": {"deeper": None}}
            doc["spec"]["domain"]["devices"]["disks"][0]["futureDisk"] = 7
            doc["spec"]["volumes"][0]["cloudInitNoCloud"]["futureSource"] = "z"
            doc["status"] = {"futureStatus": [], "phase": "Scheduled"}
            vmi = cmd_pb2.VMI(vmiJson=json.dumps(doc).encode()).SerializeToString() + extra
            options = cmd_pb2.VirtualMachineOptions(MemBalloonStatsPeriod=10)
            options_raw = options.SerializeToString() + extra
            # VMIRequest: vmi = 1, options = 2 (length-delimited, hand-assembled so the
            # nested unknown fields stay in the bytes)
            body = (b"\x0a" + _varint(len(vmi)) + vmi + b"\x12" + _varint(len(options_raw))
                    + options_raw + extra)
            outcome = await r.raw("SyncVirtualMachine", body)
            assert not isinstance(outcome, grpc.aio.AioRpcError), outcome
            resp = cmd_pb2.Response.FromString(outcome)
            assert resp.success is True, resp.message
            # the same VMI as the running domain's once the unknown fields are ignored
            assert resp.message == "no change", resp.message
            await r.ping()

    run_uvloop(scenario())


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


# --- sizes ------------------------------------------------------------------------------------
def test_oversized_message_is_refused_and_the_server_keeps_serving() -> None:
    async def scenario() -> None:
        async with rig() as r, grpc.aio.insecure_channel(
                f"unix:{r.socket}", options=[("grpc.max_send_message_length", -1)]) as big:
            # Over the server's limit: refused by gRPC before any handler runs.
            pad = "a" * (MAX_MESSAGE_BYTES + 1024)
            doc = {**vmi_doc(r.name), "pad": pad}
            over = cmd_pb2.VMIRequest(vmi=cmd_pb2.VMI(vmiJson=json.dumps(doc).encode()))
            assert over.ByteSize() > MAX_MESSAGE_BYTES
            t0 = time.monotonic()
            for rpc in ("SyncVirtualMachine", "PauseVirtualMachine", "Ping"):
                outcome = await r.raw(rpc, over.SerializeToString(), channel=big)
                assert isinstance(outcome, grpc.aio.AioRpcError), rpc
                assert outcome.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, outcome
                await r.ping()
            assert time.monotonic() - t0 < 10
            # Just under the limit: decoded and answered (an unknown 15 MiB JSON field is
            # tolerated like any other; the VMI is then judged on its merits).
            doc = {**vmi_doc(r.name), "pad": "a" * (MAX_MESSAGE_BYTES - 1024 * 1024)}
            doc["spec"]["domain"]["cpu"] = {"cores": "four"}
            under = cmd_pb2.VMIRequest(vmi=cmd_pb2.VMI(vmiJson=json.dumps(doc).encode()))
            assert under.ByteSize() < MAX_MESSAGE_BYTES
            outcome = await r.raw("SyncVirtualMachine", under.SerializeToString(),
                                  channel=big)
            assert not isinstance(outcome, grpc.aio.AioRpcError), outcome
            resp = cmd_pb2.Response.FromString(outcome)
            assert (resp.success, resp.message) == (
                False, "spec.domain.cpu.cores: expected an integer, got string")
            await r.ping()

    run_uvloop(scenario())


# --- wrong types in the VMI JSON --------------------------------------------------------------
WRONG_TYPES: list[tuple[str, Any, str]] = [
    ("spec.domain.cpu.cores", "four", "expected an integer, got string"),
    ("spec.domain.cpu.sockets", 1.5, "expected an integer, got number"),
    ("spec.domain.devices.disks", "cloudinit", "expected a list, got string"),
    ("spec.domain.devices.disks[0].disk.bus", 3, "expected a string, got number"),
    ("spec.domain.devices.autoattachGraphicsDevice", "no", "expected a boolean, got string"),
    ("spec.domain.resources.requests.memory", [128],
     'expected a quantity such as "4Gi", got array'),
    ("spec.volumes[0].cloudInitNoCloud.userData", {"a": 1}, "expected a string, got object"),
    ("spec.domain", [], "expected an object, got array"),
    ("spec", "x", "expected an object, got string"),
    ("spec.domain.memory.guest", True, 'expected a quantity such as "4Gi", got boolean'),
    ("spec.domain.devices.interfaces", {"name": "default"}, "expected a list, got object"),
]


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    keys: list[str | int] = []
    for part in path.split("."):
        m = re.fullmatch(r"(\w+)((?:\[\d+\])*)", part)
        assert m is not None, part
        keys.append(m.group(1))
        keys += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    node: Any = doc
    for key in keys[:-1]:
        if isinstance(key, str) and key not in node:
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def test_wrong_types_in_the_vmi_name_the_field() -> None:
    async def scenario() -> None:
        async with rig() as r:
            stub = cmd_pb2_grpc.CmdStub(r.channel)
            for path, value, reason in WRONG_TYPES:
                doc = copy.deepcopy(vmi_doc(r.name))
                set_path(doc, path, value)
                resp = await stub.SyncVirtualMachine(
                    cmd_pb2.VMIRequest(vmi=r.vmi(doc)), timeout=CALL_TIMEOUT_S)
                assert resp.success is False, path
                assert resp.message.startswith(f"{path}: {reason}"), (path, resp.message)
            # virt-handler's options are checked too (found by the generated requests
            # below: a control character in an SMBIOS field made libvirt refuse the XML
            # with a parser error instead of naming the field).
            for key in ("manufacturer", "sku"):
                options = cmd_pb2.VirtualMachineOptions(
                    VirtualMachineSMBios=cmd_pb2.SMBios(**{key: "a\x03b"}))
                resp = await stub.SyncVirtualMachine(
                    cmd_pb2.VMIRequest(vmi=r.vmi(), options=options), timeout=CALL_TIMEOUT_S)
                assert (resp.success, resp.message) == (
                    False, f'options.VirtualMachineSMBios.{key}: "a\\u0003b" contains '
                           "characters a libvirt domain cannot carry"), resp.message
            # The identity fields are read before anything else, by every VMI rpc.
            for rpc in ("SyncVirtualMachine", "PauseVirtualMachine", "KillVirtualMachine"):
                doc = vmi_doc(r.name)
                doc["metadata"]["name"] = 7
                call = r.channel.unary_unary(method_path(rpc),
                                             request_serializer=None,
                                             response_deserializer=cmd_pb2.Response.FromString)
                resp = await call(cmd_pb2.VMIRequest(vmi=r.vmi(doc)).SerializeToString(),
                                  timeout=CALL_TIMEOUT_S)
                assert (resp.success, resp.message) == (
                    False, "vmi: metadata.name: expected a string, got number"), rpc
            state = await asyncio.get_running_loop().run_in_executor(
                None, lambda: r.operator.lookupByName(r.domain).state()[0])
            assert state == libvirt.VIR_DOMAIN_RUNNING

    run_uvloop(scenario())


# --- 1,000 concurrent calls -------------------------------------------------------------------
def test_a_thousand_concurrent_calls_are_all_answered_without_leaks() -> None:
    me = psutil.Process()

    async def scenario() -> None:
        async with rig() as r:
            bad = copy.deepcopy(vmi_doc(r.name))
            bad["spec"]["domain"]["cpu"] = {"cores": "four"}
            bad_sync = cmd_pb2.VMIRequest(vmi=r.vmi(bad))

            async def one(stub: Any, i: int) -> str:
                kind = i % 4
                if kind == 0:
                    resp = await stub.Ping(cmd_pb2.EmptyRequest(), timeout=60)
                    assert resp.success is True
                elif kind == 1:
                    d = await stub.GetDomain(cmd_pb2.EmptyRequest(), timeout=60)
                    assert d.response.success is True
                    assert json.loads(d.domain)["ObjectMeta"]["name"] == r.name
                elif kind == 2:
                    g = await stub.GetGuestInfo(cmd_pb2.EmptyRequest(), timeout=60)
                    assert g.response.success is True
                    json.loads(g.guestInfoResponse)
                else:
                    s = await stub.SyncVirtualMachine(bad_sync, timeout=60)
                    assert (s.success, s.message) == (
                        False, "spec.domain.cpu.cores: expected an integer, got string")
                return ("Ping", "GetDomain", "GetGuestInfo", "Sync")[kind]

            async def burst(count: int, connections: int) -> dict[str, int]:
                channels = [grpc.aio.insecure_channel(f"unix:{r.socket}")
                            for _ in range(connections)]
                try:
                    stubs = [cmd_pb2_grpc.CmdStub(c) for c in channels]
                    done = await asyncio.wait_for(asyncio.gather(
                        *(one(stubs[i % connections], i) for i in range(count))), 120)
                finally:
                    for c in channels:
                        await c.close()
                counts: dict[str, int] = {}
                for kind in done:
                    counts[kind] = counts.get(kind, 0) + 1
                return counts

            await burst(100, 10)  # warm-up: executors and caches at their working size
            await asyncio.sleep(0.5)
            fds0, threads0 = me.num_fds(), me.num_threads()
            t0 = time.monotonic()
            counts = await burst(1000, 10)
            elapsed = time.monotonic() - t0
            assert counts == {"Ping": 250, "GetDomain": 250, "GetGuestInfo": 250,
                              "Sync": 250}, counts
            await r.ping()
            # The server side of the closed connections goes away once it sees them close.
            for _ in range(100):  # up to 5 s
                if me.num_fds() <= fds0 + FD_BOUND:
                    break
                await asyncio.sleep(0.05)
            fds1, threads1 = me.num_fds(), me.num_threads()
            print(f"1000 calls in {elapsed:.2f}s; fds {fds0} -> {fds1}, "
                  f"threads {threads0} -> {threads1}")
            assert fds1 <= fds0 + FD_BOUND, (fds0, fds1)
            assert threads1 <= threads0 + THREAD_BOUND, (threads0, threads1)

    run_uvloop(scenario())


# --- hypothesis: every rpc's request message, generated from its descriptor -------------------
class Served:
    """The rig on its own uvloop thread for the whole module, so hypothesis (synchronous)
    can call through the real server example after example."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.rig: SyncedRig | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="served-rig", daemon=True)

    def __enter__(self) -> Served:
        self._thread.start()
        assert self._ready.wait(60), "rig did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def _main(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                async with rig() as r:
                    self.rig = r
                    self._ready.set()
                    await self._stop.wait()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                raise

        with contextlib.suppress(BaseException):
            run_uvloop(main())

    def restore(self) -> None:
        """Bring the domain back to running (a generated Kill, Delete or Pause may have
        hit it), so every example meets a running domain."""
        assert self.loop is not None and self.rig is not None
        asyncio.run_coroutine_threadsafe(self.rig.restore(), self.loop).result(60)

    def call(self, rpc: str, payload: bytes) -> bytes | grpc.aio.AioRpcError:
        assert self.loop is not None and self.rig is not None
        future = asyncio.run_coroutine_threadsafe(self.rig.raw(rpc, payload), self.loop)
        try:
            return future.result(CALL_TIMEOUT_S + 10)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise AssertionError(f"{rpc}: no answer within {CALL_TIMEOUT_S + 10}s") from None


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with Served() as s:
        yield s


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64),
                      st.floats(allow_nan=False), st.text(max_size=10),
                      st.sampled_from(["", "..", "/etc/shadow", "../../x", "1Gi", "virtio"]))
JSON = st.recursive(JSON_LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=10)


@st.composite
def vmi_json(draw: st.DrawFn, name: str) -> bytes:
    """Random bytes, random JSON, or a VMI naming our domain with random or realistic
    (tests/unit/converter/test_properties.py) content and random values spliced in."""
    kind = draw(st.sampled_from(["realistic", "ours", "realistic", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    doc: dict[str, Any] = (draw(vmis()) if kind == "realistic"
                           else {"spec": draw(JSON), "status": draw(JSON)})
    doc["metadata"] = {"name": name, "namespace": NAMESPACE, "uid": UID}
    # A random value at a random top-level or spec.domain key.
    if draw(st.booleans()):
        target = doc.setdefault("spec", {})
        if isinstance(target, dict) and isinstance(target.get("domain"), dict):
            target = target["domain"]
        if isinstance(target, dict):
            target[draw(st.sampled_from(["cpu", "memory", "devices", "firmware", "features",
                                         "resources", "clock", "machine"]))] = draw(JSON)
    return json.dumps(doc, allow_nan=True).encode()


INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def scalar_values(f: FieldDescriptor, ctx: dict[str, str]) -> st.SearchStrategy[Any]:
    if f.type == FieldDescriptor.TYPE_STRING:
        special = {
            "domainName": [ctx["domain"], "", "other_vm"],
            "dumpPath": ["/var/run/kubevirt/hotplug-disks/vol/x.memory.dump", "/etc/shadow",
                         "/var/run/kubevirt/hotplug-disks/../../../etc/x", ""],
            "Command": ["true", "/bin/sh", ""],
        }.get(f.name, [])
        text = st.text(max_size=20)
        # The meaningful values first, so most requests get past the name checks.
        return st.one_of(st.sampled_from(special), st.sampled_from(special), text) \
            if special else text
    if f.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=40)
    if f.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if f.type == FieldDescriptor.TYPE_ENUM:
        assert f.enum_type is not None
        return st.sampled_from([v.number for v in f.enum_type.values])
    if f.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(allow_nan=True, width=32 if f.type == FieldDescriptor.TYPE_FLOAT
                         else 64)
    low, high = INT_RANGES[f.type]
    if f.name == "timeoutSeconds":  # short agent waits; valid ones first (see above)
        return st.sampled_from([1, 2, 0, -1, low])
    return st.one_of(st.sampled_from([0, 1, -1 if low < 0 else 2, low, high]),
                     st.integers(low, high))


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, ctx: dict[str, str],
             depth: int = 0) -> Any:
    """A message of type `descriptor` with a random subset of its fields set to random
    values of their types (vmiJson: see vmi_json)."""
    msg: Any = GetMessageClass(descriptor)()
    for f in descriptor.fields:
        # Each field is set 3 times in 4; the VMI 9 in 10, so most requests carry one.
        # (hypothesis favours the first choice of sampled_from: "set")
        if not draw(st.sampled_from([True] * (9 if f.name == "vmi" else 3) + [False])):
            continue
        if f.name == "vmiJson":
            msg.vmiJson = draw(vmi_json(ctx["name"]))
        elif f.message_type is not None and f.message_type.GetOptions().map_entry:
            key_f = f.message_type.fields_by_name["key"]
            value_f = f.message_type.fields_by_name["value"]
            target = getattr(msg, f.name)
            for _ in range(draw(st.integers(0, 2))):
                key = draw(scalar_values(key_f, ctx))
                if value_f.message_type is not None:
                    target[key].CopyFrom(draw(messages(value_f.message_type, ctx, depth + 1)))
                else:
                    target[key] = draw(scalar_values(value_f, ctx))
        elif f.message_type is not None:
            if depth >= 3:
                continue
            if _repeated(f):
                for _ in range(draw(st.integers(0, 2))):
                    getattr(msg, f.name).add().CopyFrom(
                        draw(messages(f.message_type, ctx, depth + 1)))
            else:
                getattr(msg, f.name).CopyFrom(draw(messages(f.message_type, ctx, depth + 1)))
        elif _repeated(f):
            getattr(msg, f.name).extend(draw(st.lists(scalar_values(f, ctx), max_size=3)))
        else:
            setattr(msg, f.name, draw(scalar_values(f, ctx)))
    return msg


FUZZ_EXAMPLES = 30


@st.composite
def unknown_suffixes(draw: st.DrawFn) -> bytes:
    """0-3 fields with numbers no message of the contract uses (a newer virt-handler's):
    varint or length-delimited."""
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        number = draw(st.integers(100, 50_000))
        if draw(st.booleans()):
            out += _varint(number << 3) + _varint(draw(st.integers(0, 2**64 - 1)))
        else:
            value = draw(st.binary(max_size=20))
            out += _varint(number << 3 | 2) + _varint(len(value)) + value
    return out


@pytest.mark.parametrize("rpc", RPCS)
def test_generated_requests_get_well_formed_answers(served: Served, rpc: str) -> None:
    assert served.rig is not None
    ctx = {"name": served.rig.name, "domain": served.rig.domain}
    seen: dict[str, int] = {}

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    # Besides the generated ones: the request with every field set sensibly (our VMI, our
    # domain name), so each handler's body is reached at least once.
    @example(request=full_message(rpc, json.dumps(vmi_doc(ctx["name"])).encode(),
                                  ctx["domain"]), unknown=b"")
    @given(request=messages(CMD.methods_by_name[rpc].input_type, ctx),
           unknown=unknown_suffixes())
    def examples(request: Any, unknown: bytes) -> None:
        outcome = served.call(rpc, request.SerializeToString() + unknown)
        kind = check_answer(rpc, outcome, request)
        seen[kind] = seen.get(kind, 0) + 1
        # ...and the server still answers Ping.
        assert check_answer("Ping", served.call("Ping", b""), "ping after") == "success"
        served.restore()

    examples()
    print(rpc, seen)
    assert sum(seen.values()) >= 10, seen
    if rpc == "GetVMStats":
        assert set(seen) == {"status:UNIMPLEMENTED"}, seen
    elif rpc == "Ping":
        assert set(seen) == {"success"}, seen
    elif "vmi" in CMD.methods_by_name[rpc].input_type.fields_by_name:
        # random VMIs are refused for a specific reason (checked by check_answer)
        assert "refused" in seen, seen
