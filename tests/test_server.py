"""Server start-up, workers, signals, drain, admin API and TLS, on real sockets.

These run the real `lbproxy.proxy.DataPlane` against backends the test starts, except the
SO_REUSEPORT spread test, which uses `support.standin.StandInDataPlane` (tests only)
because it must see which worker process answered.
"""

import asyncio
import contextlib
import json
import os
import re
import signal
import ssl
import subprocess

import aiohttp
import pytest
import trustme
from aiohttp import web
from support.configs import segments_doc
from support.inproc import serving
from support.subproc import LISTENING, STANDIN, LbproxyProcess, write_config
from support.waiting import until
from support.wire import http_get

from lbproxy import demo
from lbproxy.balance.gate import Lease, Outcome
from lbproxy.control import config
from lbproxy.process import listeners
from lbproxy.process.startup import StartupError
from lbproxy.proxy import DataPlane

pytestmark = pytest.mark.timeout(90)


async def _admin_json(port, path):
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.json()


def _write(tmp_path, doc, name="c.toml"):
    return str(write_config(tmp_path / name, doc))


@pytest.fixture
async def held_origin():
    """An origin whose answers wait until the test sets `release`; yields (address, ...)."""
    release = asyncio.Event()
    arrived = []

    async def handle(request):
        arrived.append(request.path)
        await release.wait()
        return web.Response(text="released")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    from lbproxy.admin.webapp import start_app

    runner, port = await start_app(app, "127.0.0.1", 0)
    yield f"127.0.0.1:{port}", release, arrived
    release.set()
    await runner.cleanup()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_run_proxies_then_exits_0_on_signal(tmp_path, origins, sig):
    proc = LbproxyProcess("run", "-c", _write(tmp_path, segments_doc(origins)))
    try:
        found, seen = await proc.expect_async(LISTENING, 1)
        assert found, seen
        assert found[0].group(3, 4) == ("1", "1")
        port = int(found[0].group(2))
        status, body = await http_get("127.0.0.1", port, "/v/abc/1.ts")
        assert status == 200 and body == demo.segment_content("abc", "1.ts")
    finally:
        proc.send_signal(sig)
        # Wait for this one signal to end the process; stop() would add a SIGTERM at once,
        # and the test is about a single SIGTERM or SIGINT.
        with contextlib.suppress(subprocess.TimeoutExpired):
            await proc.wait_async(20)
        rc = await proc.stop_async()
    err = proc.stderr()
    assert rc == 0, err
    assert "draining" in err and "stopped" in err


@pytest.fixture
async def standin_workers(tmp_path):
    """`lbproxy run --workers 2` with the stand-in; yields (proc, listening matches, admin port).

    The fixture stops the process and asserts it exited 0, unless the test ended it.
    """
    cfg = _write(tmp_path, segments_doc())
    proc = LbproxyProcess("run", "-c", cfg, "--workers", "2", dataplane=STANDIN)
    ended_by_test = False
    try:
        assert await proc.ready_async(2), proc.stderr()
        yield proc, proc.listening, proc.admin_port
        ended_by_test = proc.returncode is not None
    finally:
        rc = await proc.stop_async()
    assert ended_by_test or rc == 0, proc.stderr()


async def _answering_pids(port, want=2):
    """Worker pids seen answering on `port` (bounded: the kernel spreads by 4-tuple hash)."""
    pids = set()
    for _ in range(300):
        status, body = await http_get("127.0.0.1", port)
        assert status == 200
        pids.add(int(body.split(b"=")[1]))
        if len(pids) == want:
            break
    return pids


async def test_two_workers_both_accept_on_one_port(standin_workers):
    _, found, admin_port = standin_workers
    assert sorted(m.group(3) for m in found) == ["1", "2"]
    ports = {m.group(2) for m in found}
    assert len(ports) == 1  # both bound the same port (SO_REUSEPORT)
    assert len(await _answering_pids(int(ports.pop()))) == 2
    status, ready = await _admin_json(admin_port, "/ready")
    assert (status, ready["ready"]) == (200, True)
    status, doc = await _admin_json(admin_port, "/clusters")
    assert status == 200
    seg = doc["clusters"]["segments"]
    assert seg["policy"] == "maglev" and seg["version"] == 1
    assert [b["inflight"] for b in seg["backends"]] == [0, 0, 0]


