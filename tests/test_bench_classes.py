"""Per-class accounting (bench/classes.py) and the generator's class mix, with explicit times."""

from __future__ import annotations

from typing import Any

import pytest

from bench.classes import ClassRecorder, merge_classes
from bench.generator import LoadDriver, Request

MS = 1_000_000
S = 1_000_000_000
PLAY, NORMAL, PREFETCH = 0, 1, 2


def recorder() -> ClassRecorder:
    """Measured from 1 s to 3 s, 2 s deadline, 100 ms windows."""
    return ClassRecorder(["play", "normal", "prefetch"], start_ns=0, warmup_ns=1 * S,
                         end_ns=3 * S, deadline_ns=2 * S, window_ns=100 * MS)


def filled() -> ClassRecorder:
    """One request of each kind of outcome, at known times."""
    rec = recorder()
    rec.complete(PLAY, 200, 1000 * MS, 1020 * MS, from_origin=True, retry_after=False)  # ok
    rec.complete(PLAY, 503, 1100 * MS, 1101 * MS, from_origin=False, retry_after=True)  # refused
    rec.complete(PREFETCH, 200, 1200 * MS, 3500 * MS, from_origin=True, retry_after=False)  # late
    rec.complete(PREFETCH, 502, 1300 * MS, 1304 * MS, from_origin=False, retry_after=False)
    rec.complete(NORMAL, 404, 1400 * MS, 1420 * MS, from_origin=True, retry_after=False)
    rec.fail(PREFETCH, "timeout", 1500 * MS, 3600 * MS)
    rec.fail(NORMAL, "reset", 1600 * MS, 1610 * MS)
    # Intended during warm-up: outside the per-class counts, but the 2xx that completes
    # inside the measured window is goodput (the origins did that work in the window).
    rec.complete(NORMAL, 200, 500 * MS, 520 * MS, from_origin=True, retry_after=False)
    rec.complete(NORMAL, 200, 900 * MS, 1050 * MS, from_origin=True, retry_after=False)
    return rec


def test_outcomes_per_class() -> None:
    rec = filled()
    assert rec.outcomes[PLAY] == {"ok": 1, "refused": 1}
    assert rec.outcomes[NORMAL] == {"404": 1, "reset": 1}
    assert rec.outcomes[PREFETCH] == {"late": 1, "refused": 1, "timeout": 1}


def test_refusals_are_the_proxys_own_5xx_with_their_latency_and_retry_after() -> None:
    rec = filled()
    assert rec.refused.total == 2
    assert (rec.refused.min, rec.refused.max) == (1000, 4000)
    assert rec.refused_retry_after == 1


def test_admitted_latency_counts_timeouts_at_their_latency() -> None:
    rec = filled()
    assert rec.admitted[PLAY].total == 1 and rec.admitted[PLAY].max == 20_000
    # The late 2xx (2.3 s) and the timeout (2.1 s) are both admitted; the refusal is not.
    assert rec.admitted[PREFETCH].total == 2
    assert rec.admitted[PREFETCH].min == pytest.approx(2_100_000, rel=0.01)
    assert rec.admitted[NORMAL].total == 1  # the 404; the reset is neither


def test_goodput_counts_2xx_in_time_completed_inside_the_window() -> None:
    # play at 1.02 s and the warm-up normal that completed at 1.05 s; not the late one.
    assert filled().goodput_ok == 2


def test_windows_by_intended_time_include_the_warm_up() -> None:
    rec = filled()
    assert rec.windows[5].sent == 1 and rec.windows[5].ok == 1  # intended 0.5 s
    assert rec.windows[11].refused == 1 and rec.windows[11].admitted.total == 0
    assert rec.windows[15].admitted.total == 1  # the timeout, censored at 2.1 s
    assert rec.windows[16].sent == 1 and rec.windows[16].admitted.total == 0  # the reset


