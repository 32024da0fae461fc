"""Recording origins: one `Backend` for every test, in-process or against `lbproxy run`.

A Backend is a raw asyncio HTTP/1.1 server on 127.0.0.1 port 0 that records every byte
and every complete request per connection, so a test can assert exactly what reached it
(or that nothing did). In-process tests start it in their own loop; tests that drive a
subprocess with blocking clients (curl, http.client) host several on a background loop
(`Backends`). How it answers is chosen at three levels, each defaulting to the next:
`serve(conn)` owns a whole connection; `respond(conn, req)` is called on each request's
head (it may answer before reading the body); `answer(req)` returns an `Answer` for a
request read whole. Nothing here imports lbproxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import uvloop

from support.wire import Parser, Request, pattern, pattern_pieces

T = TypeVar("T")


@dataclass(kw_only=True)
class Answer:
    """What a backend answers: status, headers, and a body (bytes, or a pattern size)."""

    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b"ok"
    size: int = -1  # >= 0: stream this many pattern bytes instead of `body`
    chunked: bool = False
    length: bool = True  # send Content-Length (when not chunked)


class Incomplete(Exception):
    """The connection ended in the middle of a request."""


class Conn:
    """One connection a backend accepted: what arrived on it, and the streams to answer on."""

    def __init__(self, backend: Backend, index: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.backend = backend
        self.index = index
        self.reader = reader
        self.writer = writer
        self.raw = bytearray()  # every byte received (unless the backend records none)
        self.requests: list[Request] = []  # complete requests, in order
        self.closed = False
        self.incomplete = False  # the peer closed in the middle of a request
        self._parser = Parser(responses=False)

    async def read(self, n: int = 65536) -> bytes:
        """Read (and record) up to `n` bytes; b"" at EOF."""
        data = await self.reader.read(n)
        if self.backend.record_raw:
            self.raw += data
        return data

    async def _feed(self) -> bool:
        data = await self.read(1 << 20)
        if data:
            self._parser.feed(data)
        else:
            self._parser.feed_eof()
        return bool(data)

    async def next_request(self) -> Request | None:
        """The next request once its head is in (its body may still be arriving); None when
        the peer closed between requests. Raises Incomplete when it closed within one."""
        while (msg := self._parser.head()) is None:
            if not await self._feed():
                if self._parser.pending():
                    self.incomplete = True
                    raise Incomplete
                return None
        assert isinstance(msg, Request)
        msg.conn = self.index
        if msg.complete:
            self._record(msg)
        return msg

    async def finish(self, req: Request) -> None:
        """Read the rest of `req`'s body (nothing when it is in already)."""
        if req.complete:
            return
        while not self._parser.body(req):
            if not await self._feed():
                self.incomplete = True
                raise Incomplete
        self._record(req)

    def _record(self, req: Request) -> None:
        self.requests.append(req)
        self.backend.requests.append(req)

    async def send(self, answer: Answer, head_only: bool = False) -> None:
        """Write one response, streaming pattern bodies with backpressure."""
        w = self.writer
        headers = list(answer.headers)
        size = answer.size if answer.size >= 0 else len(answer.body)
        if answer.chunked:
            headers.append((b"Transfer-Encoding", b"chunked"))
        elif answer.length and answer.status not in (204, 304):
            headers.append((b"Content-Length", b"%d" % size))
        w.write(response_bytes(answer.status, headers, length=False))
        if head_only or answer.status in (204, 304):
            await w.drain()
            return
        pieces = (pattern_pieces(answer.size) if answer.size >= 0
                  else iter([answer.body] if answer.body else []))
        for piece in pieces:
            w.write(b"%x\r\n%s\r\n" % (len(piece), piece) if answer.chunked else piece)
            await w.drain()
        if answer.chunked:
            w.write(b"0\r\n\r\n")
        await w.drain()

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), not a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


# What the support code started listening in a test's loop (backends, in-process proxies),
# so that a test that fails before stopping them does not leave them open: a uvloop loop
# closed with a server still open warns (ResourceWarning) from inside its close(), and with
# warnings as errors that close never returns. `stop_leftovers` stops them.
_listening: weakref.WeakSet[Any] = weakref.WeakSet()


