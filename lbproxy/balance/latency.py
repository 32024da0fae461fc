# cython: cdivision=False, annotation_typing=False
"""Latency histograms: a fixed log-linear bucket layout and percentiles read from it.

Owns the bucket layout (what `bucket_index` maps a latency to, and each bucket's bounds)
and everything computed from a list of bucket counts: percentiles, merged counts,
Prometheus-style cumulative octave buckets. The counts themselves live in the per-backend
counters of `lbproxy/balance/cluster.py`, which add one per finished request. Must not
touch HTTP or the clock.

One source, two builds: compiled as ``lbproxy.balance._latency_c`` through
``_latency_c.pxd``, whose C `bucket_index` the compiled gate calls once per request.

Layout (the idea of HdrHistogram, with 3 sub-bucket bits): values in microseconds; 0-15 µs
have one bucket each, and every octave [2^k, 2^(k+1)) above is split into 8 equal
sub-buckets, so a bucket's width is at most 1/8 of its lower bound (<= 12.5 % relative
error) at any scale. 208 buckets reach 2^28 µs (~268 s); anything longer lands in the last.
Octave boundaries are bucket boundaries, so cumulative counts at powers of two are exact:
that is what /metrics exposes as `le` bounds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

SUB_BITS = 3
N_BUCKETS = 208
_LAST = N_BUCKETS - 1
_SUB_BITS = SUB_BITS  # the same values as C constants in the compiled build
# Octave upper bounds (µs) that /metrics exposes: 2^7 µs (0.128 ms) ... 2^28 µs (~268 s).
OCTAVE_BOUNDS_US: tuple[int, ...] = tuple(1 << k for k in range(7, 29))


def bucket_index(rtt_ns: int) -> int:
    """The bucket of one latency sample (ns): its octave and the 3 bits below the top one."""
    us = rtt_ns // 1000
    if us < 16:
        return us if us >= 0 else 0  # 0-15 µs: one bucket per µs (a clock step back: 0)
    # shift = us.bit_length() - SUB_BITS - 1, counted with shifts because compiled that is
    # a short C loop (at most 30 rounds below the last bucket) and not a Python call.
    shift = 0
    top = us >> (_SUB_BITS + 1)
    while top:
        top >>= 1
        shift += 1
    index = (shift << _SUB_BITS) + (us >> shift)
    return index if index < _LAST else _LAST


def bucket_bounds_us(index: int) -> tuple[int, int]:
    """[lower, upper) of a bucket in µs (the last one's upper bound is nominal)."""
    if index < 16:
        return index, index + 1
    shift = (index >> SUB_BITS) - 1
    mantissa = (index & ((1 << SUB_BITS) - 1)) + (1 << SUB_BITS)
    return mantissa << shift, (mantissa + 1) << shift


def merged(histograms: Iterable[Sequence[int]]) -> list[int]:
    """Bucket-wise sum (a cluster's histogram from its backends')."""
    out = [0] * N_BUCKETS
    for h in histograms:
        for i, n in enumerate(h):
            if n:
                out[i] += n
    return out


def percentile_ms(counts: Sequence[int], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) in ms, interpolated inside its bucket; None if empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total  # the sample at this (fractional) rank, as Prometheus interpolates
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            lo, hi = bucket_bounds_us(i)
            return round((lo + (hi - lo) * (rank - seen) / n) / 1000.0, 3)
        seen += n
    return bucket_bounds_us(_LAST)[1] / 1000.0  # only by float rounding: the top bound


def cumulative_octaves(counts: Sequence[int]) -> list[tuple[float, int]]:
    """(upper bound in seconds, samples <= it) at each octave bound; exact by layout."""
    out = []
    seen = 0
    i = 0
    for bound in OCTAVE_BOUNDS_US:
        while i < N_BUCKETS and bucket_bounds_us(i)[1] <= bound:
            seen += counts[i]
            i += 1
        out.append((bound / 1e6, seen))
    return out
