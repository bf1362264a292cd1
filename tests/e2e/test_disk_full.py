"""Disk full where the launcher writes a VM's files: its ephemeral-disk directory (the
containerDisk overlays and cloud-init ISOs) on a small tmpfs (8 MiB), filled up.

What must hold: a Sync that cannot prepare a disk fails with a message naming the volume
and ENOSPC; nothing half-written stays under a final name (or under a temporary one); the
launcher keeps serving (no crash, no restart loop) and a Sync succeeds once there is room.
A running guest that writes into a full overlay is paused by QEMU (error policy "stop"):
reported as Paused/IOError with a K8s event naming the volume, resumed by Unpause once
there is room, and its overlay is consistent afterwards. STANDALONE_VMI with no room ends
in exit code 14, once, with nothing left.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from launcher.exitcodes import ExitCode
from tests.e2e.faults import Cmd, LogTail
from tests.support.guest import BOOT_TO_AGENT_TIMEOUT_S, Receiver, ended, status
from tests.support.harness import Instance, wait_for
from tests.support.standalone import guest, stub, sync

pytestmark = pytest.mark.e2e

TMPFS_SIZE = "8m"
ENOSPC = os.strerror(28)  # "No space left on device"
OVERLAY = Path("disk-data/datadisk/disk.qcow2")  # under the ephemeral-disk dir
ISO = Path("cloud-init-data/default/testvm/noCloud.iso")


class Mounts:
    """tmpfs mounts made by a test, unmounted (lazily: the daemons' private mount
    namespaces hold copies) after the instance's own teardown."""

    def __init__(self) -> None:
        self.mounted: list[Path] = []

    def tmpfs(self, path: Path, size: str = TMPFS_SIZE) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755",
                        "pvl-disk-full", str(path)], check=True)
        self.mounted.append(path)
        return path


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    # Requested before make_instance: torn down after it (processes gone first).
    m = Mounts()
    yield m
    for path in reversed(m.mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)
        # the instance's rmtree could not remove the mount point itself
        base = next((p for p in path.parents if p.name.startswith("pvl-")), None)
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, keep: int = 0) -> Path:
    """Take all the space of the filesystem at `path` but `keep` bytes."""
    filler = path / f"filler-{len(list(path.glob('filler-*')))}"
    with open(filler, "wb") as f:
        # A running guest's overlay may grow between the free-space reading and the
        # allocation (ENOSPC for the whole request; tmpfs undoes a failed fallocate):
        # read again and take what is left.
        for _ in range(100):
            size = free_bytes(path) - keep
            if size <= 0:
                break
            try:
                os.posix_fallocate(f.fileno(), os.fstat(f.fileno()).st_size, size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                continue
            break
    assert free_bytes(path) <= keep + 4096, (free_bytes(path), keep)
    return filler


def unfill(path: Path) -> None:
    for filler in path.glob("filler-*"):
        filler.unlink()


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")
                  if p.is_file() and not p.name.startswith("filler-"))


def vmi_request(inst: Instance) -> cmd_pb2.VMIRequest:
    doc = {"metadata": {"name": inst.name, "namespace": inst.namespace,
                        "uid": f"uid-{inst.root.name}"}}
    return cmd_pb2.VMIRequest(vmi=cmd_pb2.VMI(vmiJson=json.dumps(doc).encode()))


