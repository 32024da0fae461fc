"""Self-protection: loop lag moves the proxy through its steps, and each step acts."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from support.backends import Backend
from support.configs import config_doc
from support.inproc import on_uvloop, serving

from lbproxy.control.config import SelfProtection as SelfProtectionConfig
from lbproxy.proxy.protection import (
    PROTECT_CLOSE,
    PROTECT_NONE,
    PROTECT_SHED,
    PROTECT_STOP_ACCEPTING,
    SelfProtection,
)


def _monitor(**cfg: Any) -> tuple[SelfProtection, Any, list[bool]]:
    plane = SimpleNamespace(protect=0, snapshot=SimpleNamespace(
        config=SimpleNamespace(self_protection=SelfProtectionConfig(**cfg))))
    calls: list[bool] = []
    return SelfProtection(plane, calls.append), plane, calls


def test_steps_follow_the_smoothed_lag_with_hysteresis():
    mon, plane, accepting = _monitor()
    for _ in range(20):
        mon.observe(0.001)
    assert mon.state == PROTECT_NONE
    for _ in range(20):
        mon.observe(0.080)  # 80 ms: past the 50 ms shed step only
    assert mon.state == PROTECT_SHED and plane.protect == PROTECT_SHED
    for _ in range(20):
        mon.observe(0.400)
    assert mon.state == PROTECT_CLOSE
    assert accepting == [False]  # stopped accepting on the way up
    # down one step at a time, each once the lag is under half its threshold
    for _ in range(40):
        mon.observe(0.120)  # under 300/2: leave CLOSE; not under 150/2: stay
    assert mon.state == PROTECT_STOP_ACCEPTING
    for _ in range(40):
        mon.observe(0.0)
    assert mon.state == PROTECT_NONE and plane.protect == PROTECT_NONE
    assert accepting == [False, True]


def test_a_single_late_tick_does_not_trip_it():
    mon, _, _ = _monitor()
    mon.observe(0.100)  # one 100 ms hiccup: smoothed 30 ms
    assert mon.state == PROTECT_NONE


def test_disabled_never_protects():
    mon, plane, _ = _monitor(enabled=False)
    for _ in range(20):
        mon.observe(1.0)
    assert mon.state == PROTECT_NONE and plane.protect == PROTECT_NONE


async def _get(port: int, path: str) -> tuple[int, dict[str, str]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


@on_uvloop
async def test_each_step_acts_on_the_data_plane() -> None:
    backend = Backend()
    await backend.start()
    doc = config_doc({"c": [backend.address]}, routes=[
        {"cluster": "c", "path_prefix": "/prefetch/", "priority": "sheddable"},
        {"cluster": "c", "path_prefix": "/"}])
    try:
        async with serving(doc) as served:
            protection = served.listener.protection
            protection.stop()  # no ticks: the steps are set by hand below
            status, headers = await _get(served.port, "/prefetch/1")
            assert status == 200 and headers.get("connection") != "close"
            protection.apply(PROTECT_SHED)
            seen = len(backend.requests)
            status, headers = await _get(served.port, "/prefetch/1")
            assert status == 503 and headers["x-lbproxy-error"] == "overloaded"
            assert len(backend.requests) == seen  # the shed request never reached it
            assert headers["retry-after"]
            assert (await _get(served.port, "/play/1"))[0] == 200
            shed = served.listener.dataplane.snapshot.clusters["c"].state.overload
            assert shed.shed_count(2, 2) == 1  # sheddable, self_protect
            protection.apply(PROTECT_STOP_ACCEPTING)
            waiting = asyncio.ensure_future(_get(served.port, "/play/2"))
            await asyncio.sleep(0.3)
            assert not waiting.done()  # in the backlog, not refused
            protection.apply(PROTECT_CLOSE)
            protection.apply(PROTECT_SHED)  # accepting again
            status, _ = await asyncio.wait_for(waiting, 5)
            assert status == 200
            # closing connections includes not accepting new ones: a connection accepted
            # before gets its next response with Connection: close
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(b"GET /play/3 HTTP/1.1\r\nHost: t\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            await asyncio.sleep(0.05)
            protection.apply(PROTECT_CLOSE)
            writer.write(b"GET /play/3 HTTP/1.1\r\nHost: t\r\n\r\n")
            tail = await asyncio.wait_for(reader.read(-1), 5)  # the proxy closes after it
            assert b"connection: close" in tail.lower() and tail.startswith(b"ok")
            writer.close()
            protection.apply(PROTECT_NONE)
            status, headers = await _get(served.port, "/play/4")
            assert status == 200 and headers.get("connection") != "close"
    finally:
        await backend.stop()


@on_uvloop
async def test_a_blocked_loop_trips_it_and_it_recovers() -> None:
    backend = Backend()
    await backend.start()
    try:
        async with serving(config_doc({"c": [backend.address]})) as served:
            protection = served.listener.protection
            for _ in range(5):  # the loop blocked for 300 ms at a time, five times
                time.sleep(0.3)
                await asyncio.sleep(0.01)
            assert protection.state >= PROTECT_SHED, protection.lag_s
            for _ in range(100):
                if protection.state == PROTECT_NONE:
                    break
                await asyncio.sleep(0.05)
            assert protection.state == PROTECT_NONE
            assert (await _get(served.port, "/x"))[0] == 200
    finally:
        await backend.stop()
