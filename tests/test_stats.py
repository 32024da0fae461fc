"""Counter deltas from workers to the supervisor, and drain marks carried by snapshots."""

from __future__ import annotations

from lbproxy.admin.stats import DeltaReporter, add_deltas, stats_view
from lbproxy.balance.gate import Outcome
from lbproxy.balance.latency import bucket_index
from lbproxy.control import config
from lbproxy.control.controller import Controller
from lbproxy.process import messages

A, B, C = "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"


def _cfg(backends):
    return config.from_dict({"clusters": {"c": {"backends": backends}},
                             "routes": [{"cluster": "c"}]})


def _serve(controller, n, status=200, outcome=Outcome.OK, rtt_ns=3_000_000):
    cluster = controller.snapshot.clusters["c"]
    for _ in range(n):
        lease = cluster.begin(b"k", 0)
        lease.end(outcome, rtt_ns, status)


def _ship(worker, deltas, supervisor):
    # What the pipe does: a StatsDeltas line out, decoded and validated in the supervisor.
    line = messages.encode(messages.StatsDeltas(deltas.collect(worker.snapshot)))
    event = messages.decode_event(line, "worker 1/1")
    assert isinstance(event, messages.StatsDeltas), line
    add_deltas(supervisor.states, event.clusters)
    return event.clusters


def test_deltas_add_up_in_the_supervisor_across_workers_and_reports():
    sup = Controller(_cfg([A, B]))
    workers = [Controller(_cfg([A, B])) for _ in range(2)]
    reporters = [DeltaReporter() for _ in workers]
    _serve(workers[0], 4)
    _serve(workers[1], 3, status=503, outcome=Outcome.HTTP_5XX)
    for w, r in zip(workers, reporters, strict=True):
        _ship(w, r, sup)
    _serve(workers[0], 2, status=404)
    for w, r in zip(workers, reporters, strict=True):
        _ship(w, r, sup)
    assert all(_ship(w, r, sup) == {} for w, r in zip(workers, reporters, strict=True))
    doc = stats_view(sup.snapshot, lambda c, a: 0)["clusters"]["c"]
    assert doc["requests"] == 9
    assert doc["responses"]["2xx"] == 4 and doc["responses"]["4xx"] == 2
    assert doc["responses"]["5xx"] == 3 and doc["failures"]["http_5xx"] == 3
    assert doc["latency_ms"]["p50"] is not None
    sup_hist = [0] * len(sup.states["c"].counters[0].latency)
    for slot in (0, 1):
        for i, n in enumerate(sup.states["c"].counters[slot].latency):
            sup_hist[i] += n
    assert sup_hist[bucket_index(3_000_000)] == 9


def test_a_backend_that_takes_a_fresh_slot_reports_from_zero():
    sup = Controller(_cfg([A, B]))
    worker, reporter = Controller(_cfg([A, B])), DeltaReporter()
    _serve(worker, 4)
    _ship(worker, reporter, sup)
    worker.apply(_cfg([B]))  # A leaves: its counters go with its slot
    worker.apply(_cfg([A, B]))  # and comes back with fresh ones
    _serve(worker, 2)
    _ship(worker, reporter, sup)
    states = sup.states["c"]
    total = sum(states.counters[states.slots[a]].requests for a in (A, B))
    assert total == 6  # no negative delta from A's reset


def test_reports_for_unknown_clusters_or_backends_are_ignored():
    sup = Controller(_cfg([A]))
    add_deltas(sup.states, {"gone": {A: {"c": [1] * 15, "h": []}},
                            "c": {C: {"c": [1] * 15, "h": [[3, 1]]}}})
    assert sup.states["c"].counters[0].requests == 0


def test_drain_marks_ride_in_the_snapshot_and_survive_a_reload():
    ctl = Controller(_cfg([A, B]))
    snap = ctl.apply(_cfg([A, B]), drained={"c": [B]})
    assert snap.drained == {"c": frozenset({B})}
    assert ctl.states["c"].state_of(B) == "drain"
    snap = ctl.apply(_cfg([A, B, C]))  # a reload (drained=None) keeps the operator's mark
    assert snap.drained == {"c": frozenset({B})}
    assert {snap.clusters["c"].begin(b"k%d" % i, 0).backend.address  # type: ignore[union-attr]
            for i in range(30)} == {A, C}
    snap = ctl.apply(_cfg([A, C]))  # B left: its mark goes with it
    assert dict(snap.drained) == {}
    snap = ctl.apply(_cfg([A, B]), drained={"c": [A, "127.0.0.1:1"]})  # non-members dropped
    assert snap.drained == {"c": frozenset({A})}
    # A worker started from that line agrees.
    worker = Controller(_cfg([A, B]), snap.version, snap.drained)
    assert worker.states["c"].state_of(A) == "drain"
    assert worker.states["c"].state_of(B) == "active"
