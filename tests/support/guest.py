"""The tiny test guest (hack/build-guest.sh) as a libvirt domain, and a notify receiver
(`virt-launcher-events`, standing in for virt-handler's notify server)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import grpc

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2, cmd_pb2_grpc
from tests.support import guestvm
from tests.support.guestvm import AGENT_CHANNEL, guest_env
from tests.support.harness import VENV_BIN, Instance, ensure_test_user, wait_for

BOOT_TO_AGENT_TIMEOUT_S = 90.0  # ~8 s alone under TCG; several guests share 2 cores


def domain_xml(inst: Instance, *, ignore_acpi: bool = False, memory_mib: int = 256,
               nic: bool = False) -> str:
    env = guest_env()
    disk = inst.root / "data.ext4"
    if not disk.exists():
        shutil.copy(env["GUEST_DATA_DISK"], disk)  # QEMU locks it: one copy per VM
        if inst.nonroot:
            user = ensure_test_user()
            os.chown(disk, user.pw_uid, user.pw_gid)
    return guestvm.domain_xml(domain=f"{inst.namespace}_{inst.name}",
                              uid=f"uid-{inst.root.name}", disk=disk,
                              agent_socket=inst.root / "qga.sock",
                              console_log=inst.root / "console.log",
                              ignore_acpi=ignore_acpi, memory_mib=memory_mib, nic=nic)


def define_and_start(inst: Instance, **kwargs: Any) -> None:
    import libvirt  # noqa: PLC0415

    conn = libvirt.open(inst.paths.uri)
    try:
        dom = conn.defineXML(domain_xml(inst, **kwargs))
        dom.create()
    finally:
        conn.close()


def with_domain(inst: Instance, action: str) -> None:
    """suspend / resume / destroy / ... on our domain, through libvirt directly."""
    import libvirt  # noqa: PLC0415

    conn = libvirt.open(inst.paths.uri)
    try:
        getattr(conn.lookupByName(f"{inst.namespace}_{inst.name}"), action)()
    finally:
        conn.close()


@dataclass
class Receiver:
    """virt-launcher-events on the instance's notify socket, events read from its stdout.
    `virt_handler`: it also drives the end of the VM's life over the command socket as
    virt-handler does (Shutdown when marked, Kill after the grace period, Delete when off;
    launcher.notify.handler_standin)."""

    inst: Instance
    virt_handler: bool = False
    proc: subprocess.Popen[bytes] | None = None
    out: Path = field(init=False)

    def __post_init__(self) -> None:
        self.out = self.inst.root.parent / "events.jsonl"

    def start(self) -> None:
        sock = self.inst.paths.notify_socket
        kwargs: dict[str, Any] = {}
        # Create the share dir as virt-handler would, owned by whoever runs the launcher.
        made = []
        d = os.path.dirname(sock)
        while not os.path.exists(d):
            made.append(d)
            d = os.path.dirname(d)
        for d in reversed(made):
            os.mkdir(d, 0o755)
        if self.inst.nonroot:
            user = ensure_test_user()
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
            for d in made:
                os.chown(d, user.pw_uid, user.pw_gid)
        with open(self.out, "ab") as out:
            standin = (["--act-as-virt-handler", self.inst.paths.cmd_socket]
                       if self.virt_handler else [])
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "virt-launcher-events"), "--socket", sock, *standin],
                stdout=out, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, **kwargs)
        wait_for(lambda: os.path.exists(sock), 10, what="notify receiver socket")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def events(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        out = []
        for line in self.out.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def domains(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("kind") == "domain"]

    def handler_calls(self) -> list[dict[str, Any]]:
        """What the virt-handler stand-in called, with the launcher's answers."""
        return [e for e in self.events() if e.get("kind") == "handler"]

    def last_domain(self) -> dict[str, Any] | None:
        doms = self.domains()
        return doms[-1] if doms else None

    def wait_domain(self, pred: Any, timeout: float, what: str) -> dict[str, Any]:
        def match() -> dict[str, Any] | None:
            for e in reversed(self.domains()):
                if pred(e):
                    found: dict[str, Any] = e
                    return found
            return None
        found: dict[str, Any] = wait_for(match, timeout, interval=0.05, what=what)
        return found


    def wait_last(self, pred: Any, timeout: float, what: str) -> dict[str, Any]:
        """Wait until the newest snapshot received satisfies `pred`."""
        def match() -> dict[str, Any] | None:
            last = self.last_domain()
            return last if last is not None and pred(last) else None
        found: dict[str, Any] = wait_for(match, timeout, interval=0.05, what=what)
        return found


