# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Native selector core: xxHash64, per-backend load in C arrays, Maglev, bounded load, P2C
over peak-EWMA and smooth weighted round robin.

Owns the request-path half of backend selection: a pick reads C arrays only, allocates no
Python object for slots below 257 and raises nothing in the common case (-1 means no
acceptable backend). Tables are built once, off the request path, and never change.
It must not look at config, sockets or health: `BackendLoad.set_accept` is the caller's
filter. lbproxy/balance/_selectors_py.py is its twin; both must agree bit for bit.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.math cimport ceil
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memset

from lbproxy.balance._selectors_check import (
    backend_entries,
    check_balance_factor,
    check_capacity,
    check_positive_ns,
    check_table_size,
)


cdef extern from "xxhash64.h" nogil:
    uint64_t lb_xxh64(const void* data, size_t length, uint64_t seed)

cdef extern from "peak_ewma.h" nogil:
    double lb_ewma_decayed(double ewma, int64_t elapsed_ns, double decay_ns)
    double lb_ewma_update(double ewma, double rtt, int64_t elapsed_ns, double decay_ns)


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

cdef uint64_t _M64 = 0xFFFFFFFFFFFFFFFF


def hash64(data, seed=0):
    """xxHash64 of `data` with `seed` (unsigned 64-bit), as the reference XXH64()."""
    if not 0 <= seed <= _M64:
        raise ValueError(f"seed must be an unsigned 64-bit int, got {seed}")
    cdef uint64_t s = seed
    if type(data) is bytes:
        # Hash the bytes object's own buffer: no copy, no buffer acquisition.
        return lb_xxh64(PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data), s)
    return _hash_buffer(data, s)


cdef uint64_t _hash_buffer(const unsigned char[::1] data, uint64_t seed):
    # Any other bytes-like object (bytearray, memoryview) through the buffer protocol.
    cdef Py_ssize_t n = data.shape[0]
    if n == 0:
        return lb_xxh64(NULL, 0, seed)
    return lb_xxh64(&data[0], <size_t>n, seed)


cdef inline uint64_t _key_hash(bytes key) noexcept:
    # Hash the bytes object's own buffer: no copy, no Python call.
    return lb_xxh64(PyBytes_AS_STRING(key), <size_t>PyBytes_GET_SIZE(key), 0)


ctypedef struct SlotLoad:
    int64_t inflight     # requests started and not yet finished
    double ewma          # peak-EWMA latency estimate (ns), valid when measured
    int64_t stamp        # now_ns of the last sample
    uint8_t accept       # the caller's filter: healthy, not ejected, not draining
    uint8_t measured     # 0 until the first sample; the prior stands in until then


cdef inline double _cost(const SlotLoad* sl, int64_t now_ns, double decay_ns,
                         double default_rtt) noexcept nogil:
    # tower's PeakEwma::load: the estimate decayed toward 0, times (pending + 1), so an idle
    # fast backend wins and a loaded one is penalised before its latency shows it.
    cdef double rtt
    if sl.measured:
        rtt = lb_ewma_decayed(sl.ewma, now_ns - sl.stamp, decay_ns)
    else:
        rtt = default_rtt
    return rtt * <double>(sl.inflight + 1)


