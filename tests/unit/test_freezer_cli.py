"""virt-freezer: its command line (KubeVirt's flags and ours), its exit codes, and each flow
run as a real subprocess against a real gRPC CmdServer on a UNIX socket.

The server serves a canned handler set (GetGuestInfo with/without an agent, GetDomain
Running/Shutoff/absent, Freeze/Unfreeze succeeding or failing). That is a test double for
the launcher side only: the CLI, its gRPC client, the socket and the server are the real
ones; what the launcher's handlers do against libvirt is covered by
tests/integration/test_commands.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from launcher.cmd.server import CmdServer, Handler
from launcher.guest import freezer

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
GUEST_WITH_AGENT = {"guestAgentVersion": "8.1.0", "os": {"name": "Debian GNU/Linux"},
                    "timezone": "UTC, 0", "fsInfo": {"disks": None},
                    "fsFreezeStatus": "frozen"}
GUEST_WITHOUT_AGENT = {"os": {}, "timezone": ", 0", "fsInfo": {"disks": None}}


# --- command line -----------------------------------------------------------------------------


def test_kubevirt_flags_and_defaults() -> None:
    args = freezer.parse_args(["--freeze", "--name", "vm", "--namespace", "ns"])
    assert (args.freeze, args.unfreeze, args.status) == (True, False, False)
    assert (args.name, args.namespace) == ("vm", "ns")
    assert args.unfreezeTimeoutSeconds == 300
    assert (args.socket, args.runtime_root, args.timeout) == (None, None, None)
    args = freezer.parse_args(["--unfreeze", "--name=vm", "--namespace=ns",
                               "--unfreezeTimeoutSeconds", "60", "--socket", "/s",
                               "--timeout", "2.5", "--runtime-root", "/r"])
    assert args.unfreeze and args.unfreezeTimeoutSeconds == 60
    assert (args.socket, args.runtime_root, args.timeout) == ("/s", "/r", 2.5)
    assert freezer.parse_args(["--status", "--name", "vm", "--namespace", "ns"]).status


def test_pflag_style_booleans() -> None:
    args = freezer.parse_args(["--freeze=true", "--name", "vm", "--namespace", "ns"])
    assert args.freeze
    args = freezer.parse_args(["--freeze=false", "--unfreeze", "--name", "vm",
                               "--namespace", "ns"])
    assert (args.freeze, args.unfreeze) == (False, True)


@pytest.mark.parametrize("argv", [
    ["--freeze", "--name", "vm", "--namespace", "ns", "--bogus"],     # unknown flag
    ["--freeze", "--name", "vm", "--namespace", "ns", "--unfreezeTimeoutSeconds", "-1"],
    ["--freeze", "--name", "vm", "--namespace", "ns", "--unfreezeTimeoutSeconds", "x"],
    ["--freeze", "--name", "vm", "--namespace", "ns", "--timeout", "0"],
    ["--freeze=maybe", "--name", "vm", "--namespace", "ns"],
])
def test_flags_that_do_not_parse_exit_2_as_pflag(argv: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert freezer.cli(argv, out, err, environ={}) == freezer.EXIT_USAGE
    assert "virt-freezer: error: " in err.getvalue()
    assert out.getvalue() == ""


@pytest.mark.parametrize(("argv", "reason"), [
    (["--name", "vm", "--namespace", "ns"], "either --freeze or --unfreeze must be set"),
    (["--freeze", "--unfreeze", "--name", "vm", "--namespace", "ns"], "only one of"),
    (["--freeze", "--status", "--name", "vm", "--namespace", "ns"], "only one of"),
    (["--freeze", "--namespace", "ns"], "both --name and --namespace must be provided"),
    (["--freeze", "--name", "vm"], "both --name and --namespace must be provided"),
    (["--freeze", "--name=", "--namespace", "ns"],
     "both --name and --namespace must be provided"),
    (["--freeze", "--name", "vm", "--namespace", "ns", "--runtime-root", "relative"],
     "must be an absolute path"),
])
def test_flags_that_make_no_sense_exit_1_with_a_json_log_line(argv: list[str],
                                                             reason: str) -> None:
    # KubeVirt's parseFlags errors: "Failed to parse flags", os.Exit(1).
    out, err = io.StringIO(), io.StringIO()
    assert freezer.cli(argv, out, err, environ={}) == freezer.EXIT_ERROR
    lines = [json.loads(line) for line in err.getvalue().splitlines()]
    assert len(lines) == 1, lines
    assert lines[0]["level"] == "error" and lines[0]["msg"] == "Failed to parse flags"
    assert lines[0]["component"] == "virt-freezer" and reason in lines[0]["reason"]
    assert lines[0]["timestamp"].endswith("Z")
    assert out.getvalue() == ""


def log_msgs(text: str) -> list[str]:
    """The msg of every stderr line, each of which must be a JSON log line."""
    return [json.loads(line)["msg"] for line in text.splitlines()]


def log_reasons(text: str) -> list[str]:
    return [json.loads(line).get("reason", "") for line in text.splitlines()]


def test_help_documents_exit_codes_and_socket() -> None:
    text = freezer.build_parser().format_help()
    assert "exit codes:" in text
    for code in ("0  success", "1  error", "2  a flag that does not parse"):
        assert code in text
    assert "/var/run/kubevirt/sockets/launcher-sock" in text
    assert "--unfreezeTimeoutSeconds" in text
    assert "(default 300)" in text


def test_default_socket_follows_the_runtime_root() -> None:
    assert freezer.default_socket(None, {}) == "/var/run/kubevirt/sockets/launcher-sock"
    env = {"VIRT_LAUNCHER_RUNTIME_ROOT": "/tmp/rt"}
    assert freezer.default_socket(None, env) == "/tmp/rt/var/run/kubevirt/sockets/launcher-sock"
    assert freezer.default_socket("/other", env) == \
        "/other/var/run/kubevirt/sockets/launcher-sock"


def test_missing_socket_exits_1() -> None:
    out, err = io.StringIO(), io.StringIO()
    code = freezer.cli(["--freeze", "--name", "vm", "--namespace", "ns",
                        "--socket", "/nonexistent/launcher-sock"], out, err, environ={})
    assert code == freezer.EXIT_ERROR
    assert any("launcher socket /nonexistent/launcher-sock does not exist" in r
               for r in log_reasons(err.getvalue()))


def test_a_socket_nobody_serves_exits_1(root: str) -> None:
    path = os.path.join(root, "dead-sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # bound, never listening: connections are refused
    try:
        out, err = io.StringIO(), io.StringIO()
        code = freezer.cli(["--unfreeze", "--name", "vm", "--namespace", "ns",
                            "--socket", path, "--timeout", "0.5"], out, err, environ={})
    finally:
        dead.close()
    assert code == freezer.EXIT_ERROR
    assert any(f"cannot connect to the launcher at {path} within 0.5s" in r
               for r in log_reasons(err.getvalue()))


# --- flows against a real server -----------------------------------------------------------------


@dataclass
class Launcher:
    """The canned launcher side and what it was asked."""

    guest: dict[str, Any] | None = None  # None: GetGuestInfo answers success=false
    domain_status: str | None = "Running"  # None: no domain
    freeze_message: str = ""  # non-empty: Freeze answers success=false with it
    unfreeze_message: str = ""
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def handlers(self) -> dict[str, Handler]:
        async def ping(request: Any, context: Any) -> Any:
            return cmd_pb2.Response(success=True)

        async def guest_info(request: Any, context: Any) -> Any:
            self.calls.append(("GetGuestInfo", request))
            if self.guest is None:
                return cmd_pb2.GuestInfoResponse(response=cmd_pb2.Response(
                    success=False, message="agent cache unavailable"))
            return cmd_pb2.GuestInfoResponse(response=cmd_pb2.Response(success=True),
                                             guestInfoResponse=json.dumps(self.guest))

        async def get_domain(request: Any, context: Any) -> Any:
            self.calls.append(("GetDomain", request))
            if self.domain_status is None:
                return cmd_pb2.DomainResponse(response=cmd_pb2.Response(success=True))
            doc = {"kind": "Domain", "Status": {"Status": self.domain_status,
                                                 "Reason": "Unknown"}}
            return cmd_pb2.DomainResponse(response=cmd_pb2.Response(success=True),
                                          domain=json.dumps(doc))

        async def freeze(request: Any, context: Any) -> Any:
            self.calls.append(("Freeze", request))
            return cmd_pb2.Response(success=not self.freeze_message,
                                    message=self.freeze_message)

        async def unfreeze(request: Any, context: Any) -> Any:
            self.calls.append(("Unfreeze", request))
            return cmd_pb2.Response(success=not self.unfreeze_message,
                                    message=self.unfreeze_message)

        return {"Ping": ping, "GetGuestInfo": guest_info, "GetDomain": get_domain,
                "FreezeVirtualMachine": freeze, "UnfreezeVirtualMachine": unfreeze}

    def rpcs(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def root() -> Iterator[str]:
    # Short paths: sun_path holds 108 bytes.
    path = tempfile.mkdtemp(dir="/tmp", prefix="pvl-f-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def serving(root: str, launcher: Launcher) -> AsyncIterator[str]:
    sockets = os.path.join(root, "var/run/kubevirt/sockets")
    os.makedirs(sockets, exist_ok=True)
    server = CmdServer(init_socket=os.path.join(sockets, "launcher-init-sock"),
                       ready_socket=os.path.join(sockets, "launcher-sock"), nonroot=False,
                       handlers=launcher.handlers())
    try:
        await asyncio.wait_for(server.start(), 20)
        yield server.ready_socket
    finally:
        await server.stop(0)


@dataclass
class Result:
    code: int
    out: str
    err: str


async def virt_freezer(*argv: str, env: dict[str, str] | None = None) -> Result:
    """The CLI as a hook runs it: a separate process, its own gRPC client."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "launcher.guest.freezer", *argv, cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def flow(root: str, launcher: Launcher, *argv: str,
         env: dict[str, str] | None = None, socket_flag: bool = True) -> Result:
    async def scenario() -> Result:
        async with serving(root, launcher) as sock:
            extra = ["--socket", sock] if socket_flag else []
            return await virt_freezer(*argv, "--name", "vm1", "--namespace", "ns1", *extra,
                                      env=env)

    result: Result = asyncio.run(scenario())
    return result


