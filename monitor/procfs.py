"""Reading processes from /proc (no psutil: its import alone costs megabytes).

/proc/PID/stat is "PID (COMM) STATE PPID ...". COMM is whatever the process named itself
(up to 15 bytes) and may contain spaces and parentheses, so fields are split only after
the LAST ')': splitting the whole line on spaces misreads "(a) b)" as three fields.
"""

from __future__ import annotations

import os

PROC = "/proc"
# Index of a field within the text after the comm's ')': field 3 (state) is index 0.
_STATE, _PPID, _STARTTIME = 0, 1, 19


class ProcStat:
    """The few /proc/PID/stat fields the monitor uses."""

    __slots__ = ("comm", "pid", "ppid", "starttime", "state")

    def __init__(self, pid: int, comm: str, state: str, ppid: int, starttime: int) -> None:
        self.pid = pid
        self.comm = comm
        self.state = state
        self.ppid = ppid
        # Clock ticks since boot at which the process started: with the pid it identifies
        # a process, so a pid reused after we looked is not mistaken for the old one.
        self.starttime = starttime

    @property
    def dead(self) -> bool:
        """Exited (a zombie awaiting its parent's wait, or being torn down)."""
        return self.state in ("Z", "X", "x")

    def __repr__(self) -> str:
        return (f"ProcStat(pid={self.pid}, comm={self.comm!r}, state={self.state!r}, "
                f"ppid={self.ppid}, starttime={self.starttime})")


def parse_stat(text: str) -> ProcStat:
    """Parse the contents of /proc/PID/stat. Raises ValueError when malformed."""
    open_paren = text.find("(")
    close_paren = text.rfind(")")
    if open_paren < 1 or close_paren < open_paren:
        raise ValueError(f"malformed /proc stat line: {text[:80]!r}")
    rest = text[close_paren + 1:].split()
    if len(rest) <= _STARTTIME:
        raise ValueError(f"truncated /proc stat line: {text[:80]!r}")
    return ProcStat(
        pid=int(text[:open_paren]),
        comm=text[open_paren + 1:close_paren],
        state=rest[_STATE],
        ppid=int(rest[_PPID]),
        starttime=int(rest[_STARTTIME]),
    )


def read_stat(pid: int, proc: str = PROC) -> ProcStat | None:
    """The process's stat, or None when it does not exist (any more) or is unreadable."""
    try:
        fd = os.open(f"{proc}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
        return None
    try:
        data = os.read(fd, 4096)
    except ProcessLookupError:
        # The process exited between open() and read(): the kernel answers ESRCH.
        return None
    finally:
        os.close(fd)
    try:
        return parse_stat(data.decode("utf-8", "replace"))
    except ValueError:
        return None


def list_pids(proc: str = PROC) -> list[int]:
    try:
        names = os.listdir(proc)
    except (FileNotFoundError, PermissionError):
        return []
    return sorted(int(name) for name in names if name.isdigit())


def scan(proc: str = PROC) -> list[ProcStat]:
    """Every process visible in /proc (skipping those that vanish while we look)."""
    found = []
    for pid in list_pids(proc):
        stat = read_stat(pid, proc)
        if stat is not None:
            found.append(stat)
    return found


def same_process_alive(stat: ProcStat, proc: str = PROC) -> bool:
    """Whether the process described by `stat` still runs: same pid AND same start time
    (a reused pid is another process), and not a zombie."""
    now = read_stat(stat.pid, proc)
    return now is not None and now.starttime == stat.starttime and not now.dead
