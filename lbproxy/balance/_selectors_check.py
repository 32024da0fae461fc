"""Build-time validation of selector input, shared by the native core and its Python twin.

Owns every ValueError a selector can raise, so `lbproxy.balance._selectors_c` and
`lbproxy.balance._selectors_py` reject the same input with the same words. It runs only when a
selector is built (off the request path); it must not touch load counters or tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Sizes the native core stores in C types: table indexes in int32, weights multiplied by an
# iteration count in int64 during the Maglev build (iteration <= table size).
MAX_TABLE_SIZE = 1 << 24
MAX_WEIGHT = (1 << 31) - 1
MAX_BALANCE_FACTOR = 1000.0


def is_prime(n: int) -> bool:
    """Whether `n` is prime (trial division; table sizes are at most MAX_TABLE_SIZE)."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, math.isqrt(n) + 1, 2))


def backend_entries(
    slots: Sequence[int], addresses: Sequence[str], weights: Sequence[int], capacity: int
) -> list[tuple[str, int, int]]:
    """Validate a backend set; return ``(address, slot, weight)`` sorted by address.

    Sorting makes every table and sequence independent of the caller's order, as Envoy's
    maglev_lb.cc does: "Maglev requires stable order of table_build_entries because the hash
    table will be filled in the order."
    """
    slots, addresses, weights = list(slots), list(addresses), list(weights)
    if not len(slots) == len(addresses) == len(weights):
        raise ValueError(
            f"mismatched lengths: {len(slots)} slots, {len(addresses)} addresses, "
            f"{len(weights)} weights"
        )
    if not slots:
        raise ValueError("empty backend set: a selector needs at least one backend")
    seen_addr: set[str] = set()
    seen_slot: set[int] = set()
    for slot, address, weight in zip(slots, addresses, weights, strict=True):
        if not isinstance(address, str) or not address:
            raise ValueError(f"backend address must be a non-empty str, got {address!r}")
        if address in seen_addr:
            raise ValueError(f"duplicate address {address!r}")
        seen_addr.add(address)
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise ValueError(f"weight of {address!r} must be an int, got {weight!r}")
        if weight <= 0:
            raise ValueError(f"weight of {address!r} must be positive, got {weight}")
        if weight > MAX_WEIGHT:
            raise ValueError(f"weight of {address!r} must be <= {MAX_WEIGHT}, got {weight}")
        if isinstance(slot, bool) or not isinstance(slot, int):
            raise ValueError(f"slot of {address!r} must be an int, got {slot!r}")
        if not 0 <= slot < capacity:
            raise ValueError(
                f"slot {slot} of {address!r} is outside the BackendLoad capacity {capacity}"
            )
        if slot in seen_slot:
            raise ValueError(f"duplicate slot {slot} (at {address!r})")
        seen_slot.add(slot)
    return sorted(zip(addresses, slots, weights, strict=True))


def check_table_size(table_size: int, n_backends: int) -> None:
    """Reject a Maglev table size that is not a prime >= the backend count (NSDI'16 §3.4)."""
    if isinstance(table_size, bool) or not isinstance(table_size, int):
        raise ValueError(f"table_size must be an int, got {table_size!r}")
    if table_size > MAX_TABLE_SIZE:
        raise ValueError(f"table_size must be <= {MAX_TABLE_SIZE}, got {table_size}")
    if not is_prime(table_size):
        raise ValueError(f"table_size must be prime, got {table_size}")
    if table_size < n_backends:
        raise ValueError(f"table_size {table_size} is smaller than the backend count {n_backends}")


def check_balance_factor(balance_factor: float) -> float:
    """Reject a bounded-load factor c < 1 (a cap below the average cannot always be met)."""
    if isinstance(balance_factor, bool) or not isinstance(balance_factor, int | float):
        raise ValueError(f"balance_factor must be a number, got {balance_factor!r}")
    c = float(balance_factor)
    # Above MAX_BALANCE_FACTOR the cap means nothing (HAProxy's percentage stops at 655.35)
    # and the native core's int64 cap could overflow.
    if not math.isfinite(c) or not 1.0 <= c <= MAX_BALANCE_FACTOR:
        raise ValueError(
            f"balance_factor must be a number from 1 to {MAX_BALANCE_FACTOR:g}, "
            f"got {balance_factor!r}"
        )
    return c


def check_positive_ns(name: str, value: int) -> int:
    """Reject a non-positive or non-integer nanosecond parameter."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int (nanoseconds), got {value!r}")
    if value >= 1 << 62:
        raise ValueError(f"{name} is too large: {value}")
    return value


def check_capacity(capacity: int) -> int:
    """Reject a negative or non-integer BackendLoad capacity."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
        raise ValueError(f"capacity must be a non-negative int, got {capacity!r}")
    if capacity > 1 << 24:
        raise ValueError(f"capacity must be <= {1 << 24}, got {capacity}")
    return capacity
