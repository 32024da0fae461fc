"""The native module and its Python twin agree bit for bit on random input (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from selector_strategies import SMALL_PRIMES, BackendSet, backend_sets, keys, ops

from lbproxy.balance import _selectors_py as py

native = pytest.importorskip("lbproxy.balance._selectors_c")

EXAMPLES = settings(max_examples=200, deadline=None)


@EXAMPLES
@given(st.binary(max_size=300), st.integers(0, 2**64 - 1))
def test_hash64_identical(data: bytes, seed: int) -> None:
    assert native.hash64(data, seed) == py.hash64(data, seed)


def _pair(bs: BackendSet, cls: str, **kw):
    out = []
    for mod in (py, native):
        load = mod.BackendLoad(bs.capacity, decay_ns=1_000_000_000)
        sel = getattr(mod, cls)(bs.slots, bs.addresses, bs.weights, load, **kw)
        out.append((load, sel))
    return out


def _apply(loads, slots: list[int], op: tuple[str, int, int, int], now: int) -> None:
    kind, i, value, _ = op
    slot = slots[i % len(slots)]
    for load in loads:
        if kind == "start":
            load.start(slot)
        elif kind == "finish":
            load.finish(slot, value, now)
        elif kind == "accept":
            load.set_accept(slot, value % 3 != 0)


@EXAMPLES
@given(backend_sets(), st.sampled_from(SMALL_PRIMES), st.lists(keys, max_size=30), ops)
def test_maglev_tables_and_picks_identical(bs: BackendSet, m: int, ks, steps) -> None:
    if m < len(bs.slots):
        m = 2003
    (pl, ps), (nl, ns) = _pair(bs, "MaglevSelector", table_size=m)
    assert ns.table == ps.table
    assert ns.slots == ps.slots and ns.addresses == ps.addresses
    for k in ks:
        assert ns.candidates(k, len(bs.slots)) == ps.candidates(k, len(bs.slots))
    now = 0
    for step, k in zip(steps, ks * 3 or [b""] * len(steps), strict=False):
        now += step[3]
        _apply((pl, nl), bs.slots, step, now)
        assert ns.pick(k) == ps.pick(k)


@EXAMPLES
@given(
    backend_sets(),
    st.floats(1.0, 3.0),
    st.lists(keys, min_size=1, max_size=8),
    ops,
)
def test_bounded_load_picks_identical(bs: BackendSet, c: float, ks, steps) -> None:
    (pl, ps), (nl, ns) = _pair(bs, "MaglevSelector", table_size=2003)
    pb = py.BoundedLoadSelector(ps, pl, c)
    nb = native.BoundedLoadSelector(ns, nl, c)
    now = 0
    for j, step in enumerate(steps):
        now += step[3]
        _apply((pl, nl), bs.slots, step, now)
        assert nb.cap() == pb.cap()
        k = ks[j % len(ks)]
        got = nb.pick(k)
        assert got == pb.pick(k)
        if got >= 0 and step[0] == "pick":
            pl.start(got)
            nl.start(got)


@EXAMPLES
@given(backend_sets(), st.integers(0, 2**64 - 1), ops)
def test_p2c_same_seed_same_sequence(bs: BackendSet, seed: int, steps) -> None:
    (pl, ps), (nl, ns) = _pair(bs, "P2CSelector", seed=seed)
    now = 1_000
    for step in steps:
        now += step[3]
        _apply((pl, nl), bs.slots, step, now)
        for slot in bs.slots:
            # Costs are the same doubles, not merely close.
            assert nl.cost(slot, now).hex() == pl.cost(slot, now).hex()
        got = ns.pick(b"k", now)
        assert got == ps.pick(b"k", now)
        if got >= 0 and step[0] == "pick":
            pl.start(got)
            nl.start(got)


@EXAMPLES
@given(backend_sets(), ops)
def test_round_robin_same_sequence(bs: BackendSet, steps) -> None:
    (pl, ps), (nl, ns) = _pair(bs, "RoundRobinSelector")
    for step in steps:
        _apply((pl, nl), bs.slots, step, 0)
        assert [ns.pick(b"") for _ in range(3)] == [ps.pick(b"") for _ in range(3)]


def _error(fn) -> str:
    with pytest.raises(ValueError) as info:
        fn()
    return str(info.value)


@EXAMPLES
@given(
    st.lists(st.integers(-3, 6), max_size=5),
    st.lists(st.sampled_from(["a", "b", "c", ""]), max_size=5),
    st.lists(st.integers(-2, 3), max_size=5),
    st.integers(0, 40),
)
def test_bad_input_same_error(slots, addrs, weights, m) -> None:
    """Whatever is wrong, both raise the same ValueError at build time (or both build)."""
    for cls in ("MaglevSelector", "P2CSelector", "RoundRobinSelector"):
        kw = {"table_size": m} if cls == "MaglevSelector" else {}
        results = []
        for mod in (py, native):
            load = mod.BackendLoad(5)
            try:
                getattr(mod, cls)(slots, addrs, weights, load, **kw)
                results.append("built")
            except ValueError as e:
                results.append(str(e))
        assert results[0] == results[1]
