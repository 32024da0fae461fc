"""`python -m bench run --all --quick` end to end: every scenario, every available proxy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_bench_writes_sane_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--all", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=200, check=False,
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
