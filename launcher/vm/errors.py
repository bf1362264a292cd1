"""The errors of a Sync and of STANDALONE_VMI (shared by launcher.vm's modules and the
supervisor)."""

from __future__ import annotations


class SyncError(Exception):
    """A Sync that could not be carried out. The message is the client's: the converter's
    "<field path>: <reason>", the disk preparation's, or libvirt's with its code. `field`:
    the VMI field at fault, when one is."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class StandaloneError(ValueError):
    """STANDALONE_VMI cannot be used; the message names the field (also in `field`)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SyncAborted(SyncError):
    """The launcher began shutting down during the sync: stopped before anything was
    defined or started (a SIGTERM must not start a QEMU only to stop it again)."""
