"""hack/bench_hooks.py runs and prints its figures (a short run: the figures themselves are
the benchmark's business, not a test's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(180)


def test_bench_hooks_prints_one_json_object_with_every_figure() -> None:
    proc = subprocess.run([sys.executable, "-m", "hack.bench_hooks", "--calls", "5"],
                          cwd=REPO, capture_output=True, text=True, timeout=150, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout[-2000:]  # stdout is the JSON alone
    res = json.loads(lines[0])
    for key in ("on_define_domain_ms", "on_define_domain_dial_per_call_ms",
                "on_define_domain_chain3_ms", "pre_cloud_init_iso_ms"):
        assert res[key]["n"] == 5 and 0 < res[key]["p50"] <= res[key]["max"], (key, res)
    assert res["collect_s"] > 0 and res["shutdown_ms"] > 0
    assert res["order"] == ["smbios", "second", "third"]  # priority 5 first, then by name
    assert res["sidecars_exited_after_shutdown"] is True
    assert res["domain_xml_bytes"] > 1000
