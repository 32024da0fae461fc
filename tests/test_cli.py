"""The command line as a user runs it: exit codes, field paths, clear start-up failures."""

import asyncio
import socket
import subprocess

import pytest
from ctl_support import spawn, toml_config

from lbproxy import cli

pytestmark = pytest.mark.timeout(60)

BAD = """
[clusters.uploads]
policy = "p2c"
backends = [{ address = "127.0.0.1:9101", weight = 0 }, { address = "127.0.0.1:9102" }]

[[routes]]
cluster = "nowhere"
"""


def _lbproxy(*args):
    from ctl_support import lbproxy_argv, subprocess_env

    return subprocess.run(lbproxy_argv(*args), capture_output=True, text=True, timeout=30,
                          env=subprocess_env())


def test_check_valid_config_exits_0(tmp_path):
    p = tmp_path / "ok.toml"
    p.write_text(toml_config("127.0.0.1:8080", "127.0.0.1:9901"))
    r = _lbproxy("check", "--config", str(p))
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_check_invalid_config_exits_1_with_every_field_path(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(BAD)
    r = _lbproxy("check", "-c", str(p))
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert any(ln.startswith("error: clusters.uploads.backends[0].weight:") for ln in lines)
    assert any(ln.startswith("error: routes[0].cluster:") for ln in lines)


def test_check_type_error_names_the_cluster_key(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(BAD.replace("weight = 0", 'weight = "heavy"'))
    r = _lbproxy("check", "-c", str(p))
    assert r.returncode == 1
    assert "error: clusters.uploads.backends[0].weight: Expected `int`" in r.stderr


def test_check_missing_file_exits_1(tmp_path):
    r = _lbproxy("check", "-c", str(tmp_path / "nope.toml"))
    assert r.returncode == 1 and "cannot read" in r.stderr


def test_run_invalid_config_exits_nonzero_naming_the_field(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(BAD)
    r = _lbproxy("run", "-c", str(p))
    assert r.returncode != 0
    assert "clusters.uploads.backends[0].weight" in r.stderr
    assert "not starting" in r.stderr


def test_run_rejects_zero_workers(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "-c", str(tmp_path / "x.toml"), "--workers", "0"])
    assert exc.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_run_with_a_taken_port_exits_nonzero_clearly(tmp_path, workers):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        p = tmp_path / "c.toml"
        p.write_text(toml_config(f"127.0.0.1:{port}", "127.0.0.1:0"))
        proc = await spawn("run", "-c", str(p), "--workers", workers)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: address already in use".encode() in err


async def test_run_with_the_admin_port_taken_exits_nonzero(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        p = tmp_path / "c.toml"
        p.write_text(toml_config("127.0.0.1:0", f"127.0.0.1:{port}"))
        proc = await spawn("run", "-c", str(p))
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert b"(admin API): address already in use" in err


async def test_async_tests_run_on_uvloop():
    import uvloop

    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
