"""Admin API calls for the tests, and what they check through the proxy."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections import Counter
from typing import Any

import aiohttp

from support.configs import config_doc

TOKEN = "s3cret-token"
_ORIGIN = re.compile(rb"(?i)\r\nx-origin: (\S+)")


def round_robin_segments(backends: list[str], token: str | None = None,
                         extra_clusters: dict[str, Any] | None = None) -> dict[str, Any]:
    """A config document: round-robin `segments` over `backends` (every backend takes
    turns) for "/", each of `extra_clusters` under "/NAME/"; drain 5 s; `token` on the
    admin API."""
    extra = extra_clusters or {}
    routes = [*({"path_prefix": f"/{name}/", "cluster": name} for name in extra),
              {"path_prefix": "/", "cluster": "segments"}]
    return config_doc({"segments": backends, **extra}, routes, timeouts={"drain": 5.0},
                      admin={"token": token} if token else {})


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
