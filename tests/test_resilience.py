"""Outlier ejection, panic threshold, circuit breaker and health-check counting: pure logic.

Every clock is an explicit nanosecond count; nothing sleeps.
"""

import re
import tomllib
from pathlib import Path

import pytest

from lbproxy.balance.gate import NO_HEALTHY_BACKEND, Lease, Outcome, Refusal
from lbproxy.control import config
from lbproxy.control.snapshot import snapshot_of
from lbproxy.policies.breaker import CIRCUIT_OPEN, Breaker
from lbproxy.policies.health import RiseFall, parse_status_line, status_ok
from lbproxy.policies.install import detector_of
from lbproxy.policies.outlier import ejection_ns, may_eject

S = 1_000_000_000
THREE = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
BAD = THREE[0]


def _snap(cluster=None, states=None, version=1, backends=THREE):
    cl = {"policy": "round_robin", "backends": backends, **(cluster or {})}
    cfg = config.from_dict({"clusters": {"c": cl}, "routes": [{"cluster": "c"}]})
    return snapshot_of(cfg, states, version)


def _fail(cluster, address, n, now, outcome=Outcome.HTTP_5XX, status=500):
    """End `n` requests on `address` with `outcome` at time `now`."""
    for _ in range(n):
        backend = cluster.backend(address)
        cluster.state.observers[0].observe(backend, outcome, status, 1, now)


def _picks(cluster, n, now):
    seen = []
    for i in range(n):
        lease = cluster.begin(b"k%d" % i, now)
        assert isinstance(lease, Lease)
        seen.append(lease.backend.address)
        lease.end(Outcome.OK, now, 200)
    return seen


def test_outlier_detection_is_on_with_no_configuration():
    cluster = _snap().clusters["c"]
    assert detector_of(cluster.state) is not None
    assert cluster.state.panic_threshold == 50.0


def test_five_consecutive_5xx_eject_and_the_backend_returns_after_base_time(caplog):
    cluster = _snap().clusters["c"]
    _fail(cluster, BAD, 4, 0)
    assert not cluster.state.is_ejected(BAD)
    _fail(cluster, BAD, 1, 0)
    assert cluster.state.is_ejected(BAD) and not cluster.state.is_healthy(BAD)
    assert f"cluster c: {BAD} ejected for 30s after 5 consecutive 5xx" in caplog.text
    assert BAD not in _picks(cluster, 30, 1 * S)
    assert BAD not in _picks(cluster, 30, 30 * S - 1)  # base_ejection_time 30 s
    assert BAD in _picks(cluster, 30, 30 * S)  # returned lazily by begin()
    assert not cluster.state.is_ejected(BAD)


def test_a_success_resets_the_streak():
    cluster = _snap().clusters["c"]
    for _ in range(3):
        _fail(cluster, BAD, 4, 0)
        _fail(cluster, BAD, 1, 0, Outcome.OK, 200)
    assert not cluster.state.is_ejected(BAD)


def test_client_aborts_count_for_nothing():
    cluster = _snap().clusters["c"]
    _fail(cluster, BAD, 4, 0)
    _fail(cluster, BAD, 3, 0, Outcome.CLIENT_ABORT, 0)
    assert not cluster.state.is_ejected(BAD)
    _fail(cluster, BAD, 1, 0)
    assert cluster.state.is_ejected(BAD)


def test_gateway_failures_have_their_own_threshold():
    cluster = _snap({"outlier_detection": {"consecutive_5xx": 100,
                                           "consecutive_gateway_failure": 3}}).clusters["c"]
    # A 500 breaks the gateway streak but not the 5xx one.
    _fail(cluster, BAD, 2, 0, Outcome.CONNECT_FAILED, 0)
    _fail(cluster, BAD, 1, 0, Outcome.HTTP_5XX, 500)
    _fail(cluster, BAD, 2, 0, Outcome.HTTP_5XX, 503)
    assert not cluster.state.is_ejected(BAD)
    _fail(cluster, BAD, 1, 0, Outcome.TIMEOUT, 0)
    assert cluster.state.is_ejected(BAD)


