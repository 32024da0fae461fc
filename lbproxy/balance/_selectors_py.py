"""Pure-Python twin of the native selector core (`csrc/_selectors_c.pyx`).

Owns the reference semantics of xxHash64, per-backend load (`BackendLoad`), Maglev,
bounded-load hashing, P2C over peak-EWMA and smooth weighted round robin. Every result
(hash, table, pick, RNG sequence, float cost) must equal the native module's bit for bit;
tests/selector_core/test_selectors_*.py check it. Type checkers read this file, not the
compiled one. It must not look at config, sockets or health: the caller's accept filter is
the only input about a backend's state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import final

from lbproxy.balance._selectors_check import (
    backend_entries,
    check_balance_factor,
    check_capacity,
    check_positive_ns,
    check_table_size,
)

__all__ = [
    "DEFAULT_DECAY_NS",
    "DEFAULT_RTT_NS",
    "DEFAULT_TABLE_SIZE",
    "BackendLoad",
    "BoundedLoadSelector",
    "MaglevSelector",
    "P2CSelector",
    "RoundRobinSelector",
    "hash64",
]

DEFAULT_TABLE_SIZE = 65537
DEFAULT_DECAY_NS = 10_000_000_000  # tower/Linkerd2 peak-EWMA decay: 10 s
DEFAULT_RTT_NS = 30_000_000  # prior for an unmeasured backend (Linkerd2's default RTT: 30 ms)

_M64 = 0xFFFFFFFFFFFFFFFF
# xxHash64 primes (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md §2).
_P1 = 0x9E3779B185EBCA87
_P2 = 0xC2B2AE3D27D4EB4F
_P3 = 0x165667B19E3779F9
_P4 = 0x85EBCA77C2B2AE63
_P5 = 0x27D4EB2F165667C5


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * _P2) & _M64
    return (_rotl(acc, 31) * _P1) & _M64


def _merge(acc: int, val: int) -> int:
    acc ^= _round(0, val)
    return (acc * _P1 + _P4) & _M64


def hash64(data: bytes, seed: int = 0) -> int:
    """xxHash64 of `data` with `seed` (unsigned 64-bit), as the reference XXH64()."""
    if not 0 <= seed <= _M64:
        raise ValueError(f"seed must be an unsigned 64-bit int, got {seed}")
    n = len(data)
    p = 0
    if n >= 32:
        v1 = (seed + _P1 + _P2) & _M64
        v2 = (seed + _P2) & _M64
        v3 = seed
        v4 = (seed - _P1) & _M64
        limit = n - 32
        while p <= limit:
            v1 = _round(v1, int.from_bytes(data[p : p + 8], "little"))
            v2 = _round(v2, int.from_bytes(data[p + 8 : p + 16], "little"))
            v3 = _round(v3, int.from_bytes(data[p + 16 : p + 24], "little"))
            v4 = _round(v4, int.from_bytes(data[p + 24 : p + 32], "little"))
            p += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _M64
        h = _merge(h, v1)
        h = _merge(h, v2)
        h = _merge(h, v3)
        h = _merge(h, v4)
    else:
        h = (seed + _P5) & _M64
    h = (h + n) & _M64
    while p + 8 <= n:
        h ^= _round(0, int.from_bytes(data[p : p + 8], "little"))
        h = (_rotl(h, 27) * _P1 + _P4) & _M64
        p += 8
    if p + 4 <= n:
        h ^= (int.from_bytes(data[p : p + 4], "little") * _P1) & _M64
        h = (_rotl(h, 23) * _P2 + _P3) & _M64
        p += 4
    while p < n:
        h ^= (data[p] * _P5) & _M64
        h = (_rotl(h, 11) * _P1) & _M64
        p += 1
    h ^= h >> 33
    h = (h * _P2) & _M64
    h ^= h >> 29
    h = (h * _P3) & _M64
    h ^= h >> 32
    return h


@final
class BackendLoad:
    """Per-backend load counters indexed by slot: in-flight, peak-EWMA latency, accept mark."""

    def __init__(
        self,
        capacity: int,
        decay_ns: int = DEFAULT_DECAY_NS,
        default_rtt_ns: int = DEFAULT_RTT_NS,
    ) -> None:
        check_capacity(capacity)
        self._decay = float(check_positive_ns("decay_ns", decay_ns))
        self._default_rtt = float(check_positive_ns("default_rtt_ns", default_rtt_ns))
        self._inflight: list[int] = []
        self._accept: list[bool] = []
        self._ewma: list[float] = []
        self._stamp: list[int] = []
        self._measured: list[bool] = []
        self.ensure_capacity(capacity)

    @property
    def capacity(self) -> int:
        """Number of slots; grows with ensure_capacity(), never shrinks."""
        return len(self._inflight)

    def ensure_capacity(self, n: int) -> None:
        """Grow to at least `n` slots; new slots are fresh (accepted, idle, unmeasured)."""
        check_capacity(n)
        grow = n - len(self._inflight)
        if grow > 0:
            self._inflight.extend([0] * grow)
            self._accept.extend([True] * grow)
            self._ewma.extend([0.0] * grow)
            self._stamp.extend([0] * grow)
            self._measured.extend([False] * grow)

    def _check(self, slot: int) -> None:
        if not 0 <= slot < len(self._inflight):
            raise IndexError(f"slot {slot} out of range (capacity {len(self._inflight)})")

    def reset(self, slot: int) -> None:
        """Make `slot` fresh for a new backend: accepted, idle, latency unmeasured."""
        self._check(slot)
        self._inflight[slot] = 0
        self._accept[slot] = True
        self._ewma[slot] = 0.0
        self._stamp[slot] = 0
        self._measured[slot] = False

    def set_accept(self, slot: int, ok: bool) -> None:
        """Set the caller's accept mark (healthy, not ejected, not draining)."""
        self._check(slot)
        self._accept[slot] = bool(ok)

    def accepts(self, slot: int) -> bool:
        """Whether selectors may return `slot`."""
        self._check(slot)
        return self._accept[slot]

    def start(self, slot: int) -> None:
        """Count a request started on `slot` (in-flight += 1)."""
        self._check(slot)
        self._inflight[slot] += 1

    def finish(self, slot: int, rtt_ns: int, now_ns: int) -> None:
        """Count a request ended on `slot` and feed its latency to the peak-EWMA.

        As tower's peak_ewma.rs: a sample above the estimate replaces it (peak); otherwise
        the estimate moves toward the sample by 1 - exp(-elapsed / decay). The first sample
        replaces the prior.
        """
        self._check(slot)
        if self._inflight[slot] > 0:
            self._inflight[slot] -= 1
        rtt = float(rtt_ns) if rtt_ns > 0 else 0.0
        if not self._measured[slot]:
            self._ewma[slot] = rtt
            self._measured[slot] = True
        elif rtt > self._ewma[slot]:
            self._ewma[slot] = rtt
        else:
            elapsed = now_ns - self._stamp[slot]
            decay = math.exp(-float(elapsed if elapsed > 0 else 0) / self._decay)
            self._ewma[slot] = self._ewma[slot] * decay + rtt * (1.0 - decay)
        self._stamp[slot] = now_ns

    def inflight(self, slot: int) -> int:
        """Requests in flight on `slot`."""
        self._check(slot)
        return self._inflight[slot]

    def cost(self, slot: int, now_ns: int) -> float:
        """Peak-EWMA latency (decayed toward 0 since the last sample) x (in-flight + 1)."""
        self._check(slot)
        return self._cost(slot, now_ns)

    def _cost(self, slot: int, now_ns: int) -> float:
        if not self._measured[slot]:
            rtt = self._default_rtt
        else:
            elapsed = now_ns - self._stamp[slot]
            rtt = self._ewma[slot] * math.exp(-float(elapsed if elapsed > 0 else 0) / self._decay)
        return rtt * (self._inflight[slot] + 1)