@cython.final
cdef class BackendLoad:
    """Per-backend load counters indexed by slot: in-flight, peak-EWMA latency, accept mark."""

    cdef SlotLoad* _slots
    cdef Py_ssize_t _cap
    cdef double _decay
    cdef double _default_rtt

    def __cinit__(self):
        self._slots = NULL
        self._cap = 0

    def __init__(self, capacity, decay_ns=DEFAULT_DECAY_NS, default_rtt_ns=DEFAULT_RTT_NS):
        check_capacity(capacity)
        self._decay = <double>check_positive_ns("decay_ns", decay_ns)
        self._default_rtt = <double>check_positive_ns("default_rtt_ns", default_rtt_ns)
        self.ensure_capacity(capacity)

    def __dealloc__(self):
        free(self._slots)

    @property
    def capacity(self):
        """Number of slots; grows with ensure_capacity(), never shrinks."""
        return self._cap

    def ensure_capacity(self, n):
        """Grow to at least `n` slots; new slots are fresh (accepted, idle, unmeasured)."""
        check_capacity(n)
        cdef Py_ssize_t want = n
        cdef Py_ssize_t i
        cdef SlotLoad* grown
        if want <= self._cap:
            return
        # Selectors hold this object, not the pointer, so a realloc never leaves them stale.
        grown = <SlotLoad*>realloc(self._slots, <size_t>want * sizeof(SlotLoad))
        if grown == NULL:
            raise MemoryError()
        self._slots = grown
        for i in range(self._cap, want):
            _fresh(&grown[i])
        self._cap = want

    cdef inline int _check(self, Py_ssize_t slot) except -1:
        if slot < 0 or slot >= self._cap:
            raise IndexError(f"slot {slot} out of range (capacity {self._cap})")
        return 0

    def reset(self, Py_ssize_t slot):
        """Make `slot` fresh for a new backend: accepted, idle, latency unmeasured."""
        self._check(slot)
        _fresh(&self._slots[slot])

    def set_accept(self, Py_ssize_t slot, ok):
        """Set the caller's accept mark (healthy, not ejected, not draining)."""
        self._check(slot)
        self._slots[slot].accept = 1 if ok else 0

    def accepts(self, Py_ssize_t slot):
        """Whether selectors may return `slot`."""
        self._check(slot)
        return self._slots[slot].accept != 0

    @cython.always_allow_keywords(False)
    def start(self, Py_ssize_t slot):
        """Count a request started on `slot` (in-flight += 1)."""
        self._check(slot)
        self._slots[slot].inflight += 1

    def finish(self, Py_ssize_t slot, int64_t rtt_ns, int64_t now_ns):
        """Count a request ended on `slot` and feed its latency to the peak-EWMA.

        As tower's peak_ewma.rs: a sample above the estimate replaces it (peak); otherwise
        the estimate moves toward the sample by 1 - exp(-elapsed / decay). The first sample
        replaces the prior.
        """
        self._check(slot)
        cdef SlotLoad* sl = &self._slots[slot]
        cdef double rtt = <double>rtt_ns if rtt_ns > 0 else 0.0
        if sl.inflight > 0:
            sl.inflight -= 1
        if not sl.measured:
            sl.ewma = rtt
            sl.measured = 1
        else:
            sl.ewma = lb_ewma_update(sl.ewma, rtt, now_ns - sl.stamp, self._decay)
        sl.stamp = now_ns

    def inflight(self, Py_ssize_t slot):
        """Requests in flight on `slot`."""
        self._check(slot)
        return self._slots[slot].inflight

    def cost(self, Py_ssize_t slot, int64_t now_ns):
        """Peak-EWMA latency (decayed toward 0 since the last sample) x (in-flight + 1)."""
        self._check(slot)
        return _cost(&self._slots[slot], now_ns, self._decay, self._default_rtt)


cdef inline void _fresh(SlotLoad* sl) noexcept nogil:
    sl.inflight = 0
    sl.ewma = 0.0
    sl.stamp = 0
    sl.accept = 1
    sl.measured = 0


cdef inline object _slot_object(tuple objs, Py_ssize_t i):
    # The caller's own int objects, returned by reference: a pick allocates nothing.
    if i < 0:
        return -1
    return objs[i]


cdef int32_t* _int32_array(values) except NULL:
    cdef Py_ssize_t n = len(values)
    cdef Py_ssize_t i
    cdef int32_t* out = <int32_t*>malloc(<size_t>(n if n > 0 else 1) * sizeof(int32_t))
    if out == NULL:
        raise MemoryError()
    for i in range(n):
        out[i] = values[i]
    return out


