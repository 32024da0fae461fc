"""Admin mutations under `lbproxy run` with 1 and 2 workers: every worker applies them.

With 2 workers the kernel spreads the test's new connections over both (SO_REUSEPORT), so
"every request avoided the drained backend" covers both; the chance that 30 connections
all hash to one worker is 2^-29. The call answers once every worker applied the snapshot,
so no polling is needed for routing; /stats sums the workers' reports (<= 0.25 s old).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from pathlib import Path

import pytest
from support.admin import TOKEN, call, origins_hit, round_robin_segments
from support.subproc import ADMIN, LISTENING, LbproxyProcess, write_config
from support.waiting import until

from lbproxy.control import config
from lbproxy.process.startup import DEFAULT_DATAPLANE
from lbproxy.process.supervisor import WORKER_MODULE, Supervisor

pytestmark = pytest.mark.timeout(90)

SEG = "/clusters/segments/backends"


@pytest.mark.parametrize("workers", [1, 2])
async def test_put_patch_and_stats_reach_every_worker(tmp_path, origins, workers):
    path = write_config(tmp_path / "c.json", round_robin_segments(origins[:1], token=TOKEN))
    proc = LbproxyProcess("run", "-c", str(path), "--workers", str(workers))
    try:
        assert await proc.ready_async(workers), proc.stderr()
        port, admin_port = proc.port, proc.admin_port
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
        rc = await proc.stop_async()
        assert rc == 0, proc.stderr()
    finally:
        if proc.returncode is None:
            await proc.stop_async()


async def test_a_restarted_worker_starts_with_the_drain_marks(tmp_path, origins):
    path = write_config(tmp_path / "c.json", round_robin_segments(origins))
    proc = LbproxyProcess("run", "-c", str(path), "--workers", "2")
    try:
        assert await proc.ready_async(2), proc.stderr()
        port, admin_port = proc.port, proc.admin_port
        status, _, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[2]}", {"state": "drain"})
        assert status == 200
        children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
                    .read_text().split()]
        assert len(children) == 2
        os.kill(children[0], signal.SIGKILL)
        again, seen = await proc.expect_async(LISTENING, 1)
        assert again, seen

        async def ready():
            status, _, _ = await call(admin_port, "GET", "/ready")
            return status == 200

        assert await until(ready)
        hits = await origins_hit(port, 30)
        assert set(hits) == {"origin-1", "origin-2"}, hits
    finally:
        if proc.returncode is None:
            await proc.stop_async()


async def test_a_worker_that_does_not_confirm_is_named_in_the_answer(origins, caplog):
    caplog.set_level(logging.INFO, logger="lbproxy")
    stop_event = asyncio.Event()
    supervisor = Supervisor(config.from_dict(round_robin_segments(origins)), 2,
                            DEFAULT_DATAPLANE, stop=stop_event)
    supervisor.propagation_timeout_s = 0.5
    task = asyncio.create_task(supervisor.run())

    def admin_logged() -> re.Match[str] | None:
        # The supervisor runs here: its log records reach this test's log capture.
        return ADMIN.search(caplog.text)

    async def ready():
        try:
            return (await call(admin_port, "GET", "/ready"))[0] == 200
        except OSError:
            return False

    stopped = None
    try:
        admin_line = await until(admin_logged, timeout=20)
        assert admin_line, caplog.text
        admin_port = int(admin_line.group(2))
        assert await until(ready, timeout=20)
        me = os.getpid()
        workers = sorted(
            int(p) for p in Path(f"/proc/{me}/task/{me}/children").read_text().split()
            if WORKER_MODULE.encode() in Path(f"/proc/{p}/cmdline").read_bytes())
        assert len(workers) == 2
        stopped = workers[0]
        os.kill(stopped, signal.SIGSTOP)  # it cannot read the new line, let alone confirm
        status, doc, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[0]}",
                                    {"state": "drain"})
        assert status == 200 and len(doc["pending_workers"]) == 1, doc
        os.kill(stopped, signal.SIGCONT)
        stopped = None
        status, doc, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[0]}",
                                    {"state": "active"})
        assert status == 200 and "pending_workers" not in doc, doc
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        stop_event.set()
        assert await asyncio.wait_for(task, 20) == 0
