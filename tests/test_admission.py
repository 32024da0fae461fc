"""CoDel, the DAGOR admission level and the admission queue, on synthetic clocks."""

from __future__ import annotations

from typing import Any

import pytest

from lbproxy.balance.gate import OVERLOADED
from lbproxy.control.config import Queue
from lbproxy.policies.admission_level import (
    ALPHA,
    COHORTS,
    POSITIONS,
    AdmissionLevel,
)
from lbproxy.policies.admission_queue import AdmissionQueue, Waiter
from lbproxy.policies.codel import CoDel

MS = 1_000_000


# -- CoDel --------------------------------------------------------------------------------


def test_codel_a_burst_that_drains_within_an_interval_sheds_nothing():
    c = CoDel(5 * MS, 100 * MS)
    c.observe(50 * MS, 0)  # opens the first interval
    c.observe(40 * MS, 30 * MS)
    c.idle(60 * MS)  # the queue emptied: minimum 0
    assert not c.sheds(50 * MS, 101 * MS)  # the interval ends with min 0: not overloaded
    assert not c.overloaded


def test_codel_a_standing_queue_sheds_past_twice_the_target():
    c = CoDel(5 * MS, 100 * MS)
    c.observe(20 * MS, 0)
    c.observe(8 * MS, 50 * MS)  # minimum over the interval: 8 ms > 5 ms target
    assert not c.overloaded
    # the interval is over: overloaded; 11 ms > 2 x target is shed, 9 ms is not
    assert c.sheds(11 * MS, 100 * MS)
    assert c.overloaded
    assert not c.sheds(9 * MS, 101 * MS)
    # an interval whose minimum comes back under the target ends the overload
    c.observe(1 * MS, 150 * MS)
    assert not c.sheds(50 * MS, 201 * MS)
    assert not c.overloaded


def test_codel_rejects_a_target_not_under_the_interval():
    with pytest.raises(ValueError):
        CoDel(100 * MS, 100 * MS)


# -- the admission level ------------------------------------------------------------------


def _window(level: AdmissionLevel, per_position: dict[int, int]) -> None:
    for position, n in per_position.items():
        for _ in range(n):
            level.admits(position)


def test_level_admits_everything_until_overloaded():
    lv = AdmissionLevel(100 * MS)
    lv.close(0, overloaded=False, clear=True)  # opens the first window
    assert all(lv.admits(p) for p in range(POSITIONS))


def test_level_sheds_about_alpha_of_the_window_from_the_bottom():
    lv = AdmissionLevel(100 * MS)
    lv.close(0, False, True)
    # 10 requests at every position: 3840 in the window
    _window(lv, {p: 10 for p in range(POSITIONS)})
    lv.close(100 * MS, overloaded=True, clear=False)
    # 5% of 3840 = 192 requests = 19.2 positions: the level drops 20 positions
    assert lv.level == POSITIONS - 20
    assert not lv.admits(POSITIONS - 1)
    assert lv.admits(POSITIONS - 21)
    removed = 20 * 10
    assert removed >= ALPHA * POSITIONS * 10


def test_level_never_refuses_critical():
    lv = AdmissionLevel(100 * MS)
    lv.close(0, False, True)
    for w in range(1, 400):
        _window(lv, {p: 1 for p in range(0, POSITIONS, 7)})
        lv.close(w * 100 * MS, overloaded=True, clear=False)
    assert lv.level == COHORTS  # the floor: every critical position admitted
    assert lv.admits(COHORTS - 1)
    assert not lv.admits(COHORTS)


def test_level_rises_slowly_under_queueing_and_fast_when_clear():
    lv = AdmissionLevel(100 * MS)
    lv.close(0, False, True)
    lv.level = 2 * COHORTS  # only critical and normal admitted
    _window(lv, {p: 1 for p in range(POSITIONS)})
    lv.close(100 * MS, overloaded=False, clear=False)
    # 1% more than 256 admitted = 258.56: three more positions (256 + 3 > 258.56)
    assert lv.level == 2 * COHORTS + 3
    _window(lv, {p: 1 for p in range(POSITIONS)})
    lv.close(200 * MS, overloaded=False, clear=True)
    # 25% more than 259 = 323.75: up to 324 positions
    assert lv.level == 324


def test_level_reopens_after_a_window_with_no_arrival():
    lv = AdmissionLevel(100 * MS)
    lv.close(0, False, True)
    lv.level = 2 * COHORTS
    _window(lv, {p: 1 for p in range(POSITIONS)})
    # the window ended at 100 ms; closed on time, an overloaded verdict lowers the level
    lv.close(150 * MS, overloaded=True, clear=False)
    assert lv.level < 2 * COHORTS
    lowered = lv.level
    _window(lv, {p: 1 for p in range(POSITIONS)})
    # this one ended at 250 ms and the next request came at 400 ms: a whole empty window
    # passed in between, so everything is admitted again whatever the stale verdict
    lv.close(400 * MS, overloaded=True, clear=False)
    assert lowered < COHORTS * 2 and lv.level == POSITIONS
    assert lv.admits(POSITIONS - 1)


