"""Adaptive concurrency limits: how many requests one backend may have in flight.

Owns the limit algorithms of Netflix's concurrency-limits (concurrency-limits-core,
``limit/Gradient2Limit.java``, ``AIMDLimit.java``, ``VegasLimit.java``) and the sampling
window they are fed through (``WindowedLimit.java``). Each algorithm is a pure function of
the samples it is given: ``update(rtt_ns, inflight, dropped)`` returns the new limit. No
clock is read here; the window is closed by the caller's ``now_ns``.

One `BackendLimit` per backend slot (lbproxy/policies/overload.py keeps them beside the
gate's per-slot state, so a backend's limit outlives snapshots). Per request only
`BackendLimit.sample` runs (a few additions); an algorithm runs once per window.

What is deliberately not taken from the references:

- Envoy's adaptive concurrency filter pins concurrency to a small value every few
  seconds to re-measure the minimum RTT; that causes 503 bursts and failures to recover
  (envoy issues #9007, #11579, #38338). None of the algorithms here ever lowers the
  limit in order to measure: Gradient2 tracks a long-term average, Vegas re-bases its
  no-load RTT on an ordinary sample (its "probe").
- Gradient2 ignores drops in the Java source; here a window with a drop (a 5xx or a
  timeout) takes the smallest gradient, 0.5, and no growth allowance, because a backend
  answering errors is overloaded whatever its latency says.
"""

from __future__ import annotations

import math
import random
from typing import Protocol, final

from lbproxy.control.config import AdaptiveConcurrency

# WindowedLimit.java: samples faster than this are ignored (a cache hit answered from
# memory says nothing about queueing).
MIN_RTT_THRESHOLD_NS = 100_000
# Gradient2's no-load RTT rises by this factor per window unless a window shows a lower
# one: a backend that became 2x slower is followed within about 700 windows (a minute
# or so), about Netflix's long window. Faster aging would let a standing overload, whose
# windows never see an idle backend, pull the floor up under itself.
NOLOAD_AGING = 1.001


class LimitAlgorithm(Protocol):
    """One backend's limit algorithm: a pure function of the windows it is fed."""

    limit: float

    def update(self, rtt_ns: float, inflight: int, dropped: bool,
               min_rtt_ns: float = 0.0) -> float:
        """Take one window's average RTT, peak in-flight count, drop flag and minimum
        RTT; the new limit."""
        ...


@final
class ExpAvg:
    """ExpAvgMeasurement.java: a plain mean over `warmup` samples, then an EWMA of
    factor 2 / (window + 1)."""

    __slots__ = ("count", "factor", "sum", "value", "warmup")

    def __init__(self, window: int, warmup: int) -> None:
        self.factor = 2.0 / (window + 1)
        self.warmup = warmup
        self.count = 0
        self.sum = 0.0
        self.value = 0.0

    def add(self, sample: float) -> float:
        if self.count < self.warmup:
            self.count += 1
            self.sum += sample
            self.value = self.sum / self.count
        else:
            self.value = self.value * (1 - self.factor) + sample * self.factor
        return self.value


