"""Overload control in the cluster gate: limits, fallback, waiting, shedding, accounting."""

from __future__ import annotations

from typing import Any

from lbproxy.balance.gate import OVERLOADED, WAIT, Lease, Outcome
from lbproxy.control import config
from lbproxy.control.snapshot import snapshot_of
from lbproxy.policies.admission_level import COHORTS
from lbproxy.policies.admission_queue import Waiter
from lbproxy.policies.overload import QUEUE_TIMEOUT, SHED

THREE = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
CRITICAL, NORMAL, SHEDDABLE = 0, 1, 2
MS = 1_000_000


def _cluster(policy: str = "round_robin", limit: int = 2, **queue: Any) -> Any:
    cfg = config.from_dict({
        "clusters": {"c": {"policy": policy, "backends": THREE,
                           "adaptive_concurrency": {"initial_limit": limit},
                           "queue": queue}},
        "routes": [{"cluster": "c"}]})
    return snapshot_of(cfg).clusters["c"]


def _fill(cluster: Any, n: int, priority: int = NORMAL) -> list[Lease]:
    leases = []
    for i in range(n):
        lease = cluster.begin(b"k%d" % i, 1000 + i, 0, (), priority, 0)
        assert isinstance(lease, Lease), lease
        leases.append(lease)
    return leases


class _Owner:
    """Stands in for a client connection: records what the queue told it."""

    def __init__(self) -> None:
        self.leases: list[Lease] = []
        self.refusals: list[Any] = []

    def admitted(self, w: Waiter, lease: Lease) -> None:
        self.leases.append(lease)

    def refused(self, w: Waiter, refusal: Any) -> None:
        self.refusals.append(refusal)


def test_each_backend_takes_its_limit_then_requests_wait():
    cluster = _cluster(limit=2)
    leases = _fill(cluster, 6)  # 3 backends x limit 2
    assert sorted(cluster.state.load.inflight(b.slot) for b in cluster.backends) == [2, 2, 2]
    assert cluster.begin(b"x", 2000, 0, (), NORMAL, 0) is WAIT
    assert cluster.begin(b"x", 2000, 0, (), CRITICAL, 0) is WAIT
    for lease in leases:
        lease.end(Outcome.OK, 3000, 200)


def test_sheddable_never_waits_and_leaves_the_last_quarter():
    cluster = _cluster(limit=4)
    # sheddable may use 3 of each backend's 4
    leases = _fill(cluster, 9, SHEDDABLE)
    assert cluster.begin(b"x", 2000, 0, (), SHEDDABLE, 0) is OVERLOADED
    shed = cluster.state.overload.shed_count(SHEDDABLE, SHED)
    assert shed == 1
    # the room left is for the others
    extra = _fill(cluster, 3, CRITICAL)
    assert cluster.begin(b"y", 2000, 0, (), NORMAL, 0) is WAIT
    for lease in leases + extra:
        lease.end(Outcome.OK, 3000, 200)


def test_maglev_falls_back_to_the_keys_next_candidate_below_its_limit():
    cluster = _cluster("maglev", limit=1)
    first = cluster.begin(b"video-1", 1000, 0, (), NORMAL, 0)
    assert isinstance(first, Lease)
    second = cluster.begin(b"video-1", 1001, 0, (), NORMAL, 0)
    assert isinstance(second, Lease)
    order = list(cluster.selector.inner.candidates(b"video-1", 3))
    assert (first.slot, second.slot) == (order[0], order[1])
    first.end(Outcome.OK, 2000, 200)
    second.end(Outcome.OK, 2000, 200)


def test_a_freed_lease_goes_to_the_most_valuable_waiter():
    cluster = _cluster(limit=1)
    leases = _fill(cluster, 3)
    queue = cluster.state.overload.queue
    normal, critical = _Owner(), _Owner()
    assert cluster.begin(b"n", 2000, 0, (), NORMAL, 0) is WAIT
    queue.push(Waiter(normal, cluster, b"n", NORMAL, 2000))
    assert cluster.begin(b"c", 2001, 0, (), CRITICAL, 0) is WAIT
    queue.push(Waiter(critical, cluster, b"c", CRITICAL, 2001))
    leases[0].end(Outcome.OK, 3000, 200)  # room for one: the critical waiter takes it
    assert len(critical.leases) == 1 and not normal.leases
    leases[1].end(Outcome.OK, 3001, 200)
    assert len(normal.leases) == 1
    assert queue.served == 2 and queue.length == 0
    for lease in [leases[2], *critical.leases, *normal.leases]:
        lease.end(Outcome.OK, 4000, 200)
    assert cluster.state.active == 0


