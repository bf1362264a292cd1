"""The converter's one error: which field of the VMI, and why."""

from __future__ import annotations


class ConversionError(ValueError):
    """A VMI the converter cannot turn into a domain. `path` is the field's JSON path as
    KubeVirt users write it (`spec.domain.devices.disks[1].disk.bus`), `reason` says what
    was expected; str() is "<path>: <reason>"."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path or "<vmi>"
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