@cython.final
cdef class MaglevSelector:
    """Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016) over a prime table."""

    cdef readonly BackendLoad load
    cdef readonly uint64_t table_size
    cdef readonly tuple addresses
    cdef readonly tuple weights
    cdef int32_t* _slots     # slot of each backend, in address order
    cdef tuple _slot_objs    # the same slots as Python ints, returned by picks
    cdef int32_t* _table     # backend index of each table entry
    cdef Py_ssize_t _n

    def __cinit__(self):
        self._slots = NULL
        self._table = NULL

    def __init__(self, slots, addresses, weights, BackendLoad load not None,
                 table_size=DEFAULT_TABLE_SIZE):
        entries = backend_entries(slots, addresses, weights, load.capacity)
        check_table_size(table_size, len(entries))
        if self._table != NULL:
            raise ValueError("a MaglevSelector is immutable once built")
        self.load = load
        self.table_size = table_size
        self.addresses = tuple([e[0] for e in entries])
        self.weights = tuple([e[2] for e in entries])
        self._n = len(entries)
        self._slot_objs = tuple([e[1] for e in entries])
        self._slots = _int32_array(self._slot_objs)
        self._table = _build_table(self.addresses, self.weights, table_size)

    def __dealloc__(self):
        free(self._slots)
        free(self._table)

    @property
    def slots(self):
        """The backends' slots, in address order."""
        return self._slot_objs

    @property
    def table(self):
        """A copy of the lookup table as slots (for golden tests)."""
        cdef uint64_t i
        return [self._slots[self._table[i]] for i in range(self.table_size)]

    @cython.always_allow_keywords(False)
    def pick(self, bytes key not None):
        """First accepted backend in the key's fallback order; -1 when none is accepted."""
        cdef uint64_t pos = _key_hash(key) % self.table_size
        cdef SlotLoad* L = self.load._slots
        cdef int32_t i = self._table[pos]
        if L[self._slots[i]].accept:
            return self._slot_objs[i]
        return _slot_object(self._slot_objs, self._walk(pos, L))

    cdef Py_ssize_t _walk(self, uint64_t pos, SlotLoad* L) noexcept:
        # Fallback order: the entries after the key's own, in table order. The table is a
        # weighted pseudo-random arrangement (NSDI'16 §3.4), so a refused backend's keys
        # spread over the others in proportion to their weights, and each key's order is
        # stable while the table is. Walk only when some backend of ours is accepted.
        cdef Py_ssize_t i
        cdef uint64_t step
        cdef uint64_t m = self.table_size
        for i in range(self._n):
            if L[self._slots[i]].accept:
                break
        else:
            return -1
        for step in range(m):
            pos += 1
            if pos == m:
                pos = 0
            i = self._table[pos]
            if L[self._slots[i]].accept:
                return i
        return -1

    def candidates(self, bytes key not None, Py_ssize_t limit):
        """Up to `limit` distinct backends in the key's fallback order, ignoring accept."""
        cdef list out = []
        cdef Py_ssize_t want = limit if limit < self._n else self._n
        cdef uint64_t m = self.table_size
        cdef uint64_t pos
        cdef uint64_t step
        cdef int32_t i
        cdef uint8_t* seen
        if want <= 0:
            return out
        seen = <uint8_t*>calloc(<size_t>self._n, 1)
        if seen == NULL:
            raise MemoryError()
        try:
            pos = _key_hash(key) % m
            for step in range(m):
                i = self._table[pos]
                if not seen[i]:
                    seen[i] = 1
                    out.append(self._slot_objs[i])
                    if len(out) == want:
                        break
                pos += 1
                if pos == m:
                    pos = 0
        finally:
            free(seen)
        return out


cdef int32_t* _build_table(tuple addresses, tuple weights, uint64_t m) except NULL:
    """Fill a table of backend indexes (NSDI'16 §3.4 Pseudocode 1, weighted as Envoy).

    offset = xxh64(address, 0) % M and skip = xxh64(address, 1) % (M - 1) + 1 (Envoy's
    choice): skip in [1, M-1] with M prime makes each permutation visit every entry. A
    backend of weight w takes a turn in an iteration only when iteration x w has reached its
    target, which then grows by the largest weight, so turns are proportional to weight
    (Envoy's target_weight_, in exact integers here).
    """
    cdef Py_ssize_t n = len(addresses)
    cdef Py_ssize_t i
    cdef bytes raw
    cdef int32_t* table = <int32_t*>malloc(<size_t>m * sizeof(int32_t))
    cdef uint64_t* pos = <uint64_t*>malloc(<size_t>n * sizeof(uint64_t))
    cdef uint64_t* skip = <uint64_t*>malloc(<size_t>n * sizeof(uint64_t))
    cdef int64_t* weight = <int64_t*>malloc(<size_t>n * sizeof(int64_t))
    cdef int64_t* target = <int64_t*>calloc(<size_t>n, sizeof(int64_t))
    cdef int64_t max_w = 0
    if table == NULL or pos == NULL or skip == NULL or weight == NULL or target == NULL:
        free(table)
        free(pos)
        free(skip)
        free(weight)
        free(target)
        raise MemoryError()
    for i in range(n):
        raw = addresses[i].encode()
        pos[i] = lb_xxh64(PyBytes_AS_STRING(raw), <size_t>PyBytes_GET_SIZE(raw), 0) % m
        skip[i] = lb_xxh64(PyBytes_AS_STRING(raw), <size_t>PyBytes_GET_SIZE(raw), 1) % (m - 1) + 1
        weight[i] = weights[i]
        if weight[i] > max_w:
            max_w = weight[i]
    with nogil:
        _fill(table, m, n, pos, skip, weight, target, max_w)
    free(pos)
    free(skip)
    free(weight)
    free(target)
    return table


