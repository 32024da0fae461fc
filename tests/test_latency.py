"""The log-linear latency histogram: layout invariants, percentiles, octave bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbproxy.balance import latency
from lbproxy.balance.gate import ClusterState, Lease, Outcome
from lbproxy.balance.latency import N_BUCKETS, bucket_bounds_us, bucket_index
from lbproxy.control.config import ClusterConfig


def test_buckets_tile_the_range_without_gaps():
    assert bucket_bounds_us(0) == (0, 1)
    for i in range(1, N_BUCKETS):
        assert bucket_bounds_us(i)[0] == bucket_bounds_us(i - 1)[1]
    assert bucket_bounds_us(N_BUCKETS - 1)[1] == 1 << 28


@given(st.integers(min_value=0, max_value=(1 << 28) * 1000 - 1))
def test_a_sample_lands_in_the_bucket_that_contains_it(rtt_ns):
    lo, hi = bucket_bounds_us(bucket_index(rtt_ns))
    assert lo <= rtt_ns // 1000 < hi
    assert hi - lo <= max(1, lo // 8)  # <= 12.5 % relative width at any scale


def test_out_of_range_samples_are_clamped():
    assert bucket_index(-5) == 0  # a clock that stepped back
    assert bucket_index(10**15) == N_BUCKETS - 1


def test_percentiles_interpolate_and_are_none_when_empty():
    counts = [0] * N_BUCKETS
    assert latency.percentile_ms(counts, 0.5) is None
    for ms in range(1, 101):  # 1..100 ms, one sample each
        counts[bucket_index(ms * 1_000_000)] += 1
    for q, want in ((0.5, 50), (0.9, 90), (0.99, 99)):
        got = latency.percentile_ms(counts, q)
        assert got == pytest.approx(want, rel=0.125)


def test_octave_counts_are_cumulative_and_exact():
    counts = [0] * N_BUCKETS
    for us in (100, 128, 129, 1000, 5_000_000):
        counts[bucket_index(us * 1000)] += 1
    octaves = dict(latency.cumulative_octaves(counts))
    assert octaves[128e-6] == 1  # 100 µs; 128 µs sits in [128, 144)
    assert octaves[256e-6] == 3
    assert octaves[1024e-6] == 4
    assert octaves[(1 << 23) / 1e6] == 5


def test_lease_end_records_the_real_latency_not_the_failure_penalty():
    state = ClusterState("c")
    from lbproxy.balance.gate import Cluster

    cluster = Cluster("c", ClusterConfig(backends=["127.0.0.1:1"]), state)
    lease = cluster.begin(b"k", 0)
    assert isinstance(lease, Lease)
    lease.end(Outcome.CONNECT_FAILED, 2_000_000)  # failed after 2 ms
    c = state.counters[0]
    assert c.latency[bucket_index(2_000_000)] == 1 and c.latency_ns == 2_000_000
