"""Helpers for the admin API tests: an in-process proxy, admin calls, origin counting."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from lbproxy.control import config
from lbproxy.process.single import serve
from lbproxy.proxy import DataPlane

TOKEN = "s3cret-token"
_ORIGIN = re.compile(rb"(?i)\r\nx-origin: (\S+)")


def proxy_config(backends: list[str], token: str | None = None,
                 extra_clusters: dict[str, Any] | None = None) -> dict[str, Any]:
    """A config dict: round-robin `segments` over `backends` (every backend takes turns)."""
    clusters: dict[str, Any] = {"segments": {"policy": "round_robin", "backends": backends}}
    clusters.update(extra_clusters or {})
    routes = [{"path_prefix": f"/{name}/", "cluster": name} for name in extra_clusters or {}]
    return {
        "listener": {"bind": "127.0.0.1:0"},
        "admin": {"bind": "127.0.0.1:0", **({"token": token} if token else {})},
        "timeouts": {"drain": 5.0},
        "clusters": clusters,
        "routes": [*routes, {"path_prefix": "/", "cluster": "segments"}],
    }


@contextlib.asynccontextmanager
async def in_process(cfg: dict[str, Any]) -> AsyncIterator[tuple[int, int, Any]]:
    """`serve` in this loop with the real data plane: (proxy port, admin port, admin)."""
    stop = asyncio.Event()
    ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(
        config.from_dict(cfg), dataplane=DataPlane, stop=stop,
        on_ready=lambda listener, admin: ready.set_result((listener, admin))))
    try:
        listener, admin = await asyncio.wait_for(ready, 20)
        yield listener.port, admin._runner.addresses[0][1], admin
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def call(admin_port: int, method: str, path: str, body: Any = None, *,
               raw: bytes | None = None, token: str | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    """One admin call: (status, JSON body or text, response headers)."""
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    data: Any = raw if raw is not None or body is None else json.dumps(body).encode()
    if isinstance(data, bytes) and len(data) > 1 << 20:
        data = io.BytesIO(data)  # aiohttp warns about (and the suite fails on) big raw bytes
    async with aiohttp.ClientSession() as s, s.request(
            method, f"http://127.0.0.1:{admin_port}{path}", data=data, headers=hdrs) as r:
        text = await r.text()
        try:
            payload: Any = await r.json(content_type=None)
        except ValueError:
            payload = text
        return r.status, payload, r.headers


async def origins_hit(port: int, n: int, prefix: str = "/v/a") -> Counter[str]:
    """`n` GETs through the proxy, each on a new connection; X-Origin → count (or status)."""
    seen: Counter[str] = Counter()
    for i in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {prefix}/{i}.ts HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                     .encode())
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        m = _ORIGIN.search(data)
        seen[m.group(1).decode() if m else data.split(b" ", 2)[1].decode()] += 1
    return seen


async def until(predicate: Any, timeout: float = 10.0) -> Any:
    """Poll an async predicate until it returns something truthy; returns that."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        result = await predicate()
        if result or loop.time() > end:
            return result
        await asyncio.sleep(0.05)
