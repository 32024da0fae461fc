"""Self-protection: the proxy sheds its own load when its event loop falls behind.

Owns measuring event-loop lag (a timer every `TICK_S`: how late it fired, smoothed) and
the protection state that follows from it, modelled on Envoy's overload manager
(``overload_manager``: resource monitors, then actions by threshold):

- `PROTECT_SHED`: sheddable requests are answered ``503 overloaded`` right after their
  head, before they cost a backend or more of this loop;
- `PROTECT_STOP_ACCEPTING`: the listener stops accepting; new connections wait in the
  kernel's backlog instead of adding work;
- `PROTECT_CLOSE`: every response carries ``Connection: close``, so the load balancer in
  front spreads the clients over other proxies.

Each step begins when the smoothed lag passes its threshold and ends when it falls under
half of it (hysteresis, so the state does not flap); every change is logged. Thresholds
are read from the data plane's snapshot at each tick, so a reload changes them. Must not
touch the cluster gate: the data plane reads `DataPlane.protect`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lbproxy.process.startup import DataPlaneLike

log = logging.getLogger("lbproxy.protection")

PROTECT_NONE = 0
PROTECT_SHED = 1
PROTECT_STOP_ACCEPTING = 2
PROTECT_CLOSE = 3
STATE_NAMES = ("normal", "shedding sheddable requests", "not accepting connections",
               "closing connections")
TICK_S = 0.05
SMOOTHING = 0.3  # EWMA weight of the newest tick: a lag that lasts ~150 ms counts


class SelfProtection:
    """Watches one loop's lag and sets `plane.protect`; `on_accepting(bool)` pauses and
    resumes the listener."""

    def __init__(self, plane: DataPlaneLike,
                 on_accepting: Callable[[bool], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.plane = plane
        self.on_accepting = on_accepting
        self.clock = clock
        self.lag_s = 0.0  # smoothed lag
        self.state = PROTECT_NONE
        self._due = 0.0
        self._timer: Any = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin ticking on `loop`."""
        self._due = self.clock() + TICK_S
        self._timer = loop.call_later(TICK_S, self._tick)

    def stop(self) -> None:
        """Stop ticking and lift any protection."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.apply(PROTECT_NONE)

    def _tick(self) -> None:
        now = self.clock()
        self.observe(max(0.0, now - self._due))
        self._due = now + TICK_S
        self._timer = asyncio.get_running_loop().call_later(TICK_S, self._tick)

    def observe(self, lag_s: float) -> int:
        """Take one tick's lateness; move to the state the smoothed lag calls for."""
        self.lag_s = self.lag_s * (1 - SMOOTHING) + lag_s * SMOOTHING
        cfg = self.plane.snapshot.config.self_protection
        if not cfg.enabled:
            return self.apply(PROTECT_NONE)
        thresholds = (cfg.shed_lag_ms, cfg.stop_accepting_lag_ms,
                      cfg.close_connections_lag_ms)
        lag_ms = self.lag_s * 1000
        state = self.state
        # Up: the highest step whose threshold is passed; down: one step at a time, once
        # the lag is under half the current step's threshold.
        wanted = sum(1 for t in thresholds if lag_ms > t)
        if wanted > state:
            state = wanted
        elif state > PROTECT_NONE and lag_ms < thresholds[state - 1] / 2:
            state -= 1
        return self.apply(state)

    def apply(self, state: int) -> int:
        """Enter `state` (logging the change) and tell the data plane and listener."""
        if state == self.state:
            return state
        before, self.state = self.state, state
        self.plane.protect = state
        level = log.warning if state > before else log.info
        level("self-protection: %s (event-loop lag %.0f ms; was %s)", STATE_NAMES[state],
              self.lag_s * 1000, STATE_NAMES[before])
        if self.on_accepting is not None and (
                (before >= PROTECT_STOP_ACCEPTING) != (state >= PROTECT_STOP_ACCEPTING)):
            self.on_accepting(state < PROTECT_STOP_ACCEPTING)
        return state
