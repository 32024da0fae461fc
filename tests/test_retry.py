"""Retries at the cluster gate: the retry budget (explicit time, no sleeping), `begin()`
with `exclude` (Maglev fallback order, P2C and round robin), and the `[retry]` config."""

import pytest

from lbproxy.admin import stats
from lbproxy.balance.gate import NO_HEALTHY_BACKEND, Lease, Outcome
from lbproxy.control import config
from lbproxy.control.snapshot import snapshot_of
from lbproxy.policies.install import install
from lbproxy.policies.retry import RETRY_BUDGET_EXHAUSTED, RetryBudget

S = 1_000_000_000  # one second in ns
THREE = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]


def _cluster(policy, **extra):
    cfg = config.from_dict({"clusters": {"c": {"policy": policy, "backends": THREE, **extra}},
                            "routes": [{"cluster": "c"}]})
    return snapshot_of(cfg).clusters["c"]


def _unbudgeted(policy):
    """A cluster whose retries only selection limits (the budget is tested above)."""
    cluster = _cluster(policy)
    cluster.state.retry_admission = ()
    return cluster


# ---- the budget ----------------------------------------------------------------------


def test_budget_reserve_allows_min_retries_per_second_times_ttl_with_no_traffic():
    budget = RetryBudget(20.0, 3.0, ttl_s=10)
    granted = [budget.withdraw(0, 5 * S) for _ in range(40)]
    assert granted.count(True) == 30 and granted[30:] == [False] * 10


def test_budget_grows_with_first_attempts_and_refuses_past_its_share():
    budget = RetryBudget(20.0, 0.0, ttl_s=10)
    assert not budget.withdraw(0, 0)  # no reserve, no traffic yet: no retry
    # 1000 first attempts over the next second: 20 % of them may be retried.
    granted = [budget.withdraw(1000, 1 * S) for _ in range(250)]
    assert granted.count(True) == 200


def test_budget_deposits_and_withdrawals_expire_after_the_window():
    budget = RetryBudget(10.0, 0.0, ttl_s=10)
    budget.withdraw(0, 0)
    assert sum(budget.withdraw(100, 1 * S) for _ in range(20)) == 10  # 10 % of 100
    assert not budget.withdraw(100, 5 * S)  # still inside the window: spent
    # 11 s later the window holds neither those deposits nor those withdrawals.
    assert not budget.withdraw(100, 12 * S)
    assert budget.balance() == 0
    assert sum(budget.withdraw(200, 13 * S) for _ in range(20)) == 10


def test_budget_spreads_a_quiet_spells_requests_over_it_and_credits_one_window_at_most():
    budget = RetryBudget(20.0, 0.0, ttl_s=10)
    budget.withdraw(0, 0)
    # 100 000 first attempts spread over 1000 s: only the last 10 s (1000 of them) count.
    assert budget.balance() == 0
    assert budget.withdraw(100_000, 1000 * S)
    assert budget.balance() == pytest.approx(0.2 * 1000 - 1)


def test_budget_is_an_admission_policy_for_retries_only():
    cluster = _cluster("round_robin", retry={"budget_percent": 0.0,
                                             "min_retries_per_second": 0.0})
    (budget,) = cluster.state.retry_admission
    assert isinstance(budget, RetryBudget)
    assert budget.admit(cluster, 0, 0) is None  # first attempts are never refused
    assert budget.admit(cluster, 0, 1) is RETRY_BUDGET_EXHAUSTED
    first = cluster.begin(b"k", 0)
    assert isinstance(first, Lease)
    assert cluster.begin(b"k", 1, 1, (first.slot,)) is RETRY_BUDGET_EXHAUSTED
    first.end(Outcome.CONNECT_FAILED, 2)


def test_budget_rejects_bad_figures():
    with pytest.raises(ValueError):
        RetryBudget(120.0, 1.0)
    with pytest.raises(ValueError):
        RetryBudget(20.0, -1.0)


def test_install_keeps_the_budget_across_reloads_unless_its_figures_change():
    cluster = _cluster("round_robin")
    (budget,) = cluster.state.retry_admission
    install(cluster.state, cluster.config)
    assert cluster.state.retry_admission == (budget,)
    changed = config.from_dict({"clusters": {"c": {"backends": THREE,
                                                   "retry": {"budget_percent": 5.0}}},
                                "routes": [{"cluster": "c"}]}).clusters["c"]
    install(cluster.state, changed)
    (other,) = cluster.state.retry_admission
    assert other is not budget and other.ratio == 0.05
    off = config.from_dict({"clusters": {"c": {"backends": THREE, "retry": {"attempts": 0}}},
                            "routes": [{"cluster": "c"}]}).clusters["c"]
    install(cluster.state, off)
    assert cluster.state.retry_admission == ()


