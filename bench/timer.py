"""Sub-millisecond wake-ups for the open-loop pacer, without spinning.

Owns one Linux timerfd armed at absolute CLOCK_MONOTONIC times and watched by the event
loop. libuv timers (and so uvloop's call_at) tick in whole milliseconds, which would add up
to 1 ms of the generator's own lateness to every open-loop sample; polling instead burns the
generator's core, which on a small machine the backends need. Elsewhere: call_at fallback.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import time
from collections.abc import Callable

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1
_PR_SET_TIMERSLACK = 29


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.timerfd_create  # noqa: B018 - probe that the symbol exists
    except (OSError, AttributeError, TypeError):
        return None
    return libc


class WakeTimer:
    """Calls `callback` at (or just after) an absolute time.monotonic_ns() deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self.loop = loop
        self.callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._libc = _libc()
        self._fd = -1
        if self._libc is not None:
            fd = self._libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                # Default timer slack lets the kernel fire up to 50 µs late; ask for 1 ns.
                self._libc.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
                loop.add_reader(fd, self._fired)

    @property
    def precise(self) -> bool:
        """True when backed by a timerfd (sub-millisecond)."""
        return self._fd >= 0

    def arm(self, deadline_ns: int) -> None:
        """Fire once at deadline_ns (monotonic); replaces any earlier arming."""
        if self._fd >= 0 and self._libc is not None:
            # An absolute time of 0 disarms a timerfd, so never pass a time in the past as 0.
            deadline_ns = max(deadline_ns, 1)
            spec = _Itimerspec(_Timespec(0, 0), _Timespec(deadline_ns // 1_000_000_000,
                                                          deadline_ns % 1_000_000_000))
            if self._libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec),
                                          None) == 0:
                return
        delay = max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9)
        self._handle = self.loop.call_later(delay, self.callback)

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            return
        self.callback()

    def close(self) -> None:
        """Stop watching and release the timerfd."""
        if self._handle is not None:
            self._handle.cancel()
        if self._fd >= 0:
            self.loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