@final
class Gradient2:
    """Gradient2Limit.java: the limit follows the ratio of a baseline RTT to the window's
    RTT, and may grow by a queue allowance per window while that ratio stays 1.

    The baseline is Netflix's long-term average, capped at `rtt_tolerance` x the no-load
    RTT (the lowest window minimum seen, aging upward by NOLOAD_AGING per window so a
    backend that really became slower is followed, never re-measured by pinning the
    limit). Netflix's long average alone cannot find a limit when a backend's first
    windows are already overloaded (a surge on a fresh proxy): the average starts at the
    overloaded RTT and the gradient stays 1.
    """

    __slots__ = ("limit", "long_rtt", "max_limit", "min_limit", "noload_ns", "queue_size",
                 "rtt_tolerance", "slack_ns", "smoothing")

    def __init__(self, cfg: AdaptiveConcurrency) -> None:
        self.limit = float(cfg.initial_limit)
        self.min_limit = cfg.min_limit
        self.max_limit = cfg.max_limit
        self.smoothing = cfg.smoothing
        self.queue_size = cfg.queue_size
        self.rtt_tolerance = cfg.rtt_tolerance
        self.slack_ns = cfg.rtt_slack_ms * 1e6
        self.long_rtt = ExpAvg(cfg.long_window, 10)
        self.noload_ns = 0.0  # 0: no window yet

    def update(self, rtt_ns: float, inflight: int, dropped: bool,
               min_rtt_ns: float = 0.0) -> float:
        short = float(rtt_ns)
        long_avg = self.long_rtt
        long = long_avg.add(short)
        # After a long overload the long-term RTT can sit far above the current one;
        # pull it down faster than the EWMA would (the Java source's factor 0.9).
        if long / short > 2:
            long_avg.value *= 0.9
        floor = float(min_rtt_ns or rtt_ns)
        noload = self.noload_ns * NOLOAD_AGING
        self.noload_ns = floor if noload == 0 or floor < noload else noload
        # The slack: a backend answering in a millisecond shows windows whose RTT is the
        # proxy's own scheduling noise, a multiple of its minimum; that is not queueing.
        baseline = min(long, self.rtt_tolerance * self.noload_ns) + self.slack_ns
        limit = self.limit
        if inflight < limit / 2 and not dropped:
            return limit  # application-limited: no evidence to grow on
        # The gradient is clamped to [0.5, 1]: never grow on it, never halve on one window.
        gradient = 0.5 if dropped else max(0.5, min(1.0, baseline / short))
        # The growth allowance. Netflix's default is a constant 4, sized for limits in
        # the tens: at equilibrium gradient = 1 - queue / limit, so a backend that serves
        # 4 at a time would be held where its RTT is 1 / (1 - 4/limit) above the
        # baseline, a standing queue of several requests. By default (queue_size 0) the
        # allowance is sqrt(limit) while the gradient is 1 (no sign of queueing: grow
        # fast) and Netflix's Log10RootFunction, 1 under 100, once it is below.
        if self.queue_size:
            queue = self.queue_size
        elif gradient >= 1.0:
            queue = max(1, int(math.sqrt(limit)))
        else:
            queue = _log10_root(limit)
        # A drop halves the estimate with no growth allowance: x 0.9 once smoothed, as
        # AIMD's backoff (with the allowance, a limit under 2 x queue_size could not fall).
        new = limit * gradient + (0 if dropped else queue)
        new = limit * (1 - self.smoothing) + new * self.smoothing
        self.limit = max(float(self.min_limit), min(float(self.max_limit), new))
        return self.limit


@final
class AIMD:
    """AIMDLimit.java: +1 while at least half used, x backoff_ratio on a drop."""

    __slots__ = ("backoff_ratio", "limit", "max_limit", "min_limit", "timeout_ns")

    def __init__(self, cfg: AdaptiveConcurrency, timeout_ns: int = 5_000_000_000) -> None:
        self.limit = float(cfg.initial_limit)
        self.min_limit = cfg.min_limit
        self.max_limit = cfg.max_limit
        self.backoff_ratio = cfg.backoff_ratio
        self.timeout_ns = timeout_ns  # the Java default: an RTT over 5 s is a drop

    def update(self, rtt_ns: float, inflight: int, dropped: bool,
               min_rtt_ns: float = 0.0) -> float:
        current = int(self.limit)
        if dropped or rtt_ns > self.timeout_ns:
            new = max(1, min(current - 1, int(current * self.backoff_ratio)))
        elif inflight * 2 >= current:
            new = current + 1
        else:
            return self.limit
        self.limit = float(max(self.min_limit, min(self.max_limit, new)))
        return self.limit


def _log10_root(limit: float) -> int:
    # Log10RootFunction.create(0): max(1, floor(log10(limit))).
    return max(1, int(math.log10(max(1, int(limit)))))


