"""The bench's HDR-style histogram against exact percentiles of the raw samples."""

from __future__ import annotations

import math
import random

import pytest

from bench.histogram import MAX_VALUE, PRECISION_BITS, Histogram, bucket_bounds, bucket_index

RELATIVE_ERROR = 1 / 2 ** (PRECISION_BITS - 1)


def exact_percentile(samples: list[int], pct: float) -> int:
    """The ceil(pct/100 * n)-th smallest sample (HdrHistogram's rank), from a sorted copy."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def test_small_values_are_exact() -> None:
    hist = Histogram()
    for v in range(256):
        hist.record(v)
    for pct in (1, 25, 50, 90, 100):
        assert hist.percentile(pct) == exact_percentile(list(range(256)), pct)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("pct", [50, 90, 99, 99.9, 100])
def test_percentiles_within_relative_error(seed: int, pct: float) -> None:
    rng = random.Random(seed)
    # Log-normal-ish latencies from ~10 µs to ~1 s, like a proxy under load.
    samples = [int(math.exp(rng.uniform(2.3, 13.8))) for _ in range(20_000)]
    hist = Histogram()
    for s in samples:
        hist.record(s)
    exact = exact_percentile(samples, pct)
    got = hist.percentile(pct)
    assert exact <= got <= exact * (1 + RELATIVE_ERROR)


def test_bucket_bounds_cover_every_value_once() -> None:
    previous_high = -1
    for index in range(bucket_index(1 << 20) + 1):
        low, high = bucket_bounds(index)
        assert low == previous_high + 1
        assert bucket_index(low) == index
        assert bucket_index(high) == index
        assert high - low <= max(0, low * RELATIVE_ERROR)
        previous_high = high


def test_merge_equals_recording_everything_in_one() -> None:
    rng = random.Random(7)
    a, b, both = Histogram(), Histogram(), Histogram()
    for i in range(5000):
        v = rng.randrange(1, 10**6)
        (a if i % 2 else b).record(v)
        both.record(v)
    a.merge(b)
    assert a.to_dict() == both.to_dict()
    assert [a.percentile(p) for p in (50, 99, 99.9)] == [both.percentile(p) for p in (50, 99, 99.9)]


def test_round_trip_and_summary() -> None:
    hist = Histogram()
    for v in (10, 20, 30, 4000, 5_000_000):
        hist.record(v)
    again = Histogram.from_dict(hist.to_dict())
    assert again.summary() == hist.summary()
    assert hist.summary()["count"] == 5
    assert hist.mean() == pytest.approx((10 + 20 + 30 + 4000 + 5_000_000) / 5)


def test_out_of_range_values_are_clamped_and_counted() -> None:
    hist = Histogram()
    hist.record(-5)
    hist.record(MAX_VALUE * 4)
    assert hist.min == 0
    assert hist.max == MAX_VALUE
    assert hist.clamped == 1


def test_empty_histogram() -> None:
    hist = Histogram()
    assert hist.percentile(99) == 0
    assert hist.mean() == 0.0
