"""Bounded polling: wait for a condition, in a test's loop (`until`) or blocking
(`wait_until`, for tests that drive a subprocess from plain threads)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


async def until(predicate: Callable[[], Any], timeout: float = 10.0,
                interval: float = 0.02) -> Any:
    """Poll `predicate` (plain or async) until it returns something truthy or `timeout`
    seconds pass; returns its last value."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result or loop.time() > end:
            return result
        await asyncio.sleep(interval)


def wait_until(cond: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Block until `cond()` is true or `timeout` seconds pass; returns its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()
