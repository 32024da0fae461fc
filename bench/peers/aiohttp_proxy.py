"""A straightforward aiohttp reverse proxy: the "what you'd write in an afternoon" peer.

Owns nothing but forwarding: /upload* round-robin to the sinks with the body streamed,
everything else hashed on the video id to a segment origin, the next origin tried when a
connect fails. Run as `python -m bench.peers.aiohttp_proxy PORT SEGMENTS UPLOADS` with
comma-separated host:port lists.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
import zlib

import aiohttp
import uvloop
from aiohttp import web

_VIDEO = re.compile(r"^/v/([^/]+)/")
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "host", "content-length",
})


class ForwardingProxy:
    """Handler state: the two pools and one shared client session."""

    def __init__(self, segments: list[str], uploads: list[str]) -> None:
        self.segments = segments
        self.uploads = uploads
        self.upload_turn = itertools.count()
        self.session: aiohttp.ClientSession | None = None

    async def open(self, app: web.Application) -> None:
        """Create the upstream session (keep-alive pool) on start-up."""
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=120)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=60)
        )

    async def close(self, app: web.Application) -> None:
        """Close the upstream session on shutdown."""
        if self.session is not None:
            await self.session.close()

    def order(self, path: str) -> list[str]:
        """Backends to try for `path`, preferred first."""
        if path.startswith("/upload"):
            start = next(self.upload_turn) % len(self.uploads)
            return self.uploads[start:] + self.uploads[:start]
        m = _VIDEO.match(path)
        key = (m.group(1) if m else path).encode()
        start = zlib.crc32(key) % len(self.segments)
        return self.segments[start:] + self.segments[:start]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Forward one request and stream the response back."""
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["X-Forwarded-For"] = request.remote or ""
        has_body = request.body_exists
        if has_body and request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        for backend in self.order(request.path):
            url = f"http://{backend}{request.rel_url}"
            try:
                async with self.session.request(
                    request.method, url, headers=headers,
                    data=request.content if has_body else None, allow_redirects=False,
                ) as upstream:
                    response = web.StreamResponse(status=upstream.status)
                    for k, v in upstream.headers.items():
                        if k.lower() not in _HOP_BY_HOP:
                            response.headers.add(k, v)
                    if upstream.content_length is not None:
                        response.content_length = upstream.content_length
                    await response.prepare(request)
                    async for chunk in upstream.content.iter_chunked(65536):
                        await response.write(chunk)
                    await response.write_eof()
                    return response
            except aiohttp.ClientConnectorError:
                if has_body:
                    break  # the body may be partly consumed: cannot retry elsewhere
                continue
        return web.Response(status=502, text="all backends failed\n")


async def serve(port: int, segments: list[str], uploads: list[str]) -> None:
    """Run the proxy on 127.0.0.1:port until killed."""
    proxy = ForwardingProxy(segments, uploads)
    app = web.Application(client_max_size=0)
    app.on_startup.append(proxy.open)
    app.on_cleanup.append(proxy.close)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3].split(",")))
