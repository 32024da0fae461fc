"""Per-class accounting for class-mix workloads (the `surge` scenario).

Owns what happened to each traffic class (playback, normal, prefetch): served within the
deadline, served late, refused by the proxy, failed; latency of admitted and of refused
requests; refusals that carried `Retry-After`; and short windows by intended send time, so
a step in the offered load can be followed. Knows nothing of sockets: times come in as
monotonic nanoseconds from the caller, so tests drive it with explicit numbers.

A *refusal* is a response the proxy made itself: no `X-Backend` header (every origin
answer carries one), status >= 500. That covers lbproxy's 503, HAProxy's 503 after
`timeout queue` and nginx's 502 "no live upstreams" alike. Everything else that was sent
was *admitted*; a request that timed out counts among the admitted at its timeout latency
(censored), so a proxy that lets its queue grow shows a p99 at the deadline, not a p99 of
only the lucky requests that made it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.histogram import Histogram

OK, LATE, REFUSED = "ok", "late", "refused"


class Window:
    """One window of intended send times: admitted latency, refusals, successes."""

    __slots__ = ("admitted", "ok", "refused", "sent")

    def __init__(self) -> None:
        self.admitted = Histogram()
        self.refused = 0
        self.ok = 0
        self.sent = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"admitted": self.admitted.to_dict(), "refused": self.refused, "ok": self.ok,
                "sent": self.sent}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Window:
        """Inverse of to_dict."""
        w = cls()
        w.admitted = Histogram.from_dict(data["admitted"])
        w.refused, w.ok, w.sent = data["refused"], data["ok"], data["sent"]
        return w

    def merge(self, other: Window) -> None:
        """Add `other`'s counts into this window."""
        self.admitted.merge(other.admitted)
        self.refused += other.refused
        self.ok += other.ok
        self.sent += other.sent


class ClassRecorder:
    """Outcomes per class; `complete`/`fail` are called once per classed request."""

    def __init__(self, names: list[str], start_ns: int, warmup_ns: int, end_ns: int,
                 deadline_ns: int, window_ns: int) -> None:
        self.names = list(names)
        self.start_ns = start_ns
        self.measure_from_ns = start_ns + warmup_ns
        self.end_ns = end_ns
        self.deadline_ns = deadline_ns
        self.window_ns = window_ns
        self.outcomes: list[Counter[str]] = [Counter() for _ in names]
        self.admitted = [Histogram() for _ in names]
        self.refused = Histogram()
        self.refused_retry_after = 0
        # 2xx within the deadline that *completed* inside the measured window: goodput. By
        # completion time it can never exceed what the origins served in that window; by
        # intended time a queue that reorders by priority could count more than that.
        self.goodput_ok = 0
        # Windows cover the whole run, warm-up included: a step's "before" is part of it.
        self.windows: dict[int, Window] = {}

    def _window(self, intended_ns: int) -> Window:
        index = max(0, (intended_ns - self.start_ns) // self.window_ns)
        w = self.windows.get(index)
        if w is None:
            w = self.windows[index] = Window()
        return w

    def complete(self, cls: int, status: int, intended_ns: int, now_ns: int,
                 from_origin: bool, retry_after: bool) -> None:
        """A response arrived for a request of class `cls`."""
        latency_ns = now_ns - intended_ns
        w = self._window(intended_ns)
        w.sent += 1
        if not from_origin and status >= 500:
            outcome = REFUSED
            w.refused += 1
        else:
            w.admitted.record(latency_ns // 1000)
            if 200 <= status < 300:
                outcome = OK if latency_ns <= self.deadline_ns else LATE
                if outcome == OK:
                    w.ok += 1
                    if self.measure_from_ns <= now_ns < self.end_ns:
                        self.goodput_ok += 1
            else:
                outcome = str(status)
        if intended_ns < self.measure_from_ns:
            return
        self.outcomes[cls][outcome] += 1
        if outcome == REFUSED:
            self.refused.record(latency_ns // 1000)
            if retry_after:
                self.refused_retry_after += 1
        else:
            self.admitted[cls].record(latency_ns // 1000)

    def fail(self, cls: int, reason: str, intended_ns: int, now_ns: int) -> None:
        """A request of class `cls` got no response (timeout, reset, ...)."""
        w = self._window(intended_ns)
        w.sent += 1
        if reason == "timeout":
            # Admitted, never answered in time: counted at its (censored) latency.
            w.admitted.record((now_ns - intended_ns) // 1000)
        if intended_ns < self.measure_from_ns:
            return
        self.outcomes[cls][reason] += 1
        if reason == "timeout":
            self.admitted[cls].record((now_ns - intended_ns) // 1000)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, combined across generator processes by `merge_classes`."""
        return {
            "names": self.names,
            "window_ns": self.window_ns,
            "outcomes": [dict(c) for c in self.outcomes],
            "admitted": [h.to_dict() for h in self.admitted],
            "refused": self.refused.to_dict(),
            "refused_retry_after": self.refused_retry_after,
            "goodput_ok": self.goodput_ok,
            "windows": {str(i): w.to_dict() for i, w in self.windows.items()},
        }


def merge_classes(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine several processes' ClassRecorder.to_dict() into live objects."""
    names = parts[0]["names"]
    outcomes: list[Counter[str]] = [Counter() for _ in names]
    admitted = [Histogram() for _ in names]
    refused = Histogram()
    retry_after = goodput_ok = 0
    windows: dict[int, Window] = {}
    for part in parts:
        for i in range(len(names)):
            outcomes[i].update(part["outcomes"][i])
            admitted[i].merge(Histogram.from_dict(part["admitted"][i]))
        refused.merge(Histogram.from_dict(part["refused"]))
        retry_after += part["refused_retry_after"]
        goodput_ok += part["goodput_ok"]
        for key, w in part["windows"].items():
            windows.setdefault(int(key), Window()).merge(Window.from_dict(w))
    return {
        "names": names,
        "window_s": parts[0]["window_ns"] / 1e9,
        "outcomes": [dict(c) for c in outcomes],
        "admitted": admitted,
        "refused": refused,
        "refused_retry_after": retry_after,
        "goodput_ok": goodput_ok,
        "windows": [windows.get(i, Window()) for i in range(max(windows) + 1 if windows else 0)],
    }