cdef void _fill(int32_t* table, uint64_t m, Py_ssize_t n, uint64_t* pos, uint64_t* skip,
                int64_t* weight, int64_t* target, int64_t max_w) noexcept nogil:
    cdef uint64_t filled = 0
    cdef int64_t iteration = 1
    cdef Py_ssize_t i
    cdef uint64_t c
    cdef uint64_t k
    memset(table, 0xFF, <size_t>m * sizeof(int32_t))  # every entry -1: empty
    while filled < m:
        for i in range(n):
            if iteration * weight[i] < target[i]:
                continue
            target[i] += max_w
            # Next free entry of backend i's permutation (offset + j * skip) % M.
            c = pos[i]
            k = skip[i]
            while table[c] >= 0:
                c += k
                if c >= m:
                    c -= m
            table[c] = <int32_t>i
            c += k
            if c >= m:
                c -= m
            pos[i] = c
            filled += 1
            if filled == m:
                break
        iteration += 1


@cython.final
cdef class BoundedLoadSelector:
    """Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, SODA 2018).

    No backend takes more than cap = ceil(c x (total in-flight + 1) / accepted backends)
    (HAProxy's hash-balance-factor, counting the new request); a key whose backend is at
    its cap walks on in the inner selector's fallback order.
    """

    cdef readonly MaglevSelector inner
    cdef readonly BackendLoad load
    cdef readonly double balance_factor

    def __init__(self, inner, load, balance_factor=1.25):
        if not isinstance(inner, MaglevSelector):
            raise ValueError(f"inner must be a MaglevSelector, got {type(inner).__name__}")
        if load is not (<MaglevSelector>inner).load:
            raise ValueError("load must be the BackendLoad the inner selector was built with")
        self.balance_factor = check_balance_factor(balance_factor)
        if self.inner is not None:
            raise ValueError("a BoundedLoadSelector is immutable once built")
        self.inner = inner
        self.load = load

    cdef int64_t _cap(self, SlotLoad* L) noexcept:
        # The average counts the new request, as HAProxy's chash_server_is_eligible; with
        # c >= 1 the least loaded accepted backend is always below the cap, so the walk ends.
        cdef MaglevSelector inner = self.inner
        cdef int64_t total = 0
        cdef int64_t n_ok = 0
        cdef Py_ssize_t i
        cdef SlotLoad* sl
        for i in range(inner._n):
            sl = &L[inner._slots[i]]
            total += sl.inflight
            n_ok += sl.accept
        if n_ok == 0:
            return 0
        return <int64_t>ceil(self.balance_factor * <double>(total + 1) / <double>n_ok)

    def cap(self):
        """The current per-backend in-flight cap; 0 when no backend is accepted."""
        return self._cap(self.load._slots)

    @cython.always_allow_keywords(False)
    def pick(self, bytes key not None):
        """First accepted backend under its cap in the key's fallback order; -1 if none."""
        cdef SlotLoad* L = self.load._slots
        cdef int64_t cap = self._cap(L)
        cdef MaglevSelector inner = self.inner
        cdef uint64_t m = inner.table_size
        cdef uint64_t pos
        cdef uint64_t step
        cdef int32_t i
        cdef SlotLoad* sl
        if cap == 0:
            return -1
        pos = _key_hash(key) % m
        for step in range(m):
            i = inner._table[pos]
            sl = &L[inner._slots[i]]
            if sl.accept and sl.inflight < cap:
                return inner._slot_objs[i]
            pos += 1
            if pos == m:
                pos = 0
        return -1


cdef class _Backends:
    """Slots and weights of a validated backend set, in address order (C arrays)."""

    cdef readonly BackendLoad load
    cdef readonly tuple addresses
    cdef int32_t* _slots
    cdef tuple _slot_objs    # the same slots as Python ints, returned by picks
    cdef int64_t* _weights
    cdef Py_ssize_t _n

    def __cinit__(self):
        self._slots = NULL
        self._weights = NULL

    cdef _setup(self, slots, addresses, weights, BackendLoad load):
        if self._slots != NULL:
            raise ValueError("a selector is immutable once built")
        entries = backend_entries(slots, addresses, weights, load.capacity)
        cdef Py_ssize_t i
        self.load = load
        self.addresses = tuple([e[0] for e in entries])
        self._n = len(entries)
        self._slot_objs = tuple([e[1] for e in entries])
        self._slots = _int32_array(self._slot_objs)
        self._weights = <int64_t*>malloc(<size_t>self._n * sizeof(int64_t))
        if self._weights == NULL:
            raise MemoryError()
        for i in range(self._n):
            self._weights[i] = entries[i][2]

    def __dealloc__(self):
        free(self._slots)
        free(self._weights)


