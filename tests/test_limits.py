"""Adaptive concurrency limits as pure functions of their samples.

Each expected value is worked out by hand from the formulas of Netflix's
concurrency-limits (Gradient2Limit.java, AIMDLimit.java, VegasLimit.java,
WindowedLimit.java), written next to the assertion.
"""

from __future__ import annotations

import random

import pytest

from lbproxy.control.config import AdaptiveConcurrency
from lbproxy.policies.limits import (
    AIMD,
    MIN_RTT_THRESHOLD_NS,
    BackendLimit,
    ExpAvg,
    Gradient2,
    Vegas,
    algorithm_of,
)

MS = 1_000_000


def test_exp_avg_is_a_plain_mean_during_warmup_then_an_ewma():
    avg = ExpAvg(window=9, warmup=2)  # factor 2 / (9 + 1) = 0.2
    assert avg.add(10.0) == 10.0
    assert avg.add(20.0) == 15.0  # (10 + 20) / 2
    assert avg.add(40.0) == pytest.approx(15.0 * 0.8 + 40.0 * 0.2)  # 20.0


# Netflix's Gradient2 defaults (initial 20, smoothing 0.2, queue size 4), with the no-load
# floor out of the way (a tolerance no RTT reaches)
NETFLIX = AdaptiveConcurrency(queue_size=4, rtt_tolerance=1e9, rtt_slack_ms=0)


def test_gradient2_follows_the_reference_formula():
    g = Gradient2(NETFLIX)
    # long = 10 (first sample), gradient = min(1, 10/10) = 1:
    # new = 20 x 1 + 4 = 24; smoothed 20 x 0.8 + 24 x 0.2 = 20.8
    assert g.update(10 * MS, 20, False) == pytest.approx(20.8)
    # long = mean(10, 20) = 15, gradient = 15 / 20 = 0.75:
    # new = 20.8 x 0.75 + 4 = 19.6; smoothed 20.8 x 0.8 + 19.6 x 0.2 = 20.56
    assert g.update(20 * MS, 20, False) == pytest.approx(20.56)
    # in flight 5 < 20.56 / 2: application-limited, unchanged
    assert g.update(40 * MS, 5, False) == pytest.approx(20.56)
    # gradient clamps at 0.5: long = mean(10, 20, 40, 400) = 117.5, 117.5/400 < 0.5:
    # new = 20.56 x 0.5 + 4 = 14.28; smoothed 20.56 x 0.8 + 14.28 x 0.2 = 19.304
    assert g.update(400 * MS, 20, False) == pytest.approx(19.304)


def test_gradient2_drop_takes_the_smallest_gradient_even_when_fast():
    g = Gradient2(AdaptiveConcurrency(queue_size=4))
    # a drop: gradient 0.5 whatever the RTT, no growth allowance; new = 10; 16 + 2 = 18
    assert g.update(10 * MS, 20, True) == pytest.approx(18.0)


def test_gradient2_pulls_a_stale_long_rtt_down():
    g = Gradient2(AdaptiveConcurrency(queue_size=4))
    for _ in range(10):
        g.update(100 * MS, 20, False)  # warm-up: long = 100 ms
    g.update(10 * MS, 1, False)  # long becomes 100 x (1 - f) + 10 x f, then x 0.9
    f = 2 / 601
    assert g.long_rtt.value == pytest.approx((100 * MS * (1 - f) + 10 * MS * f) * 0.9)


def test_gradient2_default_queue_size_is_sqrt_of_the_limit():
    g = Gradient2(AdaptiveConcurrency(initial_limit=2))
    # queue = max(1, int(sqrt(2))) = 1; gradient 1: new = 2 + 1 = 3; 1.6 + 0.6 = 2.2
    assert g.update(10 * MS, 2, False) == pytest.approx(2.2)
    # long = mean(10, 1000) = 505, but the no-load RTT is 10 x 1.01 (aged one window):
    # baseline min(505, 1.5 x 10.1) = 15.15, gradient 15.15 / 1000 -> clamped to 0.5;
    # queue = int(sqrt(2.2)) = 1: new = 2.2 x 0.5 + 1 = 2.1; 1.76 + 0.42 = 2.18
    assert g.update(1000 * MS, 2, False) == pytest.approx(2.18)
    big = Gradient2(AdaptiveConcurrency(initial_limit=100))
    # queue = int(sqrt(100)) = 10: new = 110; 80 + 22 = 102
    assert big.update(10 * MS, 100, False) == pytest.approx(102.0)


def test_gradient2_finds_a_limit_when_its_first_windows_are_overloaded():
    # A backend serving 4 at a time in 20 ms, met by a fresh limiter at 20 in flight:
    # RTT = in flight / 4 x 20 ms. Netflix's long average alone starts at the overloaded
    # RTT and never sees a gradient under 1; the no-load floor (the lowest window minimum,
    # 20 ms: the first request of a window found a free worker) brings it down.
    g = Gradient2(AdaptiveConcurrency())
    for _ in range(200):
        inflight = max(4, int(g.limit))
        g.update(inflight / 4 * 20 * MS, inflight, False, 20 * MS)
    # settles where RTT ~ 1.25 x 20 ms (x the queue allowance): 5-8 in flight, not 20
    assert 4 <= g.limit <= 8


