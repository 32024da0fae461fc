"""Overload figures in /stats, /clusters and /metrics, with one worker and with two (the
supervisor sums the workers' limits, queues and shed counts)."""

from __future__ import annotations

import asyncio

import pytest
from support.admin import call
from support.subproc import LbproxyProcess, write_config
from support.waiting import until

from lbproxy.admin import stats
from lbproxy.balance.gate import NO_HEALTHY_BACKEND
from lbproxy.control import config
from lbproxy.control.snapshot import snapshot_of

pytestmark = pytest.mark.timeout(90)


def _doc(origins: list[str]) -> dict:
    return {
        "listener": {"bind": "127.0.0.1:0"}, "admin": {"bind": "127.0.0.1:0"},
        "clusters": {
            "segments": {"policy": "round_robin", "backends": origins},
            # every backend drained: each request is refused with no_healthy_backend
            "closed": {"backends": [{"address": origins[0]}]},
        },
        "routes": [{"path_prefix": "/closed/", "cluster": "closed"},
                   {"path_prefix": "/", "cluster": "segments"}],
    }


async def _get(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize("workers", [1, 2])
async def test_limits_and_refusals_are_reported(tmp_path, origins, workers):
    path = write_config(tmp_path / "c.json", _doc(origins))
    proc = LbproxyProcess("run", "-c", str(path), "--workers", str(workers))
    try:
        assert await proc.ready_async(workers), proc.stderr()
        status, _, _ = await call(proc.admin_port, "PATCH",
                                  f"/clusters/closed/backends/{origins[0]}", {"state": "drain"})
        assert status == 200
        for _ in range(6):
            assert await _get(proc.port, "/closed/x") == 503
        assert await _get(proc.port, "/v/1/seg") == 200

        async def reported():
            _, doc, _ = await call(proc.admin_port, "GET", "/stats")
            closed = doc["clusters"]["closed"]
            limits = [b["limit"] for b in doc["clusters"]["segments"]["backends"]]
            ok = closed["refusals"] == {"no_healthy_backend": 6} and limits == [20 * workers] * 3
            return doc if ok else None

        doc = await until(reported, timeout=5)
        assert doc is not None, "refusals and limits not reported"
        seg = doc["clusters"]["segments"]["overload"]
        assert seg["algorithm"] == "gradient2" and seg["admission_level"] == 1.0
        assert seg["queue"]["length"] == 0
        assert seg["shed"]["sheddable"] == {"shed": 0, "queue_timeout": 0, "self_protect": 0}
        _, clusters, _ = await call(proc.admin_port, "GET", "/clusters")
        assert [b["limit"] for b in clusters["clusters"]["segments"]["backends"]] == \
            [20 * workers] * 3
        _, text, _ = await call(proc.admin_port, "GET", "/metrics")
        assert 'lbproxy_refusals_total{cluster="closed",code="no_healthy_backend"} 6.0' in text
        assert f'lbproxy_backend_limit{{backend="{origins[0]}",cluster="segments"}} ' \
               f'{20 * workers}.0' in text
        assert 'lbproxy_admission_level{cluster="segments"} 1.0' in text
        assert await proc.stop_async() == 0, proc.stderr()
    finally:
        if proc.returncode is None:
            await proc.stop_async()


def test_shed_counts_travel_from_worker_to_supervisor():
    cfg = config.from_dict(_doc(["127.0.0.1:1", "127.0.0.1:2"]))
    sup_states: dict = {}
    worker, supervisor = snapshot_of(cfg), snapshot_of(cfg, sup_states)
    overload = worker.clusters["segments"].state.overload
    overload.shed[2 * 3 + 0] += 4  # sheddable, shed
    overload.queue.refused_by[1] += 2  # normal, queue_timeout
    overload.queue.served += 3
    worker.clusters["closed"].state.refused(NO_HEALTHY_BACKEND)
    reporter = stats.OverloadReporter()
    stats.add_overload_deltas(sup_states, reporter.collect(worker))
    assert reporter.collect(worker) == {}  # nothing moved since
    overload.shed[2 * 3 + 0] += 1
    stats.add_overload_deltas(sup_states, reporter.collect(worker))
    view = stats.overload_view(supervisor.clusters["segments"].state.overload)
    assert view is not None
    assert view["shed"]["sheddable"]["shed"] == 5
    assert view["shed"]["normal"]["queue_timeout"] == 2
    assert view["queue"]["admitted_after_wait"] == 3
    assert supervisor.clusters["closed"].state.refusals == {"no_healthy_backend": 1}
