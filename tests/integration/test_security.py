"""Security properties that need no real libvirt daemon (the ones that do are
tests/e2e/test_security.py; the command socket's own mode and the command server's lack of
a TCP listener are tests/integration/test_cmd_server.py).

- The notify client dials the configured socket and nothing else: not another socket in
  the same directory, not a TCP proxy named by the usual environment variables (gRPC
  honours grpc_proxy / https_proxy / http_proxy for TCP targets), not even while it
  retries with the receiver gone.
- The daemons are never told to listen on TCP: their argv (libvirtd and virtqemud, system
  and session mode) carries no --listen, and the config files written at start-up switch
  libvirtd's TCP/TLS listeners off, keep the UNIX sockets owner-only and are mode 0600.
- What the command side writes into the runtime root for a VMI (the prepared disks, the
  cloud-init ISO, the sockets) is not world-writable, and disk images, ISOs and sockets
  are not world-accessible at all; the launcher sets these modes itself, so they hold
  whatever the umask (this test process runs with 022, the launcher with 077).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from launcher import flags, setup
from launcher._proto.kubevirt.cmd.v1 import cmd_pb2, cmd_pb2_grpc
from launcher.libvirt.daemons import specs
from launcher.notify.notifier import Notifier
from launcher.paths import derive
from tests.integration.notify_support import ReceiverProc, run_uvloop, running, until
from tests.support.rigs import CALL_TIMEOUT_S
from tests.support.rigs import small_vmi as vmi_doc
from tests.support.rigs import synced_rig as rig

pytestmark = pytest.mark.timeout(120)

PROXY_VARS = ("grpc_proxy", "https_proxy", "http_proxy", "all_proxy", "GRPC_PROXY",
              "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")


class Decoys:
    """Listening sockets that must never be dialled: UNIX sockets at other paths and one
    TCP socket on the loopback, counting the connections they accept."""

    def __init__(self, unix_paths: list[str]) -> None:
        self.accepted: dict[str, int] = {}
        self._listeners: list[socket.socket] = []
        for path in unix_paths:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(path)
            self._add(s, path)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        self.tcp_port = tcp.getsockname()[1]
        self._add(tcp, f"tcp:{self.tcp_port}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _add(self, s: socket.socket, name: str) -> None:
        s.listen(16)
        s.settimeout(0.05)
        self._listeners.append(s)
        self.accepted[name] = 0

    def _accept(self) -> None:
        names = list(self.accepted)
        while not self._stop.is_set():
            for s, name in zip(self._listeners, names, strict=True):
                with contextlib.suppress(TimeoutError, OSError):
                    conn, _ = s.accept()
                    self.accepted[name] += 1
                    conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self._listeners:
            s.close()


@pytest.fixture
def decoys(workdir: Path) -> Iterator[Decoys]:
    d = Decoys([str(workdir / "domain-notify.sock"), str(workdir / "launcher-sock"),
                str(workdir / "notify.sock.bak")])
    try:
        yield d
    finally:
        d.close()


def test_decoys_do_count_connections(decoys: Decoys, workdir: Path) -> None:
    """The check below is not vacuous: a connection to a decoy is seen."""
    with socket.create_connection(("127.0.0.1", decoys.tcp_port)):
        pass
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(workdir / "domain-notify.sock"))
    for _ in range(100):  # up to 5 s
        if sum(decoys.accepted.values()) >= 2:
            break
        time.sleep(0.05)
    assert decoys.accepted[f"tcp:{decoys.tcp_port}"] == 1, decoys.accepted
    assert decoys.accepted[str(workdir / "domain-notify.sock")] == 1, decoys.accepted


def test_notifier_dials_only_the_configured_socket(
        workdir: Path, decoys: Decoys, receivers: Callable[..., ReceiverProc],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for var in PROXY_VARS:
        monkeypatch.setenv(var, f"http://127.0.0.1:{decoys.tcp_port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    rec = receivers()
    rec.wait_ready()

    async def build() -> tuple[str, bytes]:
        return "MODIFIED", json.dumps({"key": "ns_vm", "seq": 1}).encode()

    async def scenario() -> Notifier:
        n = Notifier(rec.socket_path, backoff_max_s=0.2)
        async with running(n) as task:
            n.submit_domain("ns_vm", build)  # type: ignore[arg-type]
            n.submit_k8s_event({"reason": "Started"})
            await until(lambda: len(rec.events()) >= 2, 15, "both events", task)
            # The receiver goes away: the notifier retries (new channel, new handshake),
            # still only at the configured path (a loaded machine may take a while).
            rec.stop()
            n.submit_k8s_event({"reason": "WhileDown"})
            await until(lambda: n.stats.retries > 1, 15, "retries", task)
        return n

    n = asyncio.run(scenario())
    assert n.stats.handshakes >= 1 and n.stats.domain_sent == 1 and n.stats.k8s_sent == 1
    assert [e["kind"] for e in rec.events()] == ["domain", "k8s"]
    assert decoys.accepted == dict.fromkeys(decoys.accepted, 0), decoys.accepted


# --- the daemons: never a TCP listener ------------------------------------------------------
@pytest.mark.parametrize("daemon", ["/usr/sbin/libvirtd", "/usr/sbin/virtqemud"])
@pytest.mark.parametrize("nonroot", [False, True], ids=["system", "session"])
def test_daemons_are_not_told_to_listen_on_tcp(workdir: Path, daemon: str,
                                               nonroot: bool) -> None:
    argv = ["--runtime-root", str(workdir), "--libvirt-daemon", daemon]
    opts = flags.parse([*argv, "--run-as-nonroot"] if nonroot else argv, environ={})
    paths = derive(opts)
    old = os.umask(0o077)  # as the launcher runs
    try:
        setup.prepare(opts, paths)
    finally:
        os.umask(old)
    for spec in specs(opts, paths):
        inner = spec.argv[spec.argv.index(spec.binary):]  # past the namespace wrapper
        assert not any(a in ("-l", "--listen") or a.startswith("--listen=") for a in inner), \
            spec.argv
        assert "--listen" not in " ".join(spec.argv)
    conf = Path(paths.daemon_conf).read_text()
    settings = dict(line.split(" = ", 1) for line in conf.splitlines()
                    if " = " in line and not line.startswith("#"))
    if paths.daemon == "libvirtd":
        assert (settings["listen_tcp"], settings["listen_tls"]) == ("0", "0"), conf
    else:
        # virtqemud has no network listener (that is virtproxyd's job) and no such keys
        assert not any(k.startswith("listen_") for k in settings), conf
    for key in ("unix_sock_rw_perms", "unix_sock_ro_perms", "unix_sock_admin_perms"):
        assert settings[key] == '"0700"', (key, conf)
    for path in (paths.daemon_conf, paths.virtlogd_conf, paths.qemu_conf):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


# --- the files a VMI makes the launcher write ------------------------------------------------
def loose_modes(root: Path, *, not_ours: tuple[Path, ...] = ()) -> list[str]:
    """What in `root` is world-writable, or (disk images, ISOs, sockets) accessible to
    others at all. `not_ours`: files placed there by someone else (a container image)."""
    problems = []
    for path in [root, *root.rglob("*")]:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) or path in not_ours:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o002:
            problems.append(f"{path} is world-writable ({mode:o})")
        image = stat.S_ISREG(st.st_mode) and path.suffix in (".img", ".iso", ".qcow2")
        if (image or stat.S_ISSOCK(st.st_mode)) and mode & 0o007:
            problems.append(f"{path} is accessible to others ({mode:o})")
    return problems


def test_files_written_for_a_vmi_have_tight_modes() -> None:
    async def scenario() -> None:
        async with rig() as r:
            stub = cmd_pb2_grpc.CmdStub(r.channel)
            resp = await stub.KillVirtualMachine(cmd_pb2.VMIRequest(vmi=r.vmi()),
                                                 timeout=CALL_TIMEOUT_S)
            assert resp.success, resp.message
            root = Path(r.root)
            image = root / "var/run/kubevirt/container-disks/disk_0.img"
            image.write_bytes(b"\0" * 65536)
            image.chmod(0o644)  # the image is not ours: its mode is whatever the image had
            doc = vmi_doc(r.name)
            devices = doc["spec"]["domain"]["devices"]
            for name in ("cd", "scratch", "host"):
                devices["disks"].append({"name": name, "disk": {}})
            doc["spec"]["volumes"] = [
                {"name": "cd", "containerDisk": {"image": "img:1"}},
                *doc["spec"]["volumes"],
                {"name": "scratch", "emptyDisk": {"capacity": "1Mi"}},
                {"name": "host", "hostDisk": {"path": "/data/host.img", "type": "DiskOrCreate",
                                              "capacity": "1Mi"}},
            ]
            resp = await stub.SyncVirtualMachine(cmd_pb2.VMIRequest(vmi=r.vmi(doc)),
                                                 timeout=CALL_TIMEOUT_S)
            assert resp.success, resp.message
            made = {
                "overlay": root / "var/run/kubevirt-ephemeral-disks/disk-data/cd/disk.qcow2",
                "empty disk": root / "var/run/kubevirt-ephemeral-disks/empty-disks/"
                                     "scratch.qcow2",
                "iso": root / f"var/run/kubevirt-ephemeral-disks/cloud-init-data/pvl/"
                              f"{r.name}/noCloud.iso",
                "hostDisk": root / "var/run/kubevirt-private/vmi-disks/host/host.img",
            }
            for what, path in made.items():
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o640, (what, path)
            sock = os.stat(r.socket)
            assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o600
            assert loose_modes(root, not_ours=(image,)) == []

    run_uvloop(scenario())