def test_merge_adds_processes_together() -> None:
    merged = merge_classes([filled().to_dict(), filled().to_dict()])
    assert merged["outcomes"][PREFETCH] == {"late": 2, "refused": 2, "timeout": 2}
    assert merged["refused"].total == 4 and merged["refused_retry_after"] == 2
    assert merged["goodput_ok"] == 4
    assert merged["window_s"] == pytest.approx(0.1)
    assert len(merged["windows"]) == 17 and merged["windows"][11].refused == 2
    assert merged["windows"][0].sent == 0  # windows with nothing in them are filled in


class FakeTimer:
    """Stands in for the timerfd: never fires."""

    def arm(self, deadline_ns: int) -> None:
        """Ignore."""

    def close(self) -> None:
        """Ignore."""


class HeadsConnection:
    """Remembers each request and the head it went out with."""

    role = "get"
    keep_alive = True

    def __init__(self) -> None:
        self.transport = object()
        self.request: Request | None = None
        self.sent: list[tuple[Request, bytes]] = []

    def send(self, req: Request, head: bytes) -> None:
        """Record instead of writing."""
        self.request = req
        self.sent.append((req, head))


CLASSES: list[dict[str, Any]] = [{"name": "play", "path_prefix": "/play/", "share": 0.15},
                                 {"name": "normal", "path_prefix": "/v/", "share": 0.15},
                                 {"name": "prefetch", "path_prefix": "/prefetch/",
                                  "share": 0.70}]


def driver_with_classes(now: list[int]) -> LoadDriver:
    workload: dict[str, Any] = {
        "targets": [("127.0.0.1", 1)], "mode": "open", "connections": 1, "rate": 1000.0,
        "duration_s": 2.0, "warmup_s": 0.0, "bucket_s": 0.1, "start_ns": 0, "timeout_s": 2.0,
        "keys": {"dist": "uniform", "n": 10}, "classes": CLASSES, "seed": 5,
    }
    driver = LoadDriver(workload, clock=lambda: now[0])
    driver.timer = FakeTimer()  # type: ignore[assignment]
    return driver


async def test_the_generator_draws_classes_by_share_and_counts_each() -> None:
    now = [0]
    driver = driver_with_classes(now)
    conn = HeadsConnection()
    for i in range(1000):  # one request per ms, answered 5 ms later: refused when odd
        now[0] = i * MS
        driver.idle.append(conn)  # type: ignore[arg-type]
        driver.tick()
        req = conn.request
        assert req is not None
        conn.request = None
        refused = i % 2 == 1
        req.backend = "" if refused else "origin1"
        req.retry_after = refused
        now[0] += 5 * MS
        driver.on_response(conn, req, 503 if refused else 200)  # type: ignore[arg-type]
    assert len(conn.sent) == 1000
    for req, head in conn.sent:
        assert head.startswith(b"GET " + CLASSES[req.cls]["path_prefix"].encode())
    rec = driver.by_class
    assert rec is not None
    counts = [sum(c.values()) for c in rec.outcomes]
    assert sum(counts) == 1000
    for n, c in zip(counts, CLASSES, strict=True):
        assert n == pytest.approx(1000 * c["share"], abs=50)
    assert sum(c["ok"] for c in rec.outcomes) == 500
    assert rec.refused.total == rec.refused_retry_after == 500
    assert rec.goodput_ok == 500


async def test_without_a_class_mix_every_get_is_v_and_nothing_is_classed() -> None:
    driver = LoadDriver({"targets": [("127.0.0.1", 1)], "mode": "closed", "connections": 1,
                         "duration_s": 1.0, "bucket_s": 0.1, "start_ns": 0,
                         "keys": {"dist": "uniform", "n": 10}}, clock=lambda: 0)
    conn = HeadsConnection()
    driver.on_idle(conn)  # type: ignore[arg-type]
    (req, head), = conn.sent
    assert head.startswith(b"GET /v/") and req.cls == -1
    assert driver.by_class is None
