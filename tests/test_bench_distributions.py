"""Key samplers: Zipf frequencies, uniform coverage, the viral hot key's ramp."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from bench.distributions import HotKey, Uniform, Zipf, from_spec


def test_zipf_probabilities_follow_the_power_law() -> None:
    zipf = Zipf(1000, 1.1)
    assert sum(zipf.probability(k) for k in range(1000)) == pytest.approx(1.0)
    # p(k) / p(0) == 1 / (k+1)**s exactly, by construction.
    for k in (1, 9, 99):
        assert zipf.probability(k) / zipf.probability(0) == pytest.approx(1 / (k + 1) ** 1.1)


def test_zipf_sample_frequencies_match_probabilities() -> None:
    zipf = Zipf(100, 1.0)
    rng = random.Random(42)
    n = 200_000
    counts = Counter(zipf.sample(rng, 0.0) for _ in range(n))
    for k in (0, 1, 4, 20):
        expected = zipf.probability(k) * n
        # ~5 standard deviations of a binomial count.
        assert abs(counts[k] - expected) < 5 * (expected ** 0.5) + 5
    assert all(0 <= k < 100 for k in counts)


def test_zipf_with_s_zero_is_uniform() -> None:
    zipf = Zipf(10, 0.0)
    assert all(zipf.probability(k) == pytest.approx(0.1) for k in range(10))


def test_zipf_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="n >= 1"):
        Zipf(0, 1.0)
    with pytest.raises(ValueError, match="s >= 0"):
        Zipf(10, -1.0)


def test_uniform_covers_the_key_space() -> None:
    rng = random.Random(1)
    seen = {Uniform(20).sample(rng, 0.0) for _ in range(2000)}
    assert seen == set(range(20))


def test_hot_key_share_ramps_linearly_then_holds() -> None:
    hot = HotKey(Uniform(1000), key=999, share=0.5, start_s=2.0, ramp_s=5.0)
    assert hot.share_at(0.0) == 0.0
    assert hot.share_at(2.0) == 0.0
    assert hot.share_at(4.5) == pytest.approx(0.25)
    assert hot.share_at(7.0) == 0.5
    assert hot.share_at(60.0) == 0.5


def test_hot_key_takes_its_share_of_samples() -> None:
    hot = HotKey(Uniform(1000), key=999, share=0.5)
    rng = random.Random(3)
    n = 50_000
    share = sum(hot.sample(rng, 10.0) == 999 for _ in range(n)) / n
    assert share == pytest.approx(0.5 + 0.5 / 1000, abs=0.01)


def test_from_spec_builds_each_kind() -> None:
    assert isinstance(from_spec({"dist": "uniform", "n": 5}), Uniform)
    assert isinstance(from_spec({"dist": "zipf", "n": 5, "s": 1.2}), Zipf)
    hot = from_spec({"dist": "zipf", "n": 5, "hot": {"share": 0.3}})
    assert isinstance(hot, HotKey)
    assert hot.key == 4
    with pytest.raises(ValueError, match="unknown distribution"):
        from_spec({"dist": "pareto"})
