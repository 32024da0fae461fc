"""The surge scenario's figures (goodput, step recovery, goals) with explicit numbers, and its
lbproxy peer: support detected with `lbproxy check`, the routes served through real origins."""

from __future__ import annotations

import http.client
from pathlib import Path
from typing import Any

import pytest

from bench.backends import Backend, BackendSet
from bench.classes import ClassRecorder, Window, merge_classes
from bench.histogram import Histogram
from bench.peers import PeerUnavailable, surge_peers
from bench.peers.lbproxy import SurgeLbproxyPeer
from bench.scenarios import Phase, load_all
from bench.surge import connections_for, goals_failed, p99_recovery_s, phase_result, shed_stop_s

MS = 1_000_000
S = 1_000_000_000
SURGE = load_all(["surge"])[0]
CLASSES = tuple((c.path_prefix, c.priority) for c in SURGE.classes)


def merged_for(rec: ClassRecorder) -> dict[str, Any]:
    """What the generator pool hands back, reduced to what phase_result reads."""
    return {"classes": merge_classes([rec.to_dict()]), "errors": {"get": {}},
            "send_lag": Histogram(), "generator_cpu": 0.2}


def test_goodput_is_2xx_in_time_per_second_over_capacity() -> None:
    phase = Phase(name="2x", load=2.0, duration_s=8.0, warmup_s=1.0)
    rec = ClassRecorder(["play", "normal", "prefetch"], 0, 1 * S, 8 * S, 2 * S, 100 * MS)
    # Measured window 1 s..8 s (7 s): 3780 2xx within the deadline = 540 req/s, i.e. 0.9 of
    # 600 req/s; and 1000 prefetch refusals in 2 ms, 400 of them with Retry-After.
    for i in range(3780):
        intended = 1 * S + i * 1_800_000  # up to 7.8 s; answered 30 ms later
        rec.complete(0 if i < 630 else 2, 200, intended, intended + 30 * MS, True, False)
    for i in range(1000):
        intended = 1 * S + i * 6 * MS
        rec.complete(2, 503, intended, intended + 2 * MS, False, i < 400)
    r = phase_result(merged_for(rec), SURGE, phase, capacity=600.0)
    assert r["goodput_rps"] == pytest.approx(540.0)
    assert r["goodput"] == pytest.approx(0.9)
    assert r["offered_rps"] == pytest.approx(4780 / 7, abs=0.1)
    assert r["classes"]["play"]["success"] == 1.0
    assert r["classes"]["normal"]["success"] is None  # none sent
    assert r["classes"]["prefetch"]["success"] == pytest.approx(3150 / 4150, abs=1e-5)
    assert r["refused"] == 1000 and r["refused_retry_after"] == 400
    assert r["refusal_us"]["p99"] == 2000
    assert r["admitted_us"]["p99"] == 30_000


def windows_with(p99_ms: dict[range, int], refused: dict[range, int], n: int) -> list[Window]:
    """n 100 ms windows; the given ranges get 100 samples at that latency / that many refusals."""
    out = [Window() for _ in range(n)]
    for span, ms in p99_ms.items():
        for i in span:
            for _ in range(100):
                out[i].admitted.record(ms * 1000)
    for span, count in refused.items():
        for i in span:
            out[i].refused = count
    return out


def test_p99_recovery_is_the_end_of_the_last_span_over_target() -> None:
    # Step at 1.0 s, run 3.0 s, target 40 ms: 100 ms p99 until 1.5 s, 25 ms after. Spans of
    # 0.3 s from the step: [1.0, 1.3) and [1.3, 1.6) are over, so back under at +0.6 s.
    w = windows_with({range(0, 10): 25, range(10, 15): 100, range(15, 30): 25}, {}, 30)
    assert p99_recovery_s(w, 0.1, 1.0, 3.0, 40_000) == pytest.approx(0.6)
    calm = windows_with({range(0, 30): 25}, {}, 30)
    assert p99_recovery_s(calm, 0.1, 1.0, 3.0, 40_000) == 0.0
    never = windows_with({range(0, 10): 25, range(10, 30): 100}, {}, 30)
    assert p99_recovery_s(never, 0.1, 1.0, 3.0, 40_000) is None
    # A span with nothing admitted (everything refused) does not count as over target.
    empty = windows_with({range(0, 10): 25, range(13, 30): 25}, {}, 30)
    assert p99_recovery_s(empty, 0.1, 1.0, 3.0, 40_000) == 0.0


def test_shed_stop_is_the_end_of_the_last_window_with_a_refusal() -> None:
    w = windows_with({}, {range(0, 38): 5}, 60)  # refusals until 3.8 s, step at 3.0 s
    assert shed_stop_s(w, 0.1, 3.0, 6.0) == pytest.approx(0.8)
    assert shed_stop_s(windows_with({}, {range(0, 30): 5}, 60), 0.1, 3.0, 6.0) == 0.0
    assert shed_stop_s(windows_with({}, {range(0, 60): 5}, 60), 0.1, 3.0, 6.0) is None


