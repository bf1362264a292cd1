"""virt-launcher: thin entry point."""

# ruff: noqa: E402 - the signal mask below comes before the other imports, on purpose
from __future__ import annotations

import signal

# Before anything else is imported (grpc, libvirt, uvloop take a while): until the
# supervisor has its handlers (and unblocks these), a termination signal waits instead of
# killing us, so whenever it comes it takes the graceful path. The monitor starts us with
# them blocked already; this covers a launcher run directly (its window is only the
# interpreter's own start-up). This module is the executable's, imported by nothing else.
signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
                                          signal.SIGHUP))

import asyncio
import ctypes
import os
import sys

# gRPC core prints its own unstructured lines ("Got goaway", ...) to stderr unless told
# otherwise; it reads this when first imported, so before anything imports grpc.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import structlog
import uvloop

from launcher import flags, logs
from launcher.exitcodes import ExitCode
from launcher.paths import MAX_SOCKET_PATH, Paths, derive
from launcher.setup import SetupError, prepare
from launcher.supervisor import Launcher

M_ARENA_MAX = -8  # glibc's mallopt parameter
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """glibc gives threads their own malloc arenas (up to 8 per CPU) and keeps what they
    freed; with gRPC's, libvirt's and the executors' ~17 threads that is about 1 MiB of RSS
    for nothing (measured with hack/bench_cmd.py), against a 60 MiB budget. Two arenas keep
    the event loop and the worker threads apart. In-process, before any thread exists, so
    the daemons and QEMU the launcher starts keep glibc's default. MALLOC_ARENA_MAX in the
    environment still wins."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    # The interpreter's own symbols include libc's; mallopt is absent on musl, which has
    # no arenas to limit.
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def socket_path_too_long(paths: Paths) -> str | None:
    """The first UNIX socket the launcher or its daemons bind whose path does not fit in
    sun_path (108 bytes with the NUL), as a message naming the flags that place it. (The
    guest agent's socket depends on the domain XML: the Syncer checks the converter's.)"""
    sockets = [paths.cmd_init_socket, paths.cmd_socket, paths.notify_socket,
               *paths.stale_sockets(paths.daemon), *paths.stale_sockets("virtlogd")]
    for path in sockets:
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            return (f"--runtime-root / --kubevirt-share-dir: socket path {path} is longer "
                    f"than {MAX_SOCKET_PATH} bytes (the UNIX socket limit)")
    return None


def main() -> None:
    limit_malloc_arenas()
    sys.exit(run(sys.argv[1:]))


def run(argv: list[str]) -> int:
    try:
        opts = flags.parse(argv, prog="virt-launcher")
    except flags.FlagError as exc:
        logs.configure("virt-launcher")
        structlog.get_logger().error("invalid command line", error=str(exc))
        return ExitCode.USAGE
    logs.configure("virt-launcher", opts.verbosity)
    log = structlog.get_logger()
    if opts.simulate_crash:
        log.error("simulated crash (--simulate-crash)")
        return ExitCode.SIMULATED_CRASH
    paths = derive(opts)
    too_long = socket_path_too_long(paths)
    if too_long is not None:
        log.error("invalid command line", error=too_long)
        return ExitCode.USAGE
    if opts.run_as_nonroot and os.geteuid() == 0:
        log.warning("--run-as-nonroot given but running as root; the daemons run as root "
                    "in session mode")
    # Everything the launcher creates (sockets, configs, logs) is private unless made
    # otherwise on purpose (KubeVirt runs with umask 0).
    os.umask(0o077)
    try:
        prepare(opts, paths)
    except SetupError as exc:
        log.error("setup failed", error=str(exc))
        return ExitCode.SETUP_FAILED
    log.info("starting", runtime_root=paths.root, daemon=opts.libvirt_daemon,
             mode="session" if opts.run_as_nonroot else "system", uri=paths.uri,
             pid=os.getpid())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            return int(runner.run(Launcher(opts, paths).run()))
        # The outermost boundary: a bug must end as one structured error line with its
        # traceback and exit code 1, not as raw text on stderr (teardown already ran in the
        # lifecycle's finally blocks).
        except Exception as exc:
            log.exception("launcher failed unexpectedly", error_type=type(exc).__name__)
            return ExitCode.ERROR


if __name__ == "__main__":
    main()
