"""Selector core behaviour, on the twin and the native module alike."""

from __future__ import annotations

from types import ModuleType

import pytest


def _sanity_buffer(n: int) -> bytes:
    # xxHash's xxhsum sanity buffer: byteGen starts at PRIME32, multiplied by PRIME64.
    out = bytearray()
    gen = 2654435761
    for _ in range(n):
        out.append(gen >> 56)
        gen = (gen * 11400714785074694797) & 0xFFFFFFFFFFFFFFFF
    return bytes(out)


SANITY = _sanity_buffer(222)

# Known answers of the reference XXH64 (xxHash's xxhsum sanity checks).
XXH64_VECTORS = [
    (b"", 0, 0xEF46DB3751D8E999),
    (SANITY[:1], 0, 0xE934A84ADB052768),
    (SANITY[:1], 2654435761, 0x5014607643A9B4C3),
    (SANITY[:14], 0, 0x8282DCC4994E35C8),
    (SANITY[:222], 0, 0xB641AE8CB691C174),
]


def test_native_module_loaded() -> None:
    """The compiled core must load unless the twin was asked for (yarl's check)."""
    from lbproxy import native
    from lbproxy.balance import selectors

    if native.NO_EXTENSIONS:
        assert not selectors.NATIVE
        pytest.skip("LBPROXY_NO_EXTENSIONS is set")
    assert selectors.NATIVE, "lbproxy.balance._selectors_c did not load; run `make build`"
    assert selectors.MaglevSelector.__module__ == "lbproxy.balance._selectors_c"


@pytest.mark.parametrize(("data", "seed", "expected"), XXH64_VECTORS)
def test_hash64_known_answers(impl: ModuleType, data: bytes, seed: int, expected: int) -> None:
    assert impl.hash64(data, seed) == expected


def test_hash64_rejects_bad_seed(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="seed"):
        impl.hash64(b"x", -1)
    with pytest.raises(ValueError, match="seed"):
        impl.hash64(b"x", 1 << 64)


def test_backend_load_counts_and_cost(impl: ModuleType) -> None:
    load = impl.BackendLoad(2, decay_ns=1_000_000_000, default_rtt_ns=5_000_000)
    assert load.capacity == 2
    assert load.accepts(0)
    assert load.cost(0, 0) == 5_000_000.0  # the prior, x (0 + 1)
    load.start(0)
    load.start(0)
    assert load.inflight(0) == 2
    assert load.cost(0, 0) == 15_000_000.0
    load.finish(0, 2_000_000, 100)  # first sample replaces the prior
    assert load.inflight(0) == 1
    assert load.cost(0, 100) == 4_000_000.0
    load.finish(0, 8_000_000, 200)  # a peak replaces the estimate at once
    assert load.cost(0, 200) == 8_000_000.0
    assert load.cost(0, 1_000_000_200) < 8_000_000.0 * 0.37  # decays with time constant
    load.finish(0, 1, 300)  # never below zero in flight
    assert load.inflight(0) == 0
    load.set_accept(1, False)
    assert not load.accepts(1)
    load.ensure_capacity(5)
    assert load.capacity == 5
    assert not load.accepts(1)
    load.reset(1)
    assert load.accepts(1)
    with pytest.raises(IndexError):
        load.start(5)


def test_backend_load_rejects_bad_parameters(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="capacity"):
        impl.BackendLoad(-1)
    with pytest.raises(ValueError, match="decay_ns"):
        impl.BackendLoad(1, decay_ns=0)
    with pytest.raises(ValueError, match="default_rtt_ns"):
        impl.BackendLoad(1, default_rtt_ns=-5)


ADDRS = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]


def test_maglev_table_independent_of_order(impl: ModuleType) -> None:
    load = impl.BackendLoad(3)
    a = impl.MaglevSelector([0, 1, 2], ADDRS, [1, 2, 3], load, table_size=101)
    b = impl.MaglevSelector([2, 1, 0], ADDRS[::-1], [3, 2, 1], load, table_size=101)
    assert a.table == b.table
    assert sorted(set(a.table)) == [0, 1, 2]


def test_maglev_pick_respects_accept_and_follows_candidates(impl: ModuleType) -> None:
    load = impl.BackendLoad(3)
    sel = impl.MaglevSelector([0, 1, 2], ADDRS, [1, 1, 1], load, table_size=13)
    for i in range(50):
        key = b"video-%d" % i
        order = sel.candidates(key, 3)
        assert sorted(order) == [0, 1, 2]
        assert sel.candidates(key, 1) == order[:1]
        assert sel.candidates(key, 0) == []
        assert sel.pick(key) == order[0]
        load.set_accept(order[0], False)
        assert sel.pick(key) == order[1]
        load.set_accept(order[1], False)
        assert sel.pick(key) == order[2]
        load.set_accept(order[2], False)
        assert sel.pick(key) == -1
        for s in order:
            load.set_accept(s, True)


def test_bounded_load_spills_in_fallback_order(impl: ModuleType) -> None:
    load = impl.BackendLoad(3)
    maglev = impl.MaglevSelector([0, 1, 2], ADDRS, [1, 1, 1], load, table_size=13)
    bounded = impl.BoundedLoadSelector(maglev, load, balance_factor=1.0)
    key = b"hot-video"
    order = maglev.candidates(key, 3)
    assert bounded.pick(key) == order[0]
    load.start(order[0])  # cap = ceil(1.0 * 2 / 3) = 1: the first candidate is full
    assert bounded.cap() == 1
    assert bounded.pick(key) == order[1]
    for s in (0, 1, 2):
        load.set_accept(s, False)
    assert bounded.pick(key) == -1
    assert bounded.cap() == 0


