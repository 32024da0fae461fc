"""CoDel for a request queue: is the queue standing, and may this request still wait?

Owns the state machine of folly's ``executors/Codel.cpp`` as Facebook's "Fail at Scale"
(ACM Queue, 2015) describes it for server queues: over each `interval`, track the
minimum queueing delay seen; if that minimum stayed above `target` for a whole interval,
the queue is standing (not a burst that drains by itself), and while it is, requests
that have waited more than 2 x `target` are shed. A burst that empties within an
interval sheds nothing. Pure: every call is given its time.
"""

from __future__ import annotations

from typing import final

_NONE_YET = 1 << 62  # the minimum of an interval with no delay seen yet


@final
class CoDel:
    """Nichols & Jacobson's controlled delay, adapted to request queues (folly Codel)."""

    __slots__ = ("interval_end_ns", "interval_ns", "min_delay_ns", "observed", "overloaded",
                 "target_ns")

    def __init__(self, target_ns: int, interval_ns: int) -> None:
        if not 0 < target_ns < interval_ns:
            raise ValueError("CoDel needs 0 < target < interval")
        self.target_ns = target_ns
        self.interval_ns = interval_ns
        self.overloaded = False
        self.min_delay_ns = _NONE_YET
        self.observed = 0  # delays seen in the current interval
        self.interval_end_ns = -1  # the first observation opens the first interval

    def _see(self, now_ns: int, delay_ns: int) -> None:
        """Record one queueing delay, closing the interval first if it is over."""
        if now_ns >= self.interval_end_ns:
            self._close(now_ns)
        if delay_ns < self.min_delay_ns:
            self.min_delay_ns = delay_ns
        self.observed += 1

    def _close(self, now_ns: int) -> None:
        if self.interval_end_ns >= 0:
            # folly: overloaded_ = codelMinDelay_ > target. An interval in which nothing
            # left the queue (every request of the class refused on arrival) is no
            # evidence of a standing queue: the next one probes again.
            self.overloaded = self.observed > 0 and self.min_delay_ns > self.target_ns
        self.min_delay_ns = _NONE_YET
        self.observed = 0
        self.interval_end_ns = now_ns + self.interval_ns

    def observe(self, delay_ns: int, now_ns: int) -> None:
        """A request left the queue (admitted) after waiting `delay_ns`."""
        self._see(now_ns, delay_ns)

    def idle(self, now_ns: int) -> None:
        """The queue is empty: a delay of 0 is the interval's minimum."""
        self._see(now_ns, 0)

    def sheds(self, delay_ns: int, now_ns: int) -> bool:
        """Whether a request that has waited `delay_ns` so far is to be shed now."""
        if now_ns >= self.interval_end_ns:
            self._see(now_ns, delay_ns)  # the head of the queue has waited this long
        return self.overloaded and delay_ns > 2 * self.target_ns

    def standing(self, now_ns: int) -> bool:
        """Whether the queue stood over the last whole interval (checked on arrival)."""
        if now_ns >= self.interval_end_ns:
            self._close(now_ns)
        return self.overloaded

    def slough_ns(self) -> int:
        """How long a request may wait while the queue is standing (2 x target)."""
        return 2 * self.target_ns
