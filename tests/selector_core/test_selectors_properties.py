"""Properties the selectors promise: Maglev balance and minimal disruption, the bounded-load
cap, and P2C steering away from a slow backend. Time is injected; nothing sleeps."""

from __future__ import annotations

import heapq
import random
from types import ModuleType

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from selector_strategies import keys

from lbproxy.balance._selectors_check import is_prime

PROPS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _prime_above(n: int) -> int:
    n += 1
    while not is_prime(n):
        n += 1
    return n


def _addrs(n: int) -> list[str]:
    return [f"10.0.{i // 200}.{i % 200}:8080" for i in range(n)]


@PROPS
@given(st.lists(st.integers(1, 4), min_size=1, max_size=16))
def test_maglev_balance_matches_weights(impl: ModuleType, weights: list[int]) -> None:
    """With M > 100 x N (here large enough that the lightest backend expects >= 100 entries,
    so one entry of rounding is 1%), each share is within 2% of its weighted share."""
    n = len(weights)
    total = sum(weights)
    m = _prime_above(max(100 * n, 100 * total // min(weights)))
    load = impl.BackendLoad(n)
    sel = impl.MaglevSelector(list(range(n)), _addrs(n), weights, load, table_size=m)
    table = sel.table
    for slot in range(n):
        expected = m * weights[slot] / total
        assert abs(table.count(slot) - expected) <= 0.02 * expected, (slot, weights)


@PROPS
@given(st.integers(3, 40), st.data())
def test_maglev_removing_one_backend_moves_few_keys(impl: ModuleType, n: int, data) -> None:
    """Removing 1 of N moves at most 1/N + 3% of keys (NSDI'16 §5.3): the removed
    backend's keys plus a small extra, and an unaffected key stays where it was."""
    gone = data.draw(st.integers(0, n - 1))
    m = 65537 if impl.__name__.endswith("_c") else 13001
    load = impl.BackendLoad(n)
    addrs = _addrs(n)
    before = impl.MaglevSelector(list(range(n)), addrs, [1] * n, load, table_size=m)
    rest = [i for i in range(n) if i != gone]
    after = impl.MaglevSelector(rest, [addrs[i] for i in rest], [1] * (n - 1), load, m)
    old, new = before.table, after.table
    moved = sum(1 for a, b in zip(old, new, strict=True) if a != b)
    extra = sum(1 for a, b in zip(old, new, strict=True) if a != b and a != gone)
    assert moved / m <= 1 / n + 0.03
    assert extra / m <= 0.03
    assert gone not in new
    sample = [b"/v/%d/" % i for i in range(2000)]
    pairs = [(before.pick(k), after.pick(k)) for k in sample]
    moved_keys = sum(1 for a, b in pairs if a != b)
    # Only the removed backend's keys move, plus the small extra Maglev allows.
    extra_keys = sum(1 for a, b in pairs if a != b and a != gone)
    assert extra_keys / len(sample) <= 0.03 + 0.02  # + sampling error of 2000 keys
    assert moved_keys / len(sample) <= 1 / n + 0.03 + 0.02


@PROPS
@given(
    st.integers(2, 12),
    st.sampled_from([1.0, 1.1, 1.25, 1.5, 2.0]),
    st.lists(
        st.tuples(st.sampled_from(["pick", "pick", "end", "accept"]), st.integers(0, 999), keys),
        max_size=200,
    ),
)
def test_bounded_load_never_exceeds_cap(impl: ModuleType, n: int, c: float, steps) -> None:
    load = impl.BackendLoad(n)
    maglev = impl.MaglevSelector(list(range(n)), _addrs(n), [1] * n, load, table_size=1009)
    bounded = impl.BoundedLoadSelector(maglev, load, balance_factor=c)
    live: list[int] = []
    for kind, r, key in steps:
        if kind == "pick":
            cap = bounded.cap()
            slot = bounded.pick(key)
            if cap == 0:
                assert slot == -1
                continue
            assert slot >= 0 and load.accepts(slot)
            load.start(slot)
            assert load.inflight(slot) <= cap
            live.append(slot)
        elif kind == "end" and live:
            load.finish(live.pop(r % len(live)), 1_000, 0)
        elif kind == "accept":
            load.set_accept(r % n, r % 4 != 0)


def _simulate(impl: ModuleType, kind: str, seed: int) -> float:
    """Share of requests the slow backend got: 5 backends, one 5x slower, Poisson arrivals."""
    n = 5
    latency = [10_000_000] * n
    latency[0] = 50_000_000  # slot 0 is 5x slower
    load = impl.BackendLoad(n)
    addrs = _addrs(n)
    if kind == "p2c":
        sel = impl.P2CSelector(list(range(n)), addrs, [1] * n, load, seed=seed)
    else:
        sel = impl.RoundRobinSelector(list(range(n)), addrs, [1] * n, load)
    rng = random.Random(seed)
    now = 0
    ends: list[tuple[int, int, int]] = []  # (end time, slot, start time)
    counts = [0] * n
    for _ in range(4000):
        now += int(rng.expovariate(1 / 2_500_000))  # 400 requests/s... per 2.5 ms
        while ends and ends[0][0] <= now:
            end, slot, began = heapq.heappop(ends)
            load.finish(slot, end - began, end)
        slot = sel.pick(b"", now) if kind == "p2c" else sel.pick(b"")
        load.start(slot)
        counts[slot] += 1
        service = int(latency[slot] * rng.uniform(0.8, 1.2))
        heapq.heappush(ends, (now + service, slot, now))
    return counts[0] / sum(counts)


def test_p2c_sends_slow_backend_less_than_round_robin(impl: ModuleType) -> None:
    rr = _simulate(impl, "round_robin", seed=1)
    p2c = _simulate(impl, "p2c", seed=1)
    assert abs(rr - 0.2) < 0.01
    assert p2c < rr / 2, (p2c, rr)


@PROPS
@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=10),
    st.lists(st.booleans(), min_size=10, max_size=10),
    st.lists(keys, min_size=1, max_size=20),
)
def test_pick_is_first_accepted_candidate(
    impl: ModuleType, weights: list[int], accept: list[bool], ks: list[bytes]
) -> None:
    """Pingora's select_with: the pick is the first accepted backend in fallback order."""
    n = len(weights)
    load = impl.BackendLoad(n)
    sel = impl.MaglevSelector(list(range(n)), _addrs(n), weights, load, table_size=101)
    for slot in range(n):
        load.set_accept(slot, accept[slot])
    for k in ks:
        order = sel.candidates(k, n)
        assert sorted(order) == list(range(n))
        wanted = [s for s in order if accept[s]]
        assert sel.pick(k) == (wanted[0] if wanted else -1)
