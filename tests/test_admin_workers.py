"""Admin mutations under `lbproxy run` with 1 and 2 workers: every worker applies them.

With 2 workers the kernel spreads the test's new connections over both (SO_REUSEPORT), so
"every request avoided the drained backend" covers both; the chance that 30 connections
all hash to one worker is 2^-29. The call answers once every worker applied the snapshot,
so no polling is needed for routing; /stats sums the workers' reports (<= 0.25 s old).
"""

from __future__ import annotations

import json

import pytest
from admin_support import TOKEN, call, origins_hit, proxy_config, until
from ctl_support import ADMIN, LISTENING, spawn, stop, wait_for_lines

pytestmark = pytest.mark.timeout(90)

SEG = "/clusters/segments/backends"


@pytest.mark.parametrize("workers", [1, 2])
async def test_put_patch_and_stats_reach_every_worker(tmp_path, origins, workers):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(proxy_config(origins[:1], token=TOKEN)))
    proc = await spawn("run", "-c", str(path), "--workers", str(workers), dataplane=None)
    try:
        found, seen = await wait_for_lines(proc, LISTENING, workers)
        assert len(found) == workers, seen
        admin, seen = await wait_for_lines(proc, ADMIN, 1)
        assert admin, seen
        port, admin_port = int(found[0].group(2)), int(admin[0].group(2))
        assert set(await origins_hit(port, 4)) == {"origin-1"}

        status, doc, _ = await call(admin_port, "PUT", SEG, {"backends": origins}, token="x")
        assert status == 401
        status, doc, _ = await call(admin_port, "PUT", SEG, {"backends": [origins[0], 1]},
                                    token=TOKEN)
        assert (status, doc["errors"][0]["field"]) == (400, "backends[1]")
        status, doc, _ = await call(admin_port, "PUT", SEG, {"backends": origins}, token=TOKEN)
        assert (status, doc) == (200, {"version": 2})
        hits = await origins_hit(port, 30)
        assert set(hits) == {"origin-1", "origin-2", "origin-3"}, hits

        status, doc, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[1]}",
                                    {"state": "drain"}, token=TOKEN)
        assert (status, doc["version"], doc["backend"]["state"]) == (200, 3, "drain")
        hits = await origins_hit(port, 30)
        assert "origin-2" not in hits and sum(hits.values()) == 30, hits

        status, doc, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[1]}",
                                    {"state": "active"}, token=TOKEN)
        assert (status, doc["version"]) == (200, 4)
        hits = await origins_hit(port, 30)
        assert "origin-2" in hits, hits

        async def totals():
            _, doc, _ = await call(admin_port, "GET", "/stats")
            seg = doc["clusters"]["segments"]
            return seg if seg["requests"] == 94 else None

        seg = await until(totals, timeout=5)
        assert seg is not None, "the workers' counts did not add up to 94"
        assert seg["responses"]["2xx"] == 94 and seg["latency_ms"]["p50"] is not None
        assert sum(b["requests"] for b in seg["backends"]) == 94
        _, text, _ = await call(admin_port, "GET", "/metrics")
        assert "lbproxy_config_version 4.0" in text
        rc, err = await stop(proc)
        assert rc == 0, err
    finally:
        if proc.returncode is None:
            await stop(proc)  # also closes the pipes before the loop ends
