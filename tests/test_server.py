"""Server start-up, workers, signals, drain, admin API and TLS, on real sockets.

Until the data plane lands these run with `standin_dataplane.StandInDataPlane` (tests
only), which answers 200 ``pid=N``; they test the server, not the proxying.
"""

import asyncio
import json
import signal
import ssl

import aiohttp
import pytest
import trustme
from ctl_support import (
    ADMIN,
    LISTENING,
    http_get,
    spawn,
    stop,
    toml_config,
    wait_for_lines,
)
from standin_dataplane import StandInDataPlane

from lbproxy import config, server
from lbproxy.cluster import Lease, Outcome

pytestmark = pytest.mark.timeout(90)


async def _admin_json(port, path):
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.json()


def _write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_run_serves_then_exits_0_on_signal(tmp_path, sig):
    proc = await spawn("run", "-c", _write(tmp_path, toml_config("127.0.0.1:0", "127.0.0.1:0")))
    try:
        found, seen = await wait_for_lines(proc, LISTENING, 1)
        assert found, seen
        assert found[0].group(3, 4) == (b"1", b"1")
        port = int(found[0].group(2))
        status, body = await http_get("127.0.0.1", port)
        assert status == 200 and body.startswith(b"pid=")
    finally:
        proc.send_signal(sig)
        rc, err = await stop(proc)
    assert rc == 0, err
    assert b"draining" in err and b"stopped" in err


async def test_two_workers_both_serve_on_one_port(tmp_path):
    cfg = _write(tmp_path, toml_config("127.0.0.1:0", "127.0.0.1:0"))
    proc = await spawn("run", "-c", cfg, "--workers", "2")
    try:
        found, seen = await wait_for_lines(proc, LISTENING, 2)
        assert len(found) == 2, seen
        assert sorted(m.group(3) for m in found) == [b"1", b"2"]
        ports = {m.group(2) for m in found}
        assert len(ports) == 1  # both bound the same port (SO_REUSEPORT)
        port = int(ports.pop())
        admin, seen2 = await wait_for_lines(proc, ADMIN, 1)
        assert admin, seen + seen2
        admin_port = int(admin[0].group(2))
        pids = set()
        for _ in range(300):  # bounded: the kernel spreads connections by 4-tuple hash
            status, body = await http_get("127.0.0.1", port)
            assert status == 200
            pids.add(body)
            if len(pids) == 2:
                break
        assert len(pids) == 2, pids
        status, ready = await _admin_json(admin_port, "/ready")
        assert (status, ready["ready"]) == (200, True)
        status, doc = await _admin_json(admin_port, "/clusters")
        assert status == 200
        seg = doc["clusters"]["segments"]
        assert seg["policy"] == "maglev" and seg["version"] == 1
        assert [b["inflight"] for b in seg["backends"]] == [0, 0, 0]
    finally:
        rc, err = await stop(proc)
    assert rc == 0, err


@pytest.fixture
async def in_process(tmp_path):
    """`server.serve` in this loop with the stand-in data plane; yields a small handle."""
    cfg = config.from_dict({
        "listener": {"bind": "127.0.0.1:0"},
        "admin": {"bind": "127.0.0.1:0", "token": "t"},
        "timeouts": {"drain": 10.0},
        "clusters": {
            "segments": {"policy": "maglev", "table_size": 101,
                         "backends": ["127.0.0.1:9001", {"address": "127.0.0.1:9002",
                                                         "weight": 3, "zone": "b"}]},
            "uploads": {"policy": "p2c", "backends": ["127.0.0.1:9101"]},
        },
        "routes": [{"path_prefix": "/upload", "cluster": "uploads"},
                   {"cluster": "segments"}],
    })
    stop_event = asyncio.Event()
    ready: asyncio.Future = asyncio.get_running_loop().create_future()

    def on_ready(listener, admin):
        ready.set_result((listener, admin))

    task = asyncio.create_task(server.serve(cfg, dataplane=StandInDataPlane,
                                            stop=stop_event, on_ready=on_ready))
    listener, admin = await asyncio.wait_for(ready, 20)
    admin_port = admin._runner.addresses[0][1]
    yield listener, admin, admin_port, stop_event, task
    stop_event.set()
    await asyncio.wait_for(task, 20)


