"""Large bodies: byte-exact 256 MiB both ways, and a 1 GiB upload in bounded proxy memory."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from proxy_harness import Backend, Client, Reply, on_uvloop, pattern, pattern_sha, running

MIB = 1 << 20
BIG = 256 * MIB


@pytest.mark.slow
@pytest.mark.parametrize("chunked", [False, True], ids=["fixed", "chunked"])
@on_uvloop
async def test_256mib_download_is_byte_exact(chunked: bool) -> None:
    backend = Backend(lambda req: Reply(size=BIG, chunked=chunked), record_raw=False)
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await c.response(timeout=60)
        c.close()
    assert resp.status == 200 and resp.complete
    assert (resp.body_len, resp.body_sha) == (BIG, pattern_sha(BIG))


@pytest.mark.slow
@pytest.mark.parametrize("chunked", [False, True], ids=["fixed", "chunked"])
@on_uvloop
async def test_256mib_upload_is_byte_exact(chunked: bool) -> None:
    backend = Backend(record_raw=False)
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % BIG
        await c.send(b"POST /up HTTP/1.1\r\nHost: a\r\n" + framing + b"\r\n\r\n")
        await c.send_stream(pattern(BIG), chunked=chunked)
        resp = await c.response(timeout=60)
        c.close()
    assert resp.status == 200
    (req,) = backend.requests
    assert (req.body_len, req.body_sha) == (BIG, pattern_sha(BIG))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@on_uvloop
async def test_1gib_upload_streams_in_bounded_memory() -> None:
    size = 1024 * MIB
    backend = await Backend(record_raw=False).start()
    cfg = {"clusters": {"c": {"backends": [backend.address]}},
           "routes": [{"path_prefix": "/", "cluster": "c"}]}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("proxy_subprocess.py")), json.dumps(cfg),
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert proc.stdout is not None
        port = int(await asyncio.wait_for(proc.stdout.readline(), 20))
        # warm up (imports, first connections) before taking the baseline
        c = await Client.connect(port)
        await c.send(b"POST /warm HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n")
        await c.send_stream(pattern(MIB))
        assert (await c.response()).status == 200
        baseline = peak = _rss_kib(proc.pid)

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, _rss_kib(proc.pid))
                await asyncio.sleep(0.02)

        sampler = asyncio.ensure_future(sample())
        await c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
        await c.send_stream(pattern(size))
        resp = await c.response(timeout=90)
        sampler.cancel()
        c.close()
        assert resp.status == 200
        big = backend.requests[-1]
        assert (big.body_len, big.body_sha) == (size, pattern_sha(size))
        grew = (peak - baseline) * 1024
        print(f"proxy RSS baseline {baseline // 1024} MiB, peak {peak // 1024} MiB during 1 GiB")
        assert grew < 64 * MIB, f"RSS grew {grew // MIB} MiB"
    finally:
        proc.kill()
        await proc.wait()
        await backend.stop()
