"""libvirt errors as text for clients and logs: code, symbolic name and libvirt's message.

Shared by the command API (launcher.cmd), SyncVirtualMachine (launcher.vm.sync) and the guest
agent calls (launcher.guest), which all answer with libvirt's words; and the one exception for
"there is no libvirt connection right now" (launcher.libvirt.domain raises it)."""

from __future__ import annotations

import libvirt


def _error_names() -> dict[int, str]:
    names: dict[int, str] = {}
    # VIR_ERR_NONE/WARNING/ERROR are error *levels* sharing the values 0..2 with codes.
    levels = {"VIR_ERR_NONE", "VIR_ERR_WARNING", "VIR_ERR_ERROR"}
    for name, value in vars(libvirt).items():
        if (name.startswith("VIR_ERR_") and isinstance(value, int) and name not in levels
                and not name.endswith("_LAST")):
            names.setdefault(value, name)
    return names


ERROR_NAMES = _error_names()


NOT_CONNECTED = "libvirt is not connected"


class LibvirtDisconnected(ConnectionError):
    """No live libvirt connection (the daemon is restarting, or the connection was lost
    during the call). A ConnectionError: the handlers that caught ConnectionError before
    catch it unchanged, and its message is the one clients always got."""

    def __init__(self, message: str = NOT_CONNECTED) -> None:
        super().__init__(message)


def libvirt_message(exc: libvirt.libvirtError) -> str:
    """'libvirt error 55 (VIR_ERR_OPERATION_INVALID): Requested operation is not valid: ...'"""
    code = exc.get_error_code()
    name = ERROR_NAMES.get(code, "VIR_ERR_UNKNOWN") if code is not None else "VIR_ERR_UNKNOWN"
    return f"libvirt error {code} ({name}): {exc.get_error_message() or exc}"


def unsupported_flags(exc: libvirt.libvirtError) -> bool:
    """virCheckFlags' error: the driver does not know a flag we passed."""
    return (exc.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
            and "unsupported flags" in (exc.get_error_message() or ""))
