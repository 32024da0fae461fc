"""SIGHUP reload: a new snapshot in one assignment, slots kept, bad files change nothing."""

import asyncio
import re
import signal

import aiohttp
import pytest
from support.configs import config_doc
from support.subproc import LbproxyProcess, write_config
from support.wire import http_get

from lbproxy.control import config
from lbproxy.control.controller import Controller

pytestmark = pytest.mark.timeout(90)

RELOADED = re.compile(r"reloaded .* \(version (\d+)\)")
REJECTED = re.compile(r"reload rejected, keeping version (\d+): (.*)")


def _config(path, backends):
    """Write round-robin `segments` over `backends` (listener and admin on port 0)."""
    return write_config(path, config_doc({"segments": backends}, timeouts={"drain": 5.0}))


async def _origins_seen(port, n=12):
    seen = set()
    for i in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /v/r/{i}.ts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        m = re.search(rb"(?i)x-origin: (\S+)", data)
        assert m, data[:200]
        seen.add(m.group(1).decode())
    return seen


async def _version(admin_port):
    async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{admin_port}/clusters") as r:
        doc = await r.json()
    seg = doc["clusters"]["segments"]
    return seg["version"], [b["address"] for b in seg["backends"]]


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sighup_applies_a_valid_file_and_keeps_the_old_on_a_bad_one(tmp_path, origins,
                                                                          workers):
    path = _config(tmp_path / "c.toml", origins[:1])
    proc = LbproxyProcess("run", "-c", str(path), "--workers", workers)
    try:
        assert await proc.ready_async(int(workers)), proc.stderr()
        port, admin_port = proc.port, proc.admin_port
        assert await _origins_seen(port) == {"origin-1"}
        assert await _version(admin_port) == (1, origins[:1])

        _config(path, origins)
        proc.send_signal(signal.SIGHUP)
        ok, seen = await proc.expect_async(RELOADED, 1)
        assert ok and ok[0].group(1) == "2", seen
        assert await _version(admin_port) == (2, origins)
        # Workers apply the line asynchronously: bounded wait until every origin answers.
        got: set[str] = set()
        for _ in range(20):
            got = await _origins_seen(port)
            if got == {"origin-1", "origin-2", "origin-3"}:
                break
            await asyncio.sleep(0.1)
        assert got == {"origin-1", "origin-2", "origin-3"}

        _config(path, ["nohost"])
        proc.send_signal(signal.SIGHUP)
        bad, seen = await proc.expect_async(REJECTED, 1)
        assert bad and bad[0].group(1) == "2", seen
        assert "clusters.segments.backends[0]" in bad[0].group(2)
        assert await _version(admin_port) == (2, origins)
        status, _ = await http_get("127.0.0.1", port, "/v/r/1.ts")
        assert status == 200
    finally:
        rc = await proc.stop_async()
    assert rc == 0, proc.stderr()


def _cfg(backends, bind="127.0.0.1:8080"):
    return config.from_dict({"listener": {"bind": bind},
                             "clusters": {"c": {"backends": backends}},
                             "routes": [{"cluster": "c"}]})


def test_controller_publishes_to_every_sink_and_keeps_slots():
    ctl = Controller(_cfg(["127.0.0.1:1", "127.0.0.1:2"]))
    got: list[object] = []
    ctl.sinks += [got.append, got.append]
    before = {b.address: b.slot for b in ctl.snapshot.clusters["c"].backends}
    snap = ctl.apply(_cfg(["127.0.0.1:3", "127.0.0.1:2"]))
    assert got == [snap, snap] and snap.version == 2 and ctl.snapshot is snap
    kept, reused = (snap.clusters["c"].backend(a) for a in ("127.0.0.1:2", "127.0.0.1:3"))
    assert kept is not None and kept.slot == before["127.0.0.1:2"]
    assert reused is not None and reused.slot == before["127.0.0.1:1"]
    assert ctl.apply(_cfg(["127.0.0.1:3"]), version=9).version == 9


def test_controller_refuses_what_needs_a_restart():
    ctl = Controller(_cfg(["127.0.0.1:1"]))
    with pytest.raises(config.ConfigError) as exc:
        ctl.apply(_cfg(["127.0.0.1:1"], bind="127.0.0.1:8081"))
    assert [p for p, _ in exc.value.errors] == ["listener"]
    assert ctl.snapshot.version == 1
