#!/usr/bin/env python3
"""The cost of hook sidecars: one JSON object on stdout (progress on stderr).

Real sidecar processes on real UNIX sockets (hack/hooks/smbios.py, and the tests' sidecar
tests/support/hook_sidecar.py), the launcher's HookManager calling them as a Sync does, with
the test guest's VMI as the launcher's converter turns it into domain XML:

- collect_s: --hook-sidecars 3 with the three already listening -> collected (median);
- on_define_domain_ms: one OnDefineDomain through the SMBIOS sidecar (p50/p95/max of
  --calls calls after warm-up), on the persistent channel the launcher keeps;
- on_define_domain_dial_per_call_ms: the same with a new channel per call, as KubeVirt's
  launcher dials each sidecar for each call;
- on_define_domain_chain3_ms: three sidecars in a row (what a Sync with three pays);
- pre_cloud_init_iso_ms: one PreCloudInitIso (p50/p95/max);
- shutdown_ms: Shutdown to the three (each then exits).

No target is set by the issue; the README records the figures. Exits 0 when it ran.

Run from the repository root: python -m hack.bench_hooks [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from launcher import flags, logs
from launcher.converter import convert
from launcher.converter.plan import CloudInitIso
from launcher.hooks.api import ON_DEFINE_DOMAIN
from launcher.hooks.manager import HookManager
from launcher.paths import derive
from launcher.vm.options import options_from_request
from tests.support.guestvm import vmi
from tests.support.hooks import SMBIOS_SIDECAR, TEST_SIDECAR, sidecars


def log(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def summary(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {"p50": round(statistics.median(ordered), 3),
            "p95": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 3),
            "max": round(ordered[-1], 3), "n": len(ordered)}


async def timed(fn: Callable[[], Awaitable[Any]], calls: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        await fn()
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def measure(hooks_dir: Path, domain_xml: str, doc: dict[str, Any],
                  calls: int) -> dict[str, Any]:
    res: dict[str, Any] = {"domain_xml_bytes": len(domain_xml),
                           "vmi_json_bytes": len(json.dumps(doc))}
    collect = []
    for _ in range(5):
        m = HookManager(str(hooks_dir), 3, 30.0)
        t0 = time.perf_counter()
        await m.run()
        await m.ready()
        collect.append(time.perf_counter() - t0)
        await m.close()
    res["collect_s"] = round(statistics.median(collect), 4)

    m = HookManager(str(hooks_dir), 3, 30.0)
    await m.run()
    await m.ready()
    smbios = next(s for s in m.sidecars if s.name == "smbios")
    only_smbios = HookManager(str(hooks_dir), 0, 0.0)
    only_smbios.sidecars = [smbios]
    only_smbios.count = 1

    async def one() -> None:
        _, changed = await only_smbios.on_define_domain(domain_xml, doc)
        assert changed == ["smbios"]
    res["on_define_domain_ms"] = summary(await timed(one, calls))

    params = smbios.version.pb2.OnDefineDomainParams(
        domainXML=domain_xml.encode(), vmi=json.dumps(doc).encode())

    async def dialled() -> None:
        async with grpc.aio.insecure_channel(f"unix:{smbios.socket}") as channel:
            await smbios.version.stub(channel).OnDefineDomain(params, timeout=60)
    res["on_define_domain_dial_per_call_ms"] = summary(await timed(dialled, calls))

    async def chain() -> None:
        _, changed = await m.on_define_domain(domain_xml, doc)
        assert len(changed) == 3
    res["on_define_domain_chain3_ms"] = summary(await timed(chain, calls))
    res["order"] = [s.name for s in m.subscribed(ON_DEFINE_DOMAIN)]

    prep = CloudInitIso("cloudinit", "/x/noCloud.iso", "noCloud",
                        user_data=b"#cloud-config\nhostname: testguest\n",
                        meta_data=b'{"instance-id":"bench.default"}')

    async def cloud_init() -> None:
        await m.pre_cloud_init_iso(prep, doc)
    res["pre_cloud_init_iso_ms"] = summary(await timed(cloud_init, calls))

    t0 = time.perf_counter()
    await m.shutdown(10.0)
    res["shutdown_ms"] = round((time.perf_counter() - t0) * 1000, 3)
    await m.close()
    await only_smbios.close()
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    ns = parser.parse_args(argv)
    out = sys.stdout
    base = Path(tempfile.mkdtemp(prefix="pvl-bh-", dir="/tmp"))
    # stdout carries only the JSON: the launcher's logs and the sidecars' go to stderr
    with contextlib.redirect_stdout(sys.stderr):
        logs.configure("bench-hooks", 0)
        res = run(base, ns.calls)
    out.write(json.dumps(res) + "\n")
    return 0


def run(base: Path, calls: int) -> dict[str, Any]:
    try:
        opts = flags.parse(["--runtime-root", str(base / "r"), "--name", "bench",
                            "--namespace", "default", "--uid", "bench-uid",
                            "--allow-emulation"], environ={})
        doc = vmi(name="bench", namespace="default", uid="bench-uid")
        doc["metadata"]["annotations"] = {
            "smbios.vm.kubevirt.io/baseBoardManufacturer": "Bench"}
        conversion = convert(doc, options_from_request(None, opts=opts, paths=derive(opts),
                                                       emulation=True))
        hooks_dir = base / "hooks"
        with sidecars(hooks_dir) as group:
            log("starting 3 sidecars")
            group.start(SMBIOS_SIDECAR, "smbios", "--priority", "5")
            group.start(TEST_SIDECAR, "second", "--append", "b", subdir="b")
            group.start(TEST_SIDECAR, "third", "--append", "c", "--user-data", "# bench",
                        subdir="c")
            log(f"measuring ({calls} calls per figure)")
            res = asyncio.run(measure(hooks_dir, conversion.xml, doc, calls))
            exits = [s.proc.wait(timeout=10) for s in group.procs]
            res["sidecars_exited_after_shutdown"] = exits == [0, 0, 0]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return res


if __name__ == "__main__":
    sys.exit(main())
