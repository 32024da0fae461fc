"""Writes a suite's results: results.json, a Markdown table (results.md), raw per-run JSON.

Owns the file formats and the table layout; numbers come from bench/suite.py unchanged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def _ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}x"


def markdown(results: dict[str, Any], command: str) -> str:
    """The results as Markdown: context, the table, notes on anything skipped or suspect."""
    meta = results["meta"]
    ceiling = results["ceiling"]
    quick = " (--quick: a tenth of the length)" if meta["quick"] else ""
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {meta['cpu']}, {meta['cores']} cores, Linux {meta['kernel']}, "
        f"Python {meta['python']}; {meta['layout']}.  ",
        f"Started {meta['started']}, took {meta['elapsed_s']:.0f} s; medians of "
        f"{meta['repeats']} run(s) per cell{quick}.",
        "",
        f"Generator ceiling (steady workload straight at the origins, no proxy): "
        f"**{ceiling['throughput_rps']:.0f} req/s** (p50 {_ms(ceiling['latency_us']['p50'])} ms; "
        f"generator CPU {ceiling.get('generator_cpu', 0):.0%} of its core(s): "
        f"{_ceiling_verdict(ceiling)}).",
        "",
        "| scenario | proxy | offered req/s | req/s | x HAProxy | p50 ms | p99 ms | p99.9 ms "
        "| p99 x HAProxy | errors | uploads MiB/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    order = list(results["scenarios"])
    rows = sorted(results["summary"], key=lambda r: (order.index(r["scenario"])
                                                      if r["scenario"] in order else 99,
                                                      _proxy_rank(r["proxy"])))
    for r in rows:
        offered = r["offered_rps"]
        offered_s = ("closed loop" if not offered[0]
                     else f"{offered[0]}" if offered[0] == offered[1]
                     else f"{offered[0]}→{offered[1]}")
        errs = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors_by"].items())) or "0"
        note = " (generator-bound)" if r["generator_bound"] else ""
        uploads = f"{r['upload_mib_per_s']:.0f}" if r["upload_mib_per_s"] else "—"
        lines.append(
            f"| {r['scenario']} | {r['proxy']} | {offered_s} | {r['throughput_rps']:.0f}{note} "
            f"| {_ratio(r['throughput_vs_haproxy'])} | {_ms(r['p50_us'])} | {_ms(r['p99_us'])} "
            f"| {_ms(r['p999_us'])} | {_ratio(r['p99_vs_haproxy'])} "
            f"| {r['error_rate']:.2%} ({errs}) | {uploads} |"
        )
    lines.append("")
    wrk = results.get("wrk_check")
    if wrk and "skipped" not in wrk:
        lines.append(
            f"Open-loop latency cross-check on {wrk['proxy']} at {wrk['rate_rps']:.0f} req/s "
            f"(wrk paced by a Lua delay(), then ours open loop at wrk's achieved rate; medians of "
            f"{wrk.get('rounds_used', wrk['rounds'])} of {wrk['rounds']} round(s), "
            f"{_calm(wrk)}): p50 ours {wrk['ours']['p50']:.0f} µs vs wrk "
            f"{wrk['wrk']['p50']:.0f} µs ({wrk['p50_diff']:+.0%}; tolerance "
            f"±{wrk['tolerance']:.0%}: {'pass' if wrk['within_tolerance'] else 'FAIL'}); "
            f"p90 {wrk['ours']['p90']:.0f} vs {wrk['wrk']['p90']:.0f} µs; ours from the actual "
            f"send (wrk's definition) p50 {wrk['ours'].get('service_p50', 0):.0f} µs, "
            f"generator send lag p99 {wrk['ours'].get('send_lag_p99', 0):.0f} µs.")
    elif wrk:
        lines.append(f"Open-loop cross-check with wrk skipped: {wrk['skipped']}")
    for name, reason in results["skipped_proxies"].items():
        lines.append(f"- **{name} not run**: {reason}")
    for s in results["skipped_scenarios"]:
        lines.append(f"- **{s['scenario']} skipped for {s['proxy']}**: {s['reason']}")
    bound = [r for r in rows if r["generator_bound"]]
    if bound:
        names = ", ".join(f"{r['scenario']}/{r['proxy']}" for r in bound)
        lines.append("- Generator-bound (≥ 80 % of the generator's ceiling or generator CPU "
                     f"≥ 90 %; the proxy may be faster than shown): {names}")
    lines.append("")
    lines.append("Latency counts from each request's intended send time (open loop, as wrk2) "
                 "or actual send (closed loop). Errors: status ≥ 400 or no response "
                 "(reset, timeout, connect_failed, generator_backlog, not_sent).")
    return "\n".join(lines) + "\n"


def _calm(wrk: dict[str, Any]) -> str:
    """Which rounds the verdict used: those where the generator itself was never late."""
    calm = wrk.get("calm_rounds", wrk["rounds"])
    if calm == 0:
        return "no round had the generator's send lag p99 under 1 ms: the machine was busy"
    return f"the rounds with the generator's send lag p99 under 1 ms ({calm})"


def _ceiling_verdict(ceiling: dict[str, Any]) -> str:
    """Whether the no-proxy run was limited by the generator or by the origins."""
    cpu = ceiling.get("generator_cpu", 0)
    if cpu >= 0.9:
        return "the generator's own limit"
    if not cpu:
        return "generator CPU not measured"
    return ("the origins' limit, not the generator's; at full CPU the generator would reach "
            f"about {ceiling['throughput_rps'] / cpu:.0f} req/s")


def _proxy_rank(name: str) -> int:
    order = ["lbproxy", "haproxy", "nginx", "aiohttp"]
    return order.index(name) if name in order else 99


def write(results: dict[str, Any], out_dir: Path, command: str) -> Path:
    """Write results.json, results.md and raw/<time>.json; return the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "raw").mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    (out_dir / "raw" / f"{stamp}.json").write_text(json.dumps(results, indent=1))
    slim = {**results, "runs": [_slim_run(r) for r in results["runs"]], "command": command}
    (out_dir / "results.json").write_text(json.dumps(slim, indent=1) + "\n")
    md = out_dir / "results.md"
    md.write_text(markdown(results, command))
    return md


def _slim_run(run: dict[str, Any]) -> dict[str, Any]:
    """A run without its timeline (kept in raw/), so results.json stays reviewable."""
    return {k: v for k, v in run.items() if k != "timeline"}


README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"


def update_readme(readme: Path, results_md: Path, plot: Path) -> bool:
    """Replace the README's results section with results.md and one plot; False if no markers."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    rel_plot = plot.relative_to(readme.parent) if plot.is_relative_to(readme.parent) else plot
    body = results_md.read_text().rstrip()
    section = f"{README_START}\n{body}\n\n![latency percentiles]({rel_plot})\n{README_END}"
    readme.write_text(head + section + tail)
    return True
