"""Outlier ejection, health checks and the circuit breaker through the real data plane.

Real sockets on 127.0.0.1 (port 0), real uvloop, the real `DataPlane`; backends are the
harness's raw servers, so each test counts exactly which requests reached which backend.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from proxy_harness import (
    Backend,
    Client,
    Proxy,
    Reply,
    Request,
    exchange,
    header_of,
    on_uvloop,
    status_of,
)

from lbproxy.balance.gate import Outcome
from lbproxy.control import config
from lbproxy.policies.health import HealthChecker
from lbproxy.process.single import serve
from lbproxy.proxy import DataPlane

GET = b"GET /v/1/seg HTTP/1.1\r\nHost: a\r\n\r\n"
GET_CLOSE = b"GET /v/1/seg HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


def _config(addresses: list[str], **cluster: Any) -> config.Config:
    return config.from_dict({
        "listener": {"bind": "127.0.0.1:0"},
        "clusters": {"c": {"policy": "round_robin", "backends": addresses, **cluster}},
        "routes": [{"cluster": "c"}],
    })


def _traffic(backend: Backend) -> int:
    """Requests that reached `backend`, health probes excluded."""
    return sum(1 for r in backend.requests if r.target != b"/health")


async def _statuses(client: Client, n: int) -> list[int]:
    out = []
    for _ in range(n):
        await client.send(GET)
        out.append((await client.response()).status)
    return out


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once closed


@on_uvloop
async def test_a_backend_answering_503_is_ejected_then_returns():
    failing = {"on": False}
    bad = await Backend(lambda req: Reply(503 if failing["on"] else 200)).start()
    good = [await Backend().start() for _ in range(2)]
    cfg = _config([bad.address] + [b.address for b in good],
                  outlier_detection={"base_ejection_time": 0.3})
    proxy = await Proxy(cfg).start()
    state = proxy.snapshot.clusters["c"].state
    client = await Client.connect(proxy.port)
    try:
        assert await _statuses(client, 6) == [200] * 6
        failing["on"] = True
        statuses = await _statuses(client, 15)  # round robin: every third goes to `bad`
        assert statuses.count(503) == 5 and _traffic(bad) == 2 + 5
        assert state.is_ejected(bad.address) and not state.is_healthy(bad.address)
        assert await _statuses(client, 30) == [200] * 30
        assert _traffic(bad) == 7  # nothing more reached it while ejected
        failing["on"] = False
        await asyncio.sleep(0.35)  # past base_ejection_time x 1
        assert await _statuses(client, 9) == [200] * 9
        assert not state.is_ejected(bad.address)
        assert _traffic(bad) == 7 + 3
    finally:
        client.close()
        await proxy.stop()
        for b in [bad, *good]:
            await b.stop()


@pytest.mark.parametrize("attempts", [0, 2], ids=["retry_off", "retry_default"])
@on_uvloop
async def test_connect_failures_eject_a_closed_port_and_clients_get_the_others(attempts: int):
    good = [await Backend().start() for _ in range(2)]
    dead = f"127.0.0.1:{_closed_port()}"
    proxy = await Proxy(_config([dead] + [b.address for b in good],
                                retry={"attempts": attempts})).start()
    state = proxy.snapshot.clusters["c"].state
    try:
        first = [status_of(await exchange(proxy.port, GET_CLOSE)) for _ in range(15)]
        if attempts == 0:
            # Retries off: each connect failure is one 502 to its client until ejection.
            assert first.count(502) == 5 and first.count(200) == 10
        else:
            # Retried on another backend (nothing was sent): no client sees the failure,
            # and the dead backend still collects its 5 connect failures and is ejected.
            assert first == [200] * 15
            assert sum(_traffic(b) for b in good) == 15
        dead_counters = state.counters[state.slots[dead]]
        assert dead_counters.by_outcome[Outcome.CONNECT_FAILED] == 5
        assert state.is_ejected(dead)
        rest = [status_of(await exchange(proxy.port, GET_CLOSE)) for _ in range(20)]
        assert rest == [200] * 20
        assert sum(_traffic(b) for b in good) == (30 if attempts == 0 else 35)
    finally:
        await proxy.stop()
        for b in good:
            await b.stop()


def _health_responder(sick: dict[str, bool]) -> Callable[[Request], Reply]:
    def respond(req: Request) -> Reply:
        if req.target == b"/health":
            return Reply(500 if sick["on"] else 200)
        return Reply(200)

    return respond


@on_uvloop
async def test_health_check_marks_a_backend_unhealthy_and_healthy_again():
    sick = {"on": False}
    checked = await Backend(_health_responder(sick)).start()
    others = [await Backend(_health_responder({"on": False})).start() for _ in range(2)]
    cfg = _config([checked.address] + [b.address for b in others],
                  health_check={"path": "/health", "interval": 0.05, "timeout": 0.5,
                                "unhealthy_threshold": 2, "healthy_threshold": 2,
                                "host": "health.internal"})
    proxy = await Proxy(cfg).start()
    state = proxy.snapshot.clusters["c"].state
    checker = HealthChecker()
    checker.update(proxy.snapshot)
    client = await Client.connect(proxy.port)
    try:
        await _until(lambda: len(checked.requests) >= 2)
        probe = next(r for r in checked.requests if r.target == b"/health")
        assert probe.header(b"host") == b"health.internal"
        assert state.is_healthy(checked.address)
        sick["on"] = True
        await _until(lambda: state.is_unhealthy(checked.address))
        before = _traffic(checked)
        assert await _statuses(client, 12) == [200] * 12
        assert _traffic(checked) == before
        sick["on"] = False
        await _until(lambda: state.is_healthy(checked.address))
        assert await _statuses(client, 12) == [200] * 12
        assert _traffic(checked) == before + 4
    finally:
        client.close()
        await checker.stop()
        await proxy.stop()
        for b in [checked, *others]:
            await b.stop()


@on_uvloop
async def test_a_backend_that_is_down_at_start_is_marked_at_the_first_probe():
    up = await Backend().start()
    dead = f"127.0.0.1:{_closed_port()}"
    cfg = _config([up.address, dead], health_check={"path": "/health", "interval": 0.05,
                                                     "timeout": 0.2})
    proxy = await Proxy(cfg).start()
    state = proxy.snapshot.clusters["c"].state
    assert state.is_healthy(dead)  # HAProxy init-state up: in service until a probe fails
    checker = HealthChecker()
    checker.update(proxy.snapshot)
    try:
        await _until(lambda: state.is_unhealthy(dead))
        # Removing the check clears its marks: nothing stale outlives the probe.
        checker.update(_without_checks(proxy))
        assert state.is_healthy(dead)
    finally:
        await checker.stop()
        await proxy.stop()
        await up.stop()


def _without_checks(proxy: Proxy) -> Any:
    from lbproxy.control.snapshot import snapshot_of

    cfg = proxy.snapshot.config
    cluster = cfg.clusters["c"]
    plain = config.from_dict({
        "clusters": {"c": {"backends": cluster.backends}},
        "routes": [{"cluster": "c"}],
    })
    states = {"c": proxy.snapshot.clusters["c"].state}
    return snapshot_of(plain, states, 2)


async def _held_handler(backend: Backend, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
    await backend.read(reader)
    backend.requests.append(Request(b"GET", b"/held", []))
    await backend.release.wait()  # type: ignore[attr-defined]
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()


@on_uvloop
async def test_breaker_answers_503_circuit_open_with_retry_after():
    slow = Backend(handler=_held_handler)
    slow.release = asyncio.Event()  # type: ignore[attr-defined]
    await slow.start()
    proxy = await Proxy(_config([slow.address], circuit_breaker={"max_requests": 2})).start()
    state = proxy.snapshot.clusters["c"].state
    held = [await Client.connect(proxy.port) for _ in range(2)]
    try:
        for c in held:
            await c.send(GET)
        await _until(lambda: len(slow.requests) == 2)
        assert state.active == 2
        raw = await exchange(proxy.port, GET_CLOSE)
        assert status_of(raw) == 503
        assert header_of(raw, b"x-lbproxy-error") == b"circuit_open"
        assert header_of(raw, b"retry-after") == b"1"
        assert len(slow.requests) == 2  # nothing reached the backend
        slow.release.set()  # type: ignore[attr-defined]
        assert [(await c.response()).status for c in held] == [200, 200]
        await _until(lambda: state.active == 0)
        assert status_of(await exchange(proxy.port, GET_CLOSE)) == 200
    finally:
        for c in held:
            c.close()
        await proxy.stop()
        await slow.stop()


async def test_serve_runs_health_checks_and_clusters_shows_healthy_and_ejected():
    sick = {"on": True}
    checked = await Backend(_health_responder(sick)).start()
    other = await Backend(_health_responder({"on": False})).start()
    cfg = config.from_dict({
        "listener": {"bind": "127.0.0.1:0"},
        "admin": {"bind": "127.0.0.1:0"},
        "clusters": {"c": {"backends": [checked.address, other.address],
                           "health_check": {"path": "/health", "interval": 0.05}}},
        "routes": [{"cluster": "c"}],
    })
    stop = asyncio.Event()
    ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(
        cfg, dataplane=DataPlane, stop=stop,
        on_ready=lambda listener, admin: ready.set_result(admin)))
    admin = await asyncio.wait_for(ready, 10)
    port = admin._runner.addresses[0][1]

    async def backends() -> dict[str, dict[str, Any]]:
        url = f"http://127.0.0.1:{port}/clusters"
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            doc = await r.json()
        return {b["address"]: b for b in doc["clusters"]["c"]["backends"]}

    try:
        await _until(lambda: admin.snapshot.clusters["c"].state.is_unhealthy(checked.address))
        view = await backends()
        assert view[checked.address]["healthy"] is False
        assert view[checked.address]["ejected"] is False
        assert view[other.address]["healthy"] is True
        sick["on"] = False
        await _until(lambda: admin.snapshot.clusters["c"].state.is_healthy(checked.address))
        assert (await backends())[checked.address]["healthy"] is True
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        for b in (checked, other):
            await b.stop()


async def test_under_a_supervisor_clusters_shows_the_workers_health_marks(tmp_path):
    from ctl_support import ADMIN, LISTENING, spawn, stop, wait_for_lines

    sick = await Backend(_health_responder({"on": True})).start()
    well = await Backend(_health_responder({"on": False})).start()
    path = tmp_path / "c.toml"
    path.write_text(f"""
[listener]
bind = "127.0.0.1:0"
[admin]
bind = "127.0.0.1:0"
[clusters.c]
backends = ["{sick.address}", "{well.address}"]
[clusters.c.health_check]
path = "/health"
interval = 0.05
[[routes]]
cluster = "c"
""")
    proc = await spawn("run", "-c", str(path), "--workers", "2", dataplane=None)
    try:
        found, seen = await wait_for_lines(proc, LISTENING, 2)
        assert len(found) == 2, seen
        admin, seen2 = await wait_for_lines(proc, ADMIN, 1)
        assert admin, seen + seen2
        url = f"http://127.0.0.1:{int(admin[0].group(2))}/clusters"
        view: dict[str, Any] = {}
        for _ in range(100):  # bounded: workers report every REPORT_INTERVAL_S
            async with aiohttp.ClientSession() as s, s.get(url) as r:
                doc = await r.json()
            view = {b["address"]: b["healthy"] for b in doc["clusters"]["c"]["backends"]}
            if view[sick.address] is False:
                break
            await asyncio.sleep(0.05)
        assert view == {sick.address: False, well.address: True}
    finally:
        rc, err = await stop(proc)
        for b in (sick, well):
            await b.stop()
    assert rc == 0, err
