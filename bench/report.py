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
        _machine_line(meta) + "  ",
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


def _machine_line(meta: dict[str, Any]) -> str:
    return (f"Machine: {meta['cpu']}, {meta['cores']} cores, Linux {meta['kernel']}, "
            f"Python {meta['python']}; {meta['layout']}.")


def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}%}"


def _goal_text(goals: dict[str, float]) -> str:
    """A phase's goals in words, from the scenario file's goal keys."""
    words = {
        "max_refused": lambda v: "nothing shed" if v == 0 else f"at most {v:g} shed",
        "critical": lambda v: "100% critical" if v >= 1 else f"critical ≥{v:.1%}",
        "goodput": lambda v: f"goodput ≥{v:.0%}",
        "p99_x_unloaded": lambda v: f"p99 admitted ≤{v:g}x unloaded p99",
        "refusal_p99_ms": lambda v: f"refusal p99 ≤{v:g} ms",
        "p99_recovery_s": lambda v: f"p99 back under target within {v:g} s",
        "shed_stop_s": lambda v: f"nothing shed after {v:g} s",
        "goodput_x_haproxy": lambda v: f"goodput ≥{v:g}x HAProxy's",
    }
    return ", ".join(words[k](v) for k, v in goals.items() if k in words)


def surge_markdown(surge: dict[str, Any], meta: dict[str, Any], command: str) -> str:
    """The surge scenario's section: goals, one row per load factor and proxy, the steps."""
    o = surge["origins"]
    classes = ", ".join(f"{c['name']} `{c['path_prefix']}` {c['share']:.0%} ({c['priority']})"
                        for c in surge["classes"])
    static = [p for p in surge["phases"] if p["step_at_s"] is None]
    loads = [p for p in static if not p["baseline"]] or static
    steps = [p for p in surge["phases"] if p["step_at_s"] is not None]
    quick = " (--quick: a tenth of the length)" if meta["quick"] else ""
    warmups = ", ".join(sorted({f"{p['warmup_s']:g} s" for p in surge["phases"]}))
    lengths = ", ".join(x for x in (
        _phase_lengths(loads, "per load factor"),
        _phase_lengths([p for p in static if p["baseline"]], "for the unloaded reference"),
        _phase_lengths(steps, "for the steps")) if x) + f"; the first {warmups} not measured"
    goals = "; ".join(f"{p['name']}: {_goal_text(p['goals'])}"
                      for p in surge["phases"] if p["goals"])
    lines = [
        f"Command: `{command}`  ",
        _machine_line(meta) + f" Load average {surge['loadavg'][0]} at the start, "
        f"{surge['loadavg'][-1]} at the end.  ",
        f"Started {meta['started']}; one run per cell{quick}.",
        "",
        f"Origins: {o['count']:g} x ({o['concurrency']:g} at a time, {o['service_ms']:g} ms "
        f"each, FIFO beyond) = **{surge['capacity_rps']:.0f} req/s**. Classes: {classes}. "
        f"Open loop, {surge['timeout_s']:g} s client deadline; each phase is its own run on "
        f"a fresh proxy and idle origins ({lengths}).",
        "",
        f"**Goals for lbproxy** (every proxy is checked against them): {goals}; "
        f"{_goal_text(surge['goals'])}.",
        "",
        "| load | proxy | offered req/s | goodput | x HAProxy | "
        + " | ".join(f"{c['name']} ok" for c in surge["classes"])
        + " | p99 admitted ms | refused | refusal p99 ms | Retry-After | timeouts | goals |",
        "|---|---|---:|---:|---:|" + "---:|" * len(surge["classes"])
        + "---:|---:|---:|---:|---:|---|",
    ]
    rows = surge["rows"]
    for p in static:
        for r in sorted((r for r in rows if r["phase"] == p["name"]),
                        key=lambda r: _proxy_rank(r["proxy"])):
            ok = " | ".join(_pct(r["classes"][c["name"]]["success"], 2)
                            for c in surge["classes"])
            lines.append(
                f"| {p['name']} | {r['proxy']} | {r['offered_rps']:.0f} | {_pct(r['goodput'])} "
                f"| {_ratio(r['goodput_x_oracle'])} | {ok} | {_ms(r['admitted_us']['p99'])} "
                f"| {r['refused']} ({_pct(r['refused_share'])}) "
                f"| {_ms(r['refusal_us']['p99']) if r['refused'] else '—'} "
                f"| {r['refused_retry_after']} | {r['timeouts']} | {_verdict(r, p)} |")
    if steps:
        lines += [
            "",
            "| step | proxy | p99 target ms | p99 back under target after | last refusal after "
            "the step | goodput | goals |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for p in steps:
            for r in sorted((r for r in rows if r["phase"] == p["name"]),
                            key=lambda r: _proxy_rank(r["proxy"])):
                target = _ms(r["p99_target_us"]) if r["p99_target_us"] else "—"
                lines.append(
                    f"| {p['name']} at {p['step_at_s']:g} s | {r['proxy']} | {target} "
                    f"| {_seconds(r.get('p99_recovery_s'), r['p99_target_us'])} "
                    f"| {_seconds(r.get('shed_stop_s'))} | {_pct(r['goodput'])} "
                    f"| {_verdict(r, p)} |")
    lines.append("")
    for name, reason in surge["unsupported"].items():
        lines.append(f"- **{name} not run**: {reason}")
    lag = max(rows, key=lambda r: r["send_lag_p99_us"], default=None)
    if lag is not None:
        lines.append(f"- The generator's own lateness (send lag p99, inside every latency above) "
                     f"peaked at {_ms(lag['send_lag_p99_us'])} ms ({lag['phase']}/{lag['proxy']}):"
                     " other work on the machine delays it too.")
    drops = [r for r in rows if r["generator_drops"]]
    if drops:
        lines.append("- Generator drops (requests never sent; the generator fell behind): "
                     + ", ".join(f"{r['phase']}/{r['proxy']} {r['generator_drops']}"
                                 for r in drops))
    lines += [
        "",
        "Goodput: 2xx within the deadline per second, as a share of the origins' capacity. "
        "*ok*: a class's 2xx within the deadline as a share of its requests. Admitted: every "
        "request the proxy did not refuse, timeouts counted at their latency (a p99 at the "
        "deadline means more than 1 % never made it). Refused: an answer the proxy made "
        "itself (no `X-Backend`, status ≥ 500: lbproxy's 503, HAProxy's 503 after "
        f"`timeout queue {surge['haproxy_queue_ms']}ms`, nginx's 502 when every origin is "
        "at `max_conns`); Retry-After: refusals that carried one. Latency counts from each "
        "request's intended send time. After a step, p99 is judged over 0.3 s spans of "
        "intended send time; “not by the end” means the run's last span (or window, for "
        "refusals) still missed.",
    ]
    return "\n".join(lines) + "\n"


def _phase_lengths(phases: list[dict[str, Any]], what: str) -> str:
    """`8 s per load factor` for one kind of phase."""
    if not phases:
        return ""
    return " and ".join(f"{d:g} s" for d in sorted({p["duration_s"] for p in phases})) + f" {what}"


def _seconds(value: float | None, needed: object = True) -> str:
    if not needed:
        return "—"
    return "not by the end" if value is None else f"{value:.1f} s"


def _verdict(row: dict[str, Any], phase: dict[str, Any]) -> str:
    if not phase["goals"]:
        return "—"
    return "✗ " + ", ".join(row["goals_failed"]) if row["goals_failed"] else "✓"


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
    order = ["lbproxy", "lbproxy-off", "lbproxy-plain", "haproxy", "nginx", "aiohttp"]
    return order.index(name) if name in order else 99


def write(results: dict[str, Any], out_dir: Path, command: str) -> dict[str, Path]:
    """Write raw/<time>.json and, for what ran, results.{json,md} and surge.{json,md}.

    Returns the Markdown written, by section ("results", "surge"): a run of the surge
    scenario alone leaves the other scenarios' committed results as they were.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "raw").mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    (out_dir / "raw" / f"{stamp}.json").write_text(json.dumps(results, indent=1))
    written = {}
    if results["summary"]:
        slim = {**results, "runs": [_slim_run(r) for r in results["runs"]], "surge": None,
                "command": command}
        (out_dir / "results.json").write_text(json.dumps(slim, indent=1) + "\n")
        written["results"] = out_dir / "results.md"
        written["results"].write_text(markdown(results, command))
    surge = results.get("surge")
    if surge:
        slim_surge = {**surge, "meta": results["meta"], "command": command,
                      "rows": [{k: v for k, v in r.items() if k != "series"}
                               for r in surge["rows"]]}
        (out_dir / "surge.json").write_text(json.dumps(slim_surge, indent=1) + "\n")
        written["surge"] = out_dir / "surge.md"
        written["surge"].write_text(surge_markdown(surge, results["meta"], command))
    return written


def _slim_run(run: dict[str, Any]) -> dict[str, Any]:
    """A run without its timeline (kept in raw/), so results.json stays reviewable."""
    return {k: v for k, v in run.items() if k != "timeline"}


README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"


SURGE_START = "<!-- surge:start -->"
SURGE_END = "<!-- surge:end -->"


def update_readme(readme: Path, results_md: Path, plot: Path, start: str = README_START,
                  end: str = README_END, alt: str = "latency percentiles") -> bool:
    """Replace a README section between `start` and `end` with a Markdown file and one plot;
    False if the markers are missing."""
    text = readme.read_text()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    rel_plot = plot.relative_to(readme.parent) if plot.is_relative_to(readme.parent) else plot
    body = results_md.read_text().rstrip()
    section = f"{start}\n{body}\n\n![{alt}]({rel_plot})\n{end}"
    readme.write_text(head + section + tail)
    return True