@final
class Vegas:
    """VegasLimit.java: estimate the queue as limit x (1 - rtt_noload / rtt) and keep it
    between alpha = 3 log10(limit) and beta = 6 log10(limit)."""

    __slots__ = ("_random", "limit", "max_limit", "min_limit", "probe_count", "probe_jitter",
                 "probe_multiplier", "rtt_noload", "smoothing")

    def __init__(self, cfg: AdaptiveConcurrency, rng: random.Random | None = None) -> None:
        self.limit = float(cfg.initial_limit)
        self.min_limit = cfg.min_limit
        self.max_limit = cfg.max_limit
        # Netflix's Vegas default smoothing is 1.0 (no smoothing); the shared default here
        # (0.2) is Gradient2's, so Vegas takes 1.0 unless the operator changed it.
        self.smoothing = 1.0 if cfg.smoothing == 0.2 else cfg.smoothing
        self.probe_multiplier = 30
        self.rtt_noload = 0.0
        self.probe_count = 0
        self._random = rng if rng is not None else random.Random()
        self.probe_jitter = self._random.uniform(0.5, 1.0)

    def update(self, rtt_ns: float, inflight: int, dropped: bool,
               min_rtt_ns: float = 0.0) -> float:
        self.probe_count += 1
        limit = self.limit
        # The probe re-bases the no-load RTT on this sample; it never lowers the limit.
        if self.probe_jitter * self.probe_multiplier * limit <= self.probe_count:
            self.probe_jitter = self._random.uniform(0.5, 1.0)
            self.probe_count = 0
            self.rtt_noload = float(rtt_ns)
            return limit
        if self.rtt_noload == 0 or rtt_ns < self.rtt_noload:
            self.rtt_noload = float(rtt_ns)
            return limit
        queue = math.ceil(limit * (1 - self.rtt_noload / rtt_ns))
        if dropped:
            new = limit - _log10_root(limit)
        elif inflight * 2 < limit:
            return limit
        else:
            alpha = 3 * _log10_root(limit)
            beta = 6 * _log10_root(limit)
            threshold = _log10_root(limit)
            if queue <= threshold:
                new = limit + beta
            elif queue < alpha:
                new = limit + _log10_root(limit)
            elif queue > beta:
                new = limit - _log10_root(limit)
            else:
                return limit
        new = max(1.0, min(float(self.max_limit), new))
        new = (1 - self.smoothing) * limit + self.smoothing * new
        self.limit = max(float(self.min_limit), new)
        return self.limit


def algorithm_of(cfg: AdaptiveConcurrency) -> LimitAlgorithm:
    """A fresh algorithm instance for one backend, as `cfg.algorithm` names it."""
    if cfg.algorithm == "aimd":
        return AIMD(cfg)
    if cfg.algorithm == "vegas":
        return Vegas(cfg)
    return Gradient2(cfg)


@final
class BackendLimit:
    """One backend's limit and its sampling window (WindowedLimit.java).

    A window closes at the first sample ending after `next_update_ns` once it holds
    `window_size` samples; its average RTT, peak in-flight count and drop flag go to the
    algorithm, and the next window lasts 2 x its minimum RTT, within min..max_window.
    """

    __slots__ = ("algorithm", "count", "dropped", "limit", "max_inflight", "max_window_ns",
                 "min_rtt_ns", "min_window_ns", "next_update_ns", "sum_ns", "window_size")

    def __init__(self, cfg: AdaptiveConcurrency) -> None:
        self.algorithm = algorithm_of(cfg)
        self.limit = int(self.algorithm.limit)  # what admission compares in-flight against
        self.window_size = cfg.window_size
        self.min_window_ns = int(cfg.min_window * 1e9)
        self.max_window_ns = int(cfg.max_window * 1e9)
        self.next_update_ns = 0
        self._reset()

    def _reset(self) -> None:
        self.count = 0
        self.sum_ns = 0
        self.min_rtt_ns = 1 << 62
        self.max_inflight = 0
        self.dropped = False

    def sample(self, rtt_ns: int, inflight: int, dropped: bool, now_ns: int) -> None:
        """One finished request: its RTT, in-flight count when it started, and whether it
        failed (5xx or timeout)."""
        if rtt_ns < MIN_RTT_THRESHOLD_NS and not dropped:
            return
        self.count += 1
        self.sum_ns += rtt_ns
        if rtt_ns < self.min_rtt_ns:
            self.min_rtt_ns = rtt_ns
        if inflight > self.max_inflight:
            self.max_inflight = inflight
        if dropped:
            self.dropped = True
        if now_ns > self.next_update_ns and self.count >= self.window_size:
            self.algorithm.update(self.sum_ns / self.count, self.max_inflight, self.dropped,
                                  self.min_rtt_ns)
            self.limit = max(1, int(self.algorithm.limit))
            self.next_update_ns = now_ns + min(max(2 * self.min_rtt_ns, self.min_window_ns),
                                               self.max_window_ns)
            self._reset()
