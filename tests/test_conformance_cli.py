"""Black-box conformance: the command line and operational contract of `lbproxy`.

`lbproxy check` and `lbproxy run` as subprocesses: exit codes, field paths on stderr,
taken ports, one log line per listener, the documented minimal file in TOML, YAML and
JSON, /ready and the exact /clusters shape, and SIGTERM draining an in-flight request.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest
import yaml
from support.backends import Backends
from support.subproc import LBPROXY, LISTENING, start_lbproxy
from support.waiting import wait_until

pytestmark = pytest.mark.timeout(90)

# The documented minimal configuration file: it must work as written, comments included
# (tests/test_config.py keeps a comment-free copy for decoding tests).
CONTRACT_TOML = """\
[listener]
bind = "127.0.0.1:8080"

[admin]
bind = "127.0.0.1:9901"
# token = "..."   # when set, every mutating admin call needs "Authorization: Bearer <token>"

[clusters.segments]
policy = "maglev"                     # "maglev" | "p2c" | "round_robin"
backends = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]

[clusters.uploads]
policy = "p2c"
backends = [{ address = "127.0.0.1:9101", weight = 2 }, { address = "127.0.0.1:9102" }]

[[routes]]
path_prefix = "/upload"
cluster = "uploads"

[[routes]]
path_prefix = "/"
cluster = "segments"
hash_on = "path_regex:^/v/([^/]+)/"   # first capture group is the key: every segment of a video
                                      # goes to the same backend; also "path", "header:NAME",
                                      # "query:NAME", "cookie:NAME"
