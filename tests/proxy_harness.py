"""Test harness for the data plane: raw backends, a proxy on port 0, raw clients.

Backends are plain asyncio servers written here so a test can assert exactly which bytes
(and how many connections) reached them. Everything binds 127.0.0.1, port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httptools
import uvloop

from lbproxy.control import config
from lbproxy.control.snapshot import snapshot_of
from lbproxy.proxy import DataPlane

BLOCK = bytes(range(256)) * 256  # 64 KiB deterministic pattern


def on_uvloop(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test on a fresh uvloop loop (as production does), bounded in time."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        async def bounded() -> None:
            loop = asyncio.get_running_loop()
            assert isinstance(loop, uvloop.Loop)
            await asyncio.wait_for(fn(*args, **kwargs), TEST_TIMEOUT)

        uvloop.run(bounded())

    return run


TEST_TIMEOUT = 120.0


def pattern(size: int, block: int = 65536) -> Iterator[bytes]:
    """`size` bytes of the repeating 0..255 pattern, in pieces of at most `block` bytes."""
    off = 0
    step = min(block, len(BLOCK) - 256)
    while off < size:
        n = min(size - off, step)
        start = off % 256
        yield BLOCK[start : start + n]
        off += n


def pattern_sha(size: int) -> str:
    """SHA-256 of `size` pattern bytes (hashed piecewise, never held whole)."""
    h = hashlib.sha256()
    for piece in pattern(size):
        h.update(piece)
    return h.hexdigest()


@dataclass
class Request:
    """What a backend received for one request."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body_len: int = 0
    body_sha: str = ""
    body: bytes = b""  # kept only up to 1 MiB

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lowercase), or None."""
        for n, v in self.headers:
            if n == name:
                return v
        return None


class _ReqParser:
    def __init__(self) -> None:
        self.reset()
        self.done: list[Request] = []

    def reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.sha = hashlib.sha256()
        self.n = 0
        self.small = bytearray()
        self.head_done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, data: bytes) -> None:
        self.sha.update(data)
        self.n += len(data)
        if len(self.small) < 1 << 20:
            self.small += data

    def on_message_complete(self) -> None:
        self.done.append(Request(b"", self.url, self.headers, self.n, self.sha.hexdigest(),
                                 bytes(self.small)))
        self.reset()


@dataclass
class Reply:
    """What a backend answers: status, headers, and a body (bytes or a pattern size)."""

    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b"ok"
    size: int = -1  # >= 0: stream this many pattern bytes instead of `body`
    chunked: bool = False
    length: bool = True  # send Content-Length (when not chunked)


Responder = Callable[[Request], Reply]
Handler = Callable[["Backend", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Backend:
    """A raw HTTP/1.1 backend: records requests and raw bytes, answers via `responder`."""

    def __init__(self, responder: Responder | None = None, handler: Handler | None = None,
                 record_raw: bool = True) -> None:
        self.responder = responder or (lambda req: Reply())
        self.handler = handler or http_handler
        self.record_raw = record_raw
        self.raw = bytearray()
        self.connections = 0
        self.requests: list[Request] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.errors: list[Exception] = []

    @property
    def address(self) -> str:
        """host:port for the config."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> Backend:
        """Listen on 127.0.0.1, port 0."""
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, httptools.HttpParserError):
            pass
        except Exception as exc:  # a bug in the test's backend: fail the test, loudly
            self.errors.append(exc)
        finally:
            writer.close()

    async def read(self, reader: asyncio.StreamReader, n: int = 65536) -> bytes:
        """Read (and record) up to `n` bytes."""
        data = await reader.read(n)
        if self.record_raw:
            self.raw += data
        return data

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        for w in self.writers:
            w.close()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1)