def test_level_a_cohort_is_refused_or_admitted_as_a_whole():
    lv = AdmissionLevel(100 * MS)
    lv.close(0, False, True)
    lv.level = 2 * COHORTS + 64  # half the sheddable cohorts
    viewer_in, viewer_out = 2 * COHORTS + 10, 2 * COHORTS + 100
    assert all(lv.admits(viewer_in) for _ in range(50))
    assert not any(lv.admits(viewer_out) for _ in range(50))


# -- the admission queue ------------------------------------------------------------------


class _Cluster:
    """Stands in for a Cluster's admit_waiting: `room` leases to hand out."""

    def __init__(self) -> None:
        self.room = 0

    def admit_waiting(self, key: bytes, now_ns: int, priority: int) -> Any:
        if self.room <= 0:
            return None
        self.room -= 1
        return ("lease", key)


class _Recorder:
    def __init__(self) -> None:
        self.admitted_keys: list[bytes] = []
        self.refused_keys: list[bytes] = []

    def admitted(self, w: Waiter, lease: Any) -> None:
        assert lease == ("lease", w.key)
        self.admitted_keys.append(w.key)

    def refused(self, w: Waiter, refusal: Any) -> None:
        self.refused_keys.append(w.key)


def _queue(**kw: Any) -> AdmissionQueue:
    q = AdmissionQueue(Queue(**kw), call_later=lambda delay, fn: None)
    return q


def test_queue_serves_the_highest_class_first_then_fifo():
    q, cl, rec = _queue(), _Cluster(), _Recorder()
    for i, prio in enumerate([2, 1, 0, 1, 0]):
        assert q.push(Waiter(rec, cl, b"k%d" % i, prio, i))  # type: ignore[arg-type]
    cl.room = 4
    q.serve(10)
    assert rec.admitted_keys == [b"k2", b"k4", b"k1", b"k3"]
    assert q.length == 1
    assert q.served == 4 and q.wait_ns_total == (10 - 2) + (10 - 4) + (10 - 1) + (10 - 3)


def test_queue_serves_lifo_while_standing():
    q, cl, rec = _queue(), _Cluster(), _Recorder()
    q.codels[1].overloaded = True
    q.codels[1].interval_end_ns = 10**12
    for i in range(3):
        q.push(Waiter(rec, cl, b"k%d" % i, 1, i))  # type: ignore[arg-type]
    cl.room = 3
    q.serve(10)
    assert rec.admitted_keys == [b"k2", b"k1", b"k0"]


def test_queue_is_bounded():
    q, cl, rec = _queue(max_pending=2), _Cluster(), _Recorder()
    assert q.push(Waiter(rec, cl, b"a", 1, 0))  # type: ignore[arg-type]
    assert q.push(Waiter(rec, cl, b"b", 1, 0))  # type: ignore[arg-type]
    assert not q.push(Waiter(rec, cl, b"c", 0, 0))  # type: ignore[arg-type]


def test_queue_skips_cancelled_waiters():
    q, cl, rec = _queue(), _Cluster(), _Recorder()
    gone = Waiter(rec, cl, b"gone", 0, 0)  # type: ignore[arg-type]
    q.push(gone)
    q.push(Waiter(rec, cl, b"stays", 1, 0))  # type: ignore[arg-type]
    gone.cancel()
    cl.room = 5
    q.serve(1)
    assert rec.admitted_keys == [b"stays"]
    assert q.length == 0 and cl.room == 4


def test_queue_expires_past_max_wait_and_by_codel():
    q, cl, rec = _queue(max_wait_ms=50), _Cluster(), _Recorder()
    q.push(Waiter(rec, cl, b"old", 1, 0))  # type: ignore[arg-type]
    q.push(Waiter(rec, cl, b"new", 1, 45 * MS))  # type: ignore[arg-type]
    q.expire(51 * MS, OVERLOADED)
    assert rec.refused_keys == [b"old"]
    assert q.refused_by == [0, 1, 0]
    # a standing queue: waiting more than 2 x 5 ms is shed
    q.codels[1].overloaded = True
    q.codels[1].interval_end_ns = 10**12
    q.expire(56 * MS, OVERLOADED)
    assert rec.refused_keys == [b"old", b"new"]
    assert q.length == 0