def qemu_img_check(image: Path) -> str:
    out = subprocess.run(["qemu-img", "check", "-U", str(image)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_sync_into_a_full_ephemeral_disk_dir_then_a_guest_writing_into_a_full_overlay(
    mounts: Mounts, make_instance: Callable[..., Instance],
    receiver_for: Callable[..., Receiver],
) -> None:
    inst = make_instance(nonroot=False, extra_args=["--allow-emulation"])
    eph = mounts.tmpfs(Path(inst.paths.ephemeral_disk_dir))
    receiver = receiver_for(inst, virt_handler=True)  # synced over gRPC: a cluster's pod
    doc = guest(inst)
    log = LogTail(inst)
    cmd = Cmd.of(inst)
    inst.start()
    inst.wait_running()
    launcher_pid = inst.launcher().pid

    # 1. No room at all: the first disk (the containerDisk overlay) fails, by name.
    fill(eph)
    resp = sync(inst, doc)
    print("full:", resp.message)
    assert not resp.success
    assert resp.message.startswith('volume "datadisk": '), resp.message
    assert ENOSPC in resp.message, resp.message
    assert files_under(eph) == [], files_under(eph)  # no partial overlay, no temp file
    assert stub(inst).Ping(cmd_pb2.EmptyRequest(), timeout=5).success
    assert "default_testvm" not in inst.virsh("list", "--all", "--name").stdout

    # 2. Room for the overlay (196 KiB on tmpfs), not for the ISO (36 KiB, sparse) after it.
    unfill(eph)
    fill(eph, keep=200 * 1024)
    resp = sync(inst, doc)
    print("almost full:", resp.message)
    assert not resp.success
    assert resp.message.startswith('volume "cloudinitdisk": '), resp.message
    assert ENOSPC in resp.message, resp.message
    assert files_under(eph) == [str(OVERLAY)], files_under(eph)  # complete, or absent
    qemu_img_check(eph / OVERLAY)
    assert "default_testvm" not in inst.virsh("list", "--all", "--name").stdout

    # 3. Room again: the same Sync succeeds and the guest boots to its agent.
    unfill(eph)
    resp = sync(inst, doc)
    assert (resp.success, resp.message) == (True, "domain default_testvm defined and started")
    receiver.wait_domain(lambda e: status(e) == ("Running", "Unknown"), 30, "Running")
    log.wait("agent poller started", BOOT_TO_AGENT_TIMEOUT_S)
    wait_for(lambda: cmd.guest_info().get("guestAgentVersion"), 60, interval=0.2,
             what="agent data")
    assert sorted(files_under(eph)) == sorted([str(OVERLAY), str(ISO)])

    # 4. The guest writes 4 MiB into its data disk with no room left for the overlay:
    # QEMU pauses the VM (error policy stop); reported with the volume; still serving.
    # The write starts 3 s after the Exec, once the space is gone (any guest write to a
    # full overlay pauses the VM, and the agent cannot answer a paused guest).
    out = cmd.exec("/bin/sh", "-c", "(sleep 3; dd if=/dev/urandom of=/mnt/data/fill bs=64k"
                   " count=64; sync; touch /mnt/data/fill.done) >/dev/null 2>&1 &")
    assert out.response.success and out.exitCode == 0, out
    fill(eph)
    paused = receiver.wait_last(lambda e: status(e) == ("Paused", "IOError"), 60,
                                "Paused/IOError snapshot")
    assert "deletionTimestamp" not in paused["domain"]["ObjectMeta"]
    assert cmd.domain_status() == ("Paused", "IOError")
    k8s = wait_for(lambda: [e for e in receiver.events() if e.get("kind") == "k8s"
                            and e["event"]["reason"] == "IOerror"], 10, what="IOerror event")
    message = k8s[0]["event"]["message"]
    print("k8s event:", message)
    assert "datadisk" in message and "enospc" in message.lower(), message
    assert cmd.ping()

    # 5. Room again, Unpause: the write completes, the guest runs on, freeze/thaw work.
    unfill(eph)
    assert stub(inst).UnpauseVirtualMachine(vmi_request(inst), timeout=30).success
    receiver.wait_last(lambda e: status(e) == ("Running", "Unknown"), 30, "Running again")
    # Waits for the job's own end marker, not for dd: the pause may come from another
    # write to the data disk (the ext4 journal) before dd has even started.
    done = cmd.exec("/bin/sh", "-c", "while [ ! -e /mnt/data/fill.done ]; do usleep 100000;"
                    " done; wc -c < /mnt/data/fill", timeout_s=60)
    assert done.response.success and done.stdOut.strip() == str(64 * 65536), done
    assert cmd.freeze(5).success
    assert stub(inst).UnfreezeVirtualMachine(vmi_request(inst), timeout=30).success

    # 6. Clean stop; the overlay is consistent; one launcher all along.
    assert inst.launcher().pid == launcher_pid
    inst.signal(signal.SIGTERM)
    assert inst.wait_exit(timeout=60) == 0, inst.tail()
    assert status(ended(receiver)) == ("Shutoff", "Shutdown")
    assert log.count("started the launcher") == 1
    assert log.count("launcher running") == 1
    print(qemu_img_check(eph / OVERLAY).strip())
    cmd.channel.close()
    receiver.stop()
    wait_for(lambda: not inst.leftovers(), 10, what="no processes left")


def test_standalone_vmi_without_room_exits_14_once_and_leaves_nothing(
    mounts: Mounts, make_instance: Callable[..., Instance],
) -> None:
    inst = make_instance(nonroot=False, extra_args=["--allow-emulation"])
    eph = mounts.tmpfs(Path(inst.paths.ephemeral_disk_dir))
    doc = guest(inst)
    fill(eph, keep=200 * 1024)  # the overlay fits, the ISO does not
    inst.start(env={"STANDALONE_VMI": json.dumps(doc)})
    code = inst.wait_exit(timeout=60)
    assert code == ExitCode.STANDALONE_VMI_FAILED, inst.tail()
    errors = [r for r in inst.log_records() if r.get("level") == "error"
              and r.get("component") == "virt-launcher" and r.get("source") != "daemon-output"]
    assert len(errors) == 1, errors
    assert errors[0]["msg"] == "STANDALONE_VMI could not be synced; exiting"
    assert errors[0]["error"].startswith('volume "cloudinitdisk": '), errors[0]
    assert ENOSPC in errors[0]["error"], errors[0]
    log = LogTail(inst)
    assert log.count("started the launcher") == 1  # no restart loop
    assert files_under(eph) == [str(OVERLAY)], files_under(eph)
    wait_for(lambda: not inst.leftovers(), 10, what="no processes left")
