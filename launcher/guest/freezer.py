"""virt-freezer: freeze or thaw a VMI's guest filesystems through its launcher's command
socket (Velero backup hooks: pre --freeze, post --unfreeze).

KubeVirt's flags and flow: GetGuestInfo (no guest agent -> "No guest agent", exit 0);
GetDomain (absent or not Running -> exit 0); then Freeze (FreezeRequest with the VMI's
name/namespace and unfreezeTimeoutSeconds) or Unfreeze. A freeze failing because the agent
is unavailable is followed by a best-effort unfreeze, as KubeVirt does.

Beyond KubeVirt: --socket, --runtime-root, --timeout, --status (the fsfreeze status as
JSON), specific messages on every failure and no tracebacks for expected errors.

Output as KubeVirt's: one JSON log line per message on stderr ({"timestamp", "level",
"component": "virt-freezer", "msg", and "reason" for the error behind a failure}); stdout
carries only --status's JSON. Exit codes as KubeVirt's: flags that do not parse (an unknown
flag, a bad value) exit 2 as pflag does; flags that parse but do not make sense (no action,
no --name/--namespace) exit 1, as KubeVirt's parseFlags does, like every other failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import grpc

from launcher import flags, paths
from launcher._proto.kubevirt.cmd.info import info_pb2, info_pb2_grpc
from launcher._proto.kubevirt.cmd.v1 import cmd_pb2, cmd_pb2_grpc

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

# KubeVirt's client deadlines (pkg/virt-handler/cmd-client): connect 2 s, short calls 5 s,
# VMI commands 20 s; a freeze may flush a lot of dirty data: 60 s (Velero's hook timeout).
CONNECT_TIMEOUT_S = 2.0
SHORT_TIMEOUT_S = 5.0
UNFREEZE_TIMEOUT_S = 20.0
FREEZE_TIMEOUT_S = 60.0
DEFAULT_UNFREEZE_AFTER_S = 300
GA_NOT_AVAILABLE = "Guest agent not available for now"  # KubeVirt's marker
_BOOL_FLAGS = ("freeze", "unfreeze", "status")

EPILOG = f"""\
exit codes:
  {EXIT_OK}  success; also when there is nothing to do: no guest agent, or the domain
     does not exist or is not running (as KubeVirt's virt-freezer)
  {EXIT_ERROR}  error: no or several actions, missing --name/--namespace, the launcher
     socket missing or not answering, an rpc failed, or the launcher refused the
     operation (the reason is logged on stderr)
  {EXIT_USAGE}  a flag that does not parse: unknown flag, bad value (as pflag)

deadlines (override all with --timeout): connect {CONNECT_TIMEOUT_S:g}s, queries \
{SHORT_TIMEOUT_S:g}s,
  --freeze {FREEZE_TIMEOUT_S:g}s, --unfreeze {UNFREEZE_TIMEOUT_S:g}s (KubeVirt's client \
deadlines)

socket: --socket, else <runtime root>/var/run/kubevirt/sockets/launcher-sock, the runtime
root being --runtime-root, else $VIRT_LAUNCHER_RUNTIME_ROOT, else / (with / this is
KubeVirt's /var/run/kubevirt/sockets/launcher-sock, i.e. /run/kubevirt/sockets/...).
"""


COMPONENT = "virt-freezer"


class UsageError(Exception):
    """Flags that do not parse (exit 2, as pflag)."""


class FlagsInvalid(Exception):
    """Flags that parse but make no sense (exit 1, as KubeVirt's parseFlags)."""


def log_line(stream: TextIO, level: str, msg: str, **fields: Any) -> None:
    """One JSON log line, in the launcher's format (launcher.logs)."""
    record = {"timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
              "level": level, "component": COMPONENT, "msg": msg, **fields}
    stream.write(json.dumps(record) + "\n")
    stream.flush()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0 or value > 2**31 - 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and {2**31 - 1}, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="virt-freezer", allow_abbrev=False,
                description="Freeze or thaw a VMI's guest filesystems (py-virt-launcher).",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Actions and names are checked after parsing (FlagsInvalid: exit 1, as KubeVirt).
    p.add_argument("--freeze", action="store_true", help="freeze the guest filesystems")
    p.add_argument("--unfreeze", action="store_true", help="thaw the guest filesystems")
    p.add_argument("--status", action="store_true",
                   help='print the fsfreeze status as JSON: {"fsFreezeStatus": ...}')
    p.add_argument("--name", default="", help="name of the VirtualMachineInstance")
    p.add_argument("--namespace", default="", help="namespace of the VirtualMachineInstance")
    p.add_argument("--unfreezeTimeoutSeconds", type=_non_negative_int,
                   default=DEFAULT_UNFREEZE_AFTER_S, metavar="N",
                   help="thaw automatically after N seconds; 0 disables "
                        f"(default {DEFAULT_UNFREEZE_AFTER_S})")
    p.add_argument("--socket", default=None, metavar="PATH",
                   help="the launcher's command socket (default: see below)")
    p.add_argument("--runtime-root", default=None, metavar="DIR",
                   help="prefix of the launcher's paths (env VIRT_LAUNCHER_RUNTIME_ROOT, "
                        "default /)")
    p.add_argument("--timeout", type=_positive_seconds, default=None, metavar="SECONDS",
                   help="deadline of every call, instead of the per-call defaults below")
    return p


def normalize_bools(argv: Sequence[str]) -> list[str]:
    """pflag accepts "--freeze=true|false"; argparse's store_true does not."""
    out: list[str] = []
    for arg in argv:
        name, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if sep and name in _BOOL_FLAGS:
            if value.lower() in ("1", "t", "true"):
                out.append(f"--{name}")
            elif value.lower() not in ("0", "f", "false"):
                raise UsageError(f"--{name}: expected true or false, got {value!r}")
            continue
        out.append(arg)
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    args = build_parser().parse_args(normalize_bools(argv))
    actions = [f"--{a}" for a in ("freeze", "unfreeze", "status") if getattr(args, a)]
    if not actions:
        raise FlagsInvalid("either --freeze or --unfreeze must be set")
    if len(actions) > 1:
        # KubeVirt would freeze; a hook asking for both has a bug worth seeing.
        raise FlagsInvalid(f"only one of --freeze, --unfreeze, --status may be set, got "
                           f"{' '.join(actions)}")
    if not args.name or not args.namespace:
        raise FlagsInvalid("both --name and --namespace must be provided")
    return args


def default_socket(runtime_root: str | None, environ: dict[str, str] | None = None) -> str:
    """Where the launcher serves its command API, derived as the launcher derives it."""
    env = os.environ if environ is None else environ
    root = runtime_root or env.get("VIRT_LAUNCHER_RUNTIME_ROOT") or "/"
    try:
        opts = flags.parse(["--runtime-root", root], prog="virt-freezer", environ={})
    except flags.FlagError as exc:
        raise FlagsInvalid(str(exc)) from None
    return paths.derive(opts).cmd_socket


class Failed(Exception):
    """An expected failure: logged (KubeVirt's summary as msg, the detail as reason),
    the exit code is 1."""

    def __init__(self, reason: str, summary: str = "Operation failed") -> None:
        super().__init__(reason)
        self.summary = summary


def _call(what: str, method: Callable[..., Any], request: Any, timeout: float) -> Any:
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == "DEADLINE_EXCEEDED":
            raise Failed(f"{what}: no answer from the launcher within {timeout:g}s") from None
        raise Failed(f"{what} failed: {code}: {details}") from None


def _checked(what: str, response: Any) -> None:
    if not response.success:
        raise Failed(f"{what} failed: {response.message or 'the launcher gave no reason'}")


def run(args: argparse.Namespace, out: TextIO, err: TextIO,
        environ: dict[str, str] | None = None) -> int:
    socket_path = args.socket or default_socket(args.runtime_root, environ)
    if not os.path.exists(socket_path):
        log_line(err, "error", "Failed to connect launcher",
                 reason=f"launcher socket {socket_path} does not exist (is the launcher "
                        "running and ready? see --socket / --runtime-root)")
        return EXIT_ERROR
    try:
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            session = _Session(args, channel, out, err)
            session.connect(socket_path)
            return session.flow()
    except Failed as exc:
        log_line(err, "error", exc.summary, reason=str(exc))
        return EXIT_ERROR


class _Session:
    def __init__(self, args: argparse.Namespace, channel: grpc.Channel, out: TextIO,
                 err: TextIO) -> None:
        self.args = args
        self.channel = channel
        self.stub = cmd_pb2_grpc.CmdStub(channel)
        self.out = out
        self.err = err
        self.vmi = cmd_pb2.VMI(vmiJson=json.dumps(
            {"metadata": {"name": args.name, "namespace": args.namespace}}).encode())

    def say(self, line: str) -> None:
        # stdout is for --status's JSON only.
        log_line(self.err, "info", line)

    def deadline(self, default: float) -> float:
        return float(self.args.timeout) if self.args.timeout is not None else default

    def connect(self, socket_path: str) -> None:
        timeout = self.deadline(CONNECT_TIMEOUT_S)
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise Failed(f"cannot connect to the launcher at {socket_path} within "
                         f"{timeout:g}s") from None
        # KubeVirt's client checks the command API version before anything else.
        info = _call("Info", info_pb2_grpc.CmdInfoStub(self.channel).Info,
                     info_pb2.CmdInfoRequest(), self.deadline(SHORT_TIMEOUT_S))
        if 1 not in info.supportedCmdVersions:
            raise Failed(f"the launcher does not speak command API v1 (it offers "
                         f"{list(info.supportedCmdVersions)})")

    def guest_info(self) -> dict[str, Any]:
        resp = _call("GetGuestInfo", self.stub.GetGuestInfo, cmd_pb2.EmptyRequest(),
                     self.deadline(SHORT_TIMEOUT_S))
        _checked("GetGuestInfo", resp.response)
        try:
            guest = json.loads(resp.guestInfoResponse) if resp.guestInfoResponse else {}
        except ValueError as exc:
            raise Failed(f"GetGuestInfo: unreadable answer: {exc}") from None
        if not isinstance(guest, dict):
            raise Failed("GetGuestInfo: unreadable answer: not a JSON object")
        return guest

    def domain_status(self) -> str | None:
        """The domain's Status ("Running", ...), None when it does not exist."""
        resp = _call("GetDomain", self.stub.GetDomain, cmd_pb2.EmptyRequest(),
                     self.deadline(SHORT_TIMEOUT_S))
        _checked("GetDomain", resp.response)
        if not resp.domain:
            return None
        try:
            status = json.loads(resp.domain).get("Status", {}).get("Status", "")
        except (ValueError, AttributeError) as exc:
            raise Failed(f"GetDomain: unreadable answer: {exc}") from None
        return str(status)

    def flow(self) -> int:
        guest = self.guest_info()
        version = guest.get("guestAgentVersion") or ""
        if self.args.status:
            # The launcher's agent cache (refreshed every few seconds), not a live query.
            self.out.write(json.dumps({"fsFreezeStatus": guest.get("fsFreezeStatus") or ""})
                           + "\n")
            self.out.flush()
            if not version:
                self.say("No guest agent")
            return EXIT_OK
        if not version:
            self.say("No guest agent")
            return EXIT_OK
        self.say(f"Guest agent version is {version}")
        status = self.domain_status()
        if status is None:
            self.say("VM domain does not exist, no need to freeze/unfreeze")
            return EXIT_OK
        if status != "Running":
            self.say(f"VM domain not running ({status or 'unknown'}), "
                     "no need to freeze/unfreeze")
            return EXIT_OK
        if self.args.freeze:
            self.freeze(guest)
        else:
            self.unfreeze()
        self.say("Operation completed successfully")
        return EXIT_OK

    def freeze(self, guest: dict[str, Any]) -> None:
        request = cmd_pb2.FreezeRequest(vmi=self.vmi,
                                        unfreezeTimeoutSeconds=self.args.unfreezeTimeoutSeconds)
        answer = _call("Freeze", self.stub.FreezeVirtualMachine, request,
                       self.deadline(FREEZE_TIMEOUT_S))
        if answer.success:
            return
        if GA_NOT_AVAILABLE in answer.message or "AGENT_UNRESPONSIVE" in answer.message:
            # As KubeVirt: the agent may have frozen some filesystems before it went away;
            # do not leave them frozen until the auto-thaw.
            with contextlib.suppress(Failed):
                self.unfreeze()
            os_name = guest.get("os", {}).get("name", "") if isinstance(guest.get("os"), dict) \
                else ""
            hint = ("make sure the guest agent and VSS are running and try again"
                    if "windows" in str(os_name).lower()
                    else "make sure the guest agent is running and try again")
            raise Failed(f"Freezing VMI failed: {answer.message}; {hint}",
                         f"Freezing VMI failed, please {hint}")
        raise Failed(f"Freezing VMI failed: {answer.message}", "Freezing VMI failed")

    def unfreeze(self) -> None:
        answer = _call("Unfreeze", self.stub.UnfreezeVirtualMachine,
                       cmd_pb2.VMIRequest(vmi=self.vmi), self.deadline(UNFREEZE_TIMEOUT_S))
        if not answer.success:
            raise Failed(f"Unfreezing VMI failed: {answer.message}", "Unfreezing VMI failed")


def cli(argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None,
        environ: dict[str, str] | None = None) -> int:
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        args = parse_args(argv)
    except UsageError as exc:
        # pflag's behaviour: usage on stderr, exit 2.
        build_parser().print_usage(err)
        err.write(f"virt-freezer: error: {exc} (see --help)\n")
        err.flush()
        return EXIT_USAGE
    except FlagsInvalid as exc:
        log_line(err, "error", "Failed to parse flags", reason=str(exc))
        return EXIT_ERROR
    try:
        return run(args, out, err, environ)
    except FlagsInvalid as exc:  # a bad runtime root, found while deriving the socket
        log_line(err, "error", "Failed to parse flags", reason=str(exc))
        return EXIT_ERROR


def main() -> None:
    sys.exit(cli(sys.argv[1:]))


if __name__ == "__main__":
    main()
