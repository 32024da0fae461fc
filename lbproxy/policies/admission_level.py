"""The admission level: under deep overload, refuse the least valuable requests at once.

Owns DAGOR's priority-based admission control (Zhou et al., "Overload Control for Scaling
WeChat Microservices", SoCC 2018, section 4): every request has a position, its priority
class and, within the class, its cohort (a hash of the viewer, so the same viewers stay
served rather than everyone getting a random share). Positions below the level are
admitted; the others are refused on arrival, before they cost anything. Once per window
the level moves on a histogram of the window's arrivals: down so that about `alpha` (5%)
fewer requests get in when the window was overloaded, up so that about `beta` more get in
when it was not. The level never refuses the first class (critical): those are only ever
shed by the queue. Pure: the caller passes the time and the window's verdict.
"""

from __future__ import annotations

from typing import final

COHORTS = 128  # cohorts per priority class (DAGOR: 128 user priorities)
N_CLASSES = 3  # critical, normal, sheddable (lbproxy.control.config.PRIORITIES)
POSITIONS = N_CLASSES * COHORTS
ALPHA = 0.05  # DAGOR: shed 5% more of the window's traffic while overloaded
BETA = 0.01  # DAGOR: admit 1% more while not
# A window with no queueing at all may admit this much more: after a surge ends, shedding
# stops within a few windows rather than DAGOR's 1% steps (100 windows).
BETA_CLEAR = 0.25


@final
class AdmissionLevel:
    """DAGOR's admission level over (class, cohort) positions."""

    __slots__ = ("arrivals", "floor", "level", "window_end_ns", "window_ns")

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self.level = POSITIONS  # everything admitted
        self.floor = COHORTS  # critical is never refused here
        self.arrivals = [0] * POSITIONS  # this window's first attempts, by position
        self.window_end_ns = -1

    def admits(self, position: int) -> bool:
        """Whether a request at `position` gets past the level (and count its arrival)."""
        self.arrivals[position] += 1
        return position < self.level

    def due(self, now_ns: int) -> bool:
        """Whether the window is over (the caller then calls `close`)."""
        return now_ns >= self.window_end_ns

    def close(self, now_ns: int, overloaded: bool, clear: bool) -> None:
        """End the window: `overloaded` lowers the level, `clear` (no request queued)
        raises it by BETA_CLEAR, anything else by BETA."""
        arrivals = self.arrivals
        level = self.level
        if self.window_end_ns >= 0:
            admitted = sum(arrivals[:level])
            if overloaded:
                want = admitted * (1 - ALPHA)
                total = admitted
                while level > self.floor and total > want:
                    level -= 1
                    total -= arrivals[level]
                # An empty window above the floor still steps down one position.
                if level == self.level and level > self.floor:
                    level -= 1
            elif level < POSITIONS:
                want = admitted * (1 + (BETA_CLEAR if clear else BETA))
                total = admitted
                while level < POSITIONS and total <= want:
                    total += arrivals[level]
                    level += 1
        # Windows close only when a request arrives (or the queue's timer runs), so a gap
        # of a whole window since this one should have ended held windows with no arrival:
        # empty and clear, each raises the level all the way. Without this, the first
        # request after a burst was judged by the burst's verdict and refused.
        if self.window_end_ns >= 0 and now_ns >= self.window_end_ns + self.window_ns:
            level = POSITIONS
        self.level = level
        for i in range(POSITIONS):
            arrivals[i] = 0
        self.window_end_ns = now_ns + self.window_ns
