"""Golden vectors: a refactor must never silently move every video to another cache.

The size-7 tables are pinned here, as Envoy's maglev_lb_test.cc pins its small tables;
10,000 key -> backend assignments (and the 3-deep fallback order of 200 keys) are frozen in
tests/golden/maglev_golden.json, written once by tests/golden/gen_maglev_golden.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

GOLDEN = Path(__file__).parents[1] / "golden" / "maglev_golden.json"
ADDRS = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]


@pytest.mark.parametrize(
    ("weights", "table_size", "expected"),
    [
        ([1, 1, 1], 7, [2, 1, 0, 2, 1, 0, 0]),
        ([1, 2, 3], 7, [0, 1, 2, 2, 1, 1, 0]),
        ([1, 1, 1], 13, [2, 0, 1, 0, 2, 1, 1, 0, 1, 0, 2, 0, 2]),
    ],
)
def test_small_table_pinned(
    impl: ModuleType, weights: list[int], table_size: int, expected: list[int]
) -> None:
    load = impl.BackendLoad(3)
    sel = impl.MaglevSelector([0, 1, 2], ADDRS, weights, load, table_size=table_size)
    assert sel.table == expected


# Envoy's maglev_lb_test.cc pins these tables (tests Basic, BasicWithHostName, Weighted);
# the same offset/skip hashes and weighting reproduce them entry for entry, so an lbproxy and
# an Envoy in front of the same caches agree on where a key goes.
ENVOY_PORTS = range(90, 96)


@pytest.mark.parametrize(
    ("addresses", "weights", "table_size", "expected"),
    [
        ([f"127.0.0.1:{p}" for p in ENVOY_PORTS], [1] * 6, 7, [2, 4, 0, 1, 5, 0, 3]),
        ([str(p) for p in ENVOY_PORTS], [1] * 6, 7, [2, 5, 0, 3, 4, 1, 0]),
        (
            ["127.0.0.1:90", "127.0.0.1:91"],
            [1, 2],
            17,
            [1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1],
        ),
    ],
)
def test_tables_match_envoy(
    impl: ModuleType, addresses: list[str], weights: list[int], table_size: int, expected
) -> None:
    n = len(addresses)
    load = impl.BackendLoad(n)
    sel = impl.MaglevSelector(list(range(n)), addresses, weights, load, table_size=table_size)
    assert sel.table == expected


def test_small_table_independent_of_slots(impl: ModuleType) -> None:
    # The table follows addresses, not slots: other slots, same arrangement of addresses.
    load = impl.BackendLoad(10)
    sel = impl.MaglevSelector([7, 3, 9], ADDRS, [1, 1, 1], load, table_size=7)
    assert sel.table == [[7, 3, 9][i] for i in [2, 1, 0, 2, 1, 0, 0]]


def test_key_hashes_pinned(impl: ModuleType) -> None:
    # Maglev looks a key up at xxh64(key, seed=0) % table_size.
    assert [impl.hash64(b"/v/%06x/" % i) for i in range(3)] == [
        6644022162151349624,
        14451719312643423348,
        16615549661104861724,
    ]


@pytest.mark.parametrize("case", ["uniform", "weighted"])
def test_ten_thousand_frozen_assignments(impl: ModuleType, case: str) -> None:
    doc = json.loads(GOLDEN.read_text())
    spec = doc["cases"][case]
    digits = doc["digits"]
    n = len(spec["addresses"])
    load = impl.BackendLoad(n)
    sel = impl.MaglevSelector(
        list(range(n)), spec["addresses"], spec["weights"], load, spec["table_size"]
    )
    fmt = doc["key_format"]
    picks = "".join(digits[sel.pick(fmt.format(i).encode())] for i in range(len(spec["picks"])))
    assert len(picks) == 10_000
    moved = sum(1 for a, b in zip(picks, spec["picks"], strict=True) if a != b)
    assert moved == 0, f"{moved} of 10000 frozen keys moved to another backend"
    fallback = "".join(
        "".join(digits[s] for s in sel.candidates(fmt.format(i).encode(), 3))
        for i in range(len(spec["candidates3"]) // 3)
    )
    assert fallback == spec["candidates3"]