async def test_clusters_has_the_contract_shape_and_live_inflight(in_process):
    _, admin, admin_port, _, _ = in_process
    snap = admin.snapshot
    lease = snap.clusters["segments"].begin(b"/v/x/", 0)
    assert isinstance(lease, Lease)
    snap.clusters["segments"].state.set_drain("127.0.0.1:9001", True)
    status, doc = await _admin_json(admin_port, "/clusters")
    lease.end(Outcome.OK, 10)
    assert status == 200
    assert set(doc) == {"clusters"} and set(doc["clusters"]) == {"segments", "uploads"}
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
    from lbproxy.snapshot import build_snapshot

    new = build_snapshot(admin.snapshot.config, {}, 7)
    admin.snapshot = new
    _, doc = await _admin_json(admin_port, "/clusters")
    assert doc["clusters"]["segments"]["version"] == 7


async def test_ready_is_503_while_draining(in_process):
    listener, admin, admin_port, stop_event, task = in_process
    assert (await _admin_json(admin_port, "/ready"))[0] == 200
    # An idle client connection keeps the stand-in's drain waiting.
    _, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    try:
        for _ in range(100):
            if listener.dataplane.active_connections:
                break
            await asyncio.sleep(0.01)
        stop_event.set()
        for _ in range(100):
            if admin.draining:
                break
            await asyncio.sleep(0.01)
        status, body = await _admin_json(admin_port, "/ready")
        assert (status, body) == (503, {"ready": False, "reason": "draining"})
        with pytest.raises(OSError):  # no longer accepting
            await http_get("127.0.0.1", listener.port, timeout=2)
        assert not task.done()
    finally:
        writer.close()
    await asyncio.wait_for(task, 20)  # drain completes once the connection is gone


def test_ready_is_503_while_starting():
    from lbproxy.admin import AdminAPI
    from lbproxy.snapshot import build_snapshot

    cfg = config.from_dict({"clusters": {"a": {"backends": ["127.0.0.1:1"]}},
                            "routes": [{"cluster": "a"}]})
    api = AdminAPI(build_snapshot(cfg))
    assert not api.accepting and not api.draining


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
    ctx = server.build_ssl_context(config.TLS(cert=str(cert), key=str(key)))
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        server.build_ssl_context(config.TLS(cert=str(key), key=str(key)))


async def test_tls_listener_serves_https(tmp_path, tls_files):
    cert, key, client = tls_files
    extra = f'tls = {{ cert = "{cert}", key = "{key}" }}'
    proc = await spawn("run", "-c",
                       _write(tmp_path, toml_config("127.0.0.1:0", "127.0.0.1:0", extra=extra)))
    try:
        found, seen = await wait_for_lines(proc, LISTENING, 1)
        assert found, seen
        assert b", tls)" in seen
        port = int(found[0].group(2))
        status, body = await http_get("127.0.0.1", port, ssl_context=client)
        assert status == 200 and body.startswith(b"pid=")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await http_get("127.0.0.1", port, ssl_context=ssl.create_default_context())
    finally:
        rc, err = await stop(proc)
    assert rc == 0, err


def test_missing_tls_files_are_config_errors(tmp_path):
    with pytest.raises(config.ConfigError) as exc:
        config.from_dict({"listener": {"tls": {"cert": str(tmp_path / "c"),
                                               "key": str(tmp_path / "k")}},
                          "clusters": {"a": {"backends": ["127.0.0.1:1"]}},
                          "routes": [{"cluster": "a"}]})
    assert {p for p, _ in exc.value.errors} == {"listener.tls.cert", "listener.tls.key"}


def test_clusters_document_is_json_serialisable(tmp_path):
    from lbproxy.admin import AdminAPI
    from lbproxy.snapshot import build_snapshot

    cfg = config.from_dict({"clusters": {"a": {"backends": ["127.0.0.1:1"]}},
                            "routes": [{"cluster": "a"}]})
    doc = AdminAPI(build_snapshot(cfg, {}, 3), lambda c, a: 5).clusters_view()
    assert json.loads(json.dumps(doc))["clusters"]["a"]["backends"][0]["inflight"] == 5
