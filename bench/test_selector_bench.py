"""Selector core micro-benchmarks (pytest-benchmark): the cost of one pick from Python.

Run: .venv/bin/python -m pytest bench/test_selector_bench.py --benchmark-only
Every case builds its selector outside the measured body and has its own function name, as
multidict's test_multidict_benchmarks.py. Compare medians within one run: the empty calls
are the yardstick (a pick may cost at most 3x / 4x an empty Python call).
"""

from __future__ import annotations

from typing import Any

import pytest
from uhashring import HashRing

from lbproxy.balance import _selectors_py as twin
from lbproxy.balance import selectors

KEY = b"/v/3f2a91c0/"
NOW_NS = 1_732_000_000_000_000_000
N_BACKENDS = 100


def _addrs(n: int) -> list[str]:
    return [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:8080" for i in range(n)]


def _backends(mod: Any, n: int) -> tuple[list[int], list[str], list[int], Any]:
    return list(range(n)), _addrs(n), [1 + i % 3 for i in range(n)], mod.BackendLoad(n)


def _empty_one(key: bytes) -> None:
    """The yardstick: an empty Python function called with one argument."""


def _empty_two(key: bytes, now_ns: int) -> None:
    """The yardstick for P2C: an empty Python function called with two arguments."""


@pytest.fixture(autouse=True)
def _native_loaded() -> None:
    if not selectors.NATIVE:
        pytest.fail("lbproxy.balance._selectors_c is not loaded; the figures would be the twin's")


def test_bench_empty_call_one_arg(benchmark: Any) -> None:
    benchmark(_empty_one, KEY)


def test_bench_empty_call_two_args(benchmark: Any) -> None:
    benchmark(_empty_two, KEY, NOW_NS)


def test_bench_maglev_pick_native(benchmark: Any) -> None:
    slots, addrs, weights, load = _backends(selectors, N_BACKENDS)
    sel = selectors.MaglevSelector(slots, addrs, weights, load)
    assert benchmark(sel.pick, KEY) >= 0


def test_bench_maglev_pick_twin(benchmark: Any) -> None:
    slots, addrs, weights, load = _backends(twin, N_BACKENDS)
    sel = twin.MaglevSelector(slots, addrs, weights, load)
    assert benchmark(sel.pick, KEY) >= 0


def test_bench_uhashring_get_node(benchmark: Any) -> None:
    ring = HashRing(nodes=_addrs(N_BACKENDS))
    assert benchmark(ring.get_node, KEY.decode())


def test_bench_bounded_load_pick_native(benchmark: Any) -> None:
    slots, addrs, weights, load = _backends(selectors, N_BACKENDS)
    inner = selectors.MaglevSelector(slots, addrs, weights, load)
    sel = selectors.BoundedLoadSelector(inner, load)
    assert benchmark(sel.pick, KEY) >= 0


def test_bench_p2c_pick_native(benchmark: Any) -> None:
    slots, addrs, weights, load = _backends(selectors, N_BACKENDS)
    for s in slots[::2]:
        load.finish(s, 5_000_000, NOW_NS - 1_000_000)
    sel = selectors.P2CSelector(slots, addrs, weights, load, seed=1)
    assert benchmark(sel.pick, KEY, NOW_NS) >= 0


def test_bench_round_robin_pick_native(benchmark: Any) -> None:
    slots, addrs, weights, load = _backends(selectors, 10)
    sel = selectors.RoundRobinSelector(slots, addrs, weights, load)
    assert benchmark(sel.pick, KEY) >= 0


def test_bench_hash64_native(benchmark: Any) -> None:
    assert benchmark(selectors.hash64, KEY)


def test_bench_maglev_build_65537_for_1000_backends(benchmark: Any) -> None:
    slots, addrs, weights, load = _backends(selectors, 1000)
    sel = benchmark.pedantic(
        selectors.MaglevSelector,
        args=(slots, addrs, weights, load, 65537),
        rounds=30,
        iterations=1,
        warmup_rounds=2,
    )
    assert len(set(sel.table)) == 1000