# ---- begin() with exclude ----------------------------------------------------------------


def test_maglev_retry_takes_the_keys_next_candidate_consistently():
    cluster = _unbudgeted("maglev")
    state = cluster.state
    for i in range(50):
        key = f"video-{i}".encode()
        primary, second, third = cluster.selector.inner.candidates(key, 3)
        first = cluster.begin(key, 0)
        assert isinstance(first, Lease) and first.slot == primary
        for _ in range(2):  # the same answer every time: cache affinity for the key
            retry = cluster.begin(key, 1, 1, (primary,))
            assert isinstance(retry, Lease) and retry.slot == second
            retry.end(Outcome.OK, 2)
        again = cluster.begin(key, 3, 2, (primary, second))
        assert isinstance(again, Lease) and again.slot == third
        assert cluster.begin(key, 4, 3, (primary, second, third)) is NO_HEALTHY_BACKEND
        for lease in (first, again):
            lease.end(Outcome.OK, 5)
    assert state.retries == 50 * 3 and state.requests == 50 * 4
    assert sum(c.retries for c in state.counters) == 150


def test_maglev_retry_skips_candidates_that_are_not_accepted():
    cluster = _unbudgeted("maglev")
    key = b"video-7"
    primary, second, third = cluster.selector.inner.candidates(key, 3)
    cluster.state.set_drain(cluster.state.addresses[second], True)
    retry = cluster.begin(key, 0, 1, (primary,))
    assert isinstance(retry, Lease) and retry.slot == third


@pytest.mark.parametrize("policy", ["p2c", "round_robin"])
def test_p2c_and_round_robin_retries_avoid_the_excluded_backend(policy):
    cluster = _unbudgeted(policy)
    slots = [b.slot for b in cluster.backends]
    for i in range(200):
        excluded = (slots[i % 3],)
        lease = cluster.begin(b"k", i, 1, excluded)
        assert isinstance(lease, Lease) and lease.slot not in excluded
        lease.end(Outcome.OK, i + 1)
    two = cluster.begin(b"k", 999, 2, (slots[0], slots[1]))
    assert isinstance(two, Lease) and two.slot == slots[2]
    assert cluster.begin(b"k", 999, 3, tuple(slots)) is NO_HEALTHY_BACKEND


# ---- config --------------------------------------------------------------------------------


def test_retry_config_defaults():
    cfg = config.from_dict({"clusters": {"c": {"backends": THREE}}, "routes": [{"cluster": "c"}]})
    retry = cfg.clusters["c"].retry
    assert (retry.attempts, retry.budget_percent, retry.min_retries_per_second) == (2, 20.0, 3.0)


@pytest.mark.parametrize(("field", "value", "path"), [
    ("attempts", -1, "clusters.c.retry.attempts"),
    ("attempts", 11, "clusters.c.retry.attempts"),
    ("budget_percent", 101.0, "clusters.c.retry.budget_percent"),
    ("min_retries_per_second", -0.5, "clusters.c.retry.min_retries_per_second"),
    ("tries", 1, "clusters.c.retry.tries"),
])
def test_retry_config_errors_name_the_field(field, value, path):
    with pytest.raises(config.ConfigError) as err:
        config.from_dict({"clusters": {"c": {"backends": THREE, "retry": {field: value}}},
                          "routes": [{"cluster": "c"}]})
    assert [p for p, _ in err.value.errors] == [path]


def test_retries_reach_stats_and_travel_from_workers_to_the_supervisor():
    cfg = config.from_dict({"clusters": {"c": {"policy": "maglev", "backends": THREE}},
                            "routes": [{"cluster": "c"}]})
    worker = snapshot_of(cfg)
    supervisor = snapshot_of(cfg)
    cluster = worker.clusters["c"]
    cluster.state.retry_admission = ()
    first = cluster.begin(b"k", 0)
    assert isinstance(first, Lease)
    first.end(Outcome.CONNECT_FAILED, 1)
    retry = cluster.begin(b"k", 2, 1, (first.slot,))
    assert isinstance(retry, Lease)
    retry.end(Outcome.OK, 3, 200)
    doc = stats.stats_view(worker, lambda c, a: 0)["clusters"]["c"]
    assert (doc["requests"], doc["retries"]) == (2, 1)
    reporter = stats.DeltaReporter()
    states = {name: cl.state for name, cl in supervisor.clusters.items()}
    stats.add_deltas(states, reporter.collect(worker))
    doc = stats.stats_view(supervisor, lambda c, a: 0)["clusters"]["c"]
    assert (doc["requests"], doc["retries"]) == (2, 1)
    by_address = {b["address"]: b["retries"] for b in doc["backends"]}
    assert by_address[cluster.state.addresses[retry.slot]] == 1