def test_no_guest_agent_exits_0(root: str) -> None:
    launcher = Launcher(guest=GUEST_WITHOUT_AGENT)
    res = flow(root, launcher, "--freeze")
    assert res.code == 0, res
    assert "No guest agent" in log_msgs(res.err) and res.out == ""
    assert launcher.rpcs() == ["GetGuestInfo"]


@pytest.mark.parametrize(("status", "line"), [
    (None, "VM domain does not exist, no need to freeze/unfreeze"),
    ("Shutoff", "VM domain not running (Shutoff), no need to freeze/unfreeze"),
    ("Paused", "VM domain not running (Paused), no need to freeze/unfreeze"),
])
def test_domain_absent_or_not_running_exits_0(root: str, status: str | None,
                                              line: str) -> None:
    launcher = Launcher(guest=GUEST_WITH_AGENT, domain_status=status)
    res = flow(root, launcher, "--freeze")
    assert res.code == 0, res
    assert "Guest agent version is 8.1.0" in log_msgs(res.err)
    assert line in log_msgs(res.err)
    assert launcher.rpcs() == ["GetGuestInfo", "GetDomain"]


def test_freeze_succeeds(root: str) -> None:
    launcher = Launcher(guest=GUEST_WITH_AGENT)
    res = flow(root, launcher, "--freeze", "--unfreezeTimeoutSeconds", "42")
    assert res.code == 0, res
    assert "Operation completed successfully" in log_msgs(res.err)
    assert launcher.rpcs() == ["GetGuestInfo", "GetDomain", "Freeze"]
    request = launcher.calls[-1][1]
    assert request.unfreezeTimeoutSeconds == 42
    assert json.loads(request.vmi.vmiJson) == {"metadata": {"name": "vm1",
                                                            "namespace": "ns1"}}


