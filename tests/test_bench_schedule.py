"""Open-loop pacing: intended send times, and latency counted from them (no coordinated
omission), driven by an injected clock."""

from __future__ import annotations

from typing import Any

import pytest

from bench.generator import LoadDriver, Request
from bench.schedule import ArrivalSchedule, linear_rate, step_rate

MS = 1_000_000


def test_constant_rate_is_evenly_spaced() -> None:
    sched = ArrivalSchedule(lambda _t: 1000.0, start_ns=0, end_ns=10 * MS)
    times = sched.due(10 * MS)
    assert times == [k * MS for k in range(10)]
    assert sched.finished


def test_due_hands_out_each_time_once_even_after_a_stall() -> None:
    sched = ArrivalSchedule(lambda _t: 1000.0, start_ns=0, end_ns=1000 * MS)
    assert sched.due(0) == [0]
    assert sched.due(MS // 2) == []
    # The caller was stalled 50 ms: every missed send comes back with its own intended time.
    late = sched.due(50 * MS)
    assert late == [k * MS for k in range(1, 51)]
    assert sched.due(50 * MS) == []


def test_offset_interleaves_processes() -> None:
    a = ArrivalSchedule(lambda _t: 500.0, 0, 10 * MS, offset_ns=0)
    b = ArrivalSchedule(lambda _t: 500.0, 0, 10 * MS, offset_ns=MS)
    merged = sorted(a.due(10 * MS) + b.due(10 * MS))
    assert merged == [k * MS for k in range(10)]


def test_linear_ramp_integrates_to_the_average_rate() -> None:
    sched = ArrivalSchedule(linear_rate(100.0, 300.0, 1.0), 0, 1000 * MS)
    count = len(sched.due(1000 * MS))
    assert count == pytest.approx(200, abs=3)


class FakeTimer:
    """Stands in for the timerfd: records arming, never fires."""

    def __init__(self) -> None:
        self.armed: list[int] = []

    def arm(self, deadline_ns: int) -> None:
        self.armed.append(deadline_ns)

    def close(self) -> None:
        pass


class FakeConnection:
    """A connection that only remembers what was sent on it."""

    role = "get"
    keep_alive = True

    def __init__(self, driver: LoadDriver) -> None:
        self.driver = driver
        self.transport = object()
        self.request: Request | None = None
        self.sent: list[Request] = []

    def send(self, req: Request, head: bytes) -> None:
        assert head.startswith(b"GET /v/")
        req.sent_ns = self.driver.clock()
        self.request = req
        self.sent.append(req)


def workload(**over: Any) -> dict[str, Any]:
    return {
        "targets": [("127.0.0.1", 1)], "mode": "open", "connections": 1, "rate": 1000.0,
        "duration_s": 1.0, "warmup_s": 0.0, "bucket_s": 0.1, "start_ns": 0,
        "keys": {"dist": "uniform", "n": 10}, **over,
    }


async def test_open_loop_latency_counts_from_intended_send_time() -> None:
    now = [0]
    driver = LoadDriver(workload(), clock=lambda: now[0])
    driver.timer = FakeTimer()  # type: ignore[assignment]
    conn = FakeConnection(driver)
    driver.idle.append(conn)  # type: ignore[arg-type]

    driver.tick()  # t=0: the first request goes out on time
    assert [r.intended_ns for r in conn.sent] == [0]
    # The backend stalls 100 ms on that request; the one connection is busy meanwhile, so the
    # 100 requests due in the meantime wait in the generator with their intended times.
    now[0] = 100 * MS
    driver.tick()
    assert len(driver.pending) == 100
    # Then it answers everything quickly, 0.1 ms per request.
    answered = 0
    while conn.request is not None and answered < 101:
        req = conn.request
        conn.request = None
        driver.on_response(conn, req, 206)  # type: ignore[arg-type]
        answered += 1
        now[0] += MS // 10
    hist = driver.recorder.latency["get"]
    assert hist.total == 101
    # A closed-loop (coordinated-omission) count would show one 100 ms sample and 100 fast
    # ones; from intended times, the queue behind the stall is visible: 10..100 ms.
    assert hist.max == pytest.approx(100_000, rel=0.01)
    assert hist.percentile(50) == pytest.approx(55_000, rel=0.05)
    assert hist.min >= 10_000
    # The generator's own lateness is recorded separately: up to ~100 ms here.
    assert driver.recorder.send_lag.max == pytest.approx(99_000, rel=0.02)


async def test_closed_loop_latency_counts_from_actual_send() -> None:
    now = [0]
    driver = LoadDriver(workload(mode="closed"), clock=lambda: now[0])
    conn = FakeConnection(driver)
    driver.on_idle(conn)  # type: ignore[arg-type]
    for _ in range(3):
        req = conn.request
        assert req is not None
        conn.request = None
        now[0] += 2 * MS
        driver.on_response(conn, req, 200)  # type: ignore[arg-type]
    hist = driver.recorder.latency["get"]
    assert hist.total == 3
    assert hist.min == hist.max == 2000


async def test_backlog_past_the_cap_is_counted_as_dropped() -> None:
    now = [0]
    driver = LoadDriver(workload(rate=1000.0, duration_s=5.0), clock=lambda: now[0])
    driver.timer = FakeTimer()  # type: ignore[assignment]
    driver.max_backlog = 10
    now[0] = 50 * MS  # no idle connection: everything due queues up
    driver.tick()
    assert len(driver.pending) == 10
    assert driver.recorder.errors["get"]["generator_backlog"] == 41


def test_step_rate_holds_each_rate_until_the_next_step() -> None:
    rate_at = step_rate([(3.0, 1800.0), (0.0, 300.0)])  # unordered on purpose
    assert [rate_at(t) for t in (0.0, 2.999, 3.0, 8.0)] == [300.0, 300.0, 1800.0, 1800.0]
    with pytest.raises(ValueError):
        step_rate([])


def test_a_step_schedule_sends_each_rate_for_its_span() -> None:
    # 100 req/s for 1 s, then 1000 req/s for 1 s: 100 + 1000 intended sends, evenly spaced.
    sched = ArrivalSchedule(step_rate([(0.0, 100.0), (1.0, 1000.0)]), 0, 2_000_000_000)
    times = sched.due(2_000_000_000)
    before = [t for t in times if t < 1_000_000_000]
    assert len(before) == 100
    assert len(times) - len(before) == 1000
    assert times[101] - times[100] == 1_000_000
