"""Open-loop arrival schedule: when each request *should* be sent, independent of replies.

Owns intended send times only. Latency is measured from these, not from when the
generator got round to sending: a generator that waits for a slow reply before sending the
next request (or is itself late) silently drops the samples that would have shown the
stall — Gil Tene's "coordinated omission". wrk2 fixes it the same way: a constant-rate
schedule, latency = completion - intended start.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

MIN_RATE = 1.0  # req/s; keeps the next interval finite when a ramp starts at zero


class ArrivalSchedule:
    """Intended send times (monotonic ns) at a rate that may vary with elapsed time."""

    __slots__ = ("end_ns", "next_ns", "rate_at", "start_ns")

    def __init__(
        self,
        rate_at: Callable[[float], float],
        start_ns: int,
        end_ns: int,
        offset_ns: int = 0,
    ) -> None:
        self.rate_at = rate_at
        self.start_ns = start_ns
        self.end_ns = end_ns
        # Several generator processes share one rate: each is shifted by a fraction of an
        # interval so their union is evenly spaced rather than N requests at once.
        self.next_ns = start_ns + offset_ns

    def due(self, now_ns: int) -> list[int]:
        """Every intended send time <= now_ns not handed out yet, oldest first."""
        out: list[int] = []
        nxt = self.next_ns
        while nxt <= now_ns and nxt < self.end_ns:
            out.append(nxt)
            rate = max(MIN_RATE, self.rate_at((nxt - self.start_ns) / 1e9))
            nxt += int(1e9 / rate)
        self.next_ns = nxt
        return out

    @property
    def finished(self) -> bool:
        """True once every intended time in [start, end) has been handed out."""
        return self.next_ns >= self.end_ns


def linear_rate(rate_from: float, rate_to: float, duration_s: float) -> Callable[[float], float]:
    """Rate ramping linearly from rate_from at 0 s to rate_to at duration_s (then flat)."""
    if duration_s <= 0 or rate_from == rate_to:
        return lambda _elapsed: rate_from
    slope = (rate_to - rate_from) / duration_s

    def rate_at(elapsed_s: float) -> float:
        return rate_from + slope * min(max(elapsed_s, 0.0), duration_s)

    return rate_at


def step_rate(steps: list[tuple[float, float]]) -> Callable[[float], float]:
    """Piecewise-constant rate: each (at_s, rate) holds from at_s until the next step.

    Before the first step the first rate holds. The surge scenario's load steps (0.5x to 3x,
    5x to 0.5x) are two-step schedules.
    """
    if not steps:
        raise ValueError("step_rate needs at least one (at_s, rate)")
    ordered = sorted(steps)
    times = [t for t, _ in ordered]
    rates = [r for _, r in ordered]

    def rate_at(elapsed_s: float) -> float:
        return rates[max(0, bisect.bisect_right(times, elapsed_s) - 1)]

    return rate_at
