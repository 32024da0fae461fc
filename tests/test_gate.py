"""The compiled gate (`lbproxy._gate_c`) loaded, and agrees with its twin in cluster.py.

The twin is `cluster.PyLease` with `cluster.py_begin`; the native one is what
`Cluster.begin` and `cluster.Lease` are when the extension loaded. Both run the same
random sequences of begin/end with explicit times on identical clusters, and must leave
the same leases, refusals, counters, latency buckets, in-flight counts and ejections.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbproxy.balance import cluster as cluster_mod
from lbproxy.balance import latency
from lbproxy.balance.cluster import BackendInfo, Cluster, Outcome, Refusal
from lbproxy.control import config
from lbproxy.control.snapshot import build_snapshot
from lbproxy.policies.outlier import OutlierDetector

# Few backends and short keys, so that streaks on one backend, ejections and their expiry
# (1 s, while steps are up to 3 s) happen in most sequences.
BACKENDS = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
needs_native = pytest.mark.skipif(not cluster_mod.GATE_NATIVE, reason="native gate not loaded")


def test_native_gate_loaded() -> None:
    """Fails when the build did not produce lbproxy._gate_c or cluster.py did not pick it."""
    if os.environ.get("LBPROXY_NO_EXTENSIONS") == "1":
        pytest.skip("extensions disabled on purpose")
    native = importlib.import_module("lbproxy._gate_c")
    assert cluster_mod.GATE_NATIVE
    assert cluster_mod.Lease is native.Lease
    assert Cluster.begin is native.begin


def test_twin_gate_selected_without_extensions() -> None:
    """LBPROXY_NO_EXTENSIONS=1 keeps the Python gate."""
    if os.environ.get("LBPROXY_NO_EXTENSIONS") != "1":
        pytest.skip("extensions enabled")
    assert not cluster_mod.GATE_NATIVE
    assert cluster_mod.Lease is cluster_mod.PyLease
    assert Cluster.begin is cluster_mod.py_begin


@needs_native
@given(st.integers(min_value=-(10**13), max_value=10**13))
def test_bucket_index_agrees(rtt_ns: int) -> None:
    """The C bucket index is latency.bucket_index, negative samples included."""
    native = importlib.import_module("lbproxy._gate_c")
    assert native.bucket_index(rtt_ns) == latency.bucket_index(rtt_ns)


class RecordingPolicy:
    """A Python admission policy and observer: plug-ins must keep working natively."""

    def __init__(self, refuse_every: int) -> None:
        self.refuse_every = refuse_every
        self.calls = 0
        self.seen: list[tuple[str, int, int, int, int]] = []

    def admit(self, cluster: Cluster, now_ns: int, attempt: int) -> Refusal | None:
        """Refuse every `refuse_every`-th call (0: never)."""
        self.calls += 1
        if self.refuse_every and self.calls % self.refuse_every == 0:
            return Refusal("test_refusal", 2)
        return None

    def observe(self, backend: BackendInfo, outcome: Outcome, status: int, rtt_ns: int,
                now_ns: int) -> None:
        """Record the call."""
        self.seen.append((backend.address, int(outcome), status, rtt_ns, now_ns))


def _cluster(policy: str, max_requests: int, consecutive: int, plugin: int | None) -> Cluster:
    cfg = config.from_dict({
        "clusters": {"c": {
            "policy": policy, "backends": BACKENDS,
            "circuit_breaker": {"max_requests": max_requests},
            "outlier_detection": {"consecutive_5xx": consecutive,
                                  "consecutive_gateway_failure": consecutive,
                                  "base_ejection_time": 1.0, "max_ejection_percent": 50.0},
        }},
        "routes": [{"cluster": "c"}],
    })
    cluster = build_snapshot(cfg).clusters["c"]
    if plugin is not None:
        policy_obj = RecordingPolicy(plugin)
        cluster.state.admission += (policy_obj,)
        cluster.state.observers += (policy_obj,)
    return cluster


def _run(cluster: Cluster, begin: Any, ops: list[tuple[Any, ...]]) -> list[Any]:
    """Apply `ops`; return what each did and the final state."""
    trace: list[Any] = []
    leases: list[Any] = []
    now = 1_000_000_000
    for op in ops:
        if op[0] == "begin":
            _, key, dt, retry = op
            now += dt
            if retry and leases:
                got = begin(cluster, key, now, 1, (leases[-1].slot,))
            else:
                got = begin(cluster, key, now)
            if isinstance(got, Refusal):
                trace.append(("refused", got.code, got.retry_after))
            else:
                leases.append(got)
                trace.append(("lease", got.slot, got.backend.address, got.started_ns))
        elif leases:
            _, index, outcome, status, dt = op
            now += dt
            lease = leases.pop(index % len(leases))
            lease.end(outcome, now, status)
            trace.append(("end", lease.slot))
    state = cluster.state
    detector = next(o for o in state.observers if isinstance(o, OutlierDetector))
    trace.append({
        "active": state.active, "requests": state.requests, "retries": state.retries,
        "inflight": [state.inflight(a) for a in BACKENDS],
        "ejected": sorted(a for a in BACKENDS if state.is_ejected(a)),
        "panicking": state.panicking,
        "cost": [state.load.cost(s, now) for s in sorted(state.slots.values())],
        "records": {a: (r.consecutive_5xx, r.consecutive_gateway, r.times_ejected,
                        r.ejected_until_ns, r.returned_ns)
                    for a, r in sorted(detector.records.items())},
        "counters": [(c.requests, c.retries, c.responses, c.failures, c.by_outcome, c.latency,
                      c.latency_ns) for c in state.counters],
        "plugin": [(p.calls, p.seen) for p in state.admission if isinstance(p, RecordingPolicy)],
    })
    return trace


_begin_op = st.tuples(st.just("begin"), st.binary(max_size=1),
                      st.integers(0, 3_000_000_000), st.booleans())
_end_op = st.tuples(st.just("end"), st.integers(0, 3),
                    st.sampled_from([Outcome.OK, Outcome.RESET, *Outcome]),
                    st.sampled_from([0, 200, 304, 404, 500, 502, 503, 504, 99, 600]),
                    st.integers(-5_000, 3_000_000_000))


@needs_native
@settings(max_examples=400, deadline=None)
@given(policy=st.sampled_from(["maglev", "p2c", "round_robin"]),
       max_requests=st.sampled_from([0, 1, 3, 8]),
       consecutive=st.integers(1, 4),
       plugin=st.sampled_from([None, 0, 3]),
       ops=st.lists(st.one_of(_begin_op, _end_op), min_size=10, max_size=120))
def test_native_gate_agrees_with_twin(policy: str, max_requests: int, consecutive: int,
                                      plugin: int | None, ops: list[tuple[Any, ...]]) -> None:
    """Same sequence, same leases, refusals, counters, ejections, on twin and native."""
    with pytest.MonkeyPatch.context() as mp:
        # The twin's begin (and the shared retry path) build whatever `Lease` names.
        mp.setattr(cluster_mod, "Lease", cluster_mod.PyLease)
        twin = _run(_cluster(policy, max_requests, consecutive, plugin), cluster_mod.py_begin,
                    ops)
    native = _run(_cluster(policy, max_requests, consecutive, plugin), Cluster.begin, ops)
    assert native == twin


@needs_native
def test_native_lease_end_twice_raises() -> None:
    """A second end() raises, as the twin's does."""
    cluster = _cluster("round_robin", 0, 5, None)
    lease = cluster.begin(b"k", 1)
    assert isinstance(lease, cluster_mod.Lease)
    lease.end(Outcome.OK, 2, 200)
    with pytest.raises(RuntimeError):
        lease.end(Outcome.OK, 3, 200)
