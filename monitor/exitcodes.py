"""Exit codes of virt-launcher-monitor.

The monitor exits with the launcher's own status so a pod's termination reason is the
launcher's; a launcher killed by signal N is reported as 128+N, as shells do.
"""

from __future__ import annotations

import os
from enum import IntEnum

SIGNAL_EXIT_BASE = 128


class ExitCode(IntEnum):
    OK = 0
    USAGE = 2  # bad flags: same code argparse (and the launcher) use
    SPAWN_FAILED = 127  # the launcher could not be found or executed, as a shell reports it


EXIT_OK = ExitCode.OK
EXIT_USAGE = ExitCode.USAGE
EXIT_SPAWN_FAILED = ExitCode.SPAWN_FAILED


def code_from_wait_status(status: int) -> int:
    """Exit code for a waitpid() status: the exit status, or 128+N for a death by signal N.

    Raises ValueError for a stopped/continued status; the monitor never asks for those
    (no WUNTRACED/WCONTINUED), so seeing one would be a bug worth surfacing.
    """
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return SIGNAL_EXIT_BASE - code
    return code
