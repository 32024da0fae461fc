"""How many hash keys a pool change moves: two Maglev tables compared entry by entry.

Owns `key_owners` (which backend each Maglev table position sends its keys to, given the
backends that accept traffic) and `moved_fraction` (the share of positions whose backend
differs between two such lists). A key goes to the position `xxh64(key) % table_size`, so
over all keys the share of positions that change owner is the share of keys that move
(NSDI'16 §3.4: the table *is* the key → backend map). It builds tables with the selector
core, off the request path (the admin API's dry run); it must not touch live state.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from lbproxy.balance import selectors
from lbproxy.balance.gate import in_panic


def accepted(addresses: Sequence[str], drained: Collection[str], unusable: Collection[str],
             panic_threshold: float) -> frozenset[str]:
    """The members that take new keys: not drained, and usable unless the cluster panics.

    The gate's rule (`in_panic`, Envoy's healthy_panic_threshold): when fewer than
    `panic_threshold` percent of the non-drained members are usable, ejection and health
    marks (`unusable`) are ignored; drain never is.
    """
    eligible = [a for a in addresses if a not in drained]
    usable = [a for a in eligible if a not in unusable]
    panicking = in_panic(len(eligible), len(usable), panic_threshold)
    return frozenset(eligible if panicking else usable)


def key_owners(addresses: Sequence[str], weights: Sequence[int], table_size: int,
               accepting: Collection[str]) -> list[str | None]:
    """For each table position, the backend its keys go to (None: no backend accepts).

    A key whose entry's backend does not accept walks forward, wrapping, to the first
    entry whose backend does (`MaglevSelector.pick`), so a position's owner is the first
    accepting entry at or after it: one backward pass over the table, twice round.
    Bounded load is left out: it only spills keys while a backend is over its share.
    """
    n = len(addresses)
    load = selectors.BackendLoad(max(n, 1))
    # Slots 0..n-1 name the addresses by index, so the table's slots index `addresses`.
    table = selectors.MaglevSelector(list(range(n)), list(addresses), list(weights), load,
                                     table_size).table
    ok = [a in accepting for a in addresses]
    owners: list[str | None] = [None] * table_size
    if not any(ok):
        return owners
    owner: str | None = None
    for pos in range(2 * table_size - 1, -1, -1):
        i = table[pos % table_size]
        if ok[i]:
            owner = addresses[i]
        if pos < table_size:
            owners[pos] = owner
    return owners


def moved_fraction(before: Sequence[str | None], after: Sequence[str | None]) -> float:
    """The share of positions (so of hash keys) whose backend differs; tables of one size."""
    if len(before) != len(after) or not before:
        raise ValueError("moved_fraction compares two tables of one non-zero size")
    return sum(1 for b, a in zip(before, after, strict=True) if b != a) / len(before)
