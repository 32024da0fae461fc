"""What one load run measured: latency histograms, statuses, errors, bytes and a timeline.

Owns accounting and merging across generator processes; knows nothing of sockets. Times
come in as monotonic nanoseconds from the caller, so tests drive it with a fake clock.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.classes import merge_classes
from bench.histogram import Histogram

KINDS = ("get", "upload")


class Recorder:
    """Per-run counters; `complete`/`fail` are called once per request."""

    def __init__(self, start_ns: int, warmup_ns: int, bucket_ns: int) -> None:
        self.start_ns = start_ns
        self.measure_from_ns = start_ns + warmup_ns
        self.bucket_ns = bucket_ns
        self.latency = {k: Histogram() for k in KINDS}
        # How late the generator itself sent versus the schedule: its own contribution.
        self.send_lag = Histogram()
        # Reply time from the actual send (what wrk reports): equals `latency` when the
        # generator is never late; the difference is the generator's own contribution.
        self.service = Histogram()
        self.statuses: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
        self.errors: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
        self.bytes_in = 0
        self.bytes_out = 0
        self.completed = 0
        self.failed = 0
        self.errors_total = 0  # failures plus error statuses: what live progress shows
        self.cpu_s = 0.0  # generator CPU time (user + system) over the run
        self.wall_s = 0.0
        # Timeline buckets by completion time: responses, errors, outcome and backend counts.
        self.timeline: dict[int, dict[str, Any]] = {}

    def _bucket(self, now_ns: int) -> dict[str, Any]:
        index = max(0, (now_ns - self.start_ns) // self.bucket_ns)
        bucket = self.timeline.get(index)
        if bucket is None:
            bucket = self.timeline[index] = {
                "responses": 0,
                "errors": 0,
                "bytes": 0,
                "outcomes": Counter(),
                "backends": Counter(),
            }
        return bucket

    def note(self, outcome: str, now_ns: int) -> None:
        """Count an event on the timeline only (e.g. a failed reconnect between requests)."""
        self._bucket(now_ns)["outcomes"][outcome] += 1

    def sent(self, intended_ns: int, sent_ns: int) -> None:
        """A request left after waiting sent_ns - intended_ns behind its schedule."""
        if intended_ns >= self.measure_from_ns:
            self.send_lag.record((sent_ns - intended_ns) // 1000)

    def served(self, sent_ns: int, now_ns: int) -> None:
        """A reply arrived now_ns - sent_ns after the request actually left."""
        if sent_ns >= self.measure_from_ns:
            self.service.record((now_ns - sent_ns) // 1000)

    def complete(
        self, kind: str, status: int, intended_ns: int, now_ns: int, backend: str, nbytes: int
    ) -> None:
        """A response arrived; latency counts from the intended send time (wrk2)."""
        self.completed += 1
        error = status >= 400 or status < 100
        bucket = self._bucket(now_ns)
        bucket["responses"] += 1
        bucket["bytes"] += nbytes
        bucket["outcomes"][str(status)] += 1
        if backend:
            bucket["backends"][backend] += 1
        if error:
            bucket["errors"] += 1
            self.errors_total += 1
        if intended_ns >= self.measure_from_ns:
            self.latency[kind].record((now_ns - intended_ns) // 1000)
            self.statuses[kind][str(status)] += 1

    def fail(self, kind: str, reason: str, intended_ns: int, now_ns: int) -> None:
        """A request ended without a response (connect refused, reset, timeout, backlog)."""
        self.failed += 1
        self.errors_total += 1
        bucket = self._bucket(now_ns)
        bucket["errors"] += 1
        bucket["outcomes"][reason] += 1
        if intended_ns >= self.measure_from_ns:
            self.errors[kind][reason] += 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, merged by `merge_results` in the parent process."""
        return {
            "latency": {k: h.to_dict() for k, h in self.latency.items()},
            "send_lag": self.send_lag.to_dict(),
            "service": self.service.to_dict(),
            "statuses": {k: dict(c) for k, c in self.statuses.items()},
            "errors": {k: dict(c) for k, c in self.errors.items()},
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "timeline": {
                str(i): {
                    **b,
                    "outcomes": dict(b["outcomes"]),
                    "backends": dict(b["backends"]),
                }
                for i, b in self.timeline.items()
            },
        }


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the to_dict() of several generator processes into one."""
    latency = {k: Histogram() for k in KINDS}
    send_lag = Histogram()
    service = Histogram()
    statuses: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
    errors: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
    timeline: dict[int, dict[str, Any]] = {}
    bytes_in = bytes_out = 0
    cpu_s = wall_s = 0.0
    for part in parts:
        cpu_s += part["cpu_s"]
        wall_s = max(wall_s, part["wall_s"])
        for k in KINDS:
            latency[k].merge(Histogram.from_dict(part["latency"][k]))
            statuses[k].update(part["statuses"][k])
            errors[k].update(part["errors"][k])
        send_lag.merge(Histogram.from_dict(part["send_lag"]))
        service.merge(Histogram.from_dict(part["service"]))
        bytes_in += part["bytes_in"]
        bytes_out += part["bytes_out"]
        for key, b in part["timeline"].items():
            into = timeline.setdefault(
                int(key),
                {"responses": 0, "errors": 0, "bytes": 0, "outcomes": Counter(),
                 "backends": Counter()},
            )
            into["responses"] += b["responses"]
            into["errors"] += b["errors"]
            into["bytes"] += b["bytes"]
            into["outcomes"].update(b["outcomes"])
            into["backends"].update(b["backends"])
    classed = [part["classes"] for part in parts if part.get("classes")]
    return {
        "classes": merge_classes(classed) if classed else None,
        "latency": latency,
        "send_lag": send_lag,
        "service": service,
        "statuses": {k: dict(c) for k, c in statuses.items()},
        "errors": {k: dict(c) for k, c in errors.items()},
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        # Share of the generator processes' cores they used: near 1.0 means generator-bound.
        "generator_cpu": round(cpu_s / (wall_s * len(parts)), 3) if wall_s and parts else 0.0,
        "timeline": [
            {**timeline[i], "outcomes": dict(timeline[i]["outcomes"]),
             "backends": dict(timeline[i]["backends"])}
            if i in timeline
            else {"responses": 0, "errors": 0, "bytes": 0, "outcomes": {}, "backends": {}}
            for i in range(max(timeline) + 1 if timeline else 0)
        ],
    }