@pytest.mark.parametrize("outcome", [Outcome.CONNECT_FAILED, Outcome.RESET, Outcome.TIMEOUT])
def test_connection_failures_count_as_5xx_too(outcome):
    cluster = _snap({"outlier_detection": {"consecutive_gateway_failure": 100}}).clusters["c"]
    _fail(cluster, BAD, 5, 0, outcome, 0)
    assert cluster.state.is_ejected(BAD)


def test_ejection_time_is_base_times_ejections_capped():
    od = config.OutlierDetection(base_ejection_time=30, max_ejection_time=300)
    assert [ejection_ns(od, n) // S for n in (1, 2, 3, 10, 11, 50)] == [30, 60, 90, 300, 300, 300]
    # A max below base is ignored (Envoy): base is the floor.
    low = config.OutlierDetection(base_ejection_time=30, max_ejection_time=10)
    assert ejection_ns(low, 3) // S == 30


def test_repeated_ejections_last_longer_and_the_multiplier_decays():
    cluster = _snap({"outlier_detection": {"base_ejection_time": 1, "interval": 100}})
    cluster = cluster.clusters["c"]
    detector = detector_of(cluster.state)
    assert detector is not None
    _fail(cluster, BAD, 5, 0)
    _picks(cluster, 1, 1 * S)  # returned at 1 s
    _fail(cluster, BAD, 5, 2 * S)  # second ejection: 2 s
    _picks(cluster, 1, 4 * S - 1)
    assert cluster.state.is_ejected(BAD)
    _picks(cluster, 1, 4 * S)
    assert not cluster.state.is_ejected(BAD)
    # 2 intervals in service take the multiplier from 2 to 0: the next one is 1 x base.
    _fail(cluster, BAD, 5, 204 * S)
    assert detector.records[BAD].times_ejected == 1
    assert detector.records[BAD].ejected_until_ns == 205 * S


def test_max_ejection_percent_allows_one_then_caps():
    assert may_eject(0, 3, 10) and not may_eject(1, 3, 10)
    assert may_eject(1, 20, 10) and not may_eject(2, 20, 10)
    assert may_eject(0, 1, 0)  # always at least one
    cluster = _snap().clusters["c"]  # default 10% of 3: only the first ejection
    for address in THREE:
        _fail(cluster, address, 5, 0)
    assert [cluster.state.is_ejected(a) for a in THREE] == [True, False, False]


def test_panic_threshold_ignores_ejection_and_health_marks():
    cluster = _snap({"outlier_detection": {"max_ejection_percent": 100}}).clusters["c"]
    state = cluster.state
    _fail(cluster, THREE[0], 5, 0)
    assert not state.panicking  # 2 of 3 usable: 66% >= 50%
    state.set_unhealthy(THREE[1], True)
    assert state.panicking  # 1 of 3 usable: 33% < 50%: every backend is used again
    assert set(_picks(cluster, 30, 1)) == set(THREE)
    state.set_unhealthy(THREE[1], False)
    assert not state.panicking
    assert THREE[0] not in _picks(cluster, 30, 1)


def test_panic_never_overrides_drain_and_all_drained_is_no_healthy_backend():
    cluster = _snap().clusters["c"]
    state = cluster.state
    state.set_drain(THREE[0], True)
    state.set_drain(THREE[1], True)
    state.set_unhealthy(THREE[2], True)
    # The one member not drained is unhealthy: panic routes to it, never to the drained.
    assert state.panicking
    assert set(_picks(cluster, 10, 0)) == {THREE[2]}
    state.set_drain(THREE[2], True)
    assert cluster.begin(b"k", 0) is NO_HEALTHY_BACKEND


def test_panic_threshold_zero_disables_panic():
    cluster = _snap({"panic_threshold": 0}).clusters["c"]
    for address in THREE:
        cluster.state.set_unhealthy(address, True)
    assert not cluster.state.panicking
    assert cluster.begin(b"k", 0) is NO_HEALTHY_BACKEND


def test_marks_and_ejections_survive_a_reload_and_are_forgotten_on_removal():
    states: dict = {}
    cluster = _snap(states=states).clusters["c"]
    _fail(cluster, BAD, 5, 0)
    cluster.state.set_unhealthy(THREE[1], True)
    cluster = _snap({"outlier_detection": {"base_ejection_time": 5}}, states, 2).clusters["c"]
    assert cluster.state.is_ejected(BAD) and cluster.state.is_unhealthy(THREE[1])
    _picks(cluster, 1, 30 * S)  # the ejection in progress keeps its 30 s
    assert not cluster.state.is_ejected(BAD)
    _snap(states=states, version=3, backends=THREE[2:])
    cluster = _snap(states=states, version=4).clusters["c"]
    assert cluster.state.is_healthy(THREE[1])  # re-added: starts healthy


def test_disabling_outlier_detection_returns_ejected_backends():
    states: dict = {}
    cluster = _snap(states=states).clusters["c"]
    _fail(cluster, BAD, 5, 0)
    cluster = _snap({"outlier_detection": {"enabled": False}}, states, 2).clusters["c"]
    assert not cluster.state.is_ejected(BAD)
    assert cluster.state.observers == () and cluster.state.admission == ()


def test_breaker_refuses_past_max_requests_and_closes_as_requests_end():
    cluster = _snap({"circuit_breaker": {"max_requests": 2}}).clusters["c"]
    a, b = cluster.begin(b"a", 0), cluster.begin(b"b", 0)
    assert isinstance(a, Lease) and isinstance(b, Lease)
    refused = cluster.begin(b"c", 0)
    assert refused is CIRCUIT_OPEN
    assert isinstance(refused, Refusal) and refused.code == "circuit_open"
    assert refused.retry_after == 1
    a.end(Outcome.OK, 1, 200)
    c = cluster.begin(b"c", 2)
    assert isinstance(c, Lease)
    b.end(Outcome.OK, 3, 200)
    c.end(Outcome.OK, 3, 200)
    assert cluster.state.active == 0


def test_breaker_is_absent_unless_configured():
    # 1000 at once: past the adaptive limits, so those are off here
    cluster = _snap({"adaptive_concurrency": {"enabled": False}}).clusters["c"]
    assert not any(isinstance(p, Breaker) for p in cluster.state.admission)
    leases = [cluster.begin(b"k", 0) for _ in range(1000)]
    assert all(isinstance(x, Lease) for x in leases)
    with pytest.raises(ValueError):
        Breaker(0)


def test_rise_fall_starts_up_at_the_edge_then_needs_fall_failures():
    c = RiseFall(rise=2, fall=3)
    assert c.healthy
    assert c.record(False) is False  # HAProxy init-state up: one failure takes it down
    assert c.record(True) is None and not c.healthy
    assert c.record(True) is True  # `rise` passes in a row
    assert c.record(False) is None and c.record(False) is None  # up fully: `fall` needed
    assert c.record(False) is False
    assert RiseFall(2, 3, healthy=False).healthy is False


def test_status_ranges_and_status_lines():
    ranges = config.parse_status_ranges(["200-399", 418])
    assert [status_ok(s, ranges) for s in (199, 200, 399, 400, 418, 500)] == [
        False, True, True, False, True, False]
    assert parse_status_line(b"HTTP/1.1 503 Service Unavailable\r\n") == 503
    assert parse_status_line(b"HTTP/1.1 204\r\n") == 204  # no reason phrase
    with pytest.raises(ValueError):
        parse_status_line(b"SSH-2.0-OpenSSH\r\n")


@pytest.mark.parametrize(
    ("section", "path"),
    [
        ({"panic_threshold": -1}, "clusters.c.panic_threshold"),
        ({"outlier_detection": {"consecutive_5xx": 0}},
         "clusters.c.outlier_detection.consecutive_5xx"),
        ({"outlier_detection": {"base_ejection_time": 0}},
         "clusters.c.outlier_detection.base_ejection_time"),
        ({"outlier_detection": {"max_ejection_percent": 101}},
         "clusters.c.outlier_detection.max_ejection_percent"),
        ({"outlier_detection": {"nope": 1}}, "clusters.c.outlier_detection.nope"),
        ({"health_check": {"path": "health"}}, "clusters.c.health_check.path"),
        ({"health_check": {}}, "clusters.c.health_check"),
        ({"health_check": {"path": "/h", "interval": 0}}, "clusters.c.health_check.interval"),
        ({"health_check": {"path": "/h", "healthy_threshold": 0}},
         "clusters.c.health_check.healthy_threshold"),
        ({"health_check": {"path": "/h", "expected_statuses": [200, "300-2"]}},
         "clusters.c.health_check.expected_statuses[1]"),
        ({"health_check": {"path": "/h", "expected_statuses": []}},
         "clusters.c.health_check.expected_statuses"),
        ({"circuit_breaker": {"max_requests": -1}}, "clusters.c.circuit_breaker.max_requests"),
        ({"circuit_breaker": {"max_pending": 1}}, "clusters.c.circuit_breaker.max_pending"),
    ],
)
def test_resilience_config_errors_name_their_field(section, path):
    cl = {"backends": THREE, **section}
    with pytest.raises(config.ConfigError) as info:
        config.from_dict({"clusters": {"c": cl}, "routes": [{"cluster": "c"}]})
    assert path in [p for p, _ in info.value.errors], info.value.errors


def test_lbproxy_check_reports_resilience_errors(tmp_path, capsys):
    from lbproxy import cli

    p = tmp_path / "bad.toml"
    p.write_text('[clusters.c]\nbackends = ["127.0.0.1:1"]\n'
                 '[clusters.c.health_check]\npath = "/h"\ntimeout = -1\n'
                 '[[routes]]\ncluster = "c"\n')
    assert cli.main(["check", "--config", str(p)]) == 1
    assert "clusters.c.health_check.timeout" in capsys.readouterr().err


def test_readme_resilience_example_is_valid():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = next(b for b in re.findall(r"```toml\n(.*?)```", readme, re.S) if "health_check" in b)
    data = tomllib.loads(block)
    data["routes"] = [{"cluster": "segments"}]
    seg = config.from_dict(data).clusters["segments"]
    assert seg.health_check is not None and seg.circuit_breaker.max_requests == 1000


@pytest.mark.parametrize("policy", ["maglev", "p2c", "round_robin"])
def test_every_policy_avoids_an_ejected_backend_and_uses_all_in_panic(policy):
    cluster = _snap({"policy": policy, "table_size": 101,
                     "outlier_detection": {"max_ejection_percent": 100}}).clusters["c"]
    _fail(cluster, BAD, 5, 0)
    assert set(_picks(cluster, 60, 1)) == set(THREE[1:])
    _fail(cluster, THREE[1], 5, 0)
    state = cluster.state
    assert state.panicking
    assert all(state.load.accepts(state.slots[a]) for a in THREE)
    if policy != "p2c":  # P2C still prefers the cheaper backends, as it should
        assert set(_picks(cluster, 60, 1)) == set(THREE)


def test_a_backend_removed_and_readded_while_ejected_can_be_ejected_again():
    states: dict = {}
    cluster = _snap(states=states).clusters["c"]
    _fail(cluster, BAD, 5, 0)
    _snap(states=states, version=2, backends=THREE[1:])
    cluster = _snap(states=states, version=3).clusters["c"]
    assert not cluster.state.is_ejected(BAD)  # re-added: in service
    _fail(cluster, BAD, 5, 1 * S)
    assert cluster.state.is_ejected(BAD)
    _picks(cluster, 1, 2 * S)  # the first ejection's time is over, this one's is not
    assert cluster.state.is_ejected(BAD)
