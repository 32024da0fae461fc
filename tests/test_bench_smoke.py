"""`python -m bench run --all --quick` end to end: every scenario (surge too), every proxy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_quick_bench_writes_sane_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--all", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=360, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert (out / "results.md").exists()
    assert (out / "latency_percentiles.png").stat().st_size > 0
    assert results["ceiling"]["throughput_rps"] > 0
    rows = results["summary"]
    ran = {r["proxy"] for r in rows}
    assert ran, "no proxy ran"
    # Every proxy that ran covered every scenario except the skipped ones.
    skipped = {(s["scenario"], s["proxy"]) for s in results["skipped_scenarios"]}
    for proxy in ran:
        for scenario in results["scenarios"]:
            if (scenario, proxy) not in skipped:
                assert any(r["scenario"] == scenario and r["proxy"] == proxy for r in rows), (
                    scenario, proxy)
    for r in rows:
        where = f"{r['scenario']}/{r['proxy']}"
        assert r["throughput_rps"] > 0, where
        assert 0 < r["p50_us"] <= r["p90_us"] <= r["p99_us"] <= r["p999_us"], where
        assert r["p50_us"] < 10_000_000, where
        assert 0.0 <= r["error_rate"] <= 1.0, where
    steady = [r for r in rows if r["scenario"] == "steady"]
    assert all(r["error_rate"] == 0.0 for r in steady), steady
    uploads = [r for r in rows if r["scenario"] == "upload-storm"]
    assert all(r["upload_mib_per_s"] > 0 for r in uploads), uploads
    failure = [r for r in results["runs"] if r["scenario"] == "backend-failure"]
    assert failure, "backend-failure did not run"
    check_surge(out)


def check_surge(out: Path) -> None:
    """The surge scenario ran every phase on each variant that ran, or said why not."""
    surge = json.loads((out / "surge.json").read_text())
    assert (out / "surge.md").exists()
    assert (out / "surge.png").stat().st_size > 0
    ran = {r["proxy"] for r in surge["rows"]}
    assert ran, surge["unsupported"]
    assert ran | set(surge["unsupported"]) >= {"lbproxy", "lbproxy-off", "haproxy", "nginx"}
    for proxy in ran:
        assert {r["phase"] for r in surge["rows"] if r["proxy"] == proxy} == {
            p["name"] for p in surge["phases"]}, proxy
    for r in surge["rows"]:
        where = f"surge {r['phase']}/{r['proxy']}"
        sent = sum(c["sent"] for c in r["classes"].values())
        assert sent > 0, where
        # By completion time goodput cannot pass capacity, but for the requests already in
        # service when the short (--quick) window opens.
        assert 0.0 <= r["goodput"] <= 1.05, where
        assert r["refused"] <= sent and r["refused_retry_after"] <= r["refused"], where
        assert 0 < r["admitted_us"]["p50"] <= r["admitted_us"]["p99"], where
