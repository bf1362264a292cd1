"""virt-launcher-events: a small notify receiver (the virt-handler end of the notify socket).

    virt-launcher-events --socket PATH [--supported-versions 1[,2...]] [--reject-every N]
                         [--act-as-virt-handler CMD_SOCKET]

Serves kubevirt.notify.info.NotifyInfo/Info and kubevirt.notify.v1.Notify on a UNIX socket
and prints every received event as one JSON line on stdout (flushed per line):

    {"kind": "domain", "eventType": ..., "domain": <domainJSON parsed, or the raw string>,
     "received_at": <unix time>}
    {"kind": "k8s", "event": <eventJSON parsed, or the raw string>, "received_at": ...}

Events answered with success=false (--reject-every N: every Nth event) are printed too, with
"rejected": true. Logs go to stderr, so stdout carries nothing but event lines. Used by the
demo and the tests as virt-handler, and handy for watching a launcher by hand.

With --act-as-virt-handler it also drives the launcher's end of life over the command
socket the way virt-handler does (launcher.notify.handler_standin), and prints what it did:

    {"kind": "handler", "action": "Shutdown"|"Kill"|"Delete", "success": ..., ...}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

import grpc
import structlog
import uvloop

from launcher import logs
from launcher._proto.kubevirt.notify.info import info_pb2, info_pb2_grpc
from launcher._proto.kubevirt.notify.v1 import notify_pb2, notify_pb2_grpc
from launcher.notify.handler_standin import HandlerStandIn
from launcher.notify.notifier import grpc_target

STOP_GRACE_S = 1.0


def _versions(text: str) -> list[int]:
    try:
        versions = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}") from None
    if not versions or any(v < 0 for v in versions):
        raise argparse.ArgumentTypeError(f"need at least one non-negative version: {text!r}")
    return versions


def _positive(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="virt-launcher-events",
        description="Receive virt-launcher notify events on a UNIX socket; print them as "
                    "JSON lines on stdout.")
    parser.add_argument("--socket", required=True, help="UNIX socket path to listen on")
    parser.add_argument("--supported-versions", type=_versions, default=[1],
                        metavar="V[,V...]", help="notify versions answered by Info (default 1)")
    parser.add_argument("--reject-every", type=_positive, default=0, metavar="N",
                        help="answer success=false to every Nth event (default 0: never)")
    parser.add_argument("--act-as-virt-handler", default=None, metavar="CMD_SOCKET",
                        help="drive the launcher's shutdown and deletion over its command "
                             "socket as virt-handler does (Shutdown when the domain is "
                             "marked for graceful shutdown, Kill after the grace period, "
                             "Delete once it is off)")
    parser.add_argument("-v", "--verbosity", type=int, default=2)
    return parser.parse_args(argv)


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        return raw.decode("utf-8", errors="replace")


class EventPrinter:
    """Writes event lines on a single thread: a slow stdout reader must not block the loop.

    One worker keeps the lines in arrival order, and the handler awaits its line, so a
    client that got success=true knows the line is already in the pipe.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-printer")

    def _write(self, line: str) -> None:
        self._out.write(line + "\n")
        self._out.flush()

    async def emit(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"))
        await asyncio.get_running_loop().run_in_executor(self._thread, self._write, line)

    def close(self) -> None:
        self._thread.shutdown(wait=True)


class Receiver:
    """The Notify and NotifyInfo servicers (duck-typed: the generated bases are untyped)."""

    def __init__(self, printer: EventPrinter, versions: list[int], reject_every: int,
                 handler: HandlerStandIn | None = None) -> None:
        self._printer = printer
        self._versions = versions
        self._reject_every = reject_every
        self._handler = handler
        self._received = 0
        self._log = structlog.get_logger()

    def _rejects_next(self) -> bool:
        self._received += 1
        return self._reject_every > 0 and self._received % self._reject_every == 0

    async def _answer(self, record: dict[str, Any]) -> notify_pb2.Response:
        rejected = self._rejects_next()
        if rejected:
            record["rejected"] = True
        await self._printer.emit(record)
        if rejected:
            return notify_pb2.Response(success=False, message="rejected (--reject-every)")
        return notify_pb2.Response(success=True)

    async def Info(self, _request: info_pb2.NotifyInfoRequest,
                   _context: Any) -> info_pb2.NotifyInfoResponse:
        self._log.debug("Info", versions=self._versions)
        return info_pb2.NotifyInfoResponse(supportedNotifyVersions=self._versions)

    async def HandleDomainEvent(self, request: notify_pb2.DomainEventRequest,
                                _context: Any) -> notify_pb2.Response:
        record: dict[str, Any] = {"kind": "domain", "eventType": request.eventType,
                                  "domain": _decode(request.domainJSON),
                                  "received_at": time.time()}
        if request.statusJSON:
            record["status"] = _decode(request.statusJSON)
        response = await self._answer(record)
        if self._handler is not None and response.success \
                and isinstance(record["domain"], dict):
            self._handler.observe(record["domain"])
        return response

    async def HandleK8sEvent(self, request: notify_pb2.K8sEventRequest,
                             _context: Any) -> notify_pb2.Response:
        record = {"kind": "k8s", "event": _decode(request.eventJSON),
                  "received_at": time.time()}
        return await self._answer(record)


def _remove_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        # Never delete something that is not a socket: a wrong --socket must not eat a file.
        raise SystemExit(f"virt-launcher-events: {path} exists and is not a socket")
    os.unlink(path)


def _socket_inode(path: str) -> int | None:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return None


async def serve(args: argparse.Namespace, path: str) -> int | None:
    """Serve until SIGTERM/SIGINT; returns the inode of the socket it listened on."""
    log = structlog.get_logger().bind(socket=path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # only records: the main flow stops

    printer = EventPrinter(sys.stdout)
    handler = None
    if args.act_as_virt_handler:
        handler = HandlerStandIn(args.act_as_virt_handler, printer.emit)
    receiver = Receiver(printer, args.supported_versions, args.reject_every, handler)
    server = grpc.aio.server()
    notify_pb2_grpc.add_NotifyServicer_to_server(receiver, server)
    info_pb2_grpc.add_NotifyInfoServicer_to_server(receiver, server)
    # umask rather than chmod afterwards: no window in which the socket is group/world
    # accessible. This process creates no other files.
    old_umask = os.umask(0o177)
    try:
        server.add_insecure_port(grpc_target(path))
        await server.start()
    finally:
        os.umask(old_umask)
    inode = _socket_inode(path)
    log.info("listening", supported_versions=args.supported_versions,
             reject_every=args.reject_every, pid=os.getpid(),
             virt_handler_standin=args.act_as_virt_handler)
    try:
        async with asyncio.TaskGroup() as tg:
            if handler is not None:
                tg.create_task(handler.run(stop), name="virt-handler-standin")
            await stop.wait()
            log.info("stopping")
    finally:
        await server.stop(STOP_GRACE_S)
        if handler is not None:
            await handler.close()
        printer.close()
    return inode


def main() -> None:
    args = parse_args(sys.argv[1:])
    if args.act_as_virt_handler:
        args.act_as_virt_handler = os.path.abspath(args.act_as_virt_handler)
    # logs.configure writes to whatever sys.stdout is at that moment; stdout is reserved
    # for event lines, so point the loggers at stderr.
    with contextlib.redirect_stdout(sys.stderr):
        logs.configure("virt-launcher-events", args.verbosity)
    path = os.path.abspath(args.socket)
    _remove_stale_socket(path)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        inode = runner.run(serve(args, path))
    # grpc usually unlinks the socket on stop; if not, remove it, but only if it is still
    # ours (a successor may already be listening on the same path).
    if inode is not None and _socket_inode(path) == inode:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    structlog.get_logger().info("stopped", socket=path)
    sys.exit(0)


if __name__ == "__main__":
    main()