@cython.final
cdef class P2CSelector(_Backends):
    """Power of two choices (Mitzenmacher 2001) on peak-EWMA cost divided by weight.

    Two distinct backends are drawn with a seeded splitmix64 (the only state that changes
    after build); the cheaper accepted one wins, ties to the first draw (tower's p2c).
    """

    cdef uint64_t _state

    def __init__(self, slots, addresses, weights, load, seed=0):
        if not isinstance(load, BackendLoad):
            raise TypeError(f"load must be a BackendLoad, got {type(load).__name__}")
        self._setup(slots, addresses, weights, load)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self._state = seed & _M64

    cdef inline uint64_t _next(self) noexcept:
        # splitmix64 (Steele, Lea, Flood, OOPSLA 2014), as in Java's SplittableRandom.
        cdef uint64_t z
        self._state += 0x9E3779B97F4A7C15ULL
        z = self._state
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
        return z ^ (z >> 31)

    def pick(self, key, int64_t now_ns):
        """The cheaper of two random accepted backends; -1 when none is accepted."""
        cdef BackendLoad load = self.load
        cdef SlotLoad* L = load._slots
        cdef uint64_t n = <uint64_t>self._n
        cdef uint64_t a
        cdef uint64_t b
        cdef SlotLoad* la
        cdef SlotLoad* lb
        cdef double ca
        cdef double cb
        if n == 1:
            return self._slot_objs[0] if L[self._slots[0]].accept else -1
        a = self._next() % n
        b = self._next() % (n - 1)
        if b >= a:
            b += 1
        la = &L[self._slots[a]]
        lb = &L[self._slots[b]]
        if la.accept:
            if lb.accept:
                ca = _cost(la, now_ns, load._decay, load._default_rtt) / <double>self._weights[a]
                cb = _cost(lb, now_ns, load._decay, load._default_rtt) / <double>self._weights[b]
                return self._slot_objs[a] if ca <= cb else self._slot_objs[b]
            return self._slot_objs[a]
        if lb.accept:
            return self._slot_objs[b]
        return _slot_object(self._slot_objs, self._cheapest(L, now_ns))

    cdef Py_ssize_t _cheapest(self, SlotLoad* L, int64_t now_ns) noexcept:
        # Both draws refused: the cheapest accepted backend, first in address order on ties.
        cdef Py_ssize_t i
        cdef Py_ssize_t best = -1
        cdef double best_cost = 0.0
        cdef double c
        for i in range(self._n):
            if L[self._slots[i]].accept:
                c = _cost(&L[self._slots[i]], now_ns, self.load._decay,
                          self.load._default_rtt) / <double>self._weights[i]
                if best < 0 or c < best_cost:
                    best = i
                    best_cost = c
        return best


@cython.final
cdef class RoundRobinSelector(_Backends):
    """Smooth weighted round robin (nginx ngx_http_upstream_get_peer) over accepted backends."""

    cdef int64_t* _current

    def __cinit__(self):
        self._current = NULL

    def __init__(self, slots, addresses, weights, load):
        if not isinstance(load, BackendLoad):
            raise TypeError(f"load must be a BackendLoad, got {type(load).__name__}")
        self._setup(slots, addresses, weights, load)
        self._current = <int64_t*>calloc(<size_t>self._n, sizeof(int64_t))
        if self._current == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self._current)

    @cython.always_allow_keywords(False)
    def pick(self, key):
        """Next backend in smooth weighted order among accepted ones; -1 when none is."""
        cdef SlotLoad* L = self.load._slots
        cdef int64_t* cur = self._current
        cdef int64_t total = 0
        cdef Py_ssize_t i
        cdef Py_ssize_t best = -1
        for i in range(self._n):
            if not L[self._slots[i]].accept:
                continue
            cur[i] += self._weights[i]
            total += self._weights[i]
            if best < 0 or cur[i] > cur[best]:
                best = i
        if best < 0:
            return -1
        cur[best] -= total
        return self._slot_objs[best]