def track_listening(owner: Any) -> None:
    """Remember `owner` (with `.loop` and `async stop()`) as listening until it stops."""
    _listening.add(owner)


def untrack_listening(owner: Any) -> None:
    """`owner` stopped listening."""
    _listening.discard(owner)


def leftover_loops() -> set[asyncio.AbstractEventLoop]:
    """The open, idle loops on which the support code left something listening."""
    return {o.loop for o in _listening if not o.loop.is_closed() and not o.loop.is_running()}


async def stop_leftovers() -> None:
    """Stop what the support code left listening on this loop (proxies before backends)."""
    loop = asyncio.get_running_loop()
    mine = [o for o in _listening if o.loop is loop]
    for owner in sorted(mine, key=lambda o: isinstance(o, Backend)):
        await owner.stop()


AnswerFn = Callable[[Request], Answer]
RespondFn = Callable[[Conn, Request], Awaitable[bool]]
ServeFn = Callable[[Conn], Awaitable[None]]


class Backend:
    """A recording HTTP/1.1 origin on 127.0.0.1 port 0 (see the module docstring)."""

    def __init__(self, answer: AnswerFn | None = None, *, respond: RespondFn | None = None,
                 serve: ServeFn | None = None, name: str = "backend",
                 record_raw: bool = True) -> None:
        self.name = name
        self.answer = answer or (lambda req: Answer())
        self.respond = respond or self.respond_with_answer
        self.serve = serve or self.serve_requests
        self.record_raw = record_raw
        self.conns: list[Conn] = []
        self.requests: list[Request] = []  # complete requests, in the order they completed
        self.errors: list[Exception] = []  # what failed while serving (see `_accept`)
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def address(self) -> str:
        """host:port for a config."""
        return f"127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """How many connections were accepted."""
        return len(self.conns)

    @property
    def raw(self) -> bytes:
        """Every byte received, connection after connection."""
        return b"".join(bytes(c.raw) for c in self.conns)

    def total_bytes(self) -> int:
        """How many bytes were received on every connection so far."""
        return sum(len(c.raw) for c in self.conns)

    async def start(self) -> Backend:
        """Listen on 127.0.0.1, port 0."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]
        self.loop = asyncio.get_running_loop()
        track_listening(self)
        return self

    async def stop(self) -> None:
        """Stop listening, close every connection, end every handler still running."""
        untrack_listening(self)
        if self._server is not None:
            self._server.close()
        for c in self.conns:
            c.writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(self, len(self.conns), reader, writer)
        self.conns.append(conn)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.serve(conn)
        except asyncio.CancelledError:
            # `stop` ends the handlers still running (one that never answers, say); their
            # task must end quietly, or asyncio logs the cancellation as an error.
            pass
        except (ConnectionError, Incomplete):
            conn.incomplete = True
        except Exception as exc:
            # The test must fail: the test's own backend code failed, or the proxy sent
            # bytes that are not HTTP/1.1 (wire.Malformed).
            self.errors.append(exc)
        finally:
            conn.closed = True
            self._tasks.discard(task)
            writer.close()

    async def serve_requests(self, conn: Conn) -> None:
        """The default `serve`: `respond` to each request until one says to close."""
        while (req := await conn.next_request()) is not None:
            if not await self.respond(conn, req):
                return
            await conn.finish(req)

    async def respond_with_answer(self, conn: Conn, req: Request) -> bool:
        """The default `respond`: read the request whole, send `answer(req)`; keep the
        connection unless the answer says Connection: close."""
        await conn.finish(req)
        answer = self.answer(req)
        await conn.send(answer, head_only=req.method == b"HEAD")
        return not any(n.lower() == b"connection" and v.lower() == b"close"
                       for n, v in answer.headers)


# -- answers by path (the subprocess tests' origin) --------------------------------------