@pytest.fixture
async def in_process(held_origin):
    """`serve` in this loop with the real data plane; yields a small handle."""
    held, _, _ = held_origin
    cfg = config.from_dict({
        "listener": {"bind": "127.0.0.1:0"},
        "admin": {"bind": "127.0.0.1:0", "token": "t"},
        "timeouts": {"drain": 10.0},
        "clusters": {
            "segments": {"policy": "maglev", "table_size": 101,
                         "backends": ["127.0.0.1:9001", {"address": "127.0.0.1:9002",
                                                         "weight": 3, "zone": "b"}]},
            "uploads": {"policy": "p2c", "backends": ["127.0.0.1:9101"]},
            "held": {"backends": [held]},
        },
        "routes": [{"path_prefix": "/upload", "cluster": "uploads"},
                   {"path_prefix": "/held", "cluster": "held"},
                   {"cluster": "segments"}],
    })
    async with serving(cfg) as served:
        yield served.listener, served.admin, served.admin_port, served.stop, served.task


async def test_clusters_has_the_contract_shape_and_live_inflight(in_process):
    _, admin, admin_port, _, _ = in_process
    snap = admin.snapshot
    lease = snap.clusters["segments"].begin(b"/v/x/", 0)
    assert isinstance(lease, Lease)
    snap.clusters["segments"].state.set_drain("127.0.0.1:9001", True)
    status, doc = await _admin_json(admin_port, "/clusters")
    lease.end(Outcome.OK, 10)
    assert status == 200
    assert set(doc) == {"clusters"}
    assert set(doc["clusters"]) == {"segments", "uploads", "held"}
    seg = doc["clusters"]["segments"]
    assert seg["policy"] == "maglev" and seg["version"] == 1
    by_addr = {b["address"]: b for b in seg["backends"]}
    for b in seg["backends"]:
        assert {"address", "weight", "zone", "state", "healthy", "inflight"} <= set(b)
        assert b["healthy"] is True
    assert by_addr["127.0.0.1:9002"]["weight"] == 3 and by_addr["127.0.0.1:9002"]["zone"] == "b"
    assert by_addr["127.0.0.1:9001"]["state"] == "drain"
    assert by_addr["127.0.0.1:9002"]["state"] == "active"
    assert by_addr[lease.backend.address]["inflight"] == 1
    assert doc["clusters"]["uploads"]["policy"] == "p2c"
    _, doc = await _admin_json(admin_port, "/clusters")
    assert all(b["inflight"] == 0 for b in doc["clusters"]["segments"]["backends"])


async def test_snapshot_is_swapped_by_one_assignment(in_process):
    _, admin, admin_port, _, _ = in_process
    from lbproxy.control.snapshot import snapshot_of

    new = snapshot_of(admin.snapshot.config, {}, 7)
    admin.snapshot = new
    _, doc = await _admin_json(admin_port, "/clusters")
    assert doc["clusters"]["segments"]["version"] == 7


async def test_drain_finishes_in_flight_requests_and_ready_goes_503(in_process, held_origin):
    listener, admin, admin_port, stop_event, task = in_process
    _, release, arrived = held_origin
    assert (await _admin_json(admin_port, "/ready"))[0] == 200
    pending = asyncio.create_task(http_get("127.0.0.1", listener.port, "/held/1", timeout=30))
    assert await until(lambda: arrived)
    _, doc = await _admin_json(admin_port, "/clusters")
    assert doc["clusters"]["held"]["backends"][0]["inflight"] == 1
    stop_event.set()
    assert await until(lambda: admin.draining)
    status, body = await _admin_json(admin_port, "/ready")
    assert (status, body) == (503, {"ready": False, "reason": "draining"})
    with pytest.raises(OSError):  # the listener no longer accepts
        await http_get("127.0.0.1", listener.port, timeout=2)
    assert not task.done() and not pending.done()
    release.set()
    assert await pending == (200, b"released")  # the in-flight request was finished
    await asyncio.wait_for(task, 20)


