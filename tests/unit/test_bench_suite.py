"""hack/bench.py's plumbing on synthetic inputs: medians, targets, the JSON it assembles.
Nothing here starts a process."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hack import bench


def full_samples(**override: list[float]) -> dict[str, list[float]]:
    base = {
        "monitor_rss_mib": [13.2, 13.3, 13.1, 13.25, 13.2],
        "launcher_rss_mib": [58.0, 59.0, 58.5],
        "launcher_idle_rss_mib": [57.0, 57.5, 57.2],
        "ready_s": [0.61, 0.58, 0.7, 0.6, 0.65, 0.59],
        "ready_overhead_s": [0.3, 0.28, 0.35, 0.31, 0.3, 0.29],
        "daemons_ready_s": [0.31, 0.3, 0.35, 0.29, 0.35, 0.3],
        "daemons_alone_ready_s": [0.2, 0.22, 0.21, 0.25, 0.2],
        "relay_p50_ms": [1.0, 0.9, 1.1],
        "relay_p99_ms": [1.6, 1.5, 2.0],
        "grpc_uds_rtt_p50_ms": [0.6, 0.7, 0.65],
        "grpc_uds_rtt_p99_ms": [2.1, 2.2, 2.0],
        "ping_p50_ms": [0.5, 0.52, 0.55],
        "guestinfo_p50_ms": [0.6, 0.61, 0.62],
        "ping_16_clients_paced_p50_ms": [0.8, 0.9, 0.85],
        "guestinfo_16_clients_paced_p50_ms": [0.9, 0.95, 0.97],
        "qemu_exit_detect_ms": [3.0, 2.5, 4.0],
        "burst_events_per_s": [20000.4, 21000.0, 19000.0],
        "shutdown_graceful_s": [2.5, 2.4, 2.6],
        "shutdown_forced_s": [3.8, 3.9, 3.7],
        "shutdown_forced_overshoot_s": [0.8, 0.9, 0.7],
        "migration_total_s": [1.7, 1.6, 1.75],
        "migration_downtime_ms": [230.0, 175.0, 245.0],
        "migration_postcopy_total_s": [8.4],
        "hotplug_disk_attach_ms": [180.0, 166.2, 298.6, 170.0, 175.5],
        "hotplug_disk_detach_ms": [221.6, 218.9, 230.0, 219.0, 225.0],
        "hotplug_disk_attach_rpc_ms": [71.8, 41.1, 45.0, 44.0, 43.0],
        "hotplug_disk_detach_rpc_ms": [87.8, 84.9, 86.0, 85.0, 86.5],
        "hotplug_exec_rtt_ms": [138.4],
    }
    base.update(override)
    return base


def assemble(samples: dict[str, list[float]], **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"machine": {"nproc": 2}, "checks": {}, "errors": [],
                            "wall_s": 123.45, "grace_s": 3}
    args.update(kw)
    return bench.assemble(samples, **args)


def test_median_and_rounding() -> None:
    assert bench.median([]) is None
    assert bench.median([3.0, 1.0, 2.0]) == 2.0
    assert bench.median([1.0, 2.0, 3.0, 10.0]) == 2.5
    figs = bench.figures_from({"monitor_rss_mib": [13.2345, 13.0, 14.0],
                               "burst_events_per_s": [1000.6], "relay_p99_ms": [1.23456]})
    assert figs["monitor_rss_mib"] == 13.23
    assert figs["burst_events_per_s"] == 1001
    assert figs["relay_p99_ms"] == 1.235
    assert figs["ping_p50_ms"] is None
    assert set(figs) == set(bench.FIGURES)


def test_every_required_key_is_produced() -> None:
    out = assemble(full_samples())
    for key in bench.REQUIRED_KEYS:
        assert key in out, key
    for fig in bench.REQUIRED_FIGURES:
        assert isinstance(out[fig], int | float), fig
        assert out["runs"][fig] >= 1
    assert out["complete"] is True
    assert out["missing"] == []
    assert out["machine"] == {"nproc": 2}
    json.dumps(out)  # serialisable as is


def test_runs_and_samples_per_figure() -> None:
    out = assemble(full_samples())
    assert out["runs"]["monitor_rss_mib"] == 5
    assert out["runs"]["ready_s"] == 6
    assert out["monitor_rss_mib"] == 13.2
    assert out["samples"]["launcher_rss_mib"] == [58.0, 59.0, 58.5]
    assert out["ready_overhead_vs_alone_s"] == round(0.605 - 0.21, 3)


def test_hotplug_figures_are_medians_of_every_round() -> None:
    out = assemble(full_samples())
    assert out["hotplug_disk_attach_ms"] == 175.5
    assert out["runs"]["hotplug_disk_detach_ms"] == 5
    assert max(out["samples"]["hotplug_disk_attach_ms"]) == 298.6
    assert out["hotplug_exec_rtt_ms"] == 138.4
    for fig in ("hotplug_disk_attach_ms", "hotplug_disk_detach_ms",
                "hotplug_disk_attach_rpc_ms", "hotplug_disk_detach_rpc_ms",
                "hotplug_exec_rtt_ms"):
        assert fig in bench.FIGURES and fig in bench.METHODS, fig


def test_targets_all_met() -> None:
    out = assemble(full_samples())
    assert set(out["targets_met"]) == {t.figure for t in bench.TARGETS}
    assert all(out["targets_met"].values())
    assert out["all_targets_met"] is True
    relay = out["targets"]["relay_p99_ms"]
    assert relay["limit"] == round(3 * 2.1 + 2, 3)
    assert out["kubevirt_budgets_met"] == {"monitor_rss_mib": True,
                                           "launcher_rss_mib": True,
                                           "qemu_exit_detect_ms": True,
                                           "migration_downtime_ms": True}
    assert out["targets"]["qemu_exit_detect_ms"]["kubevirt_budget"] == 1000.0


@pytest.mark.parametrize(("figure", "values"), [
    ("monitor_rss_mib", [16.0, 16.0, 16.0]),
    ("launcher_rss_mib", [61.0]),
    ("ready_overhead_s", [0.6]),
    ("qemu_exit_detect_ms", [150.0]),
    ("shutdown_forced_overshoot_s", [2.5]),
    ("relay_p99_ms", [9.0]),  # limit 3 * 2.1 + 2 = 8.3
    ("migration_downtime_ms", [310.0]),
    ("migration_total_s", [12.0]),
])
def test_a_missed_target_is_data(figure: str, values: list[float]) -> None:
    out = assemble(full_samples(**{figure: values}))
    assert out["targets_met"][figure] is False
    assert out["all_targets_met"] is False
    assert out["complete"] is True  # the run still counts as having run
    others = {k: v for k, v in out["targets_met"].items() if k != figure}
    assert all(others.values())


def test_kubevirt_budget_separate_from_target() -> None:
    out = assemble(full_samples(monitor_rss_mib=[20.0]))
    assert out["targets_met"]["monitor_rss_mib"] is False
    assert out["kubevirt_budgets_met"]["monitor_rss_mib"] is True


def test_missing_figure_is_reported_not_judged() -> None:
    samples = full_samples()
    del samples["qemu_exit_detect_ms"]
    del samples["grpc_uds_rtt_p99_ms"]
    out = assemble(samples, errors=["qemu exit run 1: boom"])
    assert out["qemu_exit_detect_ms"] is None
    assert out["targets_met"]["qemu_exit_detect_ms"] is None
    assert out["targets_met"]["relay_p99_ms"] is None  # no floor, no limit
    assert out["complete"] is False
    assert out["missing"] == ["grpc_uds_rtt_p99_ms", "qemu_exit_detect_ms"]
    assert out["errors"] == ["qemu exit run 1: boom"]
    assert out["all_targets_met"] is False


def test_log_helpers() -> None:
    t = bench.parse_ts("2026-11-22T05:58:07.250000Z")
    assert t == pytest.approx(bench.parse_ts("2026-11-22T05:58:07+00:00") + 0.25)
    records: list[dict[str, Any]] = [
        {"msg": "daemon started", "daemon": "virtlogd"},
        {"msg": "daemon ready", "daemon": "virtlogd", "startup_s": 0.05,
         "timestamp": "2026-11-22T05:58:07.000000Z"},
        {"msg": "daemon ready", "daemon": "libvirtd", "startup_s": 0.25,
         "timestamp": "2026-11-22T05:58:07.300000Z"},
        {"msg": "daemon ready", "daemon": "libvirtd", "startup_s": 9.0,  # a restart
         "timestamp": "2026-11-22T05:59:00.000000Z"},
    ]
    assert bench.daemons_startup_s(records) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="2 'daemon ready'"):
        bench.daemons_startup_s(records[:2])
    first = bench.first_record(records, "daemon ready")
    assert first is not None and first["daemon"] == "virtlogd"
    later = bench.first_record(records, "daemon ready", after=t + 0.1)
    assert later is not None and later["startup_s"] == 9.0
    assert bench.first_record(records, "QEMU exited") is None


def test_every_target_figure_is_a_figure_with_a_method() -> None:
    for t in bench.TARGETS:
        assert t.figure in bench.FIGURES
    for fig in bench.REQUIRED_FIGURES:
        assert fig in bench.METHODS, fig


def test_samples_section_records_failures() -> None:
    s = bench.Samples()

    def one(i: int) -> None:
        if i == 1:
            raise RuntimeError("no VM")
        s.add("ready_s", 0.5 + i)
        s.add("ready_overhead_s", None)

    s.section("demo", 3, one)
    assert s.values == {"ready_s": [0.5, 2.5]}
    assert s.errors == ["demo run 2: RuntimeError: no VM"]
