"""Cluster gate and snapshots: accounting, drain, slot reuse, selector per policy."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbproxy.balance import selectors
from lbproxy.balance.gate import (
    NO_HEALTHY_BACKEND,
    BackendInfo,
    Cluster,
    ClusterState,
    Lease,
    Outcome,
    Refusal,
)
from lbproxy.control import config
from lbproxy.control.snapshot import Snapshot, snapshot_of


def _cfg(clusters, routes=None):
    routes = routes or [{"cluster": next(iter(clusters))}]
    return config.from_dict({"clusters": clusters, "routes": routes})


def _slot(cluster: Cluster, address: str) -> int:
    """The slot of a member of `cluster` (failing when `address` is not one)."""
    backend = cluster.backend(address)
    assert backend is not None, address
    return backend.slot


THREE = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
NO_LIMITS = {"adaptive_concurrency": {"enabled": False}}


@pytest.mark.parametrize("policy", ["maglev", "p2c", "round_robin"])
def test_begin_end_returns_inflight_to_zero(policy):
    # 300 leases at once on 3 backends: past the adaptive limits, which have tests of
    # their own (tests/test_overload_gate.py)
    snap = snapshot_of(_cfg({"c": {"policy": policy, "backends": THREE, **NO_LIMITS}}))
    cluster = snap.clusters["c"]
    leases = []
    for i in range(300):
        lease = cluster.begin(f"/v/{i % 17}/x".encode(), 1_000 + i)
        assert isinstance(lease, Lease)
        assert lease.backend.address in THREE
        leases.append(lease)
    state = cluster.state
    assert sum(state.inflight(a) for a in THREE) == 300
    for i, lease in enumerate(leases):
        lease.end(Outcome.OK if i % 3 else Outcome.HTTP_5XX, 5_000_000 + i, 200 if i % 3 else 502)
    assert [state.inflight(a) for a in THREE] == [0, 0, 0]
    counters = [state.counters[state.slots[a]] for a in THREE]
    assert sum(c.requests for c in counters) == 300
    assert sum(c.responses[2] for c in counters) == 200
    assert sum(c.responses[5] for c in counters) == 100
    assert sum(c.failures for c in counters) == 100


def test_lease_end_twice_is_an_error():
    cluster = snapshot_of(_cfg({"c": {"backends": THREE}})).clusters["c"]
    lease = cluster.begin(b"k", 0)
    assert isinstance(lease, Lease)
    lease.end(Outcome.OK, 10)
    with pytest.raises(RuntimeError):
        lease.end(Outcome.OK, 20)
    assert cluster.state.inflight(lease.backend.address) == 0


@pytest.mark.parametrize("policy", ["maglev", "p2c", "round_robin"])
def test_drained_backend_is_never_picked(policy):
    snap = snapshot_of(_cfg({"c": {"policy": policy, "backends": THREE}}))
    cluster = snap.clusters["c"]
    cluster.state.set_drain("127.0.0.1:9002", True)
    assert cluster.state.state_of("127.0.0.1:9002") == "drain"
    picked = set()
    for i in range(500):
        lease = cluster.begin(f"key-{i}".encode(), i)
        assert isinstance(lease, Lease)
        picked.add(lease.backend.address)
        lease.end(Outcome.OK, i + 1000)
    assert picked == {"127.0.0.1:9001", "127.0.0.1:9003"}
    cluster.state.set_drain("127.0.0.1:9002", False)
    assert cluster.state.state_of("127.0.0.1:9002") == "active"


def test_all_drained_is_a_refusal():
    cluster = snapshot_of(_cfg({"c": {"policy": "maglev", "backends": THREE}})).clusters["c"]
    for a in THREE:
        cluster.state.set_drain(a, True)
    r = cluster.begin(b"/v/1/2", 0)
    assert r is NO_HEALTHY_BACKEND
    assert isinstance(r, Refusal) and r.code == "no_healthy_backend" and r.retry_after > 0


def test_drain_survives_a_new_snapshot():
    states: dict[str, ClusterState] = {}
    snapshot_of(_cfg({"c": {"backends": THREE}}), states, 1)
    states["c"].set_drain("127.0.0.1:9001", True)
    snap2 = snapshot_of(_cfg({"c": {"backends": THREE}}), states, 2)
    picked = set()
    for i in range(30):
        lease = snap2.clusters["c"].begin(b"", i)
        assert isinstance(lease, Lease)
        picked.add(lease.backend.address)
        lease.end(Outcome.OK, i)
    assert "127.0.0.1:9001" not in picked


def test_surviving_addresses_keep_their_slots_and_freed_slots_are_reused():
    states: dict[str, ClusterState] = {}
    s1 = snapshot_of(_cfg({"c": {"backends": THREE}}), states, 1)
    slots1 = {b.address: b.slot for b in s1.clusters["c"].backends}
    assert sorted(slots1.values()) == [0, 1, 2]
    # 9002 leaves, 9004 arrives: survivors keep their slots, the newcomer takes the free one.
    s2 = snapshot_of(
        _cfg({"c": {"backends": ["127.0.0.1:9003", "127.0.0.1:9004", "127.0.0.1:9001"]}}),
        states, 2)
    slots2 = {b.address: b.slot for b in s2.clusters["c"].backends}
    assert slots2["127.0.0.1:9001"] == slots1["127.0.0.1:9001"]
    assert slots2["127.0.0.1:9003"] == slots1["127.0.0.1:9003"]
    assert slots2["127.0.0.1:9004"] == slots1["127.0.0.1:9002"]
    assert s2.version == 2 and states["c"] is s2.clusters["c"].state


def test_in_flight_survives_a_pool_change_and_busy_slots_are_not_reused():
    states: dict[str, ClusterState] = {}
    s1 = snapshot_of(_cfg({"c": {"policy": "round_robin", "backends": THREE}}), states, 1)
    leases = [s1.clusters["c"].begin(b"", i) for i in range(3)]
    assert all(isinstance(x, Lease) for x in leases)
    by_addr = {x.backend.address: x for x in leases if isinstance(x, Lease)}
    assert set(by_addr) == set(THREE)
    # 9002 leaves while a request to it is in flight; 9004 arrives.
    s2 = snapshot_of(
        _cfg({"c": {"backends": ["127.0.0.1:9001", "127.0.0.1:9003", "127.0.0.1:9004"]}}),
        states, 2)
    state = states["c"]
    assert state.inflight("127.0.0.1:9001") == 1  # counted across the swap
    new_slot = _slot(s2.clusters["c"], "127.0.0.1:9004")
    assert new_slot != by_addr["127.0.0.1:9002"].slot  # still busy: not handed out
    for x in by_addr.values():
        x.end(Outcome.OK, 100)
    assert state.load.inflight(by_addr["127.0.0.1:9002"].slot) == 0
    # Once idle, the retired slot is reusable at the next build.
    s3 = snapshot_of(
        _cfg({"c": {"backends": ["127.0.0.1:9001", "127.0.0.1:9003", "127.0.0.1:9004",
                                 "127.0.0.1:9005"]}}), states, 3)
    assert _slot(s3.clusters["c"], "127.0.0.1:9005") == by_addr["127.0.0.1:9002"].slot


def test_removed_cluster_state_is_dropped_and_routes_bind_clusters():
    states: dict[str, ClusterState] = {}
    cfg = _cfg({"a": {"backends": THREE}, "b": {"backends": ["127.0.0.1:1"]}},
               [{"path_prefix": "/b", "cluster": "b"}, {"cluster": "a"}])
    snap = snapshot_of(cfg, states)
    assert isinstance(snap, Snapshot) and set(states) == {"a", "b"}
    route = snap.router.match(b"GET", b"/b/x", b"", [])
    assert route is not None and route.cluster is snap.clusters["b"]
    snapshot_of(_cfg({"a": {"backends": THREE}}), states, 2)
    assert set(states) == {"a"}
    with pytest.raises(TypeError):
        snap.clusters["z"] = snap.clusters["a"]  # type: ignore[index]


def test_policy_builds_the_documented_selector():
    snap = snapshot_of(_cfg({
        "m": {"policy": "maglev", "backends": THREE, "table_size": 101},
        "m0": {"policy": "maglev", "backends": THREE, "balance_factor": 0, "table_size": 101},
        "p": {"policy": "p2c", "backends": THREE},
        "r": {"policy": "round_robin", "backends": THREE},
    }))
    assert isinstance(snap.clusters["m"].selector, selectors.BoundedLoadSelector)
    assert isinstance(snap.clusters["m0"].selector, selectors.MaglevSelector)
    assert isinstance(snap.clusters["p"].selector, selectors.P2CSelector)
    assert isinstance(snap.clusters["r"].selector, selectors.RoundRobinSelector)


def test_maglev_sends_every_segment_of_a_video_to_one_backend():
    snap = snapshot_of(_cfg(
        {"segments": {"policy": "maglev", "backends": THREE, "balance_factor": 0}},
        [{"cluster": "segments", "hash_on": "path_regex:^/v/([^/]+)/"}]))
    for video in ("a", "b", "c", "d"):
        seen = set()
        for seg in range(20):
            path = f"/v/{video}/{seg}.ts".encode()
            route = snap.router.match(b"GET", path, b"", [])
            assert route is not None
            lease = route.cluster.begin(route.hash_key(path, b"", []), seg)
            assert isinstance(lease, Lease)
            seen.add(lease.backend.address)
            lease.end(Outcome.OK, seg + 1)
        assert len(seen) == 1


class _RefuseRetries:
    def admit(self, cluster, now_ns, attempt):
        return Refusal("retry_budget", 2) if attempt else None


class _Recorder:
    def __init__(self):
        self.seen = []

    def observe(self, backend, outcome, status, rtt_ns, now_ns):
        self.seen.append((backend.address, outcome, status))


def test_admission_policies_and_outcome_observers_plug_into_the_gate():
    states: dict[str, ClusterState] = {}
    snap = snapshot_of(_cfg({"c": {"backends": ["127.0.0.1:1"]}}), states)
    rec = _Recorder()
    states["c"].observers = (rec,)
    lease = snap.clusters["c"].begin(b"", 0)
    assert isinstance(lease, Lease)
    lease.end(Outcome.TIMEOUT, 5)
    assert rec.seen == [("127.0.0.1:1", Outcome.TIMEOUT, 0)]
    states["c"].admission = (_RefuseRetries(),)
    assert snap.clusters["c"].begin(b"", 0, attempt=1) == Refusal("retry_budget", 2)
    assert states["c"].inflight("127.0.0.1:1") == 0  # a refusal leases nothing
    first = snap.clusters["c"].begin(b"", 0)
    assert isinstance(first, Lease)
    first.end(Outcome.OK, 1)


def test_backend_info_is_immutable():
    cluster = snapshot_of(_cfg({"c": {"backends": [
        {"address": "127.0.0.1:7", "weight": 3, "zone": "z1"}]}})).clusters["c"]
    info = cluster.backends[0]
    assert info == BackendInfo("127.0.0.1:7", "127.0.0.1", 7, 3, "z1", 0)
    with pytest.raises(AttributeError):
        info.weight = 4  # type: ignore[misc]


def test_cluster_is_built_from_config_and_state():
    cc = config.ClusterConfig(backends=["127.0.0.1:1"])
    c = Cluster("x", cc, ClusterState("x"))
    assert c.name == "x" and c.policy == "round_robin" and len(c.backends) == 1


ADDRS = [f"127.0.0.1:{9000 + i}" for i in range(8)]
_pool = st.lists(st.sampled_from(ADDRS), min_size=1, max_size=8, unique=True)
_op = st.one_of(
    st.tuples(st.just("pool"), _pool),
    st.tuples(st.just("begin"), st.integers(1, 5)),
    st.tuples(st.just("end"), st.integers(0, 10)),
)


@settings(max_examples=200, deadline=None)
@given(first=_pool, ops=st.lists(_op, max_size=30))
def test_slots_and_inflight_stay_consistent_across_pool_changes(first, ops):
    states: dict[str, ClusterState] = {}
    snap = snapshot_of(_cfg({"c": {"backends": first, **NO_LIMITS}}), states)
    state = states["c"]
    open_leases: list[Lease] = []
    version = 1
    for kind, arg in ops:
        if kind == "pool":
            before = dict(state.slots)
            busy = {lease.slot: lease.backend.address for lease in open_leases}
            version += 1
            snap = snapshot_of(_cfg({"c": {"backends": arg, **NO_LIMITS}}), states, version)
            members = {b.address: b.slot for b in snap.clusters["c"].backends}
            assert len(set(members.values())) == len(members)  # unique slots
            for address, slot in members.items():
                if address in before:
                    assert slot == before[address]  # survivors keep their slot
                # A slot still serving another backend's request is never handed out.
                assert busy.get(slot, address) == address
        elif kind == "begin":
            for i in range(arg):
                lease = snap.clusters["c"].begin(b"k", i)
                assert isinstance(lease, Lease)
                assert lease.backend.address in state.slots
                open_leases.append(lease)
        elif open_leases:
            open_leases.pop(arg % len(open_leases)).end(Outcome.OK, 10)
        # In-flight per slot equals the leases open on it, whoever owns the slot now.
        for slot in range(len(state.addresses)):
            assert state.load.inflight(slot) == sum(x.slot == slot for x in open_leases)
    for lease in open_leases:
        lease.end(Outcome.RESET, 20)
    assert all(state.load.inflight(s) == 0 for s in range(len(state.addresses)))


def test_a_removed_backend_forgets_its_drain_mark():
    states: dict[str, ClusterState] = {}
    snapshot_of(_cfg({"c": {"backends": THREE}}), states, 1)
    states["c"].set_drain("127.0.0.1:9002", True)
    snapshot_of(_cfg({"c": {"backends": ["127.0.0.1:9001"]}}), states, 2)
    snap = snapshot_of(_cfg({"c": {"backends": THREE}}), states, 3)
    assert states["c"].state_of("127.0.0.1:9002") == "active"
    slot = _slot(snap.clusters["c"], "127.0.0.1:9002")
    assert states["c"].load.accepts(slot)