def test_p2c_prefers_cheaper_and_respects_accept(impl: ModuleType) -> None:
    load = impl.BackendLoad(2)
    sel = impl.P2CSelector([0, 1], ADDRS[:2], [1, 1], load, seed=7)
    load.finish(0, 1_000_000, 0)
    load.finish(1, 9_000_000, 0)
    assert {sel.pick(b"", 0) for _ in range(20)} == {0}
    load.set_accept(0, False)
    assert sel.pick(b"", 0) == 1
    load.set_accept(1, False)
    assert sel.pick(b"", 0) == -1
    single = impl.P2CSelector([1], ADDRS[:1], [1], load)
    assert single.pick(b"", 0) == -1
    load.set_accept(1, True)
    assert single.pick(b"", 0) == 1


def test_round_robin_is_smooth_like_nginx(impl: ModuleType) -> None:
    load = impl.BackendLoad(3)
    # nginx's example: weights {a: 5, b: 1, c: 1} give a a b a c a a.
    sel = impl.RoundRobinSelector([0, 1, 2], ["a", "b", "c"], [5, 1, 1], load)
    assert [sel.pick(b"") for _ in range(7)] == [0, 0, 1, 0, 2, 0, 0]
    load.set_accept(0, False)
    assert {sel.pick(b"") for _ in range(4)} == {1, 2}
    for s in (1, 2):
        load.set_accept(s, False)
    assert sel.pick(b"") == -1


SELECTOR_KINDS = ["maglev", "p2c", "round_robin"]


def _build(impl: ModuleType, kind: str, slots, addresses, weights, load, **kw):
    cls = {
        "maglev": impl.MaglevSelector,
        "p2c": impl.P2CSelector,
        "round_robin": impl.RoundRobinSelector,
    }[kind]
    return cls(slots, addresses, weights, load, **kw)


@pytest.mark.parametrize("kind", SELECTOR_KINDS)
@pytest.mark.parametrize(
    ("slots", "addresses", "weights", "message"),
    [
        ([], [], [], "empty backend set"),
        ([0, 1], ["a", "b"], [1, 0], "weight of 'b' must be positive"),
        ([0, 1], ["a", "b"], [1, -3], "weight of 'b' must be positive"),
        ([0, 1], ["a", "a"], [1, 1], "duplicate address 'a'"),
        ([0, 0], ["a", "b"], [1, 1], "duplicate slot 0"),
        ([0, 1], ["a"], [1, 1], "mismatched lengths"),
        ([0], ["a"], [1, 1], "mismatched lengths"),
        ([0, 9], ["a", "b"], [1, 1], "outside the BackendLoad capacity"),
        ([0], [""], [1], "non-empty str"),
        ([0], ["a"], [1.5], "must be an int"),
    ],
)
def test_bad_backend_sets_raise_at_build(
    impl: ModuleType, kind: str, slots, addresses, weights, message: str
) -> None:
    load = impl.BackendLoad(4)
    with pytest.raises(ValueError, match=message):
        _build(impl, kind, slots, addresses, weights, load)


@pytest.mark.parametrize(
    ("table_size", "message"),
    [(100, "must be prime"), (1, "must be prime"), (2, "smaller than the backend count")],
)
def test_bad_table_size_raises_at_build(impl: ModuleType, table_size: int, message: str) -> None:
    load = impl.BackendLoad(3)
    with pytest.raises(ValueError, match=message):
        impl.MaglevSelector([0, 1, 2], ADDRS, [1, 1, 1], load, table_size=table_size)


def test_bad_bounded_load_raises_at_build(impl: ModuleType) -> None:
    load = impl.BackendLoad(3)
    maglev = impl.MaglevSelector([0, 1, 2], ADDRS, [1, 1, 1], load, table_size=13)
    for c in (0.5, 0.0, -1.0, float("nan"), float("inf"), 1e300, True, "2"):
        with pytest.raises(ValueError, match="balance_factor"):
            impl.BoundedLoadSelector(maglev, load, balance_factor=c)
    with pytest.raises(ValueError, match="BackendLoad"):
        impl.BoundedLoadSelector(maglev, impl.BackendLoad(3))


def test_native_selectors_refuse_a_second_init(native_impl: ModuleType) -> None:
    load = native_impl.BackendLoad(3)
    maglev = native_impl.MaglevSelector([0, 1], ADDRS[:2], [1, 1], load, table_size=7)
    with pytest.raises(ValueError, match="immutable"):
        maglev.__init__([0], ADDRS[:1], [1], load, 7)
    bounded = native_impl.BoundedLoadSelector(maglev, load)
    with pytest.raises(ValueError, match="immutable"):
        bounded.__init__(maglev, load)
    for cls in (native_impl.P2CSelector, native_impl.RoundRobinSelector):
        sel = cls([0, 1], ADDRS[:2], [1, 1], load)
        with pytest.raises(ValueError, match="immutable"):
            sel.__init__([0], ADDRS[:1], [1], load)