def test_waiters_past_max_wait_are_shed_and_counted():
    cluster = _cluster(limit=1, max_wait_ms=20)
    leases = _fill(cluster, 3)
    overload = cluster.state.overload
    owner = _Owner()
    overload.queue.push(Waiter(owner, cluster, b"n", NORMAL, 0))
    overload.sweep(30 * MS)
    assert owner.refusals == [OVERLOADED]
    assert overload.shed_count(NORMAL, QUEUE_TIMEOUT) == 1
    for lease in leases:
        lease.end(Outcome.OK, 40 * MS, 200)


def test_the_level_refuses_cut_off_cohorts_on_arrival():
    cluster = _cluster(limit=10)
    level = cluster.state.overload.level
    level.window_end_ns = 10**18  # no window closes during the test
    level.level = 2 * COHORTS + 10  # sheddable cohorts 0-9 only
    assert isinstance(cluster.begin(b"a", 1, 0, (), SHEDDABLE, 9), Lease)
    assert cluster.begin(b"a", 2, 0, (), SHEDDABLE, 10) is OVERLOADED
    assert isinstance(cluster.begin(b"a", 3, 0, (), NORMAL, 127), Lease)


def test_limits_learn_from_request_sent_to_response_head():
    cluster = _cluster(limit=20)
    limit = cluster.state.overload.limit(cluster.backends[0].slot)
    lease = cluster.begin(b"k", 0, 0, (), NORMAL, 0)
    assert isinstance(lease, Lease)
    lease.sent_ns = 500 * MS  # a long upload: its transfer is not the backend's time
    lease.head_ns = 520 * MS
    lease.end(Outcome.OK, 900 * MS, 200)
    assert limit.count == 1 and limit.sum_ns == 20 * MS


def test_timeouts_and_5xx_are_drops():
    cluster = _cluster(limit=20)
    slot_limit = {b.slot: cluster.state.overload.limit(b.slot) for b in cluster.backends}
    for outcome, status in ((Outcome.TIMEOUT, 0), (Outcome.HTTP_5XX, 503)):
        lease = cluster.begin(b"k", 0, 0, (), NORMAL, 0)
        assert isinstance(lease, Lease)
        lease.end(outcome, 10 * MS, status)
        assert slot_limit[lease.slot].dropped
    # a reset or a refused connect says nothing about queueing: not sampled
    lease = cluster.begin(b"k", 0, 0, (), NORMAL, 0)
    assert isinstance(lease, Lease)
    before = slot_limit[lease.slot].count
    lease.end(Outcome.CONNECT_FAILED, 10 * MS, 0)
    assert slot_limit[lease.slot].count == before


def test_retries_count_against_the_limits_and_never_wait():
    cluster = _cluster(limit=1)
    leases = _fill(cluster, 3)
    retry = cluster.begin(b"k", 2000, 1, (leases[0].slot,), NORMAL, 0)
    assert retry is OVERLOADED
    for lease in leases:
        lease.end(Outcome.OK, 3000, 200)


def test_disabled_means_no_limits():
    cfg = config.from_dict({
        "clusters": {"c": {"backends": THREE, "adaptive_concurrency": {"enabled": False}}},
        "routes": [{"cluster": "c"}]})
    cluster = snapshot_of(cfg).clusters["c"]
    assert cluster.state.overload is None
    leases = _fill(cluster, 100)
    for lease in leases:
        lease.end(Outcome.OK, 3000, 200)


def test_the_gates_refusals_are_counted_by_code():
    cfg = config.from_dict({
        "clusters": {"c": {"backends": THREE, "circuit_breaker": {"max_requests": 1}}},
        "routes": [{"cluster": "c"}]})
    cluster = snapshot_of(cfg).clusters["c"]
    lease = cluster.begin(b"k", 0)
    assert isinstance(lease, Lease)
    cluster.begin(b"k", 1)
    cluster.begin(b"k", 2)
    assert cluster.state.refusals == {"circuit_open": 2}
    lease.end(Outcome.OK, 3, 200)
