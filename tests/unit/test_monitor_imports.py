"""The monitor's RSS budget: importing it must not load the heavy or thread-creating
modules (the launcher's). Checked in a fresh interpreter, since pytest itself loads many."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("asyncio", "grpc", "libvirt", "uvloop", "structlog", "subprocess", "threading",
             "psutil", "logging")
REPO = Path(__file__).resolve().parents[2]


def test_importing_monitor_main_loads_no_forbidden_module() -> None:
    # monitor.__main__ imports monitor.run only after its signal handlers: both load.
    script = ("import sys\n"
              "import monitor.__main__\n"
              "import monitor.run\n"
              "print('\\n'.join(sorted(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", script], cwd=REPO,
                            capture_output=True, text=True, check=True)
    loaded = result.stdout.split()
    assert "monitor.run" in loaded
    assert "launcher.flags" in loaded
    bad = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN)
    # On failure the import-time tree (stderr) shows which of our imports pulled them in.
    assert bad == [], result.stderr
