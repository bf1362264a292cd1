"""Example hook sidecar that runs a script, as KubeVirt's sidecar-shim does
(cmd/sidecars/sidecar_shim.go): the hook's logic is any executable, e.g. from a ConfigMap
(the hookSidecars annotation's configMap.hookPath).

    OnDefineDomain:   <on-define-domain> --vmi <VMI JSON> --domain <domain XML>
                      -> the new domain XML on stdout
    PreCloudInitIso:  <pre-cloud-init-iso> --vmi <VMI JSON> --cloud-init <CloudInitData JSON>
                      -> the new CloudInitData JSON on stdout

The executables default to KubeVirt's names looked up on PATH ("onDefineDomain",
"preCloudInitIso"); a hook point whose executable is absent is not announced. The script's
stderr is logged; a non-zero exit fails the call with its last stderr lines. Socket:
<socket-dir>/<name>.sock (default name "shim").

    python -m hack.hooks.shim --version v1alpha3 [--on-define-domain PATH]
                              [--pre-cloud-init-iso PATH] [--socket-dir DIR] [--name NAME]
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Sequence

import structlog

from launcher.hooks.sidecar import (
    HookFailed,
    Sidecar,
    arg_parser,
    serve,
    socket_path,
    versions_from,
)
from launcher.ladder import terminate
from launcher.logs import configure

STDERR_TAIL = 5


async def run_script(argv: Sequence[str]) -> bytes:
    """The script's stdout; HookFailed on a non-zero exit. Killed (through the terminate
    ladder) when the launcher's call is cancelled or times out."""
    log = structlog.get_logger().bind(script=argv[0])
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await proc.communicate()
    except asyncio.CancelledError:
        await terminate(proc, log, term_timeout_s=1.0)
        raise
    for line in err.decode(errors="replace").splitlines():
        log.info("script stderr", line=line)
    if proc.returncode != 0:
        tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-STDERR_TAIL:])
        raise HookFailed(f"{argv[0]} exited with {proc.returncode}: {tail}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = arg_parser("hook sidecar that runs a script (KubeVirt's sidecar-shim)")
    p.add_argument("--on-define-domain", default=shutil.which("onDefineDomain"),
                   metavar="PATH", help="the OnDefineDomain executable")
    p.add_argument("--pre-cloud-init-iso", default=shutil.which("preCloudInitIso"),
                   metavar="PATH", help="the PreCloudInitIso executable")
    ns = p.parse_args(argv)
    configure("shim-hook-sidecar")
    name = ns.name or "shim"
    define_script, cloud_init_script = ns.on_define_domain, ns.pre_cloud_init_iso

    async def on_define_domain(domain_xml: bytes, vmi_json: bytes) -> bytes:
        return await run_script([define_script, "--vmi", vmi_json.decode(),
                                 "--domain", domain_xml.decode()])

    async def pre_cloud_init_iso(source: bytes, vmi_json: bytes,
                                 data: bytes) -> tuple[bytes, bytes]:
        out = await run_script([cloud_init_script, "--vmi", vmi_json.decode(),
                                "--cloud-init", data.decode()])
        return b"", out

    sidecar = Sidecar(
        name=name, versions=versions_from(ns),
        on_define_domain=on_define_domain if define_script else None,
        pre_cloud_init_iso=pre_cloud_init_iso if cloud_init_script else None,
        priorities={"OnDefineDomain": ns.priority, "PreCloudInitIso": ns.priority})
    asyncio.run(serve(sidecar, socket_path(ns.socket_dir, name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
