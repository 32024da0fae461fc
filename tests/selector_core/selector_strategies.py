"""Hypothesis strategies for selector inputs: backend sets, keys, load operations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hypothesis import strategies as st

SMALL_PRIMES = [7, 11, 13, 31, 101, 257, 1009, 2003]

keys = st.binary(min_size=0, max_size=64)
_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)  # not encodable as UTF-8

addresses = st.one_of(
    st.builds(
        "{}.{}.{}.{}:{}".format,
        st.integers(0, 255),
        st.integers(0, 255),
        st.integers(0, 255),
        st.integers(0, 255),
        st.integers(1, 65535),
    ),
    st.text(st.characters(codec="utf-8", exclude_categories=_SURROGATES), min_size=1, max_size=24),
)


@dataclass(frozen=True)
class BackendSet:
    """A valid selector input: parallel slots, addresses and weights, and the load capacity."""

    slots: list[int]
    addresses: list[str]
    weights: list[int]
    capacity: int


@st.composite
def backend_sets(draw: st.DrawFn, max_n: int = 12, max_weight: int = 20) -> BackendSet:
    """Distinct addresses, positive weights and distinct slots inside the capacity."""
    n = draw(st.integers(1, max_n))
    addrs = draw(st.lists(addresses, min_size=n, max_size=n, unique=True))
    weights = draw(st.lists(st.integers(1, max_weight), min_size=n, max_size=n))
    capacity = n + draw(st.integers(0, 4))
    slots = draw(st.permutations(range(capacity)))[:n]
    return BackendSet(list(slots), addrs, weights, capacity)


# One step of traffic: ("start" | "finish" | "accept" | "pick", backend index, value, dt_ns).
ops = st.lists(
    st.tuples(
        st.sampled_from(["start", "finish", "accept", "pick", "pick", "pick"]),
        st.integers(0, 63),
        st.integers(0, 200_000_000),
        st.integers(0, 2_000_000_000),
    ),
    max_size=60,
)