def test_freeze_default_timeout_is_300(root: str) -> None:
    launcher = Launcher(guest=GUEST_WITH_AGENT)
    assert flow(root, launcher, "--freeze").code == 0
    assert launcher.calls[-1][1].unfreezeTimeoutSeconds == 300


def test_freeze_failure_exits_1_with_the_reason(root: str) -> None:
    message = "cannot freeze a paused domain: its guest agent cannot answer; unpause first"
    launcher = Launcher(guest=GUEST_WITH_AGENT, freeze_message=message)
    res = flow(root, launcher, "--freeze")
    assert res.code == 1, res
    assert log_msgs(res.err)[-1] == "Freezing VMI failed"
    assert log_reasons(res.err)[-1] == f"Freezing VMI failed: {message}"
    assert "Traceback" not in res.err
    assert launcher.rpcs() == ["GetGuestInfo", "GetDomain", "Freeze"]


def test_freeze_without_an_available_agent_thaws_again(root: str) -> None:
    message = ("libvirt error 86 (VIR_ERR_AGENT_UNRESPONSIVE): Guest agent is not "
               "responding: Guest agent not available for now")
    launcher = Launcher(guest=GUEST_WITH_AGENT, freeze_message=message)
    res = flow(root, launcher, "--freeze")
    assert res.code == 1, res
    assert log_msgs(res.err)[-1] == ("Freezing VMI failed, please make sure the guest agent "
                                     "is running and try again")
    assert launcher.rpcs() == ["GetGuestInfo", "GetDomain", "Freeze", "Unfreeze"]