@final
class MaglevSelector:
    """Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016) over a prime table."""

    def __init__(
        self,
        slots: Sequence[int],
        addresses: Sequence[str],
        weights: Sequence[int],
        load: BackendLoad,
        table_size: int = DEFAULT_TABLE_SIZE,
    ) -> None:
        entries = backend_entries(slots, addresses, weights, load.capacity)
        check_table_size(table_size, len(entries))
        self.load = load
        self.table_size = table_size
        self.addresses = tuple(e[0] for e in entries)
        self._slots = [e[1] for e in entries]
        self.weights = tuple(e[2] for e in entries)
        self._table = _maglev_table(self.addresses, self.weights, table_size)

    @property
    def slots(self) -> tuple[int, ...]:
        """The backends' slots, in address order."""
        return tuple(self._slots)

    @property
    def table(self) -> list[int]:
        """A copy of the lookup table as slots (for golden tests)."""
        s = self._slots
        return [s[i] for i in self._table]

    def pick(self, key: bytes) -> int:
        """First accepted backend in the key's fallback order; -1 when none is accepted."""
        accept = self.load._accept
        s = self._slots
        table = self._table
        m = self.table_size
        pos = hash64(key) % m
        slot = s[table[pos]]
        if accept[slot]:
            return slot
        # Walk only when the walk can end: some backend of ours is accepted.
        if not any(accept[x] for x in s):
            return -1
        for _ in range(m):
            pos += 1
            if pos == m:
                pos = 0
            slot = s[table[pos]]
            if accept[slot]:
                return slot
        return -1  # pragma: no cover - unreachable: an accepted backend owns >= 1 entry

    def candidates(self, key: bytes, limit: int) -> list[int]:
        """Up to `limit` distinct backends in the key's fallback order, ignoring accept."""
        out: list[int] = []
        n = len(self._slots)
        want = min(limit, n)
        if want <= 0:
            return out
        seen = [False] * n
        table = self._table
        m = self.table_size
        pos = hash64(key) % m
        for _ in range(m):
            i = table[pos]
            if not seen[i]:
                seen[i] = True
                out.append(self._slots[i])
                if len(out) == want:
                    break
            pos += 1
            if pos == m:
                pos = 0
        return out


