"""Demo backends and `lbproxy demo`: segment origins and upload sinks on aiohttp.

Owns the embedded origins the demo (and tests, and the bench) proxy to: a segment origin
serving deterministic bytes for ``GET``/``HEAD /v/{video}/{segment}`` with Range, ETag and
Last-Modified, and an upload sink answering the SHA-256 and size of a streamed body. These
are test origins, not the data plane; the proxy in `lbproxy demo` is the real one.
Must not touch the data plane's internals.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

from aiohttp import web

SEGMENT_BYTES = 256 * 1024
# Fixed so ETag/Last-Modified validators are stable across restarts (RFC 9110 §8.8).
LAST_MODIFIED = "Mon, 02 Nov 2026 00:00:00 GMT"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")

PROXY_BIND = "127.0.0.1:8080"
ADMIN_BIND = "127.0.0.1:9901"


@lru_cache(maxsize=64)
def segment_content(video: str, segment: str) -> bytes:
    """The bytes of one segment: a pure function of (video, segment), SEGMENT_BYTES long."""
    return hashlib.shake_256(f"{video}/{segment}".encode()).digest(SEGMENT_BYTES)


@lru_cache(maxsize=64)
def segment_etag(video: str, segment: str) -> str:
    """A strong ETag for a segment (RFC 9110 §8.8.3): a digest of its bytes."""
    return '"' + hashlib.sha256(segment_content(video, segment)).hexdigest()[:32] + '"'


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=first-last`` range as (start, end exclusive); None = not satisfiable.

    Raises ValueError for what is not a single byte range: the caller then ignores the
    header and sends 200, which RFC 9110 §14.2 allows (multipart ranges are not served).
    """
    m = _RANGE.fullmatch(value.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        raise ValueError(value)
    first, last = m.group(1), m.group(2)
    if not first:  # suffix range: the last N bytes (RFC 9110 §14.1.2)
        n = int(last)
        return (max(0, size - n), size) if n > 0 else None
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if last and int(last) < start:
        raise ValueError(value)  # invalid range-spec → ignore the header
    return (start, end) if start < size else None


async def _segment(request: web.Request) -> web.StreamResponse:
    name = request.app[ORIGIN_NAME][0]
    video, segment = request.match_info["video"], request.match_info["segment"]
    body = segment_content(video, segment)
    etag = segment_etag(video, segment)
    headers = {
        "ETag": etag,
        "Last-Modified": LAST_MODIFIED,
        "Accept-Ranges": "bytes",
        "X-Origin": name,
        "Content-Type": "video/mp2t",
    }
    inm = request.headers.get("If-None-Match")
    if inm is not None and (inm.strip() == "*" or etag in (t.strip() for t in inm.split(","))):
        return web.Response(status=304, headers=headers)  # RFC 9110 §13.1.2
    status, payload = 200, body
    rng = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if rng is not None and (if_range is None or if_range.strip() in (etag, LAST_MODIFIED)):
        try:
            span = parse_range(rng, len(body))
        except ValueError:
            span = (0, len(body))  # ignored: whole representation
        else:
            if span is None:
                headers["Content-Range"] = f"bytes */{len(body)}"  # RFC 9110 §15.5.17
                return web.Response(status=416, headers=headers)
            status = 206
            headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{len(body)}"
        payload = body[span[0] : span[1]]
    # For HEAD aiohttp sends the same head (Content-Length included) and no body.
    return web.Response(status=status, body=payload, headers=headers)


async def _upload(request: web.Request) -> web.Response:
    name = request.app[ORIGIN_NAME][0]
    digest = hashlib.sha256()
    count = 0
    # aiohttp answers "Expect: 100-continue" before the first read (RFC 9110 §10.1.1)
    # and de-chunks Transfer-Encoding: chunked; the body is hashed as it streams in.
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        count += len(chunk)
    result = {
        "sha256": digest.hexdigest(),
        "bytes": count,
        "sink": name,
        "method": request.method,
        "path": request.path,
    }
    return web.json_response(result, headers={"X-Origin": name})


# One-element list: the default name needs the bound port, known only once the app is
# frozen, so the list (not the app) is what changes.
ORIGIN_NAME = web.AppKey("origin_name", list[str])


async def _start(app: web.Application, host: str, port: int,
                 name: str | None) -> tuple[web.AppRunner, int]:
    label = app[ORIGIN_NAME] = [name or ""]
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = int(runner.addresses[0][1])
    label[0] = name or f"{host}:{bound}"
    return runner, bound


async def start_segment_origin(host: str = "127.0.0.1", port: int = 0,
                               name: str | None = None) -> tuple[web.AppRunner, int]:
    """Start a segment origin; returns (runner, bound port). Stop with ``runner.cleanup()``."""
    app = web.Application()
    app.router.add_get("/v/{video}/{segment}", _segment)  # allow_head: HEAD too
    return await _start(app, host, port, name)


async def start_upload_sink(host: str = "127.0.0.1", port: int = 0,
                            name: str | None = None) -> tuple[web.AppRunner, int]:
    """Start an upload sink (POST/PUT any path); returns (runner, bound port)."""
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", _upload)
    app.router.add_route("PUT", "/{tail:.*}", _upload)
    return await _start(app, host, port, name)
