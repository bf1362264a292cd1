#!/usr/bin/env python3
"""Measure the resident memory of an idle virt-launcher-monitor.

Starts the real monitor (the venv's console script, or `python -m monitor` with
--python-m) with a fake launcher that sleeps until SIGTERM, lets it settle, reads VmRSS and
VmHWM of the monitor from /proc/PID/status, stops it with SIGTERM; repeats, and prints JSON:
{"monitor_rss_mib": median, "monitor_rss_mib_runs": [...], "monitor_hwm_mib": max, ...}.
Exits 1 when the median is over the target (15 MiB; KubeVirt budgets 25 MiB for its Go
monitor). VmRSS is what `ps` reports as RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_MIB = 15.0
# Idle like a launcher whose VM runs; SIGTERM (the default action) ends it. The monitor
# starts the launcher with its termination signals blocked (the real one unblocks them once
# its handlers exist): this stand-in unblocks them at once.
FAKE_LAUNCHER = ("#!/usr/bin/python3\nimport signal, time\n"
                 "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, "
                 "signal.SIGQUIT, signal.SIGHUP})\ntime.sleep(600)\n")


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def one_run(command: list[str], workdir: Path, settle_s: float) -> tuple[float, float]:
    launcher = workdir / "virt-launcher"
    launcher.write_text(FAKE_LAUNCHER)
    launcher.chmod(0o755)
    argv = [*command, "--launcher-binary", str(launcher), "--runtime-root", str(workdir),
            "--namespace", "bench", "--name", "vm"]
    with (workdir / "monitor.log").open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 10
        while not children(proc.pid):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"monitor did not start the launcher; see {workdir}")
            time.sleep(0.02)
        time.sleep(settle_s)
        rss = status_kib(proc.pid, "VmRSS") / 1024
        hwm = status_kib(proc.pid, "VmHWM") / 1024
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        if code != 128 + signal.SIGTERM:
            raise RuntimeError(f"monitor exited {code}, expected {128 + signal.SIGTERM}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rss, hwm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--settle", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--python-m", action="store_true",
                        help="run `python -m monitor` instead of the console script")
    args = parser.parse_args()
    venv_bin = Path(sys.executable).parent
    if args.python_m:
        command = [sys.executable, "-m", "monitor"]
    else:
        command = [str(venv_bin / "virt-launcher-monitor")]
    rss_runs: list[float] = []
    hwm_runs: list[float] = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
            rss, hwm = one_run(command, Path(tmp), args.settle)
        rss_runs.append(round(rss, 2))
        hwm_runs.append(round(hwm, 2))
    median = statistics.median(rss_runs)
    print(json.dumps({
        "monitor_rss_mib": round(median, 2),
        "monitor_rss_mib_runs": rss_runs,
        "monitor_hwm_mib": max(hwm_runs),
        "target_mib": TARGET_MIB,
        "command": " ".join(os.path.relpath(c, REPO) if c.startswith("/") else c
                            for c in command),
    }))
    return 0 if median <= TARGET_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
