"""Helpers for the control-plane tests: uvloop, subprocess launches, log-line waits."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).parent
STANDIN = "standin_dataplane:StandInDataPlane"
LISTENING = re.compile(rb"listening on ([0-9.]+|\[[0-9a-f:]+\]):(\d+) \(worker (\d+)/(\d+)")
ADMIN = re.compile(rb"admin API on ([0-9.]+|\[[0-9a-f:]+\]):(\d+)")


def lbproxy_argv(*args: str, dataplane: str | None = None) -> list[str]:
    """argv running `lbproxy ARGS`, optionally with another data plane class."""
    if dataplane is None:
        return [sys.executable, "-m", "lbproxy", *args]
    code = (
        "import sys; from lbproxy import cli; from lbproxy.process import startup; "
        f"startup.DEFAULT_DATAPLANE = {dataplane!r}; sys.exit(cli.main(sys.argv[1:]))"
    )
    return [sys.executable, "-c", code, *args]


def subprocess_env() -> dict[str, str]:
    """The environment for lbproxy subprocesses: the stand-in importable from tests/."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    return env


async def spawn(*args: str, dataplane: str | None = STANDIN) -> asyncio.subprocess.Process:
    """Start `lbproxy ARGS` with stderr piped for `wait_for_lines`."""
    return await asyncio.create_subprocess_exec(
        *lbproxy_argv(*args, dataplane=dataplane), env=subprocess_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def wait_for_lines(proc: asyncio.subprocess.Process, pattern: re.Pattern[bytes],
                         count: int, timeout: float = 20.0) -> tuple[list[re.Match[bytes]],
                                                                     bytes]:
    """Read stderr until `count` lines match (or the process ends / time runs out)."""
    assert proc.stderr is not None
    matches: list[re.Match[bytes]] = []
    seen = b""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while len(matches) < count:
        left = end - loop.time()
        if left <= 0:
            break
        try:
            line = await asyncio.wait_for(proc.stderr.readline(), left)
        except TimeoutError:
            break
        if not line:
            break
        seen += line
        m = pattern.search(line)
        if m:
            matches.append(m)
    return matches, seen


async def wait_started(proc: asyncio.subprocess.Process, workers: int,
                       ) -> tuple[list[re.Match[bytes]], int, bytes]:
    """Wait for `workers` listening lines, then the admin line: (matches, admin port, seen).

    Fails the test when they do not come, showing what the process wrote instead.
    """
    found, seen = await wait_for_lines(proc, LISTENING, workers)
    assert len(found) == workers, seen
    admin, more = await wait_for_lines(proc, ADMIN, 1)
    assert admin, seen + more
    return found, int(admin[0].group(2)), seen + more


async def until_true(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll `predicate` every 20 ms until it is truthy; AssertionError after `timeout`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def stop(proc: asyncio.subprocess.Process, timeout: float = 20.0) -> tuple[int, bytes]:
    """SIGTERM, wait (bounded), return (exit status, rest of stderr)."""
    if proc.returncode is None:
        proc.terminate()
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, err


def toml_config(listen: str, admin: str, backends: list[str] | None = None,
                extra: str = "") -> str:
    """A small valid config as TOML."""
    backends = backends or ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
    return f"""
[listener]
bind = "{listen}"
{extra}
[admin]
bind = "{admin}"

[timeouts]
drain = 5.0

[clusters.segments]
policy = "maglev"
backends = {backends!r}

[[routes]]
path_prefix = "/"
cluster = "segments"
hash_on = "path_regex:^/v/([^/]+)/"
""".replace("'", '"')


async def http_get(host: str, port: int, path: str = "/", headers: str = "",
                   ssl_context: object = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """One HTTP/1.1 GET on a fresh connection; (status, body)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ssl_context,
                                server_hostname=host if ssl_context else None), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}"
                     "Connection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def fixed_ports_free(*ports: int) -> bool:
    """Whether nothing listens on these 127.0.0.1 ports (the demo and contract use fixed ones)."""
    for port in ports:
        with socket.socket() as s:
            # SO_REUSEADDR: connections in TIME_WAIT from an earlier run do not count.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True
