"""Black-box conformance: fault scenarios against `lbproxy run`.

Backpressure both ways (a client that stops reading, a backend that stops reading: the
proxy's memory stays bounded), and shutdown: SIGTERM/SIGINT with idle keep-alive
connections, an in-flight upload, and new connections during the drain.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from support.backends import Backends
from support.configs import config_doc
from support.subproc import LbproxyProcess, curl, lbproxy_running, rss_bytes, start_lbproxy
from support.waiting import wait_until
from support.wire import exchange, pattern

pytestmark = pytest.mark.timeout(90)

H = b"Host: example.test\r\n"
GIB = 1 << 30
# Growth allowed while gigabytes are pending: buffers, not the transfer.
RSS_SLACK = 64 << 20


@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    b = Backends(["main"])
    yield b
    b.close()


def config_for(backends: Backends, drain: float = 10.0) -> dict[str, Any]:
    """A config document: every path to the recording backend."""
    return config_doc({"main": [backends["main"].address]},
                      timeouts={"drain": drain, "upstream_idle": 30.0, "client_body_idle": 3.0})


@pytest.fixture(scope="module")
def proxy(backends: Backends, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[LbproxyProcess]:
    path = tmp_path_factory.mktemp("faults") / "lbproxy.toml"
    with lbproxy_running(config_for(backends), path) as run:
        yield run


def test_client_that_stops_reading_a_download_keeps_memory_bounded(proxy) -> None:
    pid = proxy.pid
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        s.sendall(b"GET /bytes/%d HTTP/1.1\r\n" % GIB + H + b"\r\n")
        head = s.recv(65536)
        assert head.startswith(b"HTTP/1.1 200"), head
        before = rss_bytes(pid)
        time.sleep(2.0)  # the backend would push the whole GiB now if nothing held it back
        grown = rss_bytes(pid) - before
    assert grown < RSS_SLACK, f"proxy grew {grown >> 20} MiB for a client that reads nothing"


def test_backend_that_stops_reading_an_upload_keeps_memory_bounded(proxy) -> None:
    pid = proxy.pid
    before = rss_bytes(pid)
    sent = 0
    piece = b"u" * (1 << 20)
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(b"POST /stall HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % GIB)
        s.settimeout(1.0)
        deadline = time.monotonic() + 20
        while sent < 512 << 20 and time.monotonic() < deadline:
            try:
                sent += s.send(piece)
            except TimeoutError:
                break  # backpressure reached the client: nothing more is accepted
        grown = rss_bytes(pid) - before
    assert sent < 256 << 20, f"{sent >> 20} MiB accepted while the backend reads nothing"
    assert grown < RSS_SLACK, f"proxy grew {grown >> 20} MiB holding an unread upload"


def test_sigterm_closes_idle_keep_alive_connections_and_exits_0(backends, tmp_path) -> None:
    run = start_lbproxy(config_for(backends, drain=30.0), tmp_path / "lbproxy.toml")
    with socket.create_connection(("127.0.0.1", run.port)) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\n" + H + b"\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        rc = run.stop()
        elapsed = time.monotonic() - start
        s.settimeout(5)
        assert s.recv(65536) == b"", "the idle keep-alive connection was not closed"
    assert rc == 0, run.stderr()
    assert elapsed < 5, "an idle keep-alive connection held the drain open"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_an_in_flight_upload_then_exits_0(backends, tmp_path, sig) -> None:
    run = start_lbproxy(config_for(backends), tmp_path / "lbproxy.toml")
    body = pattern(8 << 20)
    results: list[bytes] = []
    target = f"/echo/drain/{sig.name}"

    def upload() -> None:
        # --limit-rate keeps the upload in flight across the signal (about 2 s).
        out = curl("-H", "Expect:", "--limit-rate", "4M", "--data-binary", "@-",
                   f"{run.url}{target}", data=body)
        results.append(out.stdout if out.returncode == 0 else out.stderr)

    t = threading.Thread(target=upload)
    t.start()
    main = backends["main"]
    try:
        assert wait_until(lambda: any(target.encode() in bytes(c.raw) for c in main.conns), 5)
        run.send_signal(sig)
        # The listener closes at once: a new connection is refused or gets no response.
        time.sleep(0.2)
        try:
            late = exchange(run.port, b"GET /echo/late HTTP/1.1\r\n" + H + b"\r\n", wait=1)
            assert not late.raw.startswith(b"HTTP/1.1 200"), late.raw
        except ConnectionRefusedError:
            pass
        t.join(30)
    finally:
        rc = run.stop()
    assert rc == 0, run.stderr()
    assert results, "the upload did not finish"
    doc = json.loads(results[0])
    assert doc["body_len"] == len(body)
    assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_response_in_flight_during_drain_says_connection_close(backends, tmp_path) -> None:
    run = start_lbproxy(config_for(backends), tmp_path / "lbproxy.toml")
    replies = []
    target = b"/slow/1.0?" + uuid.uuid4().hex.encode()
    client = threading.Thread(target=lambda: replies.append(
        exchange(run.port, b"GET " + target + b" HTTP/1.1\r\n" + H + b"\r\n", wait=10)))
    try:
        client.start()
        main = backends["main"]
        assert wait_until(lambda: any(target in bytes(c.raw) for c in main.conns), 5)
        run.send_signal(signal.SIGTERM)
        client.join(15)
    finally:
        rc = run.stop()
    assert rc == 0, run.stderr()
    (reply,) = replies
    assert reply.first.status == 200
    assert b"close" in reply.first.tokens(b"connection") and reply.closed


def test_a_dead_backend_is_ejected_without_configuration(backends, tmp_path,
                                                         refused_address) -> None:
    # Passive outlier detection needs no configuration. Round robin over a live backend
    # and a closed port: each refused connect is retried on the live backend (retries are
    # on by default), so no client sees a 502, and the dead one is still ejected.
    doc = config_doc({"pair": [backends["main"].address, refused_address]})
    run = start_lbproxy(doc, tmp_path / "lbproxy.toml")
    try:
        statuses = []
        for i in range(30):
            reply = exchange(run.port, b"GET /echo/%d HTTP/1.1\r\n" % i + H
                             + b"Connection: close\r\n\r\n")
            statuses.append(reply.first.status)
        with urllib.request.urlopen(f"{run.admin_url}/clusters", timeout=5) as resp:
            view = json.loads(resp.read())["clusters"]["pair"]["backends"]
    finally:
        rc = run.stop()
    assert rc == 0, run.stderr()
    assert statuses == [200] * 30, statuses
    dead = next(b for b in view if b["address"] != backends["main"].address)
    assert dead["healthy"] is False, view