def test_gradient2_noload_ages_up_to_follow_a_slower_backend():
    g = Gradient2(AdaptiveConcurrency())
    g.update(20 * MS, 20, False, 20 * MS)
    for _ in range(100):
        g.update(40 * MS, 20, False, 40 * MS)  # the backend is now twice as slow
    assert g.noload_ns == pytest.approx(20 * MS * 1.001**100)  # aging, not yet there
    for _ in range(700):
        g.update(40 * MS, 20, False, 40 * MS)
    assert g.noload_ns == 40 * MS  # 20 x 1.001^801 > 40: the floor is the new minimum
    assert g.limit >= 20  # the limit follows: no collapse on the old floor


def test_gradient2_stays_within_min_and_max():
    g = Gradient2(AdaptiveConcurrency(initial_limit=5, min_limit=4, max_limit=6, queue_size=4))
    for _ in range(30):
        g.update(10 * MS, 6, False)
    assert g.limit == 6.0
    for _ in range(30):
        g.update(10 * MS, 6, True)
    assert g.limit == 4.0


def test_aimd_follows_the_reference_formula():
    a = AIMD(AdaptiveConcurrency(algorithm="aimd", min_limit=1))
    # drop: max(1, min(20 - 1, int(20 x 0.9))) = 18
    assert a.update(10 * MS, 20, True) == 18
    # in flight 9: 9 x 2 >= 18, so + 1
    assert a.update(10 * MS, 9, False) == 19
    # in flight 5: 10 < 19, unchanged
    assert a.update(10 * MS, 5, False) == 19
    # an RTT past the 5 s timeout is a drop: int(19 x 0.9) = 17
    assert a.update(6_000 * MS, 19, False) == 17
    # at 1, a drop keeps 1: max(1, min(0, 0))
    low = AIMD(AdaptiveConcurrency(algorithm="aimd", initial_limit=1, min_limit=1))
    assert low.update(1 * MS, 1, True) == 1


def test_vegas_follows_the_reference_formula():
    v = Vegas(AdaptiveConcurrency(algorithm="vegas"), random.Random(1))
    assert v.update(10 * MS, 20, False) == 20  # first sample: rtt_noload = 10 ms
    # rtt 20: queue = ceil(20 x (1 - 10/20)) = 10 > beta = 6 x log10root(20) = 6:
    # decrease to 20 - 1 = 19 (smoothing 1.0)
    assert v.update(20 * MS, 20, False) == 19
    # rtt 10: queue = 0 <= threshold 1: increase by beta, 19 + 6 = 25
    assert v.update(10 * MS, 19, False) == 25
    # in flight 10 < 25 / 2: unchanged
    assert v.update(11 * MS, 10, False) == 25
    # a drop: 25 - log10root(25) = 24
    assert v.update(11 * MS, 25, True) == 24
    # queue = ceil(24 x (1 - 10/12)) = 4: not under alpha 3, not over beta 6: the sweet
    # spot, unchanged
    assert v.update(12 * MS, 24, False) == 24


def test_vegas_probe_rebases_the_noload_rtt_without_lowering_the_limit():
    v = Vegas(AdaptiveConcurrency(algorithm="vegas", initial_limit=2), random.Random(3))
    v.update(10 * MS, 2, False)
    for _ in range(200):
        before = v.limit
        v.update(50 * MS, 2, False)
        if v.probe_count == 0:  # this sample was the probe
            assert v.rtt_noload == 50 * MS
            assert v.limit == before
            break
    else:
        pytest.fail("no probe within 200 windows (30 x limit x jitter)")


def test_algorithm_of_picks_by_name():
    assert isinstance(algorithm_of(AdaptiveConcurrency()), Gradient2)
    assert isinstance(algorithm_of(AdaptiveConcurrency(algorithm="aimd")), AIMD)
    assert isinstance(algorithm_of(AdaptiveConcurrency(algorithm="vegas")), Vegas)


def test_window_closes_after_window_size_samples_and_its_time():
    lim = BackendLimit(AdaptiveConcurrency(queue_size=4, min_window=0.1, max_window=1.0))
    now = 10**9
    for i in range(9):
        lim.sample(10 * MS, 20, False, now + i)
    assert lim.algorithm.limit == 20  # 9 samples: not ready
    lim.sample(30 * MS, 20, False, now + 9)
    # window average (9 x 10 + 30) / 10 = 12 ms: gradient 1 on the first window -> 20.8
    assert lim.algorithm.limit == pytest.approx(20.8)
    assert lim.limit == 20
    # next window: 2 x min RTT (20 ms) is under min_window, so 100 ms
    assert lim.next_update_ns == now + 9 + 100 * MS
    for i in range(20):
        lim.sample(10 * MS, 20, False, now + 10 + i)
    assert lim.algorithm.limit == pytest.approx(20.8)  # still inside the 100 ms window
    lim.sample(10 * MS, 20, False, now + 9 + 100 * MS + 1)
    assert lim.algorithm.limit > 20.8


def test_window_ignores_samples_under_the_threshold_unless_dropped():
    lim = BackendLimit(AdaptiveConcurrency(window_size=1, queue_size=4))
    lim.sample(MIN_RTT_THRESHOLD_NS - 1, 20, False, 1)
    assert lim.count == 0
    lim.sample(MIN_RTT_THRESHOLD_NS - 1, 20, True, 2)
    assert lim.algorithm.limit == pytest.approx(18.0)  # the drop went through (x 0.9)
