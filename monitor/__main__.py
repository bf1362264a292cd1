"""Entry point of `virt-launcher-monitor` and `python -m monitor`."""

from __future__ import annotations

import sys

from monitor.run import run


def main() -> None:
    sys.exit(run(sys.argv[1:], sys.argv[0]))


if __name__ == "__main__":
    main()
