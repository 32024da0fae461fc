"""Black-box fixtures: `lbproxy run` as a subprocess, recording backends, raw-socket clients.

The conformance suites (tests/test_conformance_*.py) treat lbproxy as a product: they write
a config file, start ``.venv/bin/lbproxy run --config FILE``, and drive it with real
clients. Backends run in a thread with their own event loop (so synchronous clients such
as curl and http.client can be used from the test) and record every byte they receive, so
a test can assert that nothing reached them. Nothing here imports lbproxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

LBPROXY = str(Path(sys.executable).with_name("lbproxy"))
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
ADMIN_ON = re.compile(r"admin API on 127\.0\.0\.1:(\d+)")


def free_port() -> int:
    """A port that was free a moment ago (bind port 0, read it, release it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A port nothing listens on (connections to it are refused)."""
    return free_port()


def _block(seed: str) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(65536)


def pattern(n: int, seed: str = "x") -> bytes:
    """`n` deterministic bytes: a 64 KiB block of `seed` repeated (so a backend can stream
    it without holding it, and a test can check a body without keeping a copy)."""
    block = _block(seed)
    return (block * (n // len(block) + 1))[:n]


# -- recording backend ---------------------------------------------------------------------


@dataclass
class Request:
    """One complete request as a backend received it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    conn: int  # index of the backend connection it arrived on
    chunked: bool

    def header(self, name: str) -> str | None:
        """The value of one header (None when absent; joined with ", " when repeated)."""
        vals = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(vals) if vals else None


class Incomplete(Exception):
    """The connection ended before a whole request arrived."""


@dataclass
class Conn:
    """What a backend saw on one connection."""

    index: int
    raw: bytearray = field(default_factory=bytearray)
    requests: list[Request] = field(default_factory=list)
    closed: bool = False
    incomplete: bool = False  # the peer closed in the middle of a request


class Backend:
    """An HTTP/1.1 origin on 127.0.0.1 that records every byte and request it receives.

    Responses come from `route(req)` in the test module (or the default echo): the default
    answers 200 with a JSON body describing the request it received.
    """

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.loop = loop
        self.conns: list[Conn] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        """host:port of this backend."""
        return f"127.0.0.1:{self.port}"

    def total_bytes(self) -> int:
        """Bytes received on every connection so far."""
        return sum(len(c.raw) for c in self.conns)

    def requests(self) -> list[Request]:
        """Every complete request, in arrival order per connection."""
        return [r for c in self.conns for r in c.requests]

    async def start(self) -> None:
        """Listen on an ephemeral port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every open connection."""
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(len(self.conns))
        self.conns.append(conn)
        self._writers.add(writer)
        try:
            while True:
                try:
                    req = await self._read_request(reader, conn)
                except Incomplete:
                    conn.incomplete = True
                    break
                if req is None:
                    break
                conn.requests.append(req)
                keep = await respond(self, req, writer)
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            conn.incomplete = True
        finally:
            conn.closed = True
            self._writers.discard(writer)
            writer.close()

    async def _read(self, reader: asyncio.StreamReader, conn: Conn, n: int) -> bytes:
        data = await reader.readexactly(n)
        conn.raw += data
        return data

    async def _readline(self, reader: asyncio.StreamReader, conn: Conn) -> bytes:
        line = await reader.readuntil(b"\n")
        conn.raw += line
        return line

    async def _read_request(self, reader: asyncio.StreamReader, conn: Conn) -> Request | None:
        try:
            line = await self._readline(reader, conn)
        except asyncio.IncompleteReadError as exc:
            conn.raw += exc.partial
            if exc.partial:
                raise Incomplete from None
            return None
        try:
            method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
            headers: list[tuple[str, str]] = []
            while True:
                h = (await self._readline(reader, conn)).decode("latin-1").rstrip("\r\n")
                if not h:
                    break
                name, _, value = h.partition(":")
                headers.append((name, value.strip()))
            lower = {n.lower(): v for n, v in headers}
            chunked = lower.get("transfer-encoding", "").lower() == "chunked"
            body = b""
            if target.startswith(("/early", "/stall")):
                pass  # answered before its body is read (the body stays unread)
            elif chunked:
                parts = []
                while True:
                    size = int((await self._readline(reader, conn)).split(b";")[0], 16)
                    if size == 0:
                        while (await self._readline(reader, conn)) not in (b"\r\n", b"\n"):
                            pass
                        break
                    parts.append(await self._read(reader, conn, size))
                    await self._read(reader, conn, 2)
                body = b"".join(parts)
            elif "content-length" in lower:
                body = await self._read(reader, conn, int(lower["content-length"]))
        except asyncio.IncompleteReadError as exc:
            conn.raw += exc.partial
            raise Incomplete from None
        return Request(method, target, version, headers, body, conn.index, chunked)


def describe(backend: Backend, req: Request) -> bytes:
    """JSON describing a received request (the default echo body)."""
    return json.dumps(
        {
            "backend": backend.name,
            "method": req.method,
            "target": req.target,
            "version": req.version,
            "headers": req.headers,
            "body_len": len(req.body),
            "body_sha256": hashlib.sha256(req.body).hexdigest(),
            "chunked": req.chunked,
            "conn": req.conn,
        }
    ).encode()


def reply(status: int, headers: list[tuple[str, str]], body: bytes = b"",
          *, length: bool = True) -> bytes:
    """Serialise a response (Content-Length added unless `length` is False)."""
    lines = [f"HTTP/1.1 {status} X"] + [f"{n}: {v}" for n, v in headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def head_reply(status: int, headers: list[tuple[str, str]], body: bytes, head_only: bool
               ) -> bytes:
    """A Content-Length framed response; for HEAD the same head and no body."""
    head = reply(status, [*headers, ("Content-Length", str(len(body)))], length=False)
    return head if head_only else head + body


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


async def respond(backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
    """Answer one request by its path; returns whether to keep the connection."""
    path, _, query = req.target.partition("?")
    parts = path.strip("/").split("/")
    kind = parts[0] if parts else ""
    arg = parts[1] if len(parts) > 1 else ""
    head_only = req.method == "HEAD"
    if kind == "bytes":  # /bytes/N[?chunked]: pattern(N, "N"), streamed block by block
        size, chunked = int(arg), "chunked" in query
        framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", arg)
        w.write(reply(200, [framing], length=False))
        if not head_only:
            block = _block(arg)
            for i in range(0, size, len(block)):
                piece = block[: size - i]
                w.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                await w.drain()
            if chunked:
                w.write(b"0\r\n\r\n")
    elif kind == "status":  # /status/N: that status, a body unless it cannot have one
        status = int(arg)
        if status in (204, 304):
            extra = [("ETag", '"e1"')] if status == 304 else []
            w.write(reply(status, extra, length=False))
        else:
            w.write(head_reply(status, [], b"status body", head_only))
    elif kind == "range":  # 206 for "bytes=a-b" over a 1000-byte representation
        full = pattern(1000, "range")
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", req.header("range") or "")
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            w.write(reply(206, [("Content-Range", f"bytes {a}-{b}/1000")], full[a : b + 1]))
        else:
            w.write(reply(200, [("Accept-Ranges", "bytes")], full))
    elif kind in ("never", "stall"):  # never answer (/stall: nor read the body)
        await asyncio.sleep(3600)
    elif kind == "slow":  # /slow/SECONDS then echo
        await asyncio.sleep(float(arg))
        w.write(reply(200, [("Content-Type", "application/json")], describe(backend, req)))
    elif kind == "reset":  # RST before any response byte
        w.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()
        return False
    elif kind == "close":  # FIN before any response byte
        w.close()
        return False
    elif kind == "bad":  # /bad/NAME: a malformed response, then close
        w.write(BAD_RESPONSES[arg])
        await w.drain()
        w.close()
        return False
    elif kind == "raw":  # /raw/NAME: a canned response; close-delimited ones then close
        w.write(RAW_RESPONSES[arg])
        if arg in CLOSE_DELIMITED:
            await w.drain()
            w.close()
            return False
    elif kind == "early":  # refuse before reading the body; half-close and linger
        w.write(reply(403, [("Connection", "close")], b"no thanks"))
        await w.drain()
        w.write_eof()
        reader = w.transport.get_protocol()._stream_reader  # type: ignore[attr-defined]
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(2):
                while await reader.read(65536):
                    pass
        return False
    elif kind == "ka-close":  # a keep-alive response, then the backend closes when idle
        w.write(head_reply(200, [("X-Backend", backend.name)], describe(backend, req), False))
        await w.drain()
        await asyncio.sleep(0.05)
        w.close()
        return False
    elif kind == "die":  # /die/cl or /die/chunked: half the body, then close
        if arg == "cl":
            w.write(reply(200, [("Content-Length", "100000")], length=False) + b"a" * 50000)
        else:
            w.write(reply(200, [("Transfer-Encoding", "chunked")], length=False)
                    + b"c350\r\n" + b"a" * 50000 + b"\r\n")
        await w.drain()
        await asyncio.sleep(0.05)
        w.close()
        return False
    elif kind == "hop":  # hop-by-hop headers in the response
        w.write(reply(200, [
            ("Connection", "X-Private"), ("X-Private", "secret"), ("Keep-Alive", "timeout=5"),
            ("Trailer", "X-T"), ("Upgrade", "h2c"), ("Proxy-Connection", "keep-alive"),
            ("X-Kept", "yes"),
        ], b"hop"))
    else:  # echo
        headers = [("Content-Type", "application/json"), ("X-Backend", backend.name)]
        w.write(head_reply(200, headers, describe(backend, req), head_only))
    await w.drain()
    return (req.header("connection") or "").lower() != "close"


class Backends:
    """Recording backends served from one background thread (usable from sync tests)."""

    def __init__(self, names: list[str]) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.by_name = {n: Backend(n, self.loop) for n in names}
        for b in self.by_name.values():
            self.call(b.start())

    def __getitem__(self, name: str) -> Backend:
        return self.by_name[name]

    def call(self, coro):  # type: ignore[no-untyped-def]
        """Run a coroutine on the backends' loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def total_bytes(self) -> int:
        """Bytes received by every backend so far."""
        return sum(b.total_bytes() for b in self.by_name.values())

    def close(self) -> None:
        """Stop every backend and the thread."""
        for b in self.by_name.values():
            self.call(b.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# -- the proxy subprocess -------------------------------------------------------------------


class Proxy:
    """A running `lbproxy run --config FILE`; stderr collected line by line."""

    def __init__(self, config_text: str, path: Path, *, workers: int = 1) -> None:
        self.path = path
        path.write_text(config_text)
        args = [LBPROXY, "run", "--config", str(path)]
        if workers != 1:
            args += ["--workers", str(workers)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace"))

    def stderr(self) -> str:
        """Everything the proxy wrote to stderr so far."""
        return "".join(self.lines)

    def wait_listening(self, timeout: float = 20.0) -> bool:
        """Wait for the listener and admin log lines; False when the process died first."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = self.stderr()
            if LISTENING.search(text) and ADMIN_ON.search(text):
                return True
            if self.proc.poll() is not None:
                self._reader.join(5)
                return False
            time.sleep(0.02)
        raise TimeoutError(f"lbproxy did not start: {self.stderr()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status (kills after `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self._reader.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return rc


@dataclass
class Running:
    """A started proxy and the ports it uses."""

    proxy: Proxy
    port: int
    admin_port: int

    @property
    def url(self) -> str:
        """Base URL of the listener."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """Base URL of the admin API."""
        return f"http://127.0.0.1:{self.admin_port}"


def start_proxy(render: Callable[[int, int], str], path: Path, *, attempts: int = 5,
                workers: int = 1) -> Running:
    """Start lbproxy with `render(port, admin_port)` as its TOML; retries on a port race."""
    for _ in range(attempts):
        port, admin_port = free_port(), free_port()
        if port == admin_port:
            continue
        proxy = Proxy(render(port, admin_port), path, workers=workers)
        if proxy.wait_listening():
            return Running(proxy, port, admin_port)
        proxy.stop()
        if "address already in use" not in proxy.stderr():
            raise RuntimeError(f"lbproxy failed to start: {proxy.stderr()}")
    raise RuntimeError("no free port pair after several attempts")


@contextlib.contextmanager
def proxy_running(render: Callable[[int, int], str], path: Path) -> Iterator[Running]:
    """`start_proxy`, then SIGTERM on exit asserting a clean exit 0."""
    run = start_proxy(render, path)
    try:
        yield run
    finally:
        rc = run.proxy.stop()
        assert rc == 0, run.proxy.stderr()


def toml_value(value: object) -> str:
    """A TOML literal for a str, number, bool, list or (inline-table) dict."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}"
                                for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)  # strings, numbers and booleans are spelled alike


def toml_config(port: int, admin_port: int, clusters: dict[str, list[str]],
                routes: list[dict[str, object]], *, policies: dict[str, str] | None = None,
                timeouts: dict[str, float] | None = None,
                limits: dict[str, int] | None = None, cluster_extra: str = "") -> str:
    """A TOML config: clusters by name (round_robin unless `policies` says), routes in order;
    `cluster_extra` (TOML lines) is added to every cluster's table."""
    out = [
        f'[listener]\nbind = "127.0.0.1:{port}"\n',
        f'[admin]\nbind = "127.0.0.1:{admin_port}"\n',
    ]
    for section, values in (("timeouts", timeouts), ("limits", limits)):
        if values:
            out.append(f"[{section}]")
            out += [f"{k} = {v}" for k, v in values.items()]
            out.append("")
    for name, backends in clusters.items():
        policy = (policies or {}).get(name, "round_robin")
        out.append(f'[clusters.{name}]\npolicy = "{policy}"\nbackends = {json.dumps(backends)}\n'
                   f"{cluster_extra}")
    for r in routes:
        out.append("[[routes]]")
        out += [f"{k} = {toml_value(v)}" for k, v in r.items()]
        out.append("")
    return "\n".join(out)


# -- raw-socket client ----------------------------------------------------------------------


@dataclass
class Reply:
    """What came back on one raw connection."""

    raw: bytes
    closed: bool  # the proxy closed the connection (EOF or reset) within the wait

    def responses(self) -> list[Response]:
        """Every complete response in `raw`, in order (Content-Length/chunked framed)."""
        out = []
        rest = self.raw
        while rest:
            resp, rest = parse_one(rest)
            if resp is None:
                break
            out.append(resp)
        return out

    @property
    def first(self) -> Response:
        """The first (usually only) response."""
        resps = self.responses()
        assert resps, f"no complete response in {self.raw[:300]!r}"
        return resps[0]


@dataclass
class Response:
    """One parsed response."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes

    def header(self, name: str) -> str | None:
        """One header value (joined with ", " when repeated), None when absent."""
        vals = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(vals) if vals else None

    def tokens(self, name: str) -> set[str]:
        """The lowercased comma-separated tokens of a header."""
        return {t.strip().lower() for t in (self.header(name) or "").split(",") if t.strip()}


def parse_one(data: bytes, *, no_body: bool = False) -> tuple[Response | None, bytes]:
    """Parse one response from `data`: (response or None when incomplete, the rest)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None, data
    head = data[:end].decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    headers = []
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    resp = Response(status, headers, b"", data[: end + 4])
    rest = data[end + 4 :]
    if no_body or status in (204, 304) or 100 <= status < 200:
        return resp, rest
    te = resp.header("transfer-encoding")
    if te and te.lower() == "chunked":
        body = bytearray()
        while True:
            nl = rest.find(b"\r\n")
            if nl < 0:
                return None, data
            size = int(rest[:nl].split(b";")[0], 16)
            if len(rest) < nl + 2 + size + 2:
                return None, data
            body += rest[nl + 2 : nl + 2 + size]
            rest = rest[nl + 2 + size + 2 :]
            if size == 0:
                break
        resp.body = bytes(body)
        return resp, rest
    cl = resp.header("content-length")
    if cl is None:
        resp.body = rest
        return resp, b""
    if len(rest) < int(cl):
        return None, data
    resp.body = rest[: int(cl)]
    return resp, rest[int(cl) :]


def exchange(port: int, data: bytes | list[bytes], *, wait: float = 3.0,
             pause: float = 0.0, shut: bool = False, stop_when_answered: bool = False
             ) -> Reply:
    """Send `data` (pieces `pause` seconds apart) and read until the proxy closes or
    `wait` seconds pass with no close; `shut` half-closes our side after sending;
    `stop_when_answered` stops sending pieces once a response byte is waiting."""
    pieces = [data] if isinstance(data, bytes) else data
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        got = bytearray()
        closed = False
        for i, piece in enumerate(pieces):
            if i and pause:
                time.sleep(pause)
                if stop_when_answered and select.select([s], [], [], 0)[0]:
                    break  # the proxy already answered: stop sending, read
            try:
                s.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        if shut and not closed:
            s.shutdown(socket.SHUT_WR)
        end = time.monotonic() + wait
        while not closed:
            left = end - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([s], [], [], left)
            if not ready:
                break
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            got += chunk
        return Reply(bytes(got), closed)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_until(cond: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Poll `cond` until true or `timeout`; returns its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def assert_proxy_error(reply: Reply, status: int, code: str | None = None) -> Response:
    """The CONTRACT shape of a proxy-made error: exact status, X-Lbproxy-Error, a short
    plain-text body naming the reason, Connection: close, and the connection closed."""
    resps = reply.responses()
    assert len(resps) == 1, f"want exactly one response, got {reply.raw!r}"
    resp = resps[0]
    assert resp.status == status, reply.raw
    err = resp.header("x-lbproxy-error")
    assert err and re.fullmatch(r"[a-z0-9_]+", err), reply.raw
    if code is not None:
        assert err == code, reply.raw
    assert (resp.header("content-type") or "").startswith("text/plain"), reply.raw
    assert 0 < len(resp.body) <= 200 and resp.body.strip().isascii(), reply.raw
    assert "close" in resp.tokens("connection"), reply.raw
    assert reply.closed, "the proxy kept the connection open after a closing error"
    return resp


def env_without_proxy() -> dict[str, str]:
    """The environment with every *_proxy variable removed (curl must go direct)."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def curl(*args: str, data: bytes | None = None, timeout: float = 60.0
         ) -> subprocess.CompletedProcess[bytes]:
    """Run curl with `args` (stdin from `data`), direct to 127.0.0.1."""
    return subprocess.run(["curl", "-sS", "--noproxy", "*", *args], input=data,
                          capture_output=True, timeout=timeout, env=env_without_proxy())
