"""Finding and starting virt-launcher (posix_spawn: no subprocess, no fork of a Python
process, so no copy-on-write of the monitor's heap and no Python code in the child)."""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence

from monitor.forward import CHILD_DEFAULT_SIGNALS

LAUNCHER_NAME = "virt-launcher"
# The launcher's shutdown signals (launcher.supervisor.SHUTDOWN_SIGNALS).
LAUNCHER_BLOCKED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)


def _is_executable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def which(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """PATH lookup (shutil.which without importing shutil)."""
    for directory in os.get_exec_path(environ):
        candidate = os.path.join(directory or ".", name)
        if _is_executable_file(candidate):
            return candidate
    return None


def resolve_launcher(explicit: str, argv0: str,
                     environ: Mapping[str, str] | None = None) -> str | None:
    """The launcher to start: --launcher-binary when given (a bare name is looked up on
    PATH); else `virt-launcher` beside the monitor's executable (its directory as invoked,
    then with symlinks resolved); else on PATH. None when nothing is found."""
    if explicit:
        if os.sep in explicit:
            return explicit
        return which(explicit, environ)
    if argv0 and os.path.isfile(argv0):
        directories = [os.path.dirname(os.path.abspath(argv0)),
                       os.path.dirname(os.path.realpath(argv0))]
        for directory in dict.fromkeys(directories):
            candidate = os.path.join(directory, LAUNCHER_NAME)
            if _is_executable_file(candidate):
                return candidate
    return which(LAUNCHER_NAME, environ)


def spawn(binary: str, args: Sequence[str]) -> int:
    """Start the launcher with our stdout/stderr and environment; returns its pid.
    Raises OSError (ENOENT, EACCES, ENOEXEC, ...) when it cannot be executed."""
    return os.posix_spawn(
        binary,
        [binary, *args],
        os.environ,
        # Our handlers only exist in this interpreter; the launcher starts from defaults,
        # with the termination signals blocked: one that comes before the launcher has
        # its handlers stays pending, and is handled (the graceful path, exit 0) once it
        # unblocks them, instead of killing it (exit 143). Until then only SIGKILL stops
        # it, which the monitor's own deadline still sends.
        setsigdef=CHILD_DEFAULT_SIGNALS,
        setsigmask=LAUNCHER_BLOCKED_SIGNALS,
    )