"""

CONTRACT_DOC = {
    "listener": {"bind": "127.0.0.1:8080"},
    "admin": {"bind": "127.0.0.1:9901"},
    "clusters": {
        "segments": {"policy": "maglev",
                     "backends": ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]},
        "uploads": {"policy": "p2c",
                    "backends": [{"address": "127.0.0.1:9101", "weight": 2},
                                 {"address": "127.0.0.1:9102"}]},
    },
    "routes": [
        {"path_prefix": "/upload", "cluster": "uploads"},
        {"path_prefix": "/", "cluster": "segments", "hash_on": "path_regex:^/v/([^/]+)/"},
    ],
}

FORMATS = {
    "toml": lambda: CONTRACT_TOML,
    "yaml": lambda: yaml.safe_dump(CONTRACT_DOC),
    "json": lambda: json.dumps(CONTRACT_DOC),
}
CONTRACT_BACKENDS = ["9001", "9002", "9003", "9101", "9102"]


def lbproxy(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `lbproxy ARGS` to completion."""
    return subprocess.run([LBPROXY, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    b = Backends(CONTRACT_BACKENDS)
    yield b
    b.close()


def contract_file(fmt: str, backends: Backends, port: int = 0, admin_port: int = 0) -> str:
    """The documented minimal file in `fmt`, moved to our backends and to `port` and
    `admin_port` (0: any free port, read back from the log)."""
    text = FORMATS[fmt]()
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    text = text.replace("127.0.0.1:9901", f"127.0.0.1:{admin_port}")
    for name in CONTRACT_BACKENDS:
        text = text.replace(f"127.0.0.1:{name}", backends[name].address)
    return text


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_check_accepts_the_contract_minimal_file(tmp_path, fmt) -> None:
    path = tmp_path / f"lbproxy.{fmt}"
    path.write_text(FORMATS[fmt]())
    out = lbproxy("check", "--config", str(path))
    assert out.returncode == 0, out.stderr
    out = lbproxy("check", "-c", str(path))
    assert out.returncode == 0, out.stderr


BROKEN = {
    "clusters.uploads.backends[1].weight": ("weight = 2 }, { address = \"127.0.0.1:9102\" }",
                                            "weight = 2 }, { address = \"127.0.0.1:9102\", "
                                            "weight = 0 }"),
    "clusters.segments.policy": ('policy = "maglev"', 'policy = "random"'),
    "routes[0].cluster": ('cluster = "uploads"', 'cluster = "nowhere"'),
    "clusters.segments.backends[1]": ('"127.0.0.1:9002"', '"127.0.0.1:port"'),
}


@pytest.mark.parametrize("field", sorted(BROKEN))
def test_check_rejects_naming_the_field_path(tmp_path, field) -> None:
    old, new = BROKEN[field]
    assert old in CONTRACT_TOML
    path = tmp_path / "bad.toml"
    path.write_text(CONTRACT_TOML.replace(old, new, 1))
    out = lbproxy("check", "--config", str(path))
    assert out.returncode == 1
    assert field in out.stderr, out.stderr


def test_check_names_an_unknown_field(tmp_path) -> None:
    path = tmp_path / "unknown.toml"
    path.write_text(CONTRACT_TOML.replace('bind = "127.0.0.1:8080"', 'bnd = "127.0.0.1:8080"'))
    out = lbproxy("check", "--config", str(path))
    assert out.returncode == 1
    line = next(ln for ln in out.stderr.splitlines() if "bnd" in ln)
    assert "listener" in line


def test_check_reports_every_error(tmp_path) -> None:
    text = CONTRACT_TOML
    for old, new in (BROKEN["clusters.uploads.backends[1].weight"], BROKEN["routes[0].cluster"]):
        text = text.replace(old, new, 1)
    path = tmp_path / "two.toml"
    path.write_text(text)
    out = lbproxy("check", "--config", str(path))
    assert out.returncode == 1
    assert "clusters.uploads.backends[1].weight" in out.stderr
    assert "routes[0].cluster" in out.stderr


def test_check_of_a_missing_or_unparsable_file_fails(tmp_path) -> None:
    assert lbproxy("check", "--config", str(tmp_path / "absent.toml")).returncode != 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[listener\nbind = ")
    out = lbproxy("check", "--config", str(bad))
    assert out.returncode == 1 and out.stderr.strip()


def test_run_with_an_invalid_config_exits_nonzero_naming_the_field(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(CONTRACT_TOML.replace(*BROKEN["clusters.segments.policy"], 1))
    out = lbproxy("run", "--config", str(path))
    assert out.returncode != 0
    assert "clusters.segments.policy" in out.stderr


@pytest.mark.parametrize("which", ["listener", "admin"])
def test_run_with_a_port_taken_exits_nonzero_with_a_clear_message(tmp_path, backends,
                                                                  which) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = (port, 0) if which == "listener" else (0, port)
        path = tmp_path / "lbproxy.toml"
        path.write_text(contract_file("toml", backends, *ports))
        out = lbproxy("run", "--config", str(path))
    assert out.returncode != 0
    assert f"127.0.0.1:{port}" in out.stderr and "in use" in out.stderr, out.stderr


def get(port: int, path: str, headers: dict[str, str] | None = None,
        method: str = "GET", body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request with http.client: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_run_serves_the_contract_minimal_file(tmp_path, backends, fmt) -> None:
    run = start_lbproxy(contract_file(fmt, backends), tmp_path / f"lbproxy.{fmt}")
    try:
        assert len(LISTENING.findall(run.stderr())) == 1, run.stderr()
        status, _, body = get(run.admin_port, "/ready")
        assert status == 200, body
        status, _, body = get(run.admin_port, "/clusters")
        assert status == 200
        doc = json.loads(body)
        assert set(doc) == {"clusters"} and set(doc["clusters"]) == {"segments", "uploads"}
        for name, policy in (("segments", "maglev"), ("uploads", "p2c")):
            cluster = doc["clusters"][name]
            assert cluster["policy"] == policy
            assert isinstance(cluster["version"], int)
            for b in cluster["backends"]:
                assert {"address", "weight", "zone", "state", "healthy", "inflight"} <= set(b)
                assert b["inflight"] == 0 and b["healthy"] is True
        ups = doc["clusters"]["uploads"]["backends"]
        assert [(b["address"], b["weight"]) for b in ups] == [
            (backends["9101"].address, 2), (backends["9102"].address, 1)]
        seg = [b["address"] for b in doc["clusters"]["segments"]["backends"]]
        assert seg == [backends[n].address for n in ("9001", "9002", "9003")]
        # The routes work: uploads to the p2c pair, segments to one of the three.
        status, _, body = get(run.port, "/upload/x", method="POST", body=b"payload")
        assert status == 200 and json.loads(body)["backend"] in ("9101", "9102")
        first = {json.loads(get(run.port, f"/v/abc/{i}.ts")[2])["backend"] for i in range(4)}
        assert len(first) == 1 and first <= {"9001", "9002", "9003"}
    finally:
        rc = run.stop()
    assert rc == 0, run.stderr()


def test_two_workers_log_one_line_each_and_agree_on_placement(tmp_path, backends) -> None:
    run = start_lbproxy(contract_file("toml", backends), tmp_path / "lbproxy.toml",
                        workers=2)
    try:
        assert wait_until(lambda: len(LISTENING.findall(run.stderr())) >= 2, 20)
        assert wait_until(lambda: get(run.admin_port, "/ready")[0] == 200, 20)
        # Each worker builds its own Maglev table: a video must land on the same backend
        # whichever worker accepts the connection (one new connection per request).
        placement: dict[str, set[str]] = {}
        for video in ("a", "b", "c", "d"):
            for seg in range(6):
                status, _, body = get(run.port, f"/v/{video}/{seg}.ts")
                assert status == 200
                placement.setdefault(video, set()).add(json.loads(body)["backend"])
        assert all(len(b) == 1 for b in placement.values()), placement
    finally:
        rc = run.stop()
    assert rc == 0, run.stderr()
    assert len(LISTENING.findall(run.stderr())) == 2, run.stderr()


def ready_status(admin_port: int) -> int | None:
    """GET /ready's status, None when the admin API does not answer."""
    try:
        return get(admin_port, "/ready")[0]
    except OSError:
        return None


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_an_in_flight_request_then_exits_0(tmp_path, backends, workers) -> None:
    run = start_lbproxy(contract_file("toml", backends), tmp_path / "lbproxy.toml",
                        workers=workers)
    assert wait_until(lambda: ready_status(run.admin_port) == 200, 20)
    result: list[tuple[int, dict[str, str], bytes]] = []
    target = f"/slow/1.5?w{workers}"
    client = threading.Thread(target=lambda: result.append(get(run.port, target)))
    all_seg = [backends[n] for n in ("9001", "9002", "9003")]
    client.start()
    try:
        assert wait_until(lambda: any(target.encode() in bytes(c.raw)
                                      for b in all_seg for c in b.conns), 5)
        run.send_signal(15)
        # While draining, readiness goes 503 (or the admin API is already gone).
        assert wait_until(lambda: ready_status(run.admin_port) != 200, 1.0)
        assert client.is_alive(), "the in-flight request ended before the drain was seen"
        client.join(10)
    finally:
        rc = run.stop()
    assert rc == 0, run.stderr()
    assert result and result[0][0] == 200, run.stderr()
    assert json.loads(result[0][2])["target"] == target


def test_clusters_counts_an_in_flight_request(tmp_path, backends) -> None:
    run = start_lbproxy(contract_file("toml", backends), tmp_path / "lbproxy.toml")

    def inflight() -> int:
        doc = json.loads(get(run.admin_port, "/clusters")[2])
        return sum(b["inflight"] for b in doc["clusters"]["segments"]["backends"])

    client = threading.Thread(target=lambda: get(run.port, "/slow/2.0"))
    try:
        assert inflight() == 0
        client.start()
        assert wait_until(lambda: inflight() == 1, 1.8)
        client.join(10)
        assert wait_until(lambda: inflight() == 0, 2)
    finally:
        rc = run.stop()
    assert rc == 0, run.stderr()
