"""The load generator: HTTP/1.1 keep-alive clients on uvloop + httptools, one process per core.

Owns sending requests and timing replies (closed loop or open loop at a fixed or ramping
arrival rate). Knows nothing of proxies, scenarios or reports: it gets a `Workload` dict,
returns a `Recorder.to_dict()`.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import gc
import itertools
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httptools
import uvloop

from bench.classes import ClassRecorder
from bench.distributions import KeySampler, from_spec
from bench.procs import raise_priority
from bench.recorder import Recorder
from bench.schedule import ArrivalSchedule, linear_rate, step_rate
from bench.timer import WakeTimer

Clock = Callable[[], int]
_UPLOAD_CHUNK = memoryview(b"\x5a" * (256 * 1024))
_RECONNECT_DELAY_S = 0.05
_CONNECT_WAIT_NS = 5_000_000_000  # give up waiting for every connection after this
_SPIN_NS = 60_000  # how early the open-loop timer fires before the next intended send


# Distinct viewers the surge classes' requests come from (the X-Viewer header).
VIEWERS = 100_000

class Request:
    """One request on the wire: what it is and when it was meant to go."""

    __slots__ = ("backend", "cls", "intended_ns", "kind", "nbytes", "remaining_body",
                 "retry_after", "sent_ns")

    def __init__(self, kind: str, intended_ns: int, body_size: int = 0, cls: int = -1) -> None:
        self.kind = kind
        self.intended_ns = intended_ns
        self.sent_ns = 0
        self.backend = ""
        self.nbytes = 0
        self.remaining_body = body_size
        self.cls = cls  # index into the workload's classes; -1 without a class mix
        self.retry_after = False


class ClientConnection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time (no pipelining)."""

    def __init__(self, driver: LoadDriver, target: tuple[str, int], role: str) -> None:
        self.driver = driver
        self.target = target
        self.role = role  # "get" or "upload": which loop feeds this connection
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.request: Request | None = None
        self.paused = False
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.driver.on_idle(self)

    def data_received(self, data: bytes) -> None:
        self.driver.recorder.bytes_in += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._abort("bad_response")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.request is not None:
            req, self.request = self.request, None
            self.driver.on_failed(self, req, "reset")
        self.driver.on_lost(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump_body()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.request is not None:
            name = name.lower()
            if name == b"x-backend":
                self.request.backend = value.decode("latin-1")
            elif name == b"retry-after":
                self.request.retry_after = True

    def on_body(self, body: bytes) -> None:
        if self.request is not None:
            self.request.nbytes += len(body)

    def on_message_complete(self) -> None:
        req, self.request = self.request, None
        self.keep_alive = self.parser.should_keep_alive()
        if req is None:
            return
        status = self.parser.get_status_code()
        self.driver.on_response(self, req, status)

    # driving
    def send(self, req: Request, head: bytes) -> None:
        """Write a request head (and stream its body, if any)."""
        assert self.transport is not None
        self.request = req
        req.sent_ns = self.driver.clock()
        self.transport.write(head)
        self.driver.recorder.bytes_out += len(head)
        if req.remaining_body:
            self._pump_body()

    def _pump_body(self) -> None:
        # Stream from one shared buffer and stop at the transport's high-water mark, so a
        # 50 MiB upload never sits in memory and the socket's backpressure is honoured.
        req, transport = self.request, self.transport
        if req is None or transport is None:
            return
        while req.remaining_body and not self.paused:
            n = min(req.remaining_body, len(_UPLOAD_CHUNK))
            transport.write(_UPLOAD_CHUNK[:n])
            req.remaining_body -= n
            self.driver.recorder.bytes_out += n

    def _abort(self, reason: str) -> None:
        if self.request is not None:
            req, self.request = self.request, None
            self.driver.on_failed(self, req, reason)
        if self.transport is not None:
            self.transport.abort()

    def expire(self, now_ns: int, timeout_ns: int) -> None:
        """Abort the in-flight request if it has waited longer than timeout_ns."""
        if self.request is not None and now_ns - self.request.sent_ns > timeout_ns:
            self._abort("timeout")


class LoadDriver:
    """Runs one workload in this process: connections, pacing, accounting."""

    def __init__(
        self,
        workload: dict[str, Any],
        clock: Clock = time.monotonic_ns,
        progress: Callable[[int, int], None] | None = None,
        start_signal: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.w = workload
        self.progress = progress
        self.start_signal = start_signal
        self.clock = clock
        self.loop = asyncio.get_running_loop()
        self.rng = random.Random(workload.get("seed", 0))
        self.keys: KeySampler = from_spec(workload.get("keys", {}))
        self.segments = int(workload.get("segments", 8))
        self.segment_bytes = int(workload.get("segment_bytes", 131072))
        self.range_bytes = int(workload.get("range_bytes", 0))
        self.timeout_ns = int(workload.get("timeout_s", 5.0) * 1e9)
        self.targets = [tuple(t) for t in workload["targets"]]
        self.idle: collections.deque[ClientConnection] = collections.deque()
        self.waiting_uploads: list[ClientConnection] = []  # connected before the start
        self.pending: collections.deque[int] = collections.deque()
        self.conns: list[ClientConnection] = []
        self.stopping = False
        self.done = asyncio.Event()
        self.open_loop = workload["mode"] == "open"
        self.schedule: ArrivalSchedule | None = None
        self.timer: WakeTimer | None = None
        self.upload_size = int(workload.get("upload_bytes", 0))
        self.upload_path_n = 0
        # A class mix (surge): each GET draws its class, which picks its path prefix; without
        # one every GET is /v/... and no per-class accounting runs.
        classes = workload.get("classes") or []
        self.class_prefixes = [c["path_prefix"].encode() for c in classes] or [b"/v/"]
        self.class_cumulative = list(itertools.accumulate(float(c["share"]) for c in classes))
        self.by_class: ClassRecorder | None = None
        # Without a start signal the workload carries its start time; with one, the start is
        # set once every process has connected (far in the future until then).
        self._plan(workload.get("start_ns", self.clock() + 3600 * 10**9))

    def _plan(self, start_ns: int) -> None:
        """Fix the run's start: schedule, end time and a fresh recorder."""
        workload = self.w
        self.start_ns = start_ns
        self.end_ns = start_ns + int(workload["duration_s"] * 1e9)
        self.recorder = Recorder(
            start_ns, int(workload.get("warmup_s", 0) * 1e9), int(workload["bucket_s"] * 1e9)
        )
        if self.class_cumulative:
            self.by_class = ClassRecorder(
                [c["name"] for c in workload["classes"]], start_ns,
                int(workload.get("warmup_s", 0) * 1e9), self.end_ns, self.timeout_ns,
                int(workload.get("window_s", 0.1) * 1e9))
        if self.open_loop:
            procs = int(workload.get("procs", 1))
            steps = workload.get("rate_steps")
            if steps:
                rate_at = step_rate([(float(t), float(r) / procs) for t, r in steps])
                peak = max(float(r) for _, r in steps)
            else:
                rate_at = linear_rate(
                    workload["rate"] / procs,
                    workload.get("rate_to", workload["rate"]) / procs,
                    workload["duration_s"],
                )
                peak = max(workload["rate"], workload.get("rate_to", workload["rate"]))
            offset = int(1e9 / max(workload["rate"], 1.0) * workload.get("proc_index", 0))
            self.schedule = ArrivalSchedule(rate_at, self.start_ns, self.end_ns, offset)
            # Past this backlog a request would be seconds late already; count it as dropped
            # by the generator instead of letting memory grow without bound.
            self.max_backlog = max(1000, int(peak / procs))

    # connection lifecycle
    def connect(self, role: str) -> None:
        """Open one connection for `role`, retrying in the background while the run lasts."""
        host, port = self.targets[len(self.conns) % len(self.targets)]
        conn = ClientConnection(self, (host, int(port)), role)
        self.conns.append(conn)
        self._open(conn)

    def _open(self, conn: ClientConnection) -> None:
        async def go() -> None:
            try:
                await self.loop.create_connection(lambda: conn, *conn.target)
            except OSError:
                if not self.stopping:
                    self.recorder.note("connect_failed", self.clock())
                    self.loop.call_later(_RECONNECT_DELAY_S, self._open, conn)

        self.loop.create_task(go())

    def on_lost(self, conn: ClientConnection) -> None:
        """Reconnect a dropped connection (the proxy closed it, or a backend died)."""
        if conn in self.idle:
            self.idle.remove(conn)
        if not self.stopping:
            conn.parser = httptools.HttpResponseParser(conn)
            conn.paused = False
            # A tiny delay so a proxy that accepts and resets at once cannot spin this loop.
            self.loop.call_later(0.001, self._open, conn)

    def on_idle(self, conn: ClientConnection) -> None:
        """A connection can take its next request."""
        if self.stopping or conn.transport is None:
            return
        if conn.role == "upload":
            now = self.clock()
            if now < self.start_ns:
                self.waiting_uploads.append(conn)
            else:
                self._send_upload(conn, now)
        elif not self.open_loop:
            now = self.clock()
            if now < self.start_ns:
                self.idle.append(conn)
            else:
                self._send_get(conn, now)
        elif self.pending:
            self._send_get(conn, self.pending.popleft())
        else:
            self.idle.append(conn)

    def on_response(self, conn: ClientConnection, req: Request, status: int) -> None:
        """Account one response, then reuse or reopen the connection."""
        now = self.clock()
        self.recorder.complete(req.kind, status, req.intended_ns, now, req.backend, req.nbytes)
        self.recorder.served(req.sent_ns, now)
        if self.by_class is not None and req.cls >= 0:
            self.by_class.complete(req.cls, status, req.intended_ns, now, bool(req.backend),
                                   req.retry_after)
        if req.remaining_body and conn.transport is not None:
            # Answered before the body was sent (e.g. 413): the connection cannot continue.
            conn.keep_alive = False
        if not conn.keep_alive and conn.transport is not None:
            conn.transport.close()
            return
        self.on_idle(conn)

    def on_failed(self, conn: ClientConnection, req: Request, reason: str) -> None:
        """Account a request that got no response."""
        now = self.clock()
        self.recorder.fail(req.kind, reason, req.intended_ns, now)
        if self.by_class is not None and req.cls >= 0:
            self.by_class.fail(req.cls, reason, req.intended_ns, now)

    # requests
    def _send_get(self, conn: ClientConnection, intended_ns: int) -> None:
        now = self.clock()
        elapsed = (now - self.start_ns) / 1e9
        video = self.keys.sample(self.rng, elapsed)
        segment = self.rng.randrange(self.segments)
        cls = -1
        if self.class_cumulative:
            # min(): a share total that rounds a hair below 1.0 must not index past the end.
            cls = min(bisect.bisect_right(self.class_cumulative, self.rng.random()
                                          * self.class_cumulative[-1]),
                      len(self.class_cumulative) - 1)
        # X-Viewer: who is watching, drawn from VIEWERS; lbproxy's surge config hashes it
        # into cohorts (cohort_on), as an edge would hash a session cookie.
        head = b"GET %s%d/%d HTTP/1.1\r\nHost: bench\r\nX-Viewer: %d\r\n" % (
            self.class_prefixes[cls], video, segment, self.rng.randrange(VIEWERS))
        if self.range_bytes:
            first = self.rng.randrange(max(1, self.segment_bytes // self.range_bytes))
            first *= self.range_bytes
            head += b"Range: bytes=%d-%d\r\n" % (first, first + self.range_bytes - 1)
        req = Request("get", intended_ns, 0, cls)
        self.recorder.sent(intended_ns, now)
        conn.send(req, head + b"\r\n")

    def _send_upload(self, conn: ClientConnection, now: int) -> None:
        if now >= self.end_ns:
            return
        self.upload_path_n += 1
        head = (
            b"POST /upload/%d HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream"
            b"\r\nContent-Length: %d\r\n\r\n" % (self.upload_path_n, self.upload_size)
        )
        conn.send(Request("upload", now, self.upload_size), head)

    # pacing
    def tick(self) -> None:
        """Open loop: queue every request now due and hand them to idle connections."""
        assert self.schedule is not None
        if self.stopping:
            return
        now = self.clock()
        self.pending.extend(self.schedule.due(now))
        while len(self.pending) > self.max_backlog:
            self.recorder.fail("get", "generator_backlog", self.pending.popleft(), now)
        while self.pending and self.idle:
            conn = self.idle.popleft()
            if conn.transport is not None and conn.request is None:
                self._send_get(conn, self.pending.popleft())
        if self.schedule.finished:
            return
        # Wake a little early and poll the loop (call_soon still runs I/O) for the last
        # stretch: waking an idle core takes tens of microseconds, which would otherwise be
        # counted as the generator's own lateness in every sample.
        wake_ns = self.schedule.next_ns - _SPIN_NS
        if wake_ns <= self.clock():
            self.loop.call_soon(self.tick)
        else:
            assert self.timer is not None
            self.timer.arm(wake_ns)

    def start_closed(self) -> None:
        """Closed loop: every connection that was waiting for the start sends now."""
        while self.idle:
            conn = self.idle.popleft()
            if conn.transport is not None and conn.request is None:
                self._send_get(conn, self.clock())

    def sweep(self) -> None:
        """Every 100 ms: expire requests past the timeout."""
        now = self.clock()
        for conn in self.conns:
            conn.expire(now, self.timeout_ns)
        if self.progress is not None:
            self.progress(self.recorder.completed, self.recorder.errors_total)
        if not self.done.is_set():
            self.loop.call_later(0.1, self.sweep)

    async def run(self) -> dict[str, Any]:
        """Connect, wait for the shared start time, run until the end time, drain."""
        for _ in range(int(self.w["connections"])):
            self.connect("get")
        for _ in range(int(self.w.get("upload_connections", 0))):
            self.connect("upload")
        self.sweep()
        if self.start_signal is not None:
            # Connection set-up is not part of the measurement: every process connects, then
            # the parent hands out one start time.
            deadline = self.clock() + _CONNECT_WAIT_NS
            while self.clock() < deadline and any(c.transport is None for c in self.conns):
                await asyncio.sleep(0.005)
            self._plan(await self.start_signal())
        await asyncio.sleep(max(0.0, (self.start_ns - self.clock()) / 1e9))
        cpu0, wall0 = time.process_time(), time.monotonic()
        if self.open_loop:
            self.timer = WakeTimer(self.loop, self.tick)
            self.tick()
        else:
            self.start_closed()
        for conn in self.waiting_uploads:
            if conn.transport is not None and conn.request is None:
                self._send_upload(conn, self.clock())
        self.waiting_uploads.clear()
        await asyncio.sleep(max(0.0, (self.end_ns - self.clock()) / 1e9))
        self.recorder.cpu_s = time.process_time() - cpu0
        self.recorder.wall_s = time.monotonic() - wall0
        self.stopping = True
        if self.timer is not None:
            self.timer.close()
        # Give in-flight requests a bounded grace period, then abandon them.
        grace_end = self.clock() + min(self.timeout_ns, 2_000_000_000)
        while any(c.request is not None for c in self.conns) and self.clock() < grace_end:
            await asyncio.sleep(0.01)
        for intended_ns in self.pending:
            self.recorder.fail("get", "not_sent", intended_ns, self.clock())
        self.done.set()
        for conn in self.conns:
            if conn.transport is not None:
                conn.request = None
                conn.transport.abort()
        await asyncio.sleep(0)
        result = self.recorder.to_dict()
        if self.by_class is not None:
            result["classes"] = self.by_class.to_dict()
        return result


def run_workload(
    workload: dict[str, Any],
    progress: Callable[[int, int], None] | None = None,
    start_signal: Callable[[], Awaitable[int]] | None = None,
) -> dict[str, Any]:
    """Run one workload to completion in this process on a fresh uvloop."""

    async def main() -> dict[str, Any]:
        return await LoadDriver(workload, progress=progress, start_signal=start_signal).run()

    # A cyclic-GC pass mid-run stalls sends and replies alike; the hot path allocates no
    # cycles, so collect once before and after instead.
    gc.collect()
    gc.disable()
    try:
        return uvloop.run(main())
    finally:
        gc.enable()
        gc.collect()


def worker_main(conn: Any, cpus: list[int] | None) -> None:
    """Generator process: pin to `cpus`, then run each workload the parent sends."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    raise_priority()

    async def ready_then_start() -> int:
        # Tell the parent this process is connected; wait (without blocking the loop) for
        # the common start time.
        conn.send(("ready",))
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        loop.add_reader(conn.fileno(), readable.set_result, None)
        try:
            await readable
        finally:
            loop.remove_reader(conn.fileno())
            os.set_blocking(conn.fileno(), True)  # the loop made it non-blocking
        msg = conn.recv()
        return int(msg[1])

    while True:
        msg = conn.recv()
        if msg is None:
            return
        result = run_workload(msg, lambda ok, bad: conn.send(("progress", ok, bad)),
                              ready_then_start)
        conn.send(("done", result))
