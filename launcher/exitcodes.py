"""The launcher's exit codes. Distinct from 128+N (signal deaths, as the monitor reports
them) and from argparse's 2, so a pod's termination message says what went wrong."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # an unexpected error (logged with its traceback)
    USAGE = 2  # bad flags or environment
    SIMULATED_CRASH = 3  # --simulate-crash (KubeVirt's crash-loop test hook)
    DAEMON_FAILED = 10  # a libvirt daemon or virtlogd kept failing to start/stay up
    LIBVIRT_UNREACHABLE = 11  # the daemon is up but libvirt could not be connected to
    SETUP_FAILED = 12  # directories or config files could not be written
    QEMU_TIMEOUT = 13  # no domain / no QEMU within --qemu-timeout (diagnosis logged)
    # STANDALONE_VMI could not be used: invalid (bad YAML/JSON, a field the converter
    # refuses, a name/namespace/uid other than the flags') or its domain could not be
    # prepared, defined or started. One error log line names the field or the failing step.
    STANDALONE_VMI_FAILED = 14