async def test_ready_is_503_while_starting():
    from lbproxy.admin.api import AdminAPI
    from lbproxy.control.snapshot import snapshot_of

    cfg = config.from_dict({"clusters": {"a": {"backends": ["127.0.0.1:1"]}},
                            "routes": [{"cluster": "a"}]})
    api = AdminAPI(snapshot_of(cfg))
    port = await api.start("127.0.0.1", 0)
    try:
        assert await _admin_json(port, "/ready") == (503, {"ready": False,
                                                          "reason": "starting"})
        api.accepting = True
        assert await _admin_json(port, "/ready") == (200, {"ready": True})
    finally:
        await api.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("tls")
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    with open(d / "cert.pem", "ab") as f:
        for pem in cert.cert_chain_pems[1:]:
            f.write(pem.bytes())
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return d / "cert.pem", d / "key.pem", client


def test_ssl_context_from_listener_tls(tls_files):
    cert, key, _ = tls_files
    ctx = listeners.build_ssl_context(config.TLS(cert=str(cert), key=str(key)))
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        listeners.build_ssl_context(config.TLS(cert=str(key), key=str(key)))


async def test_tls_listener_proxies_https(tmp_path, tls_files, origins):
    cert, key, client = tls_files
    cfg = segments_doc(origins, listener={"tls": {"cert": str(cert), "key": str(key)}})
    proc = LbproxyProcess("run", "-c", _write(tmp_path, cfg))
    try:
        found, seen = await proc.expect_async(LISTENING, 1)
        assert found, seen
        assert ", tls)" in seen
        port = int(found[0].group(2))
        status, body = await http_get("127.0.0.1", port, "/v/tls/2.ts", ssl_context=client)
        assert status == 200 and body == demo.segment_content("tls", "2.ts")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await http_get("127.0.0.1", port, ssl_context=ssl.create_default_context())
    finally:
        rc = await proc.stop_async()
    assert rc == 0, proc.stderr()


def test_missing_tls_files_are_config_errors(tmp_path):
    with pytest.raises(config.ConfigError) as exc:
        config.from_dict({"listener": {"tls": {"cert": str(tmp_path / "c"),
                                               "key": str(tmp_path / "k")}},
                          "clusters": {"a": {"backends": ["127.0.0.1:1"]}},
                          "routes": [{"cluster": "a"}]})
    assert {p for p, _ in exc.value.errors} == {"listener.tls.cert", "listener.tls.key"}


def test_clusters_document_is_json_serialisable(tmp_path):
    from lbproxy.admin.api import AdminAPI
    from lbproxy.control.snapshot import snapshot_of

    cfg = config.from_dict({"clusters": {"a": {"backends": ["127.0.0.1:1"]}},
                            "routes": [{"cluster": "a"}]})
    doc = AdminAPI(snapshot_of(cfg, {}, 3), lambda c, a: 5).clusters_view()
    assert json.loads(json.dumps(doc))["clusters"]["a"]["backends"][0]["inflight"] == 5


async def test_two_workers_proxy_and_clusters_sums_their_inflight(tmp_path, origins,
                                                                   held_origin):
    held, release, arrived = held_origin
    cfg = segments_doc(origins)
    cfg["clusters"]["held"] = {"backends": [held]}
    # Segments under /v/ only, so that /held reaches the held route after it.
    cfg["routes"][0]["path_prefix"] = "/v/"
    cfg["routes"].append({"path_prefix": "/held", "cluster": "held"})
    proc = LbproxyProcess("run", "-c", _write(tmp_path, cfg), "--workers", "2")
    try:
        assert await proc.ready_async(2), proc.stderr()
        port, admin_port = proc.port, proc.admin_port
        for i in range(6):
            status, body = await http_get("127.0.0.1", port, f"/v/w{i}/1.ts")
            assert status == 200 and body == demo.segment_content(f"w{i}", "1.ts")
        pending = [asyncio.create_task(http_get("127.0.0.1", port, f"/held/{i}", timeout=30))
                   for i in range(6)]
        assert await until(lambda: len(arrived) == 6)
        total = 0
        for _ in range(100):  # bounded: reports arrive every REPORT_INTERVAL_S
            _, doc = await _admin_json(admin_port, "/clusters")
            total = doc["clusters"]["held"]["backends"][0]["inflight"]
            if total == 6:
                break
            await asyncio.sleep(0.05)
        assert total == 6  # summed across both workers' reports
        release.set()
        assert [await t for t in pending] == [(200, b"released")] * 6
    finally:
        rc = await proc.stop_async()
    assert rc == 0, proc.stderr()


