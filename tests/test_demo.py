"""Demo backends (Range, ETag, SHA-256 of uploads) and `lbproxy demo` end to end."""

import asyncio
import hashlib
import io
import json
import subprocess

import aiohttp
import pytest
from support.subproc import ADMIN, LbproxyProcess, skip_if_port_taken
from support.waiting import until

from lbproxy import demo

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def origin():
    runner, port = await demo.start_segment_origin("127.0.0.1", 0, "origin-x")
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def sink():
    runner, port = await demo.start_upload_sink("127.0.0.1", 0, "sink-x")
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def test_segment_content_is_a_function_of_video_and_segment():
    a = demo.segment_content("v1", "1.ts")
    assert len(a) == demo.SEGMENT_BYTES == 256 * 1024
    assert a == demo.segment_content("v1", "1.ts")
    assert a != demo.segment_content("v1", "2.ts") != demo.segment_content("v2", "1.ts")


@pytest.mark.parametrize(
    ("header", "want"),
    [
        ("bytes=0-99", (0, 100)),
        ("bytes=100-", (100, 1000)),
        ("bytes=-10", (990, 1000)),
        ("bytes=990-5000", (990, 1000)),  # clamped to the representation
        ("bytes=1000-", None),  # unsatisfiable → 416
        ("bytes=-0", None),
    ],
)
def test_parse_range(header, want):
    assert demo.parse_range(header, 1000) == want


@pytest.mark.parametrize("header", ["bytes=5-1", "items=0-1", "bytes=0-1,5-6", "bytes=-"])
def test_parse_range_rejects_what_is_not_one_byte_range(header):
    with pytest.raises(ValueError):
        demo.parse_range(header, 1000)


async def test_origin_full_range_head_and_validators(origin):
    body = demo.segment_content("abc", "3.ts")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{origin}/v/abc/3.ts") as r:
            assert r.status == 200 and await r.read() == body
            assert r.headers["X-Origin"] == "origin-x"
            etag, lm = r.headers["ETag"], r.headers["Last-Modified"]
            assert r.headers["Accept-Ranges"] == "bytes"
        async with s.get(f"{origin}/v/abc/3.ts", headers={"Range": "bytes=10-19"}) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == f"bytes 10-19/{len(body)}"
            assert await r.read() == body[10:20]
        async with s.get(f"{origin}/v/abc/3.ts", headers={"Range": "bytes=-5"}) as r:
            assert r.status == 206 and await r.read() == body[-5:]
        async with s.get(f"{origin}/v/abc/3.ts", headers={"Range": "bytes=999999-"}) as r:
            assert r.status == 416 and r.headers["Content-Range"] == f"bytes */{len(body)}"
        async with s.get(f"{origin}/v/abc/3.ts",
                         headers={"Range": "bytes=0-0", "If-Range": '"stale"'}) as r:
            assert r.status == 200 and len(await r.read()) == len(body)  # If-Range mismatch
        async with s.get(f"{origin}/v/abc/3.ts", headers={"If-None-Match": etag}) as r:
            assert r.status == 304
        async with s.head(f"{origin}/v/abc/3.ts") as r:
            assert r.status == 200 and r.headers["Content-Length"] == str(len(body))
            assert r.headers["Last-Modified"] == lm
        async with s.get(f"{origin}/elsewhere") as r:
            assert r.status == 404


async def test_sink_hashes_content_length_chunked_and_expect_continue(sink):
    payload = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB
    want = {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}

    async def chunks():
        for i in range(0, len(payload), 100_000):
            yield payload[i : i + 100_000]

    async with aiohttp.ClientSession() as s:
        async with s.post(f"{sink}/upload/a", data=io.BytesIO(payload)) as r:
            doc = await r.json()
            assert {k: doc[k] for k in want} == want
            assert doc["method"] == "POST" and doc["sink"] == "sink-x"
        async with s.put(f"{sink}/upload/b", data=chunks()) as r:  # chunked
            doc = await r.json()
            assert {k: doc[k] for k in want} == want and doc["method"] == "PUT"
        async with s.post(f"{sink}/upload/c", data=io.BytesIO(payload), expect100=True) as r:
            assert {k: (await r.json())[k] for k in want} == want


async def test_lbproxy_demo_answers_its_printed_curl_examples():
    proc = LbproxyProcess("demo")
    try:
        found, seen = await proc.expect_async(ADMIN, 1, timeout=60)
        if not found:
            skip_if_port_taken(proc, 8080, 9901)  # the demo binds these fixed ports
        assert found, seen
        assert await until(lambda: "Ctrl-C" in proc.stdout(), timeout=10), proc.stdout()
        printed = proc.stdout()
        examples = [ln.strip() for ln in printed.splitlines()
                    if ln.strip().startswith(("curl", "printf"))]
        assert len(examples) == 5, printed
        out = {}
        for cmd in examples:
            r = await asyncio.to_thread(subprocess.run, cmd, shell=True, capture_output=True,
                                        timeout=30)
            assert r.returncode == 0, (cmd, r.stderr)
            out[cmd] = r.stdout.decode()
        full, ranged, upload, clusters, ready = (out[c] for c in examples)
        assert full.startswith("HTTP/1.1 200") and "x-origin: origin-" in full.lower()
        assert f"content-length: {demo.SEGMENT_BYTES}" in full.lower()
        assert ranged.startswith("HTTP/1.1 206")
        assert f"content-range: bytes 0-1023/{demo.SEGMENT_BYTES}" in ranged.lower()
        up = json.loads(upload)
        assert up["bytes"] == len(b"hello lbproxy")
        assert up["sha256"] == hashlib.sha256(b"hello lbproxy").hexdigest()
        doc = json.loads(clusters)["clusters"]
        assert doc["segments"]["policy"] == "maglev" and len(doc["segments"]["backends"]) == 3
        assert doc["uploads"]["policy"] == "p2c" and len(doc["uploads"]["backends"]) == 2
        assert json.loads(ready) == {"ready": True}
    finally:
        rc = await proc.stop_async()
    assert rc == 0, proc.stderr()
