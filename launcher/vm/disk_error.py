"""The disk preparation's one error (launcher.vm.disks, launcher.vm.isos)."""

from __future__ import annotations


class DiskError(Exception):
    """A disk the domain needs could not be prepared."""

    def __init__(self, volume: str, message: str) -> None:
        self.volume = volume
        self.message = message
        super().__init__(f'volume "{volume}": {message}')