async def test_a_killed_worker_is_restarted_and_ready_recovers(standin_workers):
    proc, found, admin_port = standin_workers
    port = int(found[0].group(2))
    pids = await _answering_pids(port)
    assert len(pids) == 2
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    again, seen = await proc.expect_async(LISTENING, 1)
    assert again, seen
    assert "exited (-9); restarting" in seen
    for _ in range(100):  # bounded: readiness is re-evaluated every REPORT_INTERVAL_S
        status, _ = await _admin_json(admin_port, "/ready")
        if status == 200:
            break
        await asyncio.sleep(0.05)
    assert status == 200
    status, body = await http_get("127.0.0.1", port)
    assert status == 200 and int(body.split(b"=")[1]) != victim


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_data_plane_that_cannot_load_fails_start_up(tmp_path, workers):
    cfg = _write(tmp_path, segments_doc())
    proc = LbproxyProcess("run", "-c", cfg, "--workers", workers, dataplane="no_such_module:X")
    assert await proc.wait_async(30) == 1
    assert "cannot load the data plane no_such_module:X" in proc.stderr()


async def test_ipv6_loopback_listener(tmp_path):
    cfg = _write(tmp_path, segments_doc(listener={"bind": "[::1]:0"}, admin={"bind": "[::1]:0"}))
    proc = LbproxyProcess("run", "-c", cfg, dataplane=STANDIN)
    try:
        found, seen = await proc.expect_async(LISTENING, 1)
        assert found and found[0].group(1) == "[::1]", seen
        status, body = await http_get("::1", int(found[0].group(2)))
        assert status == 200 and body.startswith(b"pid=")
    finally:
        rc = await proc.stop_async()
    assert rc == 0, proc.stderr()


async def test_workers_exit_when_the_supervisor_is_killed(standin_workers):
    proc, found, _ = standin_workers
    pids = await _answering_pids(int(found[0].group(2)))
    assert len(pids) == 2
    proc.kill()  # SIGKILL: no drain, no chance to signal the workers
    await proc.wait_async()
    lines, seen = await proc.expect_async(re.compile(r"supervisor went away"), 2)
    assert len(lines) == 2, seen
    loop = asyncio.get_running_loop()
    end = loop.time() + 15
    alive = set(pids)
    while alive and loop.time() < end:
        for pid in list(alive):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive.discard(pid)
        await asyncio.sleep(0.05)
    assert not alive, f"orphaned workers still running: {alive}"


def test_a_bad_certificate_is_a_startup_error(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    cfg = config.from_dict({"listener": {"tls": {"cert": str(bad), "key": str(bad)}},
                            "clusters": {"a": {"backends": ["127.0.0.1:1"]}},
                            "routes": [{"cluster": "a"}]})
    from lbproxy.control.snapshot import snapshot_of

    with pytest.raises(StartupError, match=r"cannot load listener\.tls"):
        listeners.Listener(cfg, snapshot_of(cfg), DataPlane, 0)


def test_run_raises_the_soft_fd_limit_to_the_hard_limit():
    """A proxy needs a descriptor per connection: the soft limit is lifted at start-up."""
    import resource
    import subprocess
    import sys

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    code = (
        "import resource; from lbproxy.process.run import raise_fd_limit; "
        "print(raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    # Start the child with a low soft limit, as a distribution's default would.
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    ).stdout.split()
    expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
    assert out == [str(expected), str(expected)]
