"""Two VM pods on one machine for live migration, and a stand-in for virt-handler's
migration proxy.

Pods: in a cluster each VM pod has its own mount namespace with the same paths
(/var/run/kubevirt, ...), different content. Here the source pod runs with runtime root R;
the target pod runs in a mount namespace of its own where another directory (R2) is
bind-mounted over R, so both launchers - and the libvirt daemons and QEMUs they start -
use the same paths, as two pods do, and every path libvirt sends across (the domain XML's
disks, the proxy sockets) resolves on each side to that side's files. From the host the
target's files are under R2.

Proxy: virt-handler listens in the source pod on <share>/migrationproxy/<uid>-source.sock
(the target's libvirt), <uid>-49152-source.sock (memory) and <uid>-49153-source.sock
(disks), and pipes each, over TCP between the nodes, to the target pod's libvirt socket and
to the sockets the incoming QEMU listens on (the same names in the target pod's share dir).
MigrationProxy does that from UNIX socket to UNIX socket, one thread per direction;
`stop()` cuts every connection (virt-handler or the network going away mid-migration).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.harness import Instance

MIGRATION_PORTS = (49152, 49153)


def migrating(doc: dict[str, Any], uid: str, target_pod: str) -> dict[str, Any]:
    """The VMI as virt-handler sends it once a (block) migration is scheduled."""
    out: dict[str, Any] = json.loads(json.dumps(doc))
    out["status"] = {"phase": "Running", "migrationMethod": "BlockMigration",
                     "migrationTransport": "Unix",
                     "migrationState": {"migrationUid": uid, "targetPod": target_pod,
                                        "sourcePod": "virt-launcher-source",
                                        "targetNode": "node-b", "sourceNode": "node-a"}}
    return out


def migration_meta(event: dict[str, Any]) -> dict[str, Any]:
    """Spec.Metadata.KubeVirt.Migration of a notify snapshot ({} when absent)."""
    meta: dict[str, Any] = (event["domain"]["Spec"].get("Metadata", {}).get("KubeVirt", {})
                            .get("Migration") or {})
    return meta


@dataclass
class MigrationProxy:
    source_share: Path  # the source pod's share dir (host path)
    target_share: Path  # the target pod's share dir (host path)
    target_libvirt_socket: Path  # host path
    uid: str  # the VMI's uid (KubeVirt's proxy key)
    _servers: list[socket.socket] = field(default_factory=list)
    _conns: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _held: set[int] = field(default_factory=set)  # ports whose data stops flowing
    _flowing: threading.Condition = field(default_factory=threading.Condition)
    connections: int = 0

    def start(self) -> None:
        proxy_dir = self.source_share / "migrationproxy"
        proxy_dir.mkdir(parents=True, exist_ok=True)
        pairs = [(proxy_dir / f"{self.uid}-source.sock", self.target_libvirt_socket)]
        for port in MIGRATION_PORTS:
            name = f"{self.uid}-{port}-source.sock"
            pairs.append((proxy_dir / name, self.target_share / "migrationproxy" / name))
        for (listen, target), port in zip(pairs, (0, *MIGRATION_PORTS), strict=True):
            with contextlib.suppress(FileNotFoundError):
                listen.unlink()
            srv = socket.socket(socket.AF_UNIX)
            srv.bind(str(listen))
            srv.listen(16)
            self._servers.append(srv)
            threading.Thread(target=self._accept, args=(srv, str(target), port),
                             daemon=True).start()

    def hold(self, *ports: int) -> None:
        """Stop moving data on these streams (49152 memory, 49153 disks), connections
        kept open: a migration that makes no progress."""
        with self._flowing:
            self._held.update(ports or MIGRATION_PORTS)

    def release(self) -> None:
        with self._flowing:
            self._held.clear()
            self._flowing.notify_all()

    def _accept(self, srv: socket.socket, target: str, port: int) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return  # stopped
            upstream = socket.socket(socket.AF_UNIX)
            try:
                upstream.connect(target)
            except OSError:
                client.close()
                upstream.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
                self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b, port), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, port: int) -> None:
        try:
            while data := a.recv(1 << 16):
                with self._flowing:
                    self._flowing.wait_for(lambda: port not in self._held)
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        for srv in self._servers:
            with contextlib.suppress(OSError):
                srv.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    conn.close()
            self._conns.clear()


@dataclass
class TargetPod:
    """The target pod: `proc` is the launcher process (paths as the pod sees them: R);
    `view` the same pod seen from the host (R2): its sockets, files and log."""

    proc: Instance
    view: Instance
    host_root: Path

    def host(self, pod_path: str | Path) -> Path:
        return self.host_root / Path(pod_path).relative_to(self.proc.root)


@contextlib.contextmanager
def target_pod(source: Instance, extra_args: list[str], env: dict[str, Any] | None = None
               ) -> Iterator[TargetPod]:
    base = Path(tempfile.mkdtemp(prefix="pvl-tgt-", dir="/tmp"))
    os.chmod(base, 0o755)
    host_root = base / "r"
    host_root.mkdir()
    wrapper = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
               f'mount --bind "{host_root}" "{source.root}" && exec "$@"', "target-pod"]
    proc = Instance(root=source.root, nonroot=False, name=source.name,
                    namespace=source.namespace, extra_args=extra_args, wrapper=wrapper)
    proc.log_path = base / "target.log"
    view = Instance(root=host_root, nonroot=False, name=source.name,
                    namespace=source.namespace, extra_args=extra_args)
    view.log_path = proc.log_path
    pod = TargetPod(proc, view, host_root)
    try:
        yield pod
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)
