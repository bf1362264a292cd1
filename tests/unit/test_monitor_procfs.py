"""/proc parsing and the QEMU matcher, on synthetic /proc trees and on the real one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launcher.qemu_identity import is_qemu_comm
from monitor import cleanup, procfs
from monitor.procfs import ProcStat, parse_stat


def stat_line(pid: int, comm: str, state: str = "S", ppid: int = 1,
              starttime: int = 1000) -> str:
    # Fields 5..21 (17 of them) between ppid and starttime, then a few more after it.
    middle = " ".join(str(n) for n in range(5, 22))
    return f"{pid} ({comm}) {state} {ppid} {middle} {starttime} 123456 789 18446744073709551615\n"


def test_parse_plain() -> None:
    st = parse_stat(stat_line(42, "qemu-system-x86", "S", 7, 555))
    assert (st.pid, st.comm, st.state, st.ppid, st.starttime) == (42, "qemu-system-x86", "S",
                                                                  7, 555)
    assert not st.dead


@pytest.mark.parametrize("comm", ["a b", "x) S 1 (y", "((", "))", ") Z 99 ", "", "a)b(c"])
def test_parse_comm_with_spaces_and_parens(comm: str) -> None:
    st = parse_stat(stat_line(43, comm, "R", 9, 777))
    assert (st.pid, st.comm, st.state, st.ppid, st.starttime) == (43, comm, "R", 9, 777)


@pytest.mark.parametrize("state", ["Z", "X"])
def test_dead_states(state: str) -> None:
    assert parse_stat(stat_line(44, "sleep", state)).dead


@pytest.mark.parametrize("text", ["", "garbage", "12 (x) S", "x (y) S 1 2 3",
                                  "12 no parens S 1" + " 0" * 30])
def test_parse_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_stat(text)


def test_parse_real_self() -> None:
    st = procfs.read_stat(os.getpid())
    assert st is not None
    assert st.pid == os.getpid()
    assert st.ppid == os.getppid()
    assert st.state in ("R", "S")
    assert procfs.same_process_alive(st)


def test_read_stat_missing_pid(tmp_path: Path) -> None:
    assert procfs.read_stat(12345, str(tmp_path)) is None


@pytest.mark.parametrize(
    ("comm", "expected"),
    [
        ("qemu-system-x86", True),  # qemu-system-x86_64 truncated to 15 bytes
        ("qemu-system-aar", True),
        ("qemu-kvm", True),
        ("qemu", True),
        ("qemu-ga", False),
        ("qemu-img", False),
        ("qemu-nbd", False),
        ("virtqemud", False),
        ("libvirtd", False),
        ("my-qemu-system", False),
        ("", False),
    ],
)
def test_qemu_matcher(comm: str, expected: bool) -> None:
    assert is_qemu_comm(comm) is expected


class FakeProc:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        (root / "self").mkdir()  # non-numeric entries are skipped
        (root / "meminfo").write_text("")

    def add(self, pid: int, comm: str, ppid: int, state: str = "S",
            starttime: int = 1000) -> None:
        (self.root / str(pid)).mkdir()
        (self.root / str(pid) / "stat").write_text(stat_line(pid, comm, state, ppid, starttime))

    @property
    def path(self) -> str:
        return str(self.root)


@pytest.fixture
def fake_proc(tmp_path: Path) -> FakeProc:
    proc = FakeProc(tmp_path / "proc")
    me = 500
    proc.add(1, "init", 0)
    proc.add(me, "virt-launcher-m", 1)
    proc.add(501, "qemu-system-x86", me)  # our child: found
    proc.add(502, "qemu-kvm", me, state="Z")  # dead: the reaper's business
    proc.add(503, "virtlogd", me)  # our child but not QEMU
    proc.add(504, "qemu-system-x86", 1)  # elsewhere: only via pid file or as PID 1
    proc.add(505, "qemu", 77)  # elsewhere
    proc.add(506, "sleep", 1)  # a pid file's pid reused by something else
    proc.add(507, "(qemu) x", me)
    return proc


def test_scan_skips_non_numeric(fake_proc: FakeProc) -> None:
    assert sorted(st.pid for st in procfs.scan(fake_proc.path)) == [1, *range(500, 508)]


def test_leftover_qemu_children_and_pid_files(fake_proc: FakeProc, tmp_path: Path) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    (pid_dir / "ns_vm.pid").write_text("504\n")
    (pid_dir / "stale.pid").write_text("506")
    (pid_dir / "gone.pid").write_text("9999")
    (pid_dir / "junk.pid").write_text("not a pid")
    (pid_dir / "init.pid").write_text("1")
    (pid_dir / "ns_vm.xml").write_text("505")  # not a pid file
    found = cleanup.find_leftover_qemu(str(pid_dir), 500, fake_proc.path)
    assert [st.pid for st in found] == [501, 504]


def test_leftover_qemu_missing_pid_dir(fake_proc: FakeProc, tmp_path: Path) -> None:
    found = cleanup.find_leftover_qemu(str(tmp_path / "missing"), 500, fake_proc.path)
    assert [st.pid for st in found] == [501]


def test_leftover_qemu_as_pid_1_takes_every_qemu(fake_proc: FakeProc, tmp_path: Path) -> None:
    found = cleanup.find_leftover_qemu(str(tmp_path / "missing"), 1, fake_proc.path)
    assert [st.pid for st in found] == [501, 504, 505]


def test_find_children(fake_proc: FakeProc) -> None:
    assert [st.pid for st in cleanup.find_children(500, fake_proc.path)] == [501, 503, 507]


def test_procstat_repr() -> None:
    st = ProcStat(pid=3, comm="x", state="S", ppid=1, starttime=9)
    assert "comm='x'" in repr(st)
