"""Per-request control-plane costs (pytest-benchmark): route match, hash key, begin/end.

Run: .venv/bin/python -m pytest bench/test_control_bench.py --benchmark-only (`make bench`
runs it). Snapshots are built outside the measured body; one uniquely named function per
case.
"""

from __future__ import annotations

from lbproxy.balance.gate import Lease, Outcome
from lbproxy.control import config
from lbproxy.control.snapshot import snapshot_of

PATH = b"/v/3f2a91c0/00017.ts"
HEADERS = [(b"host", b"cdn.example.com"), (b"user-agent", b"player/1.0"),
           (b"accept", b"*/*"), (b"cookie", b"a=1; sid=abc123; theme=dark")]


def _snapshot():
    return snapshot_of(config.from_dict({
        "clusters": {
            "segments": {"policy": "maglev", "backends": [f"127.0.0.1:{9000 + i}"
                                                          for i in range(20)]},
            "uploads": {"policy": "p2c", "backends": ["127.0.0.1:9101", "127.0.0.1:9102"]},
        },
        "routes": [
            {"path_prefix": "/upload", "methods": ["POST", "PUT"], "cluster": "uploads"},
            {"path_prefix": "/api", "host": "api.example.com", "cluster": "uploads"},
            {"path_prefix": "/", "cluster": "segments", "hash_on": "path_regex:^/v/([^/]+)/"},
        ],
    }))


def test_bench_router_match_third_route(benchmark):
    router = _snapshot().router
    route = benchmark(router.match, b"GET", PATH, b"cdn.example.com", HEADERS)
    assert route is not None and route.cluster.name == "segments"


def test_bench_hash_key_path_regex(benchmark):
    route = _snapshot().router.match(b"GET", PATH, b"", HEADERS)
    assert route is not None
    assert benchmark(route.hash_key, PATH, b"", HEADERS) == b"3f2a91c0"


def test_bench_hash_key_cookie(benchmark):
    from lbproxy.proxy.routing import Route

    route = Route(_snapshot().clusters["segments"], hash_on="cookie:sid")
    assert benchmark(route.hash_key, PATH, b"", HEADERS) == b"abc123"


def test_bench_begin_end_bounded_maglev(benchmark):
    cluster = _snapshot().clusters["segments"]

    def one_request() -> None:
        lease = cluster.begin(b"3f2a91c0", 1_000)
        assert isinstance(lease, Lease)
        lease.end(Outcome.OK, 2_000_000, 200)

    benchmark(one_request)
    assert all(cluster.state.inflight(b.address) == 0 for b in cluster.backends)
