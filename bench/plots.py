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
          "aiohttp": "tab:orange"}


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
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(scenario)
        ax.set_ylabel("latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(scenarios):]:
        ax.set_visible(False)
    fig.suptitle("Segment GET latency percentiles (median over repeats)")
    fig.tight_layout()
    path = out / "latency_percentiles.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
        fig.tight_layout()
        path = out / f"timeline_{scenario}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
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
    fig.tight_layout()
    path = out / f"backend_share_{scenario}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_all(results: dict[str, Any], out: Path) -> list[Path]:
    """Every plot into `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [latency_percentiles(results, out), *timelines(results, out)]
    # viral is the one the issue asks for; failure and reload show the pool changing too.
    for scenario in ("viral", "backend-failure", "reload"):
        share = backend_share(results, out, scenario)
        if share is not None:
            paths.append(share)
    return paths