def describe(backend: Backend, req: Request) -> bytes:
    """JSON describing a received request (the echo body)."""
    return json.dumps({
        "backend": backend.name,
        "method": req.method.decode("latin-1"),
        "target": req.target.decode("latin-1"),
        "version": "HTTP/" + req.version.decode(),
        "headers": [(n.decode("latin-1"), v.decode("latin-1")) for n, v in req.headers],
        "body_len": req.body_len,
        "body_sha256": req.body_sha,
        "chunked": req.chunked,
        "conn": req.conn,
    }).encode()


def response_bytes(status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"",
                   *, length: bool = True, head_only: bool = False) -> bytes:
    """A serialised response (Content-Length added unless `length` is False; for a HEAD,
    `head_only`, the same head and no body)."""
    head = b"HTTP/1.1 %d X\r\n" % status + b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    if length:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + (b"" if head_only else body)


# Malformed responses the proxy must answer with 502 (RFC 9112 §4, §6.3; RFC 9110 §15).
BAD_RESPONSES: dict[str, bytes] = {
    "garbage-status-line": b"HTTP/1.1 OK-ish\r\nContent-Length: 0\r\n\r\n",
    "not-http": b"SSH-2.0-OpenSSH_9.0\r\n\r\n",
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    "two-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
    b"hello!",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n"
    b"0\r\n\r\n",
    "negative-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
}


# Well-formed but unusual responses (RFC 9112 §6.3, RFC 9110 §15.2, §6.5).
RAW_RESPONSES: dict[str, bytes] = {
    "close-delimited": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"d" * 3000,
    "early-hints": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhints",
    "trailers": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
    b"5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
    "extra-bytes": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA-BYTES-SMUGGLED",
    "two-responses": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    b"HTTP/1.1 200 OK\r\nX-Smuggled: yes\r\nContent-Length: 8\r\n\r\nSMUGGLED",
    "conn-close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    "via": b"HTTP/1.1 200 OK\r\nVia: 1.1 origin-cache\r\nContent-Length: 2\r\n\r\nok",
    "head-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    "http10-close": b"HTTP/1.0 200 OK\r\n\r\nten",
    "304-with-length": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: \"x\"\r\n\r\n",
    "set-cookies": b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nSet-Cookie: b=2, c\r\n"
    b"Content-Length: 2\r\n\r\nok",
    "nul-in-header": b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "obs-text": b"HTTP/1.1 200 OK\r\nX-Latin: caf\xe9\r\nContent-Length: 2\r\n\r\nok",
    "huge-header": b"HTTP/1.1 200 OK\r\nX-Huge: " + b"h" * (4 << 20) + b"\r\n"
    b"Content-Length: 0\r\n\r\n",
}

CLOSE_DELIMITED = frozenset({"close-delimited", "http10-close", "conn-close"})
RANGE_SIZE = 1000  # /range serves the first RANGE_SIZE pattern bytes


