"""Demo backends and `lbproxy demo`: segment origins and upload sinks on aiohttp.

Owns the embedded origins the demo (and tests, and the bench) proxy to: a segment origin
serving deterministic bytes for ``GET``/``HEAD /v/{video}/{segment}`` with Range, ETag and
Last-Modified, and an upload sink answering the SHA-256 and size of a streamed body. These
are test origins, not the data plane; the proxy in `lbproxy demo` is the real one.
Must not touch the data plane's internals.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from functools import lru_cache

import uvloop
from aiohttp import web

from lbproxy.admin.webapp import start_app
from lbproxy.control import config

log = logging.getLogger(__name__)

SEGMENT_BYTES = 256 * 1024
# Fixed so ETag/Last-Modified validators are stable across restarts (RFC 9110 §8.8).
LAST_MODIFIED = "Mon, 02 Nov 2026 00:00:00 GMT"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")

# One-element list: the default name needs the bound port, known only once the app is
# frozen, so the list (not the app) is what changes.
ORIGIN_NAME = web.AppKey("origin_name", list[str])

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


async def _start(app: web.Application, host: str, port: int,
                 name: str | None) -> tuple[web.AppRunner, int]:
    label = app[ORIGIN_NAME] = [name or ""]
    runner, bound = await start_app(app, host, port)
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


def demo_config(origin_ports: list[int], sink_ports: list[int]) -> config.Config:
    """The demo's config: maglev `segments` hashed per video, p2c `uploads` on /upload."""
    return config.from_dict({
        "listener": {"bind": PROXY_BIND},
        "admin": {"bind": ADMIN_BIND},
        "clusters": {
            "segments": {"policy": "maglev",
                         "backends": [f"127.0.0.1:{p}" for p in origin_ports]},
            "uploads": {"policy": "p2c", "backends": [f"127.0.0.1:{p}" for p in sink_ports]},
        },
        "routes": [
            {"path_prefix": "/upload", "cluster": "uploads"},
            {"path_prefix": "/", "cluster": "segments", "hash_on": "path_regex:^/v/([^/]+)/"},
        ],
    })


def curl_examples() -> list[str]:
    """The commands `lbproxy demo` prints; each works against the running demo."""
    proxy, admin = f"http://{PROXY_BIND}", f"http://{ADMIN_BIND}"
    return [
        f"curl -s -o /dev/null -D - {proxy}/v/demo/1.ts",
        f"curl -s -o /dev/null -D - -H 'Range: bytes=0-1023' {proxy}/v/demo/1.ts",
        f"printf 'hello lbproxy' | curl -s -T - {proxy}/upload/hello.txt",
        f"curl -s {admin}/clusters",
        f"curl -s {admin}/ready",
    ]


async def run_demo(stop: asyncio.Event | None = None) -> None:
    """Start the demo backends and the proxy in this process; run until `stop` or a signal."""
    from lbproxy.process import single, startup

    runners: list[web.AppRunner] = []
    try:
        origin_ports, sink_ports = [], []
        for i in range(1, 4):
            runner, port = await start_segment_origin("127.0.0.1", 0, f"origin-{i}")
            runners.append(runner)
            origin_ports.append(port)
        for i in range(1, 3):
            runner, port = await start_upload_sink("127.0.0.1", 0, f"sink-{i}")
            runners.append(runner)
            sink_ports.append(port)
        cfg = demo_config(origin_ports, sink_ports)

        def announce(listener: object, admin: object) -> None:
            print("lbproxy demo: segment origins on "
                  + ", ".join(f"127.0.0.1:{p}" for p in origin_ports)
                  + "; upload sinks on " + ", ".join(f"127.0.0.1:{p}" for p in sink_ports))
            print("try:")
            for line in curl_examples():
                print(f"  {line}")
            print("Ctrl-C to stop.", flush=True)

        await single.serve(cfg, dataplane=startup.load_dataplane(startup.DEFAULT_DATAPLANE),
                           stop=stop, on_ready=announce)
    finally:
        for runner in runners:
            await runner.cleanup()


def main() -> int:
    """`lbproxy demo`: run the demo until SIGTERM/SIGINT; returns the exit status."""
    from lbproxy.process.startup import StartupError

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run_demo())
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    return 0
