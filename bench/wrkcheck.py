"""Cross-check: open-loop latency from our generator versus wrk's, same proxy, same rate.

Owns the wrk run (a Lua script paces each connection with `delay()` and prints wrk's
percentiles as JSON) and the comparison. At moderate load there is no queueing, so latency
from the intended send time (ours) and from the actual send (wrk's) should agree.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench import procs
from bench.scenarios import Scenario

WRK = "/usr/bin/wrk"
TOLERANCE = 0.20  # the harness's promise: p50 within 20 % of wrk's at moderate load
# wrk's delay() is in whole milliseconds and its timers fire on millisecond ticks, so many
# paced connections send in bursts and queue behind each other; a couple of connections
# with a 1 ms pause each give a moderate, nearly evenly spaced load it measures faithfully.
WRK_CONNECTIONS = 2
_DELAY_MS = 1

_LUA = """\
math.randomseed(7)
request = function()
  local first = math.random(0, {ranges}) * {range_bytes}
  return wrk.format("GET", "/v/" .. math.random(0, {videos}) .. "/" .. math.random(0, {segs}),
    {{["Host"] = "bench", ["Range"] = "bytes=" .. first .. "-" .. (first + {range_bytes} - 1)}})
end
delay = function() return {delay_ms} end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests": %d, "duration_us": %d, "p50": %d, "p90": %d, "p99": %d, ' ..
    '"mean": %.1f, "errors": %d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def run_wrk(port: int, connections: int, duration_s: int, scenario: Scenario,
            segments: int, segment_bytes: int, workdir: Path,
            cpus: list[int] | None) -> dict[str, Any]:
    """wrk -t1 paced by the Lua script; its own latency percentiles (microseconds)."""
    if not shutil.which(WRK) and not Path(WRK).exists():
        raise FileNotFoundError("wrk not found: `make sysdeps` (apt-get install wrk)")
    script = workdir / "pace.lua"
    script.write_text(_LUA.format(
        ranges=max(1, segment_bytes // scenario.range_bytes) - 1,
        range_bytes=scenario.range_bytes,
        videos=int(scenario.keys.get("n", 1000)) - 1,
        segs=segments - 1,
        delay_ms=_DELAY_MS,
    ))
    cmd = procs.pinned([WRK, "-t1", f"-c{connections}", f"-d{duration_s}s", "--timeout", "2s",
                        "-s", str(script), f"http://127.0.0.1:{port}/"], cpus)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 30, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            data = json.loads(line[len("WRKJSON "):])
            data["rps"] = round(data["requests"] / (data["duration_us"] / 1e6), 1)
            return dict(data)
    raise RuntimeError(f"wrk printed no result: {out.stdout[-500:]} {out.stderr[-500:]}")


def compare(ours: dict[str, Any], wrk: dict[str, Any]) -> dict[str, Any]:
    """Relative differences of p50 and mean, and whether p50 is within TOLERANCE."""
    def rel(a: float, b: float) -> float:
        return round((a - b) / b, 3) if b else 0.0

    p50 = rel(ours["p50"], wrk["p50"])
    return {
        "p50_diff": p50,
        "mean_diff": rel(ours["mean"], wrk["mean"]),
        "p90_diff": rel(ours["p90"], wrk["p90"]),
        "within_tolerance": abs(p50) <= TOLERANCE,
        "tolerance": TOLERANCE,
    }