async def http_handler(backend: Backend, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
    """Parse requests with httptools; answer each with `backend.responder`."""
    state = _ReqParser()
    parser = httptools.HttpRequestParser(state)
    while True:
        data = await backend.read(reader)
        if not data:
            return
        parser.feed_data(data)
        while state.done:
            req = state.done.pop(0)
            req.method = parser.get_method()
            backend.requests.append(req)
            reply = backend.responder(req)
            await send_reply(writer, reply, head_only=req.method == b"HEAD")
            if any(n == b"connection" and v.lower() == b"close" for n, v in reply.headers):
                return


async def send_reply(writer: asyncio.StreamWriter, reply: Reply, head_only: bool = False) -> None:
    """Write one response, streaming pattern bodies with backpressure."""
    head = bytearray(b"HTTP/1.1 %d X\r\n" % reply.status)
    for n, v in reply.headers:
        head += n + b": " + v + b"\r\n"
    size = reply.size if reply.size >= 0 else len(reply.body)
    if reply.chunked:
        head += b"Transfer-Encoding: chunked\r\n"
    elif reply.length and reply.status not in (204, 304):
        head += b"Content-Length: %d\r\n" % size
    head += b"\r\n"
    writer.write(bytes(head))
    if head_only or reply.status in (204, 304):
        await writer.drain()
        return
    pieces = pattern(reply.size) if reply.size >= 0 else iter([reply.body] if reply.body else [])
    for piece in pieces:
        if reply.chunked:
            writer.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
        else:
            writer.write(piece)
        await writer.drain()
    if reply.chunked:
        writer.write(b"0\r\n\r\n")
    await writer.drain()


def make_config(backends: list[Backend], **overrides: Any) -> config.Config:
    """A config with one cluster ``c`` of `backends` and one catch-all route."""
    data: dict[str, Any] = {
        "listener": {"bind": "127.0.0.1:0"},
        "clusters": {"c": {"policy": "round_robin",
                           "backends": [b.address for b in backends]}},
        "routes": [{"path_prefix": "/", "cluster": "c"}],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return config.from_dict(data)


class Proxy:
    """A DataPlane listening on 127.0.0.1, port 0."""

    def __init__(self, cfg: config.Config) -> None:
        self.cfg = cfg
        self.snapshot = snapshot_of(cfg)
        self.plane = DataPlane(self.snapshot, asyncio.get_running_loop())
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> Proxy:
        """Listen."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self.plane.protocol_factory, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and drain quickly."""
        assert self.server is not None
        self.server.close()
        await self.plane.drain(0.5)


@contextlib.asynccontextmanager
async def running(*backends: Backend, **overrides: Any) -> AsyncIterator[Proxy]:
    """Start `backends` and a proxy routing to them; stop everything afterwards."""
    for b in backends:
        if b.server is None:
            await b.start()
    proxy = await Proxy(make_config(list(backends), **overrides)).start()
    try:
        yield proxy
    finally:
        await proxy.stop()
        for b in backends:
            await b.stop()
    for b in backends:
        assert not b.errors, f"backend handler failed: {b.errors!r}"


@dataclass
class Response:
    """A response as the client saw it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body_len: int
    body_sha: str
    body: bytes
    complete: bool  # the parser saw the end of the message

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lowercase), or None."""
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def headers_named(self, name: bytes) -> list[bytes]:
        """Every value of header `name`."""
        return [v for n, v in self.headers if n == name]


class _RespParser:
    """Collects consecutive responses on one connection (1xx go to `interim`)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.ready: list[Response] = []
        self.interim: list[int] = []
        self._begin()

    def _begin(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.sha = hashlib.sha256()
        self.n = 0
        self.small = bytearray()
        self.head_done = False

    def on_message_begin(self) -> None:
        self._begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, data: bytes) -> None:
        self.sha.update(data)
        self.n += len(data)
        if len(self.small) < 1 << 20:
            self.small += data

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            self.interim.append(status)
            return
        self.ready.append(self.current(True))
        self._begin()  # at EOF before another head, `current` reports no response (0)

    def current(self, complete: bool) -> Response:
        status = self.parser.get_status_code() if self.head_done else 0
        return Response(status, self.headers, self.n, self.sha.hexdigest(), bytes(self.small),
                        complete)


class Client:
    """A raw client connection to the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""
        self._state = _RespParser()

    @property
    def interim(self) -> list[int]:
        """Status codes of the 1xx responses seen so far."""
        return self._state.interim

    @classmethod
    async def connect(cls, port: int) -> Client:
        """Open a connection to 127.0.0.1:`port`."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        """Write raw bytes."""
        self.writer.write(data)
        await self.writer.drain()

    async def send_stream(self, pieces: Iterator[bytes], chunked: bool = False) -> None:
        """Write body pieces with backpressure (chunk-framed if asked)."""
        for piece in pieces:
            self.writer.write(b"%x\r\n" % len(piece) + piece + b"\r\n" if chunked else piece)
            await self.writer.drain()
        if chunked:
            self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    async def response(self, head_request: bool = False, timeout: float = 10) -> Response:
        """Read one final response; EOF first returns it marked incomplete."""
        state = self._state

        async def read() -> Response:
            while not state.ready:
                if head_request and state.head_done:
                    # the parser cannot know the request was HEAD: take the head, reset
                    resp = state.current(True)
                    self._state = _RespParser()
                    self._state.interim.extend(state.interim)
                    return resp
                data = self.buffer or await self.reader.read(1 << 20)
                self.buffer = b""
                if not data:
                    return state.current(False)
                with contextlib.suppress(httptools.HttpParserUpgrade):
                    state.parser.feed_data(data)
            return state.ready.pop(0)

        return await asyncio.wait_for(read(), timeout)

    async def read_all(self, timeout: float = 5) -> bytes:
        """Everything until the proxy closes the connection."""
        out = bytearray(self.buffer)
        self.buffer = b""

        async def go() -> None:
            while True:
                data = await self.reader.read(1 << 20)
                if not data:
                    return
                out.extend(data)

        await asyncio.wait_for(go(), timeout)
        return bytes(out)

    async def closed(self, timeout: float = 5) -> bool:
        """True when the proxy closed the connection (EOF) within `timeout`."""
        try:
            data = await asyncio.wait_for(self.reader.read(1 << 20), timeout)
        except (TimeoutError, ConnectionError):
            return False
        self.buffer += data
        return data == b""

    def close(self) -> None:
        """Close our side."""
        self.writer.close()


async def exchange(port: int, raw: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes on a fresh connection; return everything until the proxy closes."""
    c = await Client.connect(port)
    try:
        await c.send(raw)
        return await c.read_all(timeout)
    finally:
        c.close()


def status_of(raw: bytes) -> int:
    """The status code of the first response in `raw`."""
    return int(raw.split(b" ", 2)[1])


def header_of(raw: bytes, name: bytes) -> bytes | None:
    """A header's value in the first response head of `raw` (case-insensitive)."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        n, _, v = line.partition(b":")
        if n.strip().lower() == name:
            return v.strip()
    return None
