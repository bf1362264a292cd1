"""The test guest as a STANDALONE_VMI / a VMI synced over gRPC: staging, the command
client, waiting for its agent, a clean stop (the e2e tests and their helpers)."""

from __future__ import annotations

import json
import signal
from typing import Any

import grpc

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2, cmd_pb2_grpc
from tests.support.guest import BOOT_TO_AGENT_TIMEOUT_S, Receiver, agent_state, ended, status
from tests.support.guestvm import stage, vmi
from tests.support.harness import Instance, wait_for

EMULATION = ["--allow-emulation"]  # KVM is unusable on the CI machines (see launcher.vm.sync)


def guest(inst: Instance, **kwargs: Any) -> dict[str, Any]:
    """The test guest as this instance's VMI, its files staged where the launcher looks."""
    stage(inst.paths.container_disk_dir)
    return vmi(name=inst.name, namespace=inst.namespace, uid=f"uid-{inst.root.name}",
               **kwargs)


def stub(inst: Instance) -> Any:
    channel = grpc.insecure_channel(f"unix:{inst.paths.cmd_socket}")
    return cmd_pb2_grpc.CmdStub(channel)


def sync(inst: Instance, doc: Any) -> Any:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return stub(inst).SyncVirtualMachine(
        cmd_pb2.VMIRequest(vmi=cmd_pb2.VMI(vmiJson=raw)), timeout=60)


def wait_agent(receiver: Receiver) -> dict[str, Any]:
    return receiver.wait_domain(
        lambda e: status(e) == ("Running", "Unknown") and agent_state(e) == "connected",
        BOOT_TO_AGENT_TIMEOUT_S, "Running snapshot with the agent connected")


def guest_info(inst: Instance) -> dict[str, Any]:
    def filled() -> dict[str, Any] | None:
        resp = stub(inst).GetGuestInfo(cmd_pb2.EmptyRequest(), timeout=5)
        assert resp.response.success, resp.response.message
        info: dict[str, Any] = json.loads(resp.guestInfoResponse)
        return info if info.get("guestAgentVersion") and info.get("hostname") else None
    found: dict[str, Any] = wait_for(filled, 60, interval=0.2, what="guest info")
    return found


def stop_cleanly(inst: Instance, receiver: Receiver) -> None:
    inst.signal(signal.SIGTERM)
    assert inst.wait_exit(timeout=90) == 0, inst.tail()
    # Shutoff/Shutdown, then the domain deleted: by virt-handler (the stand-in) or, for a
    # STANDALONE_VMI without one, by the launcher itself after a short wait.
    assert status(ended(receiver)) == ("Shutoff", "Shutdown")
    receiver.stop()
    wait_for(lambda: not inst.leftovers(), 10, what="no processes left")
