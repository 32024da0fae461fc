"""The phased `surge` scenario: load shedding in front of capacity-limited origins.

Owns the order of a surge run (for each phase, each proxy variant: wait for idle origins,
start the proxy, one open-loop run with the class mix, stop it) and the figures of merit:
goodput as a share of the origins' capacity, success per class, p99 of admitted requests,
refusal latency, refusals with `Retry-After`, and after a load step how long until p99 is
back under target or nothing is shed. report.py and plots.py write them.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from bench.classes import OK, Window
from bench.histogram import Histogram
from bench.peers import Peer, PeerUnavailable, surge_peers
from bench.runner import BenchRun
from bench.scenarios import Phase, Scenario

HAPROXY_QUEUE_MS = 100  # the oracle's `timeout queue`: how long a request may wait for a slot
WINDOW_S = 0.1  # resolution of the per-window accounting (by intended send time)
P99_SPAN_S = 0.3  # p99 after a step is judged over spans of this length
MAX_CONNECTIONS = 8000  # the generator's file descriptors are the limit
ORACLE = "haproxy"
# p99 target after a step: this many times the proxy's own unloaded p99 (the goal
# for 2x/3x), unless the phase's goals say otherwise.
P99_TARGET_X_UNLOADED = 2.0


def connections_for(peak_rps: float, timeout_s: float) -> int:
    """Enough connections for every request in flight until the deadline, plus slack.

    Fewer would turn the open loop into a closed one at the proxy: requests would wait in
    the generator (still counted, from their intended time) instead of in the proxy.
    """
    return min(MAX_CONNECTIONS, max(16, math.ceil(peak_rps * (timeout_s + 0.25)) + 16))


def run_surge(br: BenchRun, scenario: Scenario, proxy_names: list[str]) -> dict[str, Any]:
    """Every phase against every variant; the per-run results and the summary rows."""
    assert br.backends is not None
    console = br.console_progress.console
    o = scenario.origins
    br.backends.start_capacity_origins(int(o["count"]), int(o["concurrency"]),
                                       float(o["service_ms"]))
    classes = tuple((c.path_prefix, c.priority) for c in scenario.classes)
    peers, left_out = surge_peers(proxy_names, int(o["concurrency"]), HAPROXY_QUEUE_MS, classes)
    unsupported = dict(left_out)
    for peer in peers:
        try:
            peer.check()
        except PeerUnavailable as exc:
            unsupported[peer.name] = str(exc)
    loadavg = [_loadavg()]
    runs: list[dict[str, Any]] = []
    for index, phase in enumerate(scenario.phases):
        for peer in peers:
            if peer.name in unsupported:
                continue
            try:
                run = run_phase(br, scenario, phase, peer, seed=11 + index)
            except PeerUnavailable as exc:
                unsupported[peer.name] = str(exc)
                console.print(f"[yellow]surge: {exc}[/]")
                continue
            runs.append(run)
            console.print(_line(run), highlight=False)
    loadavg.append(_loadavg())
    return {
        "name": scenario.name,
        "description": scenario.description,
        "capacity_rps": scenario.capacity_rps,
        "origins": dict(o),
        "classes": [{"name": c.name, "path_prefix": c.path_prefix, "share": c.share,
                     "priority": c.priority} for c in scenario.classes],
        "phases": [{"name": p.name, "load": p.load, "step_at_s": p.step_at_s,
                    "step_to": p.step_to, "duration_s": p.duration_s, "warmup_s": p.warmup_s,
                    "baseline": p.baseline, "goals": p.goals} for p in scenario.phases],
        "goals": scenario.goals,
        "haproxy_queue_ms": HAPROXY_QUEUE_MS,
        "timeout_s": scenario.timeout_s,
        "unsupported": unsupported,
        "loadavg": loadavg,
        "rows": evaluate(runs, scenario),
    }


def run_phase(br: BenchRun, scenario: Scenario, phase: Phase, peer: Peer,
              seed: int) -> dict[str, Any]:
    """One phase through one proxy, on origins that start idle; its measurements."""
    assert br.backends is not None
    idle = br.backends.wait_capacity_idle()
    before = br.backends.capacity_stats()
    capacity = scenario.capacity_rps
    run_scenario = replace(scenario, duration_s=phase.duration_s, warmup_s=phase.warmup_s,
                           rate=phase.load * capacity, phases=())
    peer.start(br.workdir, br.backends, br.layout.proxy_cpus)
    try:
        workload = br.workload(run_scenario, [("127.0.0.1", peer.port)], phase.load * capacity,
                               None, seed)
        workload.update(
            connections=connections_for(phase.peak * capacity, scenario.timeout_s),
            classes=[{"name": c.name, "path_prefix": c.path_prefix, "share": c.share}
                     for c in scenario.classes],
            rate_steps=[[t, load * capacity] for t, load in phase.steps()],
            window_s=WINDOW_S,
        )
        merged = br.run_load(f"surge {phase.name} · {peer.name}", run_scenario, workload)
    finally:
        peer.stop()
    after = br.backends.capacity_stats()
    result = phase_result(merged, scenario, phase, capacity)
    result.update(
        proxy=peer.name, origins_idle_before=idle,
        origin_served=sum(a["served"] - b["served"] for a, b in zip(after, before, strict=True)),
        origin_dropped=sum(a["dropped"] - b["dropped"]
                           for a, b in zip(after, before, strict=True)))
    return result


def phase_result(merged: dict[str, Any], scenario: Scenario, phase: Phase,
                 capacity: float) -> dict[str, Any]:
    """Figures of one run from the merged generator results (explicit numbers in tests)."""
    c = merged["classes"]
    window_s = max(phase.duration_s - phase.warmup_s, 1e-9)
    outcomes: list[dict[str, int]] = c["outcomes"]
    admitted = Histogram()
    for h in c["admitted"]:
        admitted.merge(h)
    refused: Histogram = c["refused"]
    sent = sum(sum(o.values()) for o in outcomes)
    per_class = {}
    for name, o in zip(c["names"], outcomes, strict=True):
        n = sum(o.values())
        per_class[name] = {"sent": n, "ok": o.get(OK, 0),
                           "success": round(o.get(OK, 0) / n, 5) if n else None,
                           "outcomes": o}
    drops = {k: v for k, v in merged["errors"]["get"].items()
             if k in ("generator_backlog", "not_sent")}
    result: dict[str, Any] = {
        "phase": phase.name,
        "load": phase.load,
        "step_to": phase.step_to,
        "offered_rps": round((sent + sum(drops.values())) / window_s, 1),
        "goodput_rps": round(c["goodput_ok"] / window_s, 1),
        "goodput": round(c["goodput_ok"] / window_s / capacity, 4),
        "classes": per_class,
        "admitted_us": admitted.summary((50, 99)),
        "refused": refused.total,
        "refused_share": round(refused.total / sent, 5) if sent else 0.0,
        "refusal_us": refused.summary((50, 99)),
        "refused_retry_after": c["refused_retry_after"],
        "timeouts": sum(o.get("timeout", 0) for o in outcomes),
        "generator_drops": drops,
        "send_lag_p99_us": merged["send_lag"].percentile(99),
        "generator_cpu": merged["generator_cpu"],
    }
    if phase.step_at_s is not None:
        result["series"] = series(c["windows"], c["window_s"], phase.duration_s)
        result["windows"] = c["windows"]  # dropped before JSON; evaluate() needs them
    return result


def series(windows: list[Window], window_s: float, duration_s: float) -> list[dict[str, Any]]:
    """Per window over the run: p99 of admitted (ms), refusals/s and 2xx-in-time/s."""
    whole = int(duration_s / window_s + 1e-6)
    out = []
    for i, w in enumerate(windows[:whole]):
        out.append({"t": round(i * window_s, 3),
                    "p99_ms": round(w.admitted.percentile(99) / 1000, 2) if w.admitted.total
                    else None,
                    "refused_per_s": round(w.refused / window_s, 1),
                    "ok_per_s": round(w.ok / window_s, 1)})
    return out


def p99_recovery_s(windows: list[Window], window_s: float, step_at_s: float, duration_s: float,
                   target_us: float, span_s: float = P99_SPAN_S) -> float | None:
    """Seconds after the step until p99 of admitted requests stays under `target_us`.

    The time after the step is cut into spans of span_s (by intended send time); the answer
    is the end of the last span whose p99 is over target (0 when none is), or None when the
    last span of the run is still over it. A span in which nothing was admitted breaks
    nothing: refusing everything is judged by goodput, not here.
    """
    per_span = max(1, round(span_s / window_s))
    first = round(step_at_s / window_s)
    last = int(duration_s / window_s + 1e-6)
    spans = []
    for start in range(first, last - per_span + 1, per_span):
        h = Histogram()
        for w in windows[start:start + per_span]:
            h.merge(w.admitted)
        spans.append(h)
    over = [i for i, h in enumerate(spans) if h.total and h.percentile(99) > target_us]
    if not over:
        return 0.0
    if over[-1] == len(spans) - 1:
        return None
    return round((over[-1] + 1) * per_span * window_s, 3)


def shed_stop_s(windows: list[Window], window_s: float, step_at_s: float,
                duration_s: float) -> float | None:
    """Seconds after the step until the last refusal (by intended send time).

    0 when nothing is refused after the step; None when the run's last window still has
    refusals (shedding had not stopped by the end).
    """
    first = round(step_at_s / window_s)
    last = int(duration_s / window_s + 1e-6)
    refusing = [i for i in range(first, min(last, len(windows))) if windows[i].refused]
    if not refusing:
        return 0.0
    if refusing[-1] == last - 1:
        return None
    return round((refusing[-1] + 1 - first) * window_s, 3)


def evaluate(runs: list[dict[str, Any]], scenario: Scenario) -> list[dict[str, Any]]:
    """Add targets, step figures and goal verdicts to each run; JSON-safe rows."""
    phases = {p.name: p for p in scenario.phases}
    baseline = next((p.name for p in scenario.phases if p.baseline), None)
    unloaded = {r["proxy"]: r["admitted_us"]["p99"] for r in runs if r["phase"] == baseline}
    oracle = {r["phase"]: r["goodput"] for r in runs if r["proxy"] == ORACLE}
    critical = next((c.name for c in scenario.classes if c.priority == "critical"), None)
    rows = []
    for r in runs:
        phase = phases[r["phase"]]
        row = {k: v for k, v in r.items() if k != "windows"}
        row["unloaded_p99_us"] = unloaded.get(r["proxy"])
        row["goodput_x_oracle"] = (round(r["goodput"] / oracle[r["phase"]], 3)
                                   if oracle.get(r["phase"]) else None)
        factor = phase.goals.get("p99_x_unloaded", P99_TARGET_X_UNLOADED)
        target = factor * unloaded[r["proxy"]] if unloaded.get(r["proxy"]) else None
        row["p99_target_us"] = target
        if phase.step_at_s is not None:
            row["p99_recovery_s"] = (
                p99_recovery_s(r["windows"], WINDOW_S, phase.step_at_s, phase.duration_s,
                               target) if target else None)
            row["shed_stop_s"] = shed_stop_s(r["windows"], WINDOW_S, phase.step_at_s,
                                             phase.duration_s)
        row["goals_failed"] = goals_failed(row, phase, scenario, critical)
        rows.append(row)
    return rows


def goals_failed(row: dict[str, Any], phase: Phase, scenario: Scenario,
                 critical: str | None) -> list[str]:
    """The goals of `phase` (and the scenario's) this row misses, as short labels."""
    failed = []
    g = phase.goals
    crit = row["classes"].get(critical, {}).get("success") if critical else None
    if "max_refused" in g and row["refused"] > g["max_refused"]:
        failed.append(f"shed {row['refused']}")
    if "critical" in g and (crit is None or crit < g["critical"]):
        failed.append(f"critical <{g['critical']:.1%}")
    if "goodput" in g and row["goodput"] < g["goodput"]:
        failed.append(f"goodput <{g['goodput']:.0%}")
    if "p99_x_unloaded" in g and (row["p99_target_us"] is None
                                  or row["admitted_us"]["p99"] > row["p99_target_us"]):
        failed.append(f"p99 >{g['p99_x_unloaded']:g}x unloaded")
    if ("refusal_p99_ms" in g and row["refused"]
            and row["refusal_us"]["p99"] > g["refusal_p99_ms"] * 1000):
        failed.append(f"refusal p99 >{g['refusal_p99_ms']:g} ms")
    if "p99_recovery_s" in g and (row.get("p99_recovery_s") is None
                                  or row["p99_recovery_s"] > g["p99_recovery_s"]):
        failed.append(f"p99 not back within {g['p99_recovery_s']:g} s")
    if "shed_stop_s" in g and (row.get("shed_stop_s") is None
                               or row["shed_stop_s"] > g["shed_stop_s"]):
        failed.append(f"still shedding after {g['shed_stop_s']:g} s")
    vs = scenario.goals.get("goodput_x_haproxy")
    if (vs and row["proxy"] != ORACLE and not phase.baseline and phase.step_at_s is None
            and row["goodput_x_oracle"] is not None and row["goodput_x_oracle"] < vs):
        failed.append(f"goodput <{vs:g}x HAProxy")
    return failed


def _loadavg() -> str:
    """The 1/5/15-minute load averages, as /proc/loadavg has them."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def _line(r: dict[str, Any]) -> str:
    classes = " ".join(f"{k} {v['success']:.1%}" if v["success"] is not None else f"{k} —"
                       for k, v in r["classes"].items())
    return (f"  surge {r['phase']:<9} {r['proxy']:<13} goodput {r['goodput']:6.1%}  {classes}"
            f"  p99 admitted {r['admitted_us']['p99'] / 1000:7.1f} ms  refused {r['refused']}"
            f" (p99 {r['refusal_us']['p99'] / 1000:.1f} ms)  timeouts {r['timeouts']}")