def test_unfreeze_succeeds_and_fails(root: str) -> None:
    launcher = Launcher(guest=GUEST_WITH_AGENT)
    res = flow(root, launcher, "--unfreeze")
    assert res.code == 0, res
    assert "Operation completed successfully" in log_msgs(res.err)
    assert launcher.rpcs() == ["GetGuestInfo", "GetDomain", "Unfreeze"]
    launcher = Launcher(guest=GUEST_WITH_AGENT, unfreeze_message="libvirt error 1: boom")
    res = flow(root, launcher, "--unfreeze")
    assert res.code == 1, res
    assert log_reasons(res.err)[-1] == "Unfreezing VMI failed: libvirt error 1: boom"


def test_status_prints_json(root: str) -> None:
    launcher = Launcher(guest=GUEST_WITH_AGENT)
    res = flow(root, launcher, "--status")
    assert res.code == 0, res
    assert json.loads(res.out) == {"fsFreezeStatus": "frozen"}
    launcher = Launcher(guest=GUEST_WITHOUT_AGENT)
    res = flow(root, launcher, "--status")
    assert res.code == 0, res
    assert json.loads(res.out) == {"fsFreezeStatus": ""}
    assert "No guest agent" in log_msgs(res.err)


def test_rpc_failure_exits_1(root: str) -> None:
    launcher = Launcher(guest=None)
    res = flow(root, launcher, "--freeze")
    assert res.code == 1, res
    assert log_reasons(res.err) == ["GetGuestInfo failed: agent cache unavailable"]
    assert "Traceback" not in res.err


def test_default_socket_under_the_runtime_root(root: str) -> None:
    launcher = Launcher(guest=GUEST_WITH_AGENT)
    res = flow(root, launcher, "--unfreeze", env={"VIRT_LAUNCHER_RUNTIME_ROOT": root},
               socket_flag=False)
    assert res.code == 0, res
    assert launcher.rpcs() == ["GetGuestInfo", "GetDomain", "Unfreeze"]
