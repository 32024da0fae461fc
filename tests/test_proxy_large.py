"""Large bodies: byte-exact 256 MiB both ways, and a 1 GiB upload in bounded proxy memory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.backends import Answer, Backend
from support.configs import config_doc
from support.inproc import on_uvloop, running
from support.subproc import LbproxyProcess, rss_bytes, write_config
from support.wire import Client, pattern_pieces, pattern_sha

MIB = 1 << 20
BIG = 256 * MIB


@pytest.mark.slow
@pytest.mark.parametrize("chunked", [False, True], ids=["fixed", "chunked"])
@on_uvloop
async def test_256mib_download_is_byte_exact(chunked: bool) -> None:
    backend = Backend(lambda req: Answer(size=BIG, chunked=chunked), record_raw=False)
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
        await c.send_stream(pattern_pieces(BIG), chunked=chunked)
        resp = await c.response(timeout=60)
        c.close()
    assert resp.status == 200
    (req,) = backend.requests
    assert (req.body_len, req.body_sha) == (BIG, pattern_sha(BIG))


@pytest.mark.slow
@on_uvloop
async def test_1gib_upload_streams_in_bounded_memory(tmp_path: Path) -> None:
    size = 1024 * MIB
    backend = await Backend(record_raw=False).start()
    # `lbproxy run` with one worker: the data plane runs in the process started here.
    config = write_config(tmp_path / "lbproxy.toml", config_doc({"c": [backend.address]}))
    proc = LbproxyProcess("run", "--config", str(config))
    try:
        assert await proc.ready_async(), proc.stderr()
        # warm up (imports, first connections) before taking the baseline
        c = await Client.connect(proc.port)
        await c.send(b"POST /warm HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n")
        await c.send_stream(pattern_pieces(MIB))
        assert (await c.response()).status == 200
        baseline = peak = rss_bytes(proc.pid)

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_bytes(proc.pid))
                await asyncio.sleep(0.02)

        sampler = asyncio.ensure_future(sample())
        await c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
        await c.send_stream(pattern_pieces(size))
        resp = await c.response(timeout=90)
        sampler.cancel()
        c.close()
        assert resp.status == 200
        big = backend.requests[-1]
        assert (big.body_len, big.body_sha) == (size, pattern_sha(size))
        grew = peak - baseline
        print(f"proxy RSS baseline {baseline // MIB} MiB, peak {peak // MIB} MiB during 1 GiB")
        assert grew < 64 * MIB, f"RSS grew {grew // MIB} MiB"
    finally:
        proc.kill()
        await proc.wait_async()
        await backend.stop()
