"""PNG plots of a suite's results (matplotlib, Agg): percentiles, timelines, backend share.

Owns figures only; reads the dict bench/suite.py returns (with per-run timelines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on CI or over ssh
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter

PERCENTILES = (("p50", "p50_us"), ("p90", "p90_us"), ("p99", "p99_us"), ("p99.9", "p999_us"))
COLORS = {"lbproxy": "tab:red", "haproxy": "tab:blue", "nginx": "tab:green",
          "aiohttp": "tab:orange", "lbproxy-off": "tab:purple", "lbproxy-plain": "tab:brown"}


def _save(fig: Any, path: Path) -> Path:
    """Lay out, write at the harness's resolution, close."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _log_ms(ax: Any) -> None:
    """A log-scale latency axis labelled in plain numbers (1, 10, 100 rather than 10^n)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def latency_percentiles(results: dict[str, Any], out: Path) -> Path:
    """One panel per scenario: median p50..p99.9 per proxy, log scale."""
    scenarios = [s for s in results["scenarios"]
                 if any(r["scenario"] == s for r in results["summary"])]
    cols = min(3, max(1, len(scenarios)))
    rows = (len(scenarios) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, scenario in zip(axes.flat, scenarios, strict=False):
        for r in results["summary"]:
            if r["scenario"] != scenario:
                continue
            ys = [max(r[key], 1) / 1000 for _, key in PERCENTILES]
            ax.plot([p for p, _ in PERCENTILES], ys, marker="o", label=r["proxy"],
                    color=COLORS.get(r["proxy"]))
        _log_ms(ax)
        ax.set_title(scenario)
        ax.set_ylabel("latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(scenarios):]:
        ax.set_visible(False)
    fig.suptitle("Segment GET latency percentiles (median over repeats)")
    return _save(fig, out / "latency_percentiles.png")


def _first_runs(results: dict[str, Any], scenario: str) -> list[dict[str, Any]]:
    """Each proxy's first run of `scenario` (the one with a timeline)."""
    seen: dict[str, dict[str, Any]] = {}
    for r in results["runs"]:
        if r["scenario"] == scenario and r["proxy"] not in seen and r.get("timeline"):
            seen[r["proxy"]] = r
    return list(seen.values())


def timelines(results: dict[str, Any], out: Path) -> list[Path]:
    """Per scenario: throughput and error rate over time, one line per proxy."""
    paths = []
    for scenario in results["scenarios"]:
        runs = _first_runs(results, scenario)
        if not runs:
            continue
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
        for r in runs:
            t = [b["t"] for b in r["timeline"]]
            color = COLORS.get(r["proxy"])
            top.plot(t, [b["rps"] for b in r["timeline"]], label=r["proxy"], color=color)
            offered = r.get("offered_rps") or [0, 0]
            if offered[0] and t:
                # Open loop: what was asked for, so a shortfall (or a ramp past capacity) shows.
                top.plot([t[0], t[-1]], offered, linestyle="--", color=color, alpha=0.5)
            bottom.plot(t, [b["errors_per_s"] for b in r["timeline"]], label=r["proxy"],
                        color=color)
        top.set_ylabel("responses/s (dashed: offered)")
        bottom.set_ylabel("errors/s")
        bottom.set_xlabel("seconds since start")
        top.legend(fontsize=8)
        top.grid(True, alpha=0.3)
        bottom.grid(True, alpha=0.3)
        fig.suptitle(f"{scenario}: throughput and errors over time (run 1)")
        paths.append(_save(fig, out / f"timeline_{scenario}.png"))
    return paths


def backend_share(results: dict[str, Any], out: Path, scenario: str = "viral") -> Path | None:
    """Per proxy: each segment origin's share of responses over time (stacked)."""
    runs = _first_runs(results, scenario)
    if not runs:
        return None
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 2.4 * len(runs)), sharex=True,
                             squeeze=False)
    for ax, r in zip(axes.flat, runs, strict=False):
        names = sorted({k for b in r["timeline"] for k in b["share"] if k.startswith("origin")})
        t = [b["t"] for b in r["timeline"]]
        ax.stackplot(t, *[[b["share"].get(n, 0.0) for b in r["timeline"]] for n in names],
                     labels=names, alpha=0.85)
        ax.set_ylim(0, 1)
        ax.set_ylabel(r["proxy"])
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend(loc="upper left", fontsize=8, ncol=len(names) or 1)
    axes.flat[-1].set_xlabel("seconds since start")
    fig.suptitle(f"{scenario}: per-backend share of segment responses")
    return _save(fig, out / f"backend_share_{scenario}.png")


