"""GET /stats and GET /metrics in one process, after real traffic through the proxy."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.admin import call, origins_hit, round_robin_segments
from support.inproc import serving

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def after_traffic(origins, refused_address):
    """A proxy that served 6 x 2xx and 2 x 4xx on `segments` and 1 x 502 on `dead`."""
    dead = refused_address
    cfg = round_robin_segments(origins[:2], extra_clusters={"dead": {"backends": [dead]}})
    async with serving(cfg) as served:
        port, admin_port = served.port, served.admin_port
        assert set(await origins_hit(port, 6)) == {"origin-1", "origin-2"}
        assert await origins_hit(port, 2, prefix="/missing") == {"404": 2}
        assert await origins_hit(port, 1, prefix="/dead") == {"502": 1}
        yield admin_port, origins[:2], dead


async def test_stats_counts_classes_failures_and_latency(after_traffic):
    admin_port, members, dead = after_traffic
    status, doc, _ = await call(admin_port, "GET", "/stats")
    assert status == 200 and doc["version"] == 1
    seg = doc["clusters"]["segments"]
    assert seg["requests"] == 8 and seg["inflight"] == 0
    assert seg["responses"] == {"none": 0, "1xx": 0, "2xx": 6, "3xx": 0, "4xx": 2, "5xx": 0}
    assert seg["failures"] == {"http_5xx": 0, "connect_failed": 0, "reset": 0, "timeout": 0}
    assert [b["address"] for b in seg["backends"]] == members
    assert [b["requests"] for b in seg["backends"]] == [4, 4]  # round robin
    assert sum(b["responses"]["2xx"] for b in seg["backends"]) == 6
    lat = seg["latency_ms"]
    assert set(lat) == {"p50", "p90", "p99", "p999"}
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] < 5000
    d = doc["clusters"]["dead"]["backends"][0]
    assert (d["address"], d["requests"]) == (dead, 1)
    assert d["failures"]["connect_failed"] == 1 and d["responses"]["none"] == 1
    assert d["latency_ms"]["p50"] is not None


async def test_metrics_is_prometheus_text_with_the_same_counts(after_traffic):
    admin_port, members, dead = after_traffic
    status, text, hdrs = await call(admin_port, "GET", "/metrics")
    assert status == 200
    assert hdrs["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}

    def value(name, **labels):
        return samples[(name, tuple(sorted(labels.items())))]

    a, b = members
    assert value("lbproxy_requests_total", cluster="segments", backend=a,
                 code_class="2xx") == 3
    assert sum(value("lbproxy_requests_total", cluster="segments", backend=m,
                     code_class="4xx") for m in members) == 2
    assert value("lbproxy_request_failures_total", cluster="dead", backend=dead,
                 outcome="connect_failed") == 1
    assert value("lbproxy_backend_inflight", cluster="segments", backend=b) == 0
    assert value("lbproxy_retries_total", cluster="segments", backend=b) == 0
    assert value("lbproxy_backend_drained", cluster="segments", backend=b) == 0
    assert value("lbproxy_backend_healthy", cluster="segments", backend=b) == 1
    assert value("lbproxy_backend_ejected", cluster="segments", backend=b) == 0
    assert families["lbproxy_request_duration_seconds"].type == "histogram"
    assert value("lbproxy_request_duration_seconds_count", cluster="segments", backend=a) == 4
    assert value("lbproxy_request_duration_seconds_bucket", cluster="segments", backend=a,
                 le="+Inf") == 4
    assert value("lbproxy_request_duration_seconds_sum", cluster="segments", backend=a) > 0
    assert value("lbproxy_config_version") == 1
    assert value("lbproxy_ready") == 1
    assert all(name.startswith("lbproxy_") for name in families)
