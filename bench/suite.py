"""The standard comparison: ceiling, every scenario x proxy x repeat, wrk cross-check.

Owns the loop order and the aggregation (medians over repeats, ratios to HAProxy); the
runner does single runs, report/plots write the results.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any

from bench import procs, wrkcheck
from bench.peers import SURGE_ONLY, Peer, PeerUnavailable
from bench.progress import LiveProgress
from bench.runner import (
    GENERATOR_BOUND_SHARE,
    GENERATOR_BUSY,
    BenchRun,
    available_peers,
    bench_run,
    summarize,
)
from bench.scenarios import Scenario, load_all
from bench.surge import run_surge

BASELINE = "haproxy"
CALM_SEND_LAG_US = 1000  # a wrk-check round whose generator ran later than this is disturbed
QUICK_FACTOR = 0.1


def run_suite(
    scenario_names: list[str] | None,
    proxy_names: list[str],
    repeats: int,
    quick: bool,
    gen_procs: int | None = None,
    wrk_check: bool = True,
    progress: LiveProgress | None = None,
) -> dict[str, Any]:
    """Run the scenarios against the proxies; everything report.py and plots.py need."""
    progress = progress or LiveProgress()
    factor = QUICK_FACTOR if quick else 1.0
    scenarios = [s.scaled(factor) for s in load_all(scenario_names)]
    # Phased scenarios (surge) bring their own origins and peers and run once, after the rest.
    phased = [s for s in scenarios if s.phases]
    scenarios = [s for s in scenarios if not s.phases]
    steady = next(s for s in load_all(["steady"])).scaled(factor)
    # Surge-only variants (lbproxy-off, lbproxy-plain) have no place in the other scenarios.
    peers, skipped = available_peers([n for n in proxy_names if n not in SURGE_ONLY], progress)
    started = time.time()
    runs: list[dict[str, Any]] = []
    scenario_skips: list[dict[str, str]] = []
    console = progress.console
    ceiling: dict[str, Any] | None = None
    surge: dict[str, Any] | None = None
    with bench_run(quick, gen_procs, progress) as br:
        console.print(f"[bold]layout:[/] {br.layout.describe()}")
        if scenarios:
            ceiling = br.measure_ceiling(steady)
            console.print(f"[bold]generator ceiling[/] (steady workload, no proxy): "
                          f"{ceiling['throughput_rps']:.0f} req/s, p50 "
                          f"{ceiling['latency_us']['p50'] / 1000:.2f} ms, generator CPU "
                          f"{ceiling['generator_cpu']:.0%}")
        for repeat in range(repeats if scenarios else 0):
            for scenario in scenarios:
                for peer in list(peers):
                    if peer.name in skipped:
                        continue
                    try:
                        _ensure_capacity(br, scenario, steady, peer, peers, skipped)
                        result = br.run_scenario(scenario, peer, [p.name for p in peers
                                                                  if p.name not in skipped],
                                                 repeat)
                    except PeerUnavailable as exc:
                        if scenario.requires:
                            scenario_skips.append({"scenario": scenario.name, "proxy": peer.name,
                                                   "reason": str(exc)})
                            console.print(f"[yellow]{scenario.name}: {exc}[/]")
                        else:
                            skipped[peer.name] = str(exc)
                            console.print(f"[yellow]skipping {peer.name}: {exc}[/]")
                        continue
                    runs.append(result)
                    if scenario.name == "steady" and peer.name not in br.capacity:
                        br.capacity[peer.name] = float(result["ok_rps"])
                    _print_run(progress, result)
        wrk = _wrk_check(br, peers, skipped, steady) if wrk_check and scenarios else None
        for scenario in phased:
            surge = run_surge(br, scenario, proxy_names)
    return {
        "meta": machine(br, started, quick, repeats),
        "ceiling": _strip(ceiling) if ceiling else None,
        "capacity_rps": br.capacity,
        "wrk_check": wrk,
        "skipped_proxies": skipped,
        "skipped_scenarios": _dedupe(scenario_skips),
        "scenarios": {s.name: s.description for s in scenarios},
        "summary": aggregate(runs, br.ceiling_rps),
        "runs": runs,
        "surge": surge,
    }


def _ensure_capacity(br: BenchRun, scenario: Scenario, steady: Scenario, peer: Peer,
                     peers: list[Peer], skipped: dict[str, str]) -> None:
    """Open-loop rates are shares of capacity: measure any capacity not yet known."""
    if scenario.mode != "open" or scenario.rate_unit == "rps":
        return
    needed = [peer] if scenario.rate_unit == "capacity" else [
        p for p in peers if p.name not in skipped]
    for p in needed:
        if p.name not in br.capacity:
            try:
                br.capacity[p.name] = br.probe_capacity(steady, p)
            except PeerUnavailable as exc:
                skipped[p.name] = str(exc)
                if p is peer:
                    raise


def _wrk_check(br: BenchRun, peers: list[Peer], skipped: dict[str, str],
               steady: Scenario) -> dict[str, Any] | None:
    """Our open-loop latency vs wrk's on the baseline proxy at a moderate, paced rate.

    wrk (paced by a Lua delay()) runs first; ours then runs open loop at the rate wrk
    achieved. Alternated a few times; medians compared, so a noisy moment on a shared
    machine does not decide the verdict.
    """
    live = [p for p in peers if p.name not in skipped]
    if not live:
        return None
    peer = next((p for p in live if p.name == BASELINE), live[0])
    duration = 1 if br.quick else 2
    rounds = 1 if br.quick else 6
    keys = {"dist": "uniform", "n": 1000}
    assert br.backends is not None
    br.backends.restart_dead()
    peer.start(br.workdir, br.backends, br.layout.proxy_cpus)
    ours_runs, wrk_runs = [], []
    try:
        for _ in range(rounds):
            probe = Scenario(name="wrk-check", description="", duration_s=float(duration),
                             warmup_s=0.0, mode="closed", connections=1, keys=keys,
                             range_bytes=steady.range_bytes)
            try:
                wrk = wrkcheck.run_wrk(peer.port, wrkcheck.WRK_CONNECTIONS, duration, probe,
                                       br.backends.segment_files, br.backends.segment_bytes,
                                       br.workdir, br.layout.gen_cpus)
            except (FileNotFoundError, RuntimeError) as exc:
                br.console_progress.console.print(f"[yellow]wrk check skipped: {exc}[/]")
                return {"proxy": peer.name, "skipped": str(exc)}
            rate = float(wrk["rps"])
            scenario = Scenario(name="wrk-check", description="", duration_s=float(duration),
                                warmup_s=duration * 0.1, mode="open", connections=8, rate=rate,
                                keys=keys, range_bytes=steady.range_bytes)
            ours = summarize(br.run_load(f"wrk check · ours · {peer.name}", scenario,
                                         br.workload(scenario, [("127.0.0.1", peer.port)], rate,
                                                     None, seed=3)), scenario)
            wrk_runs.append(wrk)
            ours_runs.append({**ours["latency_us"], "rps": ours["throughput_rps"],
                              "service_p50": ours["service_us"]["p50"],
                              "send_lag_p99": ours["send_lag_us"]["p99"]})
    finally:
        peer.stop()

    def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
        keys = [k for k in ("p50", "p90", "p99", "mean", "rps", "service_p50", "send_lag_p99")
                if k in runs[0]]
        return {k: statistics.median(r[k] for r in runs) for k in keys}

    # A round in which the generator itself ran late (another process took its core) says
    # nothing about how it measures; judge on the calm rounds and report how many there were.
    calm = [i for i, o in enumerate(ours_runs) if o["send_lag_p99"] <= CALM_SEND_LAG_US]
    used = calm or list(range(len(ours_runs)))
    ours_med = median_of([ours_runs[i] for i in used])
    wrk_med = median_of([wrk_runs[i] for i in used])
    result = {
        "proxy": peer.name,
        "rate_rps": ours_med["rps"],
        "rounds": rounds,
        "rounds_used": len(used),
        "calm_rounds": len(calm),
        "ours": ours_med,
        "wrk": wrk_med,
        "ours_runs": ours_runs,
        "wrk_runs": wrk_runs,
        **wrkcheck.compare(ours_med, wrk_med),
    }
    verdict = "within" if result["within_tolerance"] else "NOT within"
    br.console_progress.console.print(
        f"[bold]wrk cross-check[/] on {peer.name} at {ours_med['rps']:.0f} req/s: p50 ours "
        f"{ours_med['p50']:.0f} us vs wrk {wrk_med['p50']:.0f} us ({result['p50_diff']:+.0%}, "
        f"{verdict} {wrkcheck.TOLERANCE:.0%})")
    return result


def aggregate(runs: list[dict[str, Any]], ceiling_rps: float) -> list[dict[str, Any]]:
    """Median over repeats per (scenario, proxy), ratios to HAProxy, generator-bound flags."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["scenario"], r["proxy"]), []).append(r)
    rows = []
    for (scenario, proxy), rs in groups.items():
        med = statistics.median
        row: dict[str, Any] = {
            "scenario": scenario,
            "proxy": proxy,
            "repeats": len(rs),
            "throughput_rps": med(r["throughput_rps"] for r in rs),
            "ok_rps": med(r["ok_rps"] for r in rs),
            "p50_us": med(r["latency_us"]["p50"] for r in rs),
            "p90_us": med(r["latency_us"]["p90"] for r in rs),
            "p99_us": med(r["latency_us"]["p99"] for r in rs),
            "p999_us": med(r["latency_us"]["p99.9"] for r in rs),
            "error_rate": med(r["error_rate"] for r in rs),
            "errors_by": _sum_counts(r["errors_by"] for r in rs),
            "upload_mib_per_s": med(r["uploads"]["mib_per_s"] for r in rs),
            "offered_rps": rs[0]["offered_rps"],
            "send_lag_p99_us": med(r["send_lag_us"]["p99"] for r in rs),
            "generator_cpu": med(r["generator_cpu"] for r in rs),
            "throughput_all": [r["throughput_rps"] for r in rs],
            "p99_all": [r["latency_us"]["p99"] for r in rs],
        }
        row["generator_bound"] = bool(
            (ceiling_rps and row["throughput_rps"] >= GENERATOR_BOUND_SHARE * ceiling_rps)
            or row["generator_cpu"] >= GENERATOR_BUSY)
        rows.append(row)
    base = {r["scenario"]: r for r in rows if r["proxy"] == BASELINE}
    for row in rows:
        b = base.get(row["scenario"])
        row["throughput_vs_haproxy"] = (
            round(row["throughput_rps"] / b["throughput_rps"], 2)
            if b and b["throughput_rps"] else None)
        row["p99_vs_haproxy"] = (
            round(row["p99_us"] / b["p99_us"], 2) if b and b["p99_us"] else None)
    return rows


def _sum_counts(counts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return out


def _dedupe(skips: list[dict[str, str]]) -> list[dict[str, str]]:
    seen, out = set(), []
    for s in skips:
        key = (s["scenario"], s["proxy"])
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def _strip(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "timeline"}


def _print_run(progress: LiveProgress, r: dict[str, Any]) -> None:
    lat = r["latency_us"]
    progress.console.print(
        f"  {r['scenario']:<16} {r['proxy']:<8} run {r['repeat'] + 1}: "
        f"{r['throughput_rps']:>8.0f} req/s  p50 {lat['p50'] / 1000:6.2f} ms  "
        f"p99 {lat['p99'] / 1000:7.2f} ms  p99.9 {lat['p99.9'] / 1000:7.2f} ms  "
        f"errors {r['errors']}", highlight=False)


def machine(br: BenchRun, started: float, quick: bool, repeats: int) -> dict[str, Any]:
    """Where and how the numbers were made."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                         "")
    except OSError:
        pass
    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "cpu": model or platform.processor(),
        "cores": len(procs.available_cpus()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "layout": br.layout.describe(),
        "quick": quick,
        "repeats": repeats,
    }