def _by_proxy(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["proxy"], []).append(r)
    return out


def surge(results: dict[str, Any], out: Path) -> Path | None:
    """Goodput and critical success against load factor, one line per proxy."""
    s = results.get("surge")
    if not s or not s["rows"]:
        return None
    static = {p["name"] for p in s["phases"] if p["step_at_s"] is None and not p["baseline"]}
    critical = next((c["name"] for c in s["classes"] if c["priority"] == "critical"), None)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for proxy, rows in _by_proxy([r for r in s["rows"] if r["phase"] in static]).items():
        rows = sorted(rows, key=lambda r: r["load"])
        loads = [r["load"] for r in rows]
        color = COLORS.get(proxy)
        left.plot(loads, [100 * r["goodput"] for r in rows], marker="o", label=proxy,
                  color=color)
        if critical:
            right.plot(loads, [100 * (r["classes"][critical]["success"] or 0) for r in rows],
                       marker="o", label=proxy, color=color)
    top = max((r["load"] for r in s["rows"] if r["phase"] in static), default=1.0)
    left.plot([0, 1, top], [0, 100, 100], linestyle=":", color="gray", label="ideal")
    left.set_ylabel("goodput (% of origin capacity)")
    right.set_ylabel(f"{critical or 'critical'} class success (%)")
    for ax in (left, right):
        ax.set_xlabel("offered load (x origin capacity)")
        ax.set_xlim(left=0)
        ax.set_ylim(0, 105)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"surge: {s['capacity_rps']:.0f} req/s of origin capacity, "
                 f"{s['timeout_s']:g} s deadline (one run per point)")
    return _save(fig, out / "surge.png")


def surge_steps(results: dict[str, Any], out: Path) -> Path | None:
    """Per load step: p99 of admitted requests and refusals/s over time, per proxy."""
    s = results.get("surge")
    steps = [p for p in (s or {}).get("phases", []) if p["step_at_s"] is not None]
    if not s or not steps:
        return None
    fig, axes = plt.subplots(2, len(steps), figsize=(6 * len(steps), 5.5), squeeze=False,
                             sharex="col")
    for col, phase in enumerate(steps):
        top, bottom = axes[0][col], axes[1][col]
        for r in s["rows"]:
            if r["phase"] != phase["name"] or not r.get("series"):
                continue
            t = [w["t"] for w in r["series"]]
            color = COLORS.get(r["proxy"])
            top.plot(t, [w["p99_ms"] for w in r["series"]], label=r["proxy"], color=color)
            if r.get("p99_target_us"):
                top.axhline(r["p99_target_us"] / 1000, linestyle=":", color=color, alpha=0.6)
            bottom.plot(t, [w["refused_per_s"] for w in r["series"]], label=r["proxy"],
                        color=color)
        for ax in (top, bottom):
            ax.axvline(phase["step_at_s"], color="gray", linestyle="--", alpha=0.6)
            ax.grid(True, alpha=0.3)
        _log_ms(top)
        top.set_title(f"{phase['name']} (step at {phase['step_at_s']:g} s)")
        top.set_ylabel("p99 admitted, 0.1 s windows (ms)\n(dotted: target)")
        bottom.set_ylabel("refusals/s")
        bottom.set_xlabel("seconds since start (intended send time)")
        top.legend(fontsize=8)
    fig.suptitle("surge: load steps")
    return _save(fig, out / "surge_steps.png")


def write_all(results: dict[str, Any], out: Path) -> list[Path]:
    """Every plot into `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [p for p in (surge(results, out), surge_steps(results, out)) if p is not None]
    if not results["summary"]:
        return paths
    paths += [latency_percentiles(results, out), *timelines(results, out)]
    # viral is the one the issue asks for; failure and reload show the pool changing too.
    for scenario in ("viral", "backend-failure", "reload"):
        share = backend_share(results, out, scenario)
        if share is not None:
            paths.append(share)
    return paths
