"""The surge scenario's capacity-limited origin: concurrency, FIFO order, virtual service time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
from support.waiting import until

from bench.origin import CapacityLimit, OriginConnection, serve

# Long enough that all 12 requests (each sent once the origin has read the one before, 3 ms
# later) arrive before the first wave ends, with room to spare on a loaded machine.
SERVICE_MS = 200


@contextlib.asynccontextmanager
async def origin(concurrency: int, service_ms: float) -> AsyncIterator[tuple[int, CapacityLimit]]:
    """An origin on 127.0.0.1 port 0 (the kernel picks) in this loop; cancelled on exit."""
    ready: asyncio.Future[tuple[CapacityLimit, int]] = (
        asyncio.get_running_loop().create_future())
    task = asyncio.create_task(serve(0, "origin-t", concurrency, service_ms, ready))
    limit, port = await asyncio.wait_for(ready, 5)
    try:
        yield port, limit
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, dict[str, str]]:
    """One response: status, body, headers (lower-case names)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v for k, v in (ln.split(": ", 1) for ln in lines[1:] if ": " in ln)}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), body, headers


async def until_received(limit: CapacityLimit, n: int) -> None:
    """Wait until the origin has read `n` requests (in service, queued, answered or dropped)."""

    def received() -> int:
        stats = limit.stats()
        return stats["busy"] + stats["queued"] + stats["served"] + stats["dropped"]

    assert await until(lambda: received() == n, timeout=5, interval=0.001), limit.stats()


async def get(port: int, path: str = "/v/1/0") -> tuple[int, bytes, dict[str, str]]:
    """One GET on a fresh connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        return await read_response(reader)
    finally:
        writer.close()


async def test_four_at_a_time_then_fifo_over_real_sockets() -> None:
    async with origin(4, SERVICE_MS) as (port, limit):
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(12)]
        done: list[tuple[int, float]] = []

        async def answer(i: int, reader: asyncio.StreamReader) -> None:
            status, body, headers = await read_response(reader)
            assert status == 200 and headers["x-backend"] == "origin-t" and body
            done.append((i, time.monotonic() - t0))

        t0 = time.monotonic()
        tasks = []
        for i, (reader, writer) in enumerate(conns):
            # One request at a time: the next is written once the origin (in this loop) has
            # read this one, and 3 ms later, so arrival order is this order however busy the
            # machine is, and the answers' timers (whole milliseconds) fire in that order.
            writer.write(f"GET /v/{i}/0 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            tasks.append(asyncio.create_task(answer(i, reader)))
            await until_received(limit, i + 1)
            await asyncio.sleep(0.003)
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        for _, writer in conns:
            writer.close()
        # FIFO: answered in the order they arrived.
        assert [i for i, _ in done] == list(range(12))
        # At most four at a time: the k-th wave cannot finish before k service times.
        for i, elapsed in done:
            assert elapsed >= (i // 4 + 1) * SERVICE_MS / 1000, (i, elapsed)
        # At least four at a time: exactly eight ever waited behind the four in service.
        assert limit.stats()["max_queue"] == 8
        assert limit.stats()["served"] == 12


async def test_a_queued_request_whose_client_left_costs_no_service() -> None:
    async with origin(1, SERVICE_MS) as (port, limit):
        first = asyncio.create_task(get(port))
        await asyncio.sleep(0.01)
        _, leaver = await asyncio.open_connection("127.0.0.1", port)
        leaver.write(b"GET /v/2/0 HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.sleep(0.01)
        leaver.close()  # leaves while its request waits behind the first
        await asyncio.sleep(0.01)
        third = await asyncio.wait_for(get(port), 10)
        assert (await first)[0] == 200 and third[0] == 200
        stats = limit.stats()
        assert (stats["served"], stats["dropped"]) == (2, 1)


async def test_health_is_answered_outside_the_queue() -> None:
    async with origin(1, 300) as (port, _limit):
        slow = [asyncio.create_task(get(port)) for _ in range(2)]
        await asyncio.sleep(0.05)
        status, body, _ = await asyncio.wait_for(get(port, "/health"), 10)
        stats = json.loads(body)
        assert status == 200
        assert (stats["busy"], stats["queued"], stats["served"]) == (1, 1, 0)
        assert not any(t.done() for t in slow)  # health did not wait for them
        await asyncio.gather(*slow)


class FakeLoop:
    """Records call_later instead of running it: the test fires callbacks itself."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Callable[..., None], tuple[Any, ...]]] = []

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        """Remember the call."""
        self.calls.append((delay, fn, args))


class FakeConn:
    """Stands for a connection: open, counts its answers."""

    def __init__(self) -> None:
        self.transport = object()
        self.answered = 0

    def respond(self) -> None:
        """Count one answer."""
        self.answered += 1


def submit(limit: CapacityLimit, conn: FakeConn, arrival_ns: int) -> None:
    """`limit.submit` with a stand-in connection (it uses only `transport` and `respond`)."""
    limit.submit(cast(OriginConnection, conn), arrival_ns)


def one_worker(now: list[int]) -> tuple[FakeLoop, CapacityLimit]:
    """One worker, 20 ms a request, on a clock the test sets and a loop it fires by hand."""
    loop = FakeLoop()
    limit = CapacityLimit(1, 20_000_000, clock=lambda: now[0], loop=loop)  # type: ignore[arg-type]
    return loop, limit


def test_a_late_timer_does_not_lower_capacity() -> None:
    now = [0]
    loop, limit = one_worker(now)
    a, b = FakeConn(), FakeConn()
    submit(limit, a, 0)
    submit(limit, b, 1_000_000)  # arrives at 1 ms: waits
    assert len(loop.calls) == 1 and loop.calls[0][0] == pytest.approx(0.020)
    now[0] = 25_000_000  # the timer fires 5 ms late
    _, fn, args = loop.calls[0]
    fn(*args)
    assert a.answered == 1
    # b starts when a was due to finish (20 ms), not when the timer ran: done at 40 ms.
    assert len(loop.calls) == 2 and loop.calls[1][0] == pytest.approx(0.015)
    assert loop.calls[1][2][1] == 40_000_000


def test_a_request_arriving_after_a_free_slot_starts_at_its_arrival() -> None:
    now = [0]
    loop, limit = one_worker(now)
    a, b = FakeConn(), FakeConn()
    submit(limit, a, 0)
    submit(limit, b, 30_000_000)  # queued (the timer has not run) but arrived after 20 ms
    now[0] = 31_000_000
    _, fn, args = loop.calls[0]
    fn(*args)
    assert loop.calls[1][2][1] == 50_000_000  # 30 ms arrival + 20 ms service


def test_an_early_timer_does_not_answer_before_the_service_time() -> None:
    now = [0]
    loop, limit = one_worker(now)
    a = FakeConn()
    submit(limit, a, 0)
    now[0] = 19_500_000  # the timer fires 0.5 ms early (libuv counts whole milliseconds)
    _, fn, args = loop.calls[0]
    fn(*args)
    assert a.answered == 0 and limit.stats()["busy"] == 1
    assert len(loop.calls) == 2 and loop.calls[1][0] == pytest.approx(0.001)
    now[0] = 20_000_000
    _, fn, args = loop.calls[1]
    fn(*args)
    assert a.answered == 1 and limit.stats()["served"] == 1
