"""Which process is QEMU, by its comm: one rule for the launcher's QEMU watch and the
monitor's clean-up (both signal the process they find, so a recycled pid must never pass).
Pure: the monitor imports it.

comm is truncated to 15 bytes, so qemu-system-x86_64 shows as "qemu-system-x86": match on
prefixes, never on a full binary name; plain "qemu" exactly (never qemu-img or qemu-nbd,
which the launcher itself runs, or qemu-ga)."""

from __future__ import annotations

QEMU_COMM_PREFIXES = ("qemu-system", "qemu-kvm")
QEMU_COMM_EXACT = "qemu"


def is_qemu_comm(comm: str) -> bool:
    return comm.startswith(QEMU_COMM_PREFIXES) or comm == QEMU_COMM_EXACT