def _maglev_table(addresses: Sequence[str], weights: Sequence[int], m: int) -> list[int]:
    """Fill a table of backend indexes (NSDI'16 §3.4 Pseudocode 1, weighted as Envoy).

    offset = xxh64(address, 0) % M and skip = xxh64(address, 1) % (M - 1) + 1 (Envoy's
    choice): skip in [1, M-1] with M prime makes each permutation visit every entry. A
    backend of weight w takes a turn in an iteration only when iteration x w has reached its
    target, which then grows by the largest weight, so turns are proportional to weight
    (Envoy's target_weight_, in exact integers here).
    """
    n = len(addresses)
    pos = []
    skip = []
    for a in addresses:
        raw = a.encode()
        pos.append(hash64(raw, 0) % m)
        skip.append(hash64(raw, 1) % (m - 1) + 1)
    max_w = max(weights)
    target = [0] * n
    table = [-1] * m
    filled = 0
    iteration = 1
    while filled < m:
        for i in range(n):
            if iteration * weights[i] < target[i]:
                continue
            target[i] += max_w
            c = pos[i]
            k = skip[i]
            while table[c] >= 0:
                c += k
                if c >= m:
                    c -= m
            table[c] = i
            c += k
            if c >= m:
                c -= m
            pos[i] = c
            filled += 1
            if filled == m:
                break
        iteration += 1
    return table


@final
class BoundedLoadSelector:
    """Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, SODA 2018).

    No backend takes more than cap = ceil(c x (total in-flight + 1) / accepted backends)
    (HAProxy's hash-balance-factor, counting the new request); a key whose backend is at
    its cap walks on in the inner selector's fallback order.
    """

    def __init__(
        self, inner: MaglevSelector, load: BackendLoad, balance_factor: float = 1.25
    ) -> None:
        if not isinstance(inner, MaglevSelector):
            raise ValueError(f"inner must be a MaglevSelector, got {type(inner).__name__}")
        if load is not inner.load:
            raise ValueError("load must be the BackendLoad the inner selector was built with")
        self.inner = inner
        self.load = load
        self.balance_factor = check_balance_factor(balance_factor)

    def cap(self) -> int:
        """The current per-backend in-flight cap; 0 when no backend is accepted."""
        accept = self.load._accept
        inflight = self.load._inflight
        total = 0
        n_ok = 0
        for s in self.inner._slots:
            total += inflight[s]
            if accept[s]:
                n_ok += 1
        if n_ok == 0:
            return 0
        return math.ceil(self.balance_factor * (total + 1) / n_ok)

    def pick(self, key: bytes) -> int:
        """First accepted backend under its cap in the key's fallback order; -1 if none."""
        cap = self.cap()
        if cap == 0:
            return -1
        accept = self.load._accept
        inflight = self.load._inflight
        inner = self.inner
        s = inner._slots
        table = inner._table
        m = inner.table_size
        pos = hash64(key) % m
        for _ in range(m):
            slot = s[table[pos]]
            if accept[slot] and inflight[slot] < cap:
                return slot
            pos += 1
            if pos == m:
                pos = 0
        return -1  # pragma: no cover - unreachable: the least loaded accepted one is < cap