def row(**over: Any) -> dict[str, Any]:
    base = {"proxy": "lbproxy", "refused": 0, "goodput": 0.95, "goodput_x_oracle": 1.0,
            "classes": {"play": {"success": 1.0}}, "admitted_us": {"p99": 40_000},
            "p99_target_us": 44_000, "refusal_us": {"p99": 1_000}}
    return {**base, **over}


def test_goals_name_what_is_missed() -> None:
    three = next(p for p in SURGE.phases if p.name == "3x")
    assert goals_failed(row(refused=10), three, SURGE, "play") == []
    missed = goals_failed(row(refused=10, goodput=0.8, goodput_x_oracle=0.9,
                              classes={"play": {"success": 0.99}},
                              admitted_us={"p99": 50_000}, refusal_us={"p99": 100_000}),
                          three, SURGE, "play")
    assert missed == ["critical <99.5%", "goodput <90%", "p99 >2x unloaded",
                      "refusal p99 >5 ms", "goodput <0.95x HAProxy"]
    light = next(p for p in SURGE.phases if p.name == "0.8x")
    assert goals_failed(row(refused=3), light, SURGE, "play") == ["shed 3"]
    up = next(p for p in SURGE.phases if p.step_at_s is not None and p.load < 1)
    assert goals_failed(row(p99_recovery_s=None), up, SURGE, "play") == [
        "p99 not back within 2 s"]
    assert goals_failed(row(p99_recovery_s=1.2), up, SURGE, "play") == []


def test_connections_cover_every_request_in_flight_until_the_deadline() -> None:
    assert connections_for(3000.0, 2.0) == 3000 * 2.25 + 16
    assert connections_for(1.0, 2.0) == 3 + 16
    assert connections_for(10_000.0, 2.0) == 8000


def test_lbproxy_stands_for_both_variants_and_aiohttp_is_left_out() -> None:
    peers, left_out = surge_peers(["lbproxy", "haproxy", "nginx", "aiohttp"], 4, 100, CLASSES)
    assert [p.name for p in peers] == ["lbproxy", "lbproxy-off", "haproxy", "nginx"]
    assert list(left_out) == ["aiohttp"]


def test_variant_configs_carry_priorities_and_the_shedding_switch() -> None:
    backends = BackendSet(Path("/nonexistent"))
    backends.capacity_origins = [Backend(f"origin{i}", 1000 + i, "capacity") for i in (1, 2)]
    on = SurgeLbproxyPeer("on", CLASSES).config(backends)
    off = SurgeLbproxyPeer("off", CLASSES).config(backends)
    plain = SurgeLbproxyPeer("plain", CLASSES).config(backends)
    assert 'priority = "critical"' in on and 'priority = "sheddable"' in on
    assert "adaptive_concurrency" not in on  # no capacity given: the defaults
    assert "[clusters.segments.adaptive_concurrency]\nenabled = false" in off
    assert "priority" not in plain and "adaptive_concurrency" not in plain
    assert 'backends = ["127.0.0.1:1001", "127.0.0.1:1002"]' in on


class BogusKnobPeer(SurgeLbproxyPeer):
    """A variant whose config has a key no build accepts."""

    def config(self, backends: BackendSet) -> str:
        """The plain config plus an unknown table."""
        return super().config(backends) + "\n[clusters.segments.bogus_knob]\nx = 1\n"


@pytest.fixture
def capacity_backends(tmp_path: Path) -> Any:
    """Two real capacity-limited origins (2 at a time, 5 ms), stopped after the test."""
    backends = BackendSet(tmp_path)
    backends.start_capacity_origins(2, 2, 5)
    yield backends
    backends.stop()


@pytest.mark.timeout(60)
def test_a_variant_the_build_rejects_is_unsupported_not_a_crash(
        tmp_path: Path, capacity_backends: BackendSet) -> None:
    peer = BogusKnobPeer("plain", CLASSES)
    with pytest.raises(PeerUnavailable, match=r"unsupported by this build \(lbproxy check: "
                                               r"clusters\.segments\.bogus_knob"):
        peer.start(tmp_path, capacity_backends, None)
    assert peer.proc is None  # never started


@pytest.mark.timeout(60)
def test_plain_variant_serves_every_class_route_round_robin(
        tmp_path: Path, capacity_backends: BackendSet) -> None:
    peer = SurgeLbproxyPeer("plain", CLASSES)
    peer.start(tmp_path, capacity_backends, None)
    try:
        seen = set()
        for prefix, _ in CLASSES * 2:  # six requests, bounded
            conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=5)
            conn.request("GET", f"{prefix}7/0")
            resp = conn.getresponse()
            assert resp.status == 200 and len(resp.read()) == 512
            seen.add(resp.getheader("X-Backend"))
            conn.close()
        assert seen == {"origin1", "origin2"}
        assert sum(s["served"] for s in capacity_backends.capacity_stats()) == 6
    finally:
        peer.stop()
