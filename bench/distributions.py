"""Key distributions for picking which video a request asks for: uniform, Zipf, hot key.

Owns sampling only; every sampler takes its `random.Random` so runs and tests are
reproducible. Knows nothing of HTTP or of the clock (time comes in as an argument).
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass
from typing import Protocol


class KeySampler(Protocol):
    """Picks a key in [0, n) given the seconds elapsed since the run started."""

    @property
    def n(self) -> int:
        """How many keys there are."""

    def sample(self, rng: random.Random, elapsed_s: float) -> int:
        """One key."""


@dataclass(frozen=True)
class Uniform:
    """Every key equally likely."""

    n: int

    def sample(self, rng: random.Random, elapsed_s: float) -> int:
        """One key, uniformly."""
        return rng.randrange(self.n)


class Zipf:
    """Key k (0-based rank) with probability proportional to 1 / (k+1)**s."""

    __slots__ = ("_cdf", "n", "s")

    def __init__(self, n: int, s: float) -> None:
        if n < 1:
            raise ValueError(f"zipf needs n >= 1, got {n}")
        if s < 0:
            raise ValueError(f"zipf needs s >= 0, got {s}")
        self.n = n
        self.s = s
        weights = [1.0 / (k + 1) ** s for k in range(n)]
        total = sum(weights)
        # Inverse-CDF sampling: one uniform draw and a binary search, O(log n) per key.
        self._cdf = [c / total for c in itertools.accumulate(weights)]
        self._cdf[-1] = 1.0

    def probability(self, key: int) -> float:
        """Exact probability of `key` under this distribution."""
        return self._cdf[key] - (self._cdf[key - 1] if key else 0.0)

    def sample(self, rng: random.Random, elapsed_s: float) -> int:
        """One key by inverse CDF."""
        return bisect.bisect_left(self._cdf, rng.random())


@dataclass(frozen=True)
class HotKey:
    """One key takes a share of traffic that ramps linearly from 0 to `share`; `base` the rest.

    The `viral` scenario: a video goes from ordinary to half the traffic within seconds.
    """

    base: KeySampler
    key: int
    share: float
    start_s: float = 0.0
    ramp_s: float = 0.0

    @property
    def n(self) -> int:
        """Key space size of the base distribution."""
        return self.base.n

    def share_at(self, elapsed_s: float) -> float:
        """The hot key's share of traffic at `elapsed_s`."""
        if elapsed_s < self.start_s:
            return 0.0
        if self.ramp_s <= 0 or elapsed_s >= self.start_s + self.ramp_s:
            return self.share
        return self.share * (elapsed_s - self.start_s) / self.ramp_s

    def sample(self, rng: random.Random, elapsed_s: float) -> int:
        """The hot key with probability share_at(elapsed_s), else a base draw."""
        if rng.random() < self.share_at(elapsed_s):
            return self.key
        return self.base.sample(rng, elapsed_s)


def from_spec(spec: dict[str, object]) -> KeySampler:
    """Build a sampler from a scenario's `[keys]` table (see bench/scenarios/*.toml)."""
    kind = spec.get("dist", "uniform")
    n = int(spec.get("n", 1000))  # type: ignore[call-overload]
    base: KeySampler
    if kind == "uniform":
        base = Uniform(n)
    elif kind == "zipf":
        base = Zipf(n, float(spec.get("s", 1.0)))  # type: ignore[arg-type]
    else:
        raise ValueError(f"keys.dist: unknown distribution {kind!r} (uniform, zipf)")
    hot = spec.get("hot")
    if hot is None:
        return base
    if not isinstance(hot, dict):
        raise ValueError("keys.hot must be a table")
    return HotKey(
        base,
        key=int(hot.get("key", n - 1)),
        share=float(hot["share"]),
        start_s=float(hot.get("start_s", 0.0)),
        ramp_s=float(hot.get("ramp_s", 0.0)),
    )