def _sorted_backends(
    slots: Sequence[int], addresses: Sequence[str], weights: Sequence[int], load: BackendLoad
) -> tuple[tuple[str, ...], list[int], list[int]]:
    entries = backend_entries(slots, addresses, weights, load.capacity)
    return tuple(e[0] for e in entries), [e[1] for e in entries], [e[2] for e in entries]


@final
class P2CSelector:
    """Power of two choices (Mitzenmacher 2001) on peak-EWMA cost divided by weight.

    Two distinct backends are drawn with a seeded splitmix64 (the only state that changes
    after build); the cheaper accepted one wins, ties to the first draw (tower's p2c).
    """

    def __init__(
        self,
        slots: Sequence[int],
        addresses: Sequence[str],
        weights: Sequence[int],
        load: BackendLoad,
        seed: int = 0,
    ) -> None:
        self.addresses, self._slots, self._weights = _sorted_backends(
            slots, addresses, weights, load
        )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.load = load
        self._state = seed & _M64

    def _next(self) -> int:
        # splitmix64 (Steele, Lea, Flood, OOPSLA 2014), as in Java's SplittableRandom.
        self._state = z = (self._state + 0x9E3779B97F4A7C15) & _M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        return z ^ (z >> 31)

    def pick(self, key: bytes, now_ns: int) -> int:
        """The cheaper of two random accepted backends; -1 when none is accepted."""
        load = self.load
        accept = load._accept
        s = self._slots
        n = len(s)
        if n == 1:
            return s[0] if accept[s[0]] else -1
        a = self._next() % n
        b = self._next() % (n - 1)
        if b >= a:
            b += 1
        sa = s[a]
        sb = s[b]
        if accept[sa]:
            if accept[sb]:
                ca = load._cost(sa, now_ns) / self._weights[a]
                cb = load._cost(sb, now_ns) / self._weights[b]
                return sa if ca <= cb else sb
            return sa
        if accept[sb]:
            return sb
        # Both draws refused: the cheapest accepted backend, first in address order on ties.
        best = -1
        best_cost = 0.0
        for i in range(n):
            if accept[s[i]]:
                c = load._cost(s[i], now_ns) / self._weights[i]
                if best < 0 or c < best_cost:
                    best = s[i]
                    best_cost = c
        return best


@final
class RoundRobinSelector:
    """Smooth weighted round robin (nginx ngx_http_upstream_get_peer) over accepted backends."""

    def __init__(
        self,
        slots: Sequence[int],
        addresses: Sequence[str],
        weights: Sequence[int],
        load: BackendLoad,
    ) -> None:
        self.addresses, self._slots, self._weights = _sorted_backends(
            slots, addresses, weights, load
        )
        self.load = load
        self._current = [0] * len(self._slots)

    def pick(self, key: bytes) -> int:
        """Next backend in smooth weighted order among accepted ones; -1 when none is."""
        accept = self.load._accept
        s = self._slots
        w = self._weights
        cur = self._current
        total = 0
        best = -1
        for i in range(len(s)):
            if not accept[s[i]]:
                continue
            cur[i] += w[i]
            total += w[i]
            if best < 0 or cur[i] > cur[best]:
                best = i
        if best < 0:
            return -1
        cur[best] -= total
        return s[best]
