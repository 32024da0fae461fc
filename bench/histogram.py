"""Latency histogram in the HdrHistogram layout: log-linear buckets, fixed relative error.

Owns recording, merging, percentiles and (de)serialisation; knows nothing of HTTP or time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# HdrHistogram (Gil Tene) keeps 2**P sub-buckets per power of two: values below 2**P are
# exact and every larger value lands in a bucket no wider than value / 2**(P-1), so any
# reported percentile is within 1/2**(P-1) (0.8 % for P=8) of the true sample.
PRECISION_BITS = 8
_HALF = 1 << (PRECISION_BITS - 1)
_EXACT = 1 << PRECISION_BITS
MAX_VALUE = (1 << 40) - 1  # ~12.7 days in microseconds; larger samples are clamped


def bucket_index(value: int) -> int:
    """Index of the bucket that holds a non-negative integer value."""
    if value < _EXACT:
        return value
    shift = value.bit_length() - PRECISION_BITS
    return shift * _HALF + (value >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """Lowest and highest value that share bucket `index`."""
    if index < _EXACT:
        return index, index
    shift = (index >> (PRECISION_BITS - 1)) - 1
    mantissa = index - shift * _HALF
    return mantissa << shift, ((mantissa + 1) << shift) - 1


_SIZE = bucket_index(MAX_VALUE) + 1


class Histogram:
    """Counts of integer samples (microseconds by convention) in HDR-style buckets."""

    __slots__ = ("_counts", "clamped", "max", "min", "sum", "total")

    def __init__(self) -> None:
        self._counts = [0] * _SIZE
        self.total = 0
        self.sum = 0
        self.min = 0
        self.max = 0
        self.clamped = 0

    def record(self, value: int) -> None:
        """Add one sample; negatives count as 0, values above MAX_VALUE are clamped."""
        if value < 0:
            value = 0
        elif value > MAX_VALUE:
            value = MAX_VALUE
            self.clamped += 1
        if value < _EXACT:
            self._counts[value] += 1
        else:
            shift = value.bit_length() - PRECISION_BITS
            self._counts[shift * _HALF + (value >> shift)] += 1
        if self.total == 0 or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.total += 1
        self.sum += value

    def merge(self, other: Histogram) -> None:
        """Add every sample of `other` into this histogram."""
        if other.total == 0:
            return
        counts = self._counts
        for i, c in enumerate(other._counts):
            if c:
                counts[i] += c
        self.min = other.min if self.total == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.total += other.total
        self.sum += other.sum
        self.clamped += other.clamped

    def percentile(self, pct: float) -> int:
        """Value at `pct` (0-100): the highest value equivalent to the sample at that rank."""
        if self.total == 0:
            return 0
        # Rank as HdrHistogram's getValueAtPercentile: the ceil(pct/100 * n)-th sample.
        rank = max(1, math.ceil(pct / 100.0 * self.total))
        seen = 0
        for i, c in enumerate(self._counts):
            if c:
                seen += c
                if seen >= rank:
                    return min(bucket_bounds(i)[1], self.max)
        return self.max

    def mean(self) -> float:
        """Arithmetic mean of the samples (exact: the sum is kept alongside the buckets)."""
        return self.sum / self.total if self.total else 0.0

    def summary(self, pcts: Iterable[float] = (50, 90, 99, 99.9)) -> dict[str, float]:
        """Count, mean, min, max and the given percentiles, keyed like `p99.9`."""
        out: dict[str, float] = {
            "count": self.total,
            "mean": round(self.mean(), 1),
            "min": self.min,
            "max": self.max,
        }
        for p in pcts:
            out[f"p{p:g}"] = self.percentile(p)
        return out

    def to_dict(self) -> dict[str, object]:
        """Sparse, JSON-safe form: only non-empty buckets."""
        return {
            "precision_bits": PRECISION_BITS,
            "counts": {str(i): c for i, c in enumerate(self._counts) if c},
            "total": self.total,
            "sum": self.sum,
            "min": self.min,
            "max": self.max,
            "clamped": self.clamped,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Histogram:
        """Inverse of to_dict."""
        if data.get("precision_bits") != PRECISION_BITS:
            bits = data.get("precision_bits")
            raise ValueError(f"histogram precision {bits} != {PRECISION_BITS}")
        hist = cls()
        counts = data["counts"]
        assert isinstance(counts, dict)
        for key, c in counts.items():
            hist._counts[int(key)] = int(c)
        for name in ("total", "sum", "min", "max", "clamped"):
            value = data[name]
            assert isinstance(value, int)
            setattr(hist, name, value)
        return hist