async def answer_by_path(conn: Conn, req: Request) -> bool:
    """A `respond` that answers by path, for tests that cannot script a backend per test
    (the proxy is a subprocess shared by a module); returns whether to keep the connection.

    /bytes/N[?chunked]: N pattern bytes; /status/N; /range (206 for "bytes=a-b");
    /never, /stall (no answer; /stall does not read the body); /slow/SECONDS then echo;
    /reset, /close before any response byte; /bad/NAME, /raw/NAME (BAD_RESPONSES,
    RAW_RESPONSES); /early (403 before the body is read); /ka-close (answer, then close
    while idle); /die/cl, /die/chunked (half the body, then close); /hop (hop-by-hop
    response headers); anything else: 200 with JSON describing the request (`describe`).
    """
    path, _, query = req.target.partition(b"?")
    parts = path.strip(b"/").split(b"/")
    kind, arg = parts[0].decode("latin-1"), (parts[1] if len(parts) > 1 else b"")
    if kind not in ("early", "stall"):
        await conn.finish(req)
    w = conn.writer
    head_only = req.method == b"HEAD"
    if kind == "bytes":
        await conn.send(Answer(size=int(arg), chunked=b"chunked" in query), head_only)
    elif kind == "status":  # a body unless the status cannot have one
        status = int(arg)
        headers = [(b"ETag", b'"e1"')] if status == 304 else []
        await conn.send(Answer(status=status, headers=headers, body=b"status body"), head_only)
    elif kind == "range":
        full = pattern(RANGE_SIZE)
        m = re.fullmatch(rb"bytes=(\d+)-(\d+)", req.header(b"range") or b"")
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            w.write(response_bytes(206, [(b"Content-Range",
                                          b"bytes %d-%d/%d" % (a, b, RANGE_SIZE))],
                                   full[a : b + 1]))
        else:
            w.write(response_bytes(200, [(b"Accept-Ranges", b"bytes")], full))
    elif kind in ("never", "stall"):
        await asyncio.sleep(3600)
    elif kind == "slow":
        await asyncio.sleep(float(arg))
        w.write(response_bytes(200, [(b"Content-Type", b"application/json")],
                               describe(conn.backend, req)))
    elif kind == "reset":
        conn.reset()
        return False
    elif kind == "close":
        w.close()
        return False
    elif kind == "bad":
        w.write(BAD_RESPONSES[arg.decode()])
        await w.drain()
        w.close()
        return False
    elif kind == "raw":  # close-delimited ones then close
        w.write(RAW_RESPONSES[arg.decode()])
        if arg.decode() in CLOSE_DELIMITED:
            await w.drain()
            w.close()
            return False
    elif kind == "early":  # refuse before reading the body; half-close, drain, linger
        w.write(response_bytes(403, [(b"Connection", b"close")], b"no thanks"))
        await w.drain()
        w.write_eof()
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(2):
                while await conn.read(65536):
                    pass
        return False
    elif kind == "ka-close":
        w.write(response_bytes(200, [(b"X-Backend", conn.backend.name.encode())],
                               describe(conn.backend, req)))
        await w.drain()
        await asyncio.sleep(0.05)
        w.close()
        return False
    elif kind == "die":
        if arg == b"cl":
            w.write(response_bytes(200, [(b"Content-Length", b"100000")], length=False)
                    + b"a" * 50000)
        else:
            w.write(response_bytes(200, [(b"Transfer-Encoding", b"chunked")], length=False)
                    + b"c350\r\n" + b"a" * 50000 + b"\r\n")
        await w.drain()
        await asyncio.sleep(0.05)
        w.close()
        return False
    elif kind == "hop":
        w.write(response_bytes(200, [
            (b"Connection", b"X-Private"), (b"X-Private", b"secret"),
            (b"Keep-Alive", b"timeout=5"), (b"Trailer", b"X-T"), (b"Upgrade", b"h2c"),
            (b"Proxy-Connection", b"keep-alive"), (b"X-Kept", b"yes"),
        ], b"hop"))
    else:
        headers = [(b"Content-Type", b"application/json"),
                   (b"X-Backend", conn.backend.name.encode())]
        w.write(response_bytes(200, headers, describe(conn.backend, req), head_only=head_only))
    await w.drain()
    return (req.header(b"connection") or b"").lower() != b"close"


class Backends:
    """Recording backends that answer by path, on a background thread's event loop, so
    that tests can drive the proxy with blocking clients (curl, http.client, sockets)."""

    def __init__(self, names: list[str]) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.by_name = {n: Backend(name=n, respond=answer_by_path) for n in names}
        for b in self.by_name.values():
            self.call(b.start())

    def __getitem__(self, name: str) -> Backend:
        return self.by_name[name]

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the backends' loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def total_bytes(self) -> int:
        """Bytes received by every backend so far."""
        return sum(b.total_bytes() for b in self.by_name.values())

    def close(self) -> None:
        """Stop every backend and the thread; fail if a backend's own code failed."""
        for b in self.by_name.values():
            self.call(b.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
        for b in self.by_name.values():
            assert not b.errors, f"backend {b.name} failed: {b.errors!r}"


@contextlib.contextmanager
def refused_address() -> Iterator[str]:
    """host:port where a connect is refused for as long as the block runs.

    A socket bound to port 0 and never listen()ed holds its port: the kernel will not give
    it to anyone else, and a connect to it gets ECONNREFUSED. (Binding, closing and then
    using the number would be a race with anything else on the machine.)
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"

