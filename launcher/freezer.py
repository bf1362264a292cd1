"""virt-freezer: freeze/thaw the guest's filesystems through the launcher (Velero hooks).

Only the command line is in place; the operations need the command API (issue 4).
"""

from __future__ import annotations

import argparse
import sys

from launcher import logs

EXIT_OK = 0
EXIT_ERROR = 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="virt-freezer", allow_abbrev=False,
                                description="Freeze or thaw a VMI's guest filesystems.")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--freeze", action="store_true", help="freeze the guest filesystems")
    action.add_argument("--unfreeze", action="store_true", help="thaw the guest filesystems")
    p.add_argument("--name", required=True, help="name of the VMI")
    p.add_argument("--namespace", required=True, help="namespace of the VMI")
    p.add_argument("--unfreezeTimeoutSeconds", type=int, default=300, metavar="N",
                   help="thaw automatically after N seconds (default 300)")
    return p


def main() -> None:
    args = build_parser().parse_args(sys.argv[1:])
    logs.configure("virt-freezer")
    log = logs.get(name=args.name, namespace=args.namespace)
    log.error("virt-freezer operations are not implemented yet in this version",
              freeze=args.freeze, unfreeze=args.unfreeze)
    sys.exit(EXIT_ERROR)