def ended(receiver: Receiver, timeout: float = 15) -> dict[str, Any]:
    """The end of a domain's life as virt-handler must see it: the last snapshot says the
    domain is gone (NonExistent with deletionTimestamp) and none before it said so; the
    Shutoff snapshot before it (returned) carries the reason, without deletionTimestamp."""
    receiver.wait_last(lambda e: status(e) == ("NoState", "NonExistent"), timeout,
                       "the final snapshot: the domain deleted")
    events = receiver.domains()
    assert events[-1]["domain"]["ObjectMeta"].get("deletionTimestamp"), events[-1]
    gone = [i for i, e in enumerate(events) if e["domain"]["ObjectMeta"].get("deletionTimestamp")]
    assert all(status(events[i])[0] == "NoState" for i in gone), \
        [status(events[i]) for i in gone]
    stopped = [e for e in events[:gone[0]] if status(e)[0] == "Shutoff"]
    assert stopped, [status(e) for e in events]
    return stopped[-1]


def status(event: dict[str, Any]) -> tuple[str, str]:
    st = event["domain"]["Status"]
    return st["Status"], st["Reason"]


def agent_state(event: dict[str, Any]) -> str | None:
    for ch in event["domain"].get("Spec", {}).get("Devices", {}).get("Channels", []):
        if ch.get("Target", {}).get("Name") == AGENT_CHANNEL:
            state: str | None = ch["Target"].get("State")
            return state
    return None


class Cmd:
    """The command API over a launcher's socket, as virt-handler uses it, one channel
    (close it at the end). `doc`: the VMI sent with VMI rpcs (by default only its
    identity, as virt-freezer and most of virt-handler's calls send it)."""

    def __init__(self, socket: str, name: str, namespace: str, uid: str,
                 doc: dict[str, Any] | None = None) -> None:
        self.name, self.namespace, self.uid = name, namespace, uid
        self.doc = doc or {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                           "metadata": {"name": name, "namespace": namespace, "uid": uid}}
        self.channel = grpc.insecure_channel(f"unix:{socket}")
        self.stub = cmd_pb2_grpc.CmdStub(self.channel)

    @classmethod
    def of(cls, inst: Instance) -> Self:
        """For a harness instance (its flags' name, namespace and uid)."""
        return cls(inst.paths.cmd_socket, inst.name, inst.namespace, f"uid-{inst.root.name}")

    @property
    def vmi(self) -> cmd_pb2.VMI:
        return cmd_pb2.VMI(vmiJson=json.dumps(self.doc).encode())

    def vmi_call(self, rpc: str, doc: dict[str, Any] | None = None,
                 timeout: float = 30) -> cmd_pb2.Response:
        vmi = self.vmi if doc is None else cmd_pb2.VMI(vmiJson=json.dumps(doc).encode())
        resp: cmd_pb2.Response = getattr(self.stub, rpc)(cmd_pb2.VMIRequest(vmi=vmi),
                                                         timeout=timeout)
        return resp

    def guest_info(self) -> dict[str, Any]:
        resp = self.stub.GetGuestInfo(cmd_pb2.EmptyRequest(), timeout=5)
        assert resp.response.success, resp.response.message
        doc: dict[str, Any] = json.loads(resp.guestInfoResponse)
        return doc

    def domain(self) -> dict[str, Any]:
        resp = self.stub.GetDomain(cmd_pb2.EmptyRequest(), timeout=5)
        assert resp.response.success, resp.response.message
        doc: dict[str, Any] = json.loads(resp.domain)
        return doc

    def freeze(self, unfreeze_timeout_s: int, timeout: float = 60) -> cmd_pb2.Response:
        resp: cmd_pb2.Response = self.stub.FreezeVirtualMachine(
            cmd_pb2.FreezeRequest(vmi=self.vmi, unfreezeTimeoutSeconds=unfreeze_timeout_s),
            timeout=timeout)
        return resp

    def exec(self, command: str, *args: str, timeout_s: int = 10) -> cmd_pb2.ExecResponse:
        resp: cmd_pb2.ExecResponse = self.stub.Exec(cmd_pb2.ExecRequest(
            domainName=f"{self.namespace}_{self.name}", Command=command,
            Args=list(args), timeoutSeconds=timeout_s), timeout=timeout_s + 10)
        return resp

    def timed(self, fn: Callable[[], Any], n: int = 30) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1000)
        return out


def get_domain(sock: str) -> dict[str, Any]:
    """Cmd.GetDomain over the launcher's socket, as virt-handler calls it."""
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        resp = cmd_pb2_grpc.CmdStub(channel).GetDomain(cmd_pb2.EmptyRequest(), timeout=5)
    assert resp.response.success, resp.response.message
    doc: dict[str, Any] = json.loads(resp.domain)
    return doc


def qemu_pid(inst: Instance) -> int:
    with open(inst.paths.qemu_pidfile) as f:
        return int(f.read().strip())


def boot(inst: Instance, receiver: Receiver, **kwargs: Any) -> dict[str, Any]:
    inst.start()
    inst.wait_running()
    define_and_start(inst, **kwargs)
    return receiver.wait_domain(
        lambda e: status(e) == ("Running", "Unknown") and agent_state(e) == "connected",
        BOOT_TO_AGENT_TIMEOUT_S, "Running snapshot with the agent connected")
