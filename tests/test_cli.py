"""The command line as a user runs it: exit codes, field paths, clear start-up failures."""

import asyncio
import socket
import subprocess

import pytest
from support.configs import segments_doc
from support.subproc import (
    ADMIN,
    LISTENING,
    STANDIN,
    LbproxyProcess,
    lbproxy_argv,
    skip_if_port_taken,
    subprocess_env,
    write_config,
)

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
    return subprocess.run(lbproxy_argv(*args), capture_output=True, text=True, timeout=30,
                          env=subprocess_env())


def test_check_valid_config_exits_0(tmp_path):
    p = write_config(tmp_path / "ok.toml", segments_doc(listener={"bind": "127.0.0.1:8080"},
                                                       admin={"bind": "127.0.0.1:9901"}))
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
        p = write_config(tmp_path / "c.toml",
                         segments_doc(listener={"bind": f"127.0.0.1:{port}"}))
        proc = LbproxyProcess("run", "-c", str(p), "--workers", workers, dataplane=STANDIN)
        rc = await proc.wait_async(30)
    assert rc == 1
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in proc.stderr()


async def test_run_with_the_admin_port_taken_exits_nonzero(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        p = write_config(tmp_path / "c.toml", segments_doc(admin={"bind": f"127.0.0.1:{port}"}))
        proc = LbproxyProcess("run", "-c", str(p), dataplane=STANDIN)
        rc = await proc.wait_async(30)
    assert rc == 1
    assert "(admin API): address already in use" in proc.stderr()


async def test_async_tests_run_on_uvloop():
    import uvloop

    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


def test_contract_minimal_file_checks_as_written(tmp_path):
    from test_config import CONTRACT_TOML

    p = tmp_path / "lbproxy.toml"
    p.write_text(CONTRACT_TOML)
    r = _lbproxy("check", "--config", str(p))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_check_reads_yaml_and_json_by_extension(tmp_path, suffix):
    import json

    data = {"clusters": {"a": {"backends": ["127.0.0.1:1", {"address": "127.0.0.1:2",
                                                           "weight": -1}]}},
            "routes": [{"cluster": "a"}]}
    p = tmp_path / f"c{suffix}"
    p.write_text(json.dumps(data))  # JSON is YAML too
    r = _lbproxy("check", "-c", str(p))
    assert r.returncode == 1
    assert "error: clusters.a.backends[1].weight: must be 1-2147483647, got -1" in r.stderr


async def test_contract_minimal_file_runs_as_written(tmp_path):
    from test_config import CONTRACT_TOML

    p = tmp_path / "lbproxy.toml"
    p.write_text(CONTRACT_TOML)
    proc = LbproxyProcess("run", "-c", str(p))
    try:
        found, seen = await proc.expect_async(LISTENING, 1)
        if not found:
            skip_if_port_taken(proc, 8080, 9901)  # the file binds these fixed ports
        assert found and found[0].group(1, 2) == ("127.0.0.1", "8080"), seen
        admin, _ = await proc.expect_async(ADMIN, 1)
        assert admin and admin[0].group(2) == "9901"
        import aiohttp

        async with aiohttp.ClientSession() as s:
            async with s.get("http://127.0.0.1:9901/clusters") as r:
                doc = await r.json()
            async with s.get("http://127.0.0.1:8080/upload/x") as r:
                # No backend listens on 9101/9102: the proxy answers 502 itself.
                assert r.status == 502 and "X-Lbproxy-Error" in r.headers
        ups = doc["clusters"]["uploads"]["backends"]
        assert [(b["address"], b["weight"]) for b in ups] == [("127.0.0.1:9101", 2),
                                                              ("127.0.0.1:9102", 1)]
    finally:
        rc = await proc.stop_async()
    assert rc == 0, proc.stderr()


def test_version_prints_the_installed_package_version():
    from importlib import metadata

    r = _lbproxy("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"lbproxy {metadata.version('lbproxy')}"


def test_every_option_of_every_command_says_what_it_does():
    import argparse

    top = cli.parser()
    [sub] = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == {"run", "check", "demo"}
    described = {c.dest: c.help for c in sub._choices_actions}
    assert all(described[name] for name in sub.choices), described
    for name, parser in [("lbproxy", top), *sub.choices.items()]:
        for action in parser._actions:
            if action.option_strings:
                assert action.help and len(action.help) > 10, (name, action.option_strings)
    run_help = sub.choices["run"].format_help()
    assert "--log-level {debug,info,warning,error}" in run_help
    assert "--log-level" in sub.choices["demo"].format_help()


@pytest.mark.parametrize("command", ["run", "demo"])
def test_an_unknown_log_level_is_a_usage_error(tmp_path, capsys, command):
    args = [command, "--log-level", "verbose"]
    if command == "run":
        args += ["-c", str(tmp_path / "x.toml")]
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2
    assert "invalid choice: 'verbose'" in capsys.readouterr().err
