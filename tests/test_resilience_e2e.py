"""Outlier ejection, health checks and the circuit breaker through the real data plane.

Real sockets on 127.0.0.1 (port 0), real uvloop, the real `DataPlane`; backends are the
harness's raw servers, so each test counts exactly which requests reached which backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from support.backends import Answer, Backend, Conn
from support.configs import config_doc
from support.inproc import InProcProxy, on_uvloop, serving
from support.subproc import LbproxyProcess, write_config
from support.waiting import until
from support.wire import Client, Request, exchange_async

from lbproxy.balance.gate import Outcome
from lbproxy.control import config
from lbproxy.policies.health import HealthChecker

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


@on_uvloop
async def test_a_backend_answering_503_is_ejected_then_returns():
    failing = {"on": False}
    bad = await Backend(lambda req: Answer(status=503 if failing["on"] else 200)).start()
    good = [await Backend().start() for _ in range(2)]
    cfg = _config([bad.address] + [b.address for b in good],
                  outlier_detection={"base_ejection_time": 0.3})
    proxy = await InProcProxy(cfg).start()
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
async def test_connect_failures_eject_a_closed_port_and_clients_get_the_others(
        attempts: int, refused_address: str):
    good = [await Backend().start() for _ in range(2)]
    dead = refused_address
    proxy = await InProcProxy(_config([dead] + [b.address for b in good],
                                retry={"attempts": attempts})).start()
    state = proxy.snapshot.clusters["c"].state
    try:
        first = [(await exchange_async(proxy.port, GET_CLOSE)).first.status for _ in range(15)]
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
        rest = [(await exchange_async(proxy.port, GET_CLOSE)).first.status for _ in range(20)]
        assert rest == [200] * 20
        assert sum(_traffic(b) for b in good) == (30 if attempts == 0 else 35)
    finally:
        await proxy.stop()
        for b in good:
            await b.stop()


def _health_responder(sick: dict[str, bool]) -> Callable[[Request], Answer]:
    def respond(req: Request) -> Answer:
        if req.target == b"/health":
            return Answer(status=500 if sick["on"] else 200)
        return Answer(status=200)

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
    proxy = await InProcProxy(cfg).start()
    state = proxy.snapshot.clusters["c"].state
    checker = HealthChecker()
    checker.update(proxy.snapshot)
    client = await Client.connect(proxy.port)
    try:
        assert await until(lambda: len(checked.requests) >= 2)
        probe = next(r for r in checked.requests if r.target == b"/health")
        assert probe.header(b"host") == b"health.internal"
        assert state.is_healthy(checked.address)
        sick["on"] = True
        assert await until(lambda: state.is_unhealthy(checked.address))
        before = _traffic(checked)
        assert await _statuses(client, 12) == [200] * 12
        assert _traffic(checked) == before
        sick["on"] = False
        assert await until(lambda: state.is_healthy(checked.address))
        assert await _statuses(client, 12) == [200] * 12
        assert _traffic(checked) == before + 4
    finally:
        client.close()
        await checker.stop()
        await proxy.stop()
        for b in [checked, *others]:
            await b.stop()


@on_uvloop
async def test_a_backend_that_is_down_at_start_is_marked_at_the_first_probe(refused_address: str):
    up = await Backend().start()
    dead = refused_address
    cfg = _config([up.address, dead], health_check={"path": "/health", "interval": 0.05,
                                                     "timeout": 0.2})
    proxy = await InProcProxy(cfg).start()
    state = proxy.snapshot.clusters["c"].state
    assert state.is_healthy(dead)  # HAProxy init-state up: in service until a probe fails
    checker = HealthChecker()
    checker.update(proxy.snapshot)
    try:
        assert await until(lambda: state.is_unhealthy(dead))
        # Removing the check clears its marks: nothing stale outlives the probe.
        checker.update(_without_checks(proxy))
        assert state.is_healthy(dead)
    finally:
        await checker.stop()
        await proxy.stop()
        await up.stop()


def _without_checks(proxy: InProcProxy) -> Any:
    from lbproxy.control.snapshot import snapshot_of

    cfg = proxy.snapshot.config
    cluster = cfg.clusters["c"]
    plain = config.from_dict({
        "clusters": {"c": {"backends": cluster.backends}},
        "routes": [{"cluster": "c"}],
    })
    states = {"c": proxy.snapshot.clusters["c"].state}
    return snapshot_of(plain, states, 2)


@on_uvloop
async def test_breaker_answers_503_circuit_open_with_retry_after():
    release = asyncio.Event()

    async def answer_when_released(conn: Conn, req: Request) -> bool:
        await conn.finish(req)
        await release.wait()
        await conn.send(Answer())
        return False  # and close, as a backend that answers once

    slow = await Backend(respond=answer_when_released).start()
    proxy = await InProcProxy(_config([slow.address], circuit_breaker={"max_requests": 2})).start()
    state = proxy.snapshot.clusters["c"].state
    held = [await Client.connect(proxy.port) for _ in range(2)]
    try:
        for c in held:
            await c.send(GET)
        assert await until(lambda: len(slow.requests) == 2)
        assert state.active == 2
        raw = await exchange_async(proxy.port, GET_CLOSE)
        assert raw.first.status == 503
        assert raw.first.header(b"x-lbproxy-error") == b"circuit_open"
        assert raw.first.header(b"retry-after") == b"1"
        assert len(slow.requests) == 2  # nothing reached the backend
        release.set()
        assert [(await c.response()).status for c in held] == [200, 200]
        assert await until(lambda: state.active == 0)
        assert (await exchange_async(proxy.port, GET_CLOSE)).first.status == 200
    finally:
        for c in held:
            c.close()
        await proxy.stop()
        await slow.stop()


async def test_serve_runs_health_checks_and_clusters_shows_healthy_and_ejected():
    sick = {"on": True}
    checked = await Backend(_health_responder(sick)).start()
    other = await Backend(_health_responder({"on": False})).start()
    doc = config_doc({"c": {"backends": [checked.address, other.address],
                            "health_check": {"path": "/health", "interval": 0.05}}},
                     [{"cluster": "c"}])
    try:
        async with serving(doc) as served:
            state = served.admin.snapshot.clusters["c"].state

            async def backends() -> dict[str, dict[str, Any]]:
                url = f"http://127.0.0.1:{served.admin_port}/clusters"
                async with aiohttp.ClientSession() as s, s.get(url) as r:
                    doc = await r.json()
                return {b["address"]: b for b in doc["clusters"]["c"]["backends"]}

            assert await until(lambda: state.is_unhealthy(checked.address))
            view = await backends()
            assert view[checked.address]["healthy"] is False
            assert view[checked.address]["ejected"] is False
            assert view[other.address]["healthy"] is True
            sick["on"] = False
            assert await until(lambda: state.is_healthy(checked.address))
            assert (await backends())[checked.address]["healthy"] is True
    finally:
        for b in (checked, other):
            await b.stop()


async def test_under_a_supervisor_clusters_shows_the_workers_health_marks(tmp_path):
    sick = await Backend(_health_responder({"on": True})).start()
    well = await Backend(_health_responder({"on": False})).start()
    doc = config_doc({"c": {"backends": [sick.address, well.address],
                            "health_check": {"path": "/health", "interval": 0.05}}},
                     [{"cluster": "c"}])
    config = write_config(tmp_path / "c.toml", doc)
    proc = LbproxyProcess("run", "-c", str(config), "--workers", "2")
    try:
        assert await proc.ready_async(workers=2), proc.stderr()
        url = f"{proc.admin_url}/clusters"
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
        rc = await proc.stop_async()
        for b in (sick, well):
            await b.stop()
    assert rc == 0, proc.stderr()
