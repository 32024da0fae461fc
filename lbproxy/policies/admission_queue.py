"""The admission queue: where a request waits, briefly, for room under a backend's limit.

Owns one bounded queue per cluster (per process), one lane per priority class, served
highest class first: when a lease ends, the gate hands the freed room to the most
valuable waiter. Each lane has its own CoDel (lbproxy/policies/codel.py): served first,
critical requests wait least, and one CoDel over all lanes would see only their short
waits while prefetch stood. Within a lane the queue serves FIFO, and LIFO while that
lane's queue stands, so that the freshest requests (whose clients are still waiting) are
served ("Fail at Scale", adaptive LIFO). While a lane stands, a request of it that has
waited 2 x target is refused; never does one wait longer than `max_wait`, or join a
queue holding `max_pending`.

A waiter is the data plane's: the queue only calls ``admitted(lease)`` or
``refused(refusal)`` on it, once, and skips waiters whose client went away. A request
that waits holds no backend connection and reads no more of its body than the data
plane's bounded buffer (lbproxy/proxy/client.py pauses the client past it).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, final

from lbproxy.policies.codel import CoDel

if TYPE_CHECKING:
    from lbproxy.balance.gate import Cluster, Refusal
    from lbproxy.control.config import Queue

N_LANES = 3  # one per priority class, critical first


def _codel(cfg: Queue) -> CoDel:
    return CoDel(int(cfg.codel_target_ms * 1e6), int(cfg.codel_interval_ms * 1e6))


@final
class Waiter:
    """One queued request: what the gate needs to admit it later, and who to tell."""

    __slots__ = ("cluster", "done", "key", "owner", "priority", "queued_ns")

    def __init__(self, owner: Any, cluster: Cluster, key: bytes, priority: int,
                 now_ns: int) -> None:
        self.owner = owner  # has admitted(waiter, lease) and refused(waiter, refusal)
        self.cluster = cluster
        self.key = key
        self.priority = priority
        self.queued_ns = now_ns
        self.done = False  # admitted, refused or cancelled: the queue skips it

    def cancel(self) -> None:
        """The client went away: never admit or refuse this waiter."""
        self.done = True


@final
class AdmissionQueue:
    """A cluster's bounded priority queue, shedding by CoDel; see the module docstring."""

    __slots__ = ("_call_later", "_timer", "codels", "lanes", "length", "max_pending",
                 "max_wait_ns", "on_sweep", "refused", "refused_by", "served", "wait_ns_total",
                 "window_expired", "window_served", "window_wait_ns", "window_waited")

    def __init__(self, cfg: Queue,
                 call_later: Callable[[float, Callable[[], None]], Any] | None = None) -> None:
        self.max_pending = cfg.max_pending
        self.max_wait_ns = int(cfg.max_wait_ms * 1e6)
        self.codels = tuple(_codel(cfg) for _ in range(N_LANES))
        self.lanes: tuple[deque[Waiter], ...] = tuple(deque() for _ in range(N_LANES))
        self.length = 0  # waiters not yet done (cancelled ones are counted until skipped)
        self._call_later = call_later
        self._timer: Any = None
        self.on_sweep: Callable[[], None] | None = None  # the periodic expiry (set by owner)
        self.served = 0  # admitted after waiting, since start
        self.wait_ns_total = 0  # their total wait
        self.refused = 0  # shed from the queue (timed out or CoDel), since start
        self.refused_by = [0] * N_LANES  # the same, by priority class
        self.window_waited = 0  # queued during the admission level's current window
        self.window_expired = 0  # shed from the queue during that window
        self.window_served = 0  # admitted after waiting during that window
        self.window_wait_ns = 0  # ... and their total wait

    def reconfigure(self, cfg: Queue) -> None:
        """New figures from a reload; waiters stay."""
        self.max_pending = cfg.max_pending
        self.max_wait_ns = int(cfg.max_wait_ms * 1e6)
        codel = _codel(cfg)
        if (codel.target_ns, codel.interval_ns) != (self.codels[0].target_ns,
                                                     self.codels[0].interval_ns):
            self.codels = tuple(_codel(cfg) for _ in range(N_LANES))

    @property
    def interval_ns(self) -> int:
        """CoDel's interval (the admission level's window too)."""
        return self.codels[0].interval_ns

    def push(self, waiter: Waiter) -> bool:
        """Queue `waiter`; False when the queue is full (the caller sheds it)."""
        if self.length >= self.max_pending:
            return False
        self.lanes[waiter.priority].append(waiter)
        self.length += 1
        self.window_waited += 1
        if self._timer is None:
            self._arm()
        return True

    def oldest_wait_ns(self, now_ns: int) -> int:
        """How long the longest-waiting request has waited (0 when none waits)."""
        oldest = 0
        for lane in self.lanes:
            for w in lane:
                if not w.done:
                    oldest = max(oldest, now_ns - w.queued_ns)
                    break
        return oldest

    def _next(self) -> Waiter | None:
        """The waiter to serve next, without removing it (skipping done ones)."""
        for priority, lane in enumerate(self.lanes):
            lifo = self.codels[priority].overloaded
            while lane:
                w = lane[-1] if lifo else lane[0]
                if not w.done:
                    return w
                if lifo:
                    lane.pop()
                else:
                    lane.popleft()
                self.length -= 1
        return None

    def serve(self, now_ns: int) -> None:
        """Hand whatever room the backends have to the best waiters, in order."""
        while self.length:
            w = self._next()
            if w is None:
                break
            lease = w.cluster.admit_waiting(w.key, now_ns, w.priority)
            if lease is None:
                return  # no backend has room: the rest keep waiting
            lane = self.lanes[w.priority]
            if lane and lane[-1] is w:
                lane.pop()
            else:
                lane.remove(w)
            self.length -= 1
            w.done = True
            waited = now_ns - w.queued_ns
            self.codels[w.priority].observe(waited, now_ns)
            if not lane:
                self.codels[w.priority].idle(now_ns)
            self.served += 1
            self.wait_ns_total += waited
            self.window_served += 1
            self.window_wait_ns += waited
            w.owner.admitted(w, lease)

    def expire(self, now_ns: int, refusal: Refusal) -> None:
        """Refuse every waiter CoDel or `max_wait` sheds now (oldest first per lane)."""
        for priority, lane in enumerate(self.lanes):
            codel = self.codels[priority]
            while lane:
                w = lane[0]
                if w.done:
                    lane.popleft()
                    self.length -= 1
                    continue
                waited = now_ns - w.queued_ns
                if waited <= self.max_wait_ns and not codel.sheds(waited, now_ns):
                    break  # the rest of the lane joined later: they may stay too
                lane.popleft()
                self.length -= 1
                w.done = True
                self.refused += 1
                self.refused_by[w.priority] += 1
                self.window_expired += 1
                w.owner.refused(w, refusal)

    def _arm(self) -> None:
        """Schedule the next expiry sweep while anything waits."""
        if self._call_later is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (a unit test driving expire() itself)
            self._call_later = loop.call_later
        # Sweep at CoDel's shedding granularity (2 x target) so a shed request is told
        # within about that of becoming sheddable.
        self._timer = self._call_later(self.codels[0].slough_ns() / 1e9, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.length:
            sweep = self.on_sweep
            if sweep is not None:
                sweep()
            if self.length:
                self._arm()
