"""`lbproxy` as a subprocess, as a user runs it, and the tools the subprocess tests drive it
with (curl, /proc). Nothing here imports lbproxy.

Listeners and admin APIs bind port 0 and the test reads the ports the kernel chose from the
log lines (`listening on HOST:PORT (worker I/N)`, `admin API on HOST:PORT`; with
`--workers N` every worker logs the one port the supervisor fixed). The patterns allow any
prefix on a line (a timestamp, a level).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import pytest

from support.configs import toml_document

LBPROXY = str(Path(sys.executable).with_name("lbproxy"))
TESTS = Path(__file__).resolve().parent.parent
STANDIN = "support.standin:StandInDataPlane"
_HOST = r"([0-9.]+|\[[0-9a-f:]+\])"
LISTENING = re.compile(rf"listening on {_HOST}:(\d+) \(worker (\d+)/(\d+)")
ADMIN = re.compile(rf"admin API on {_HOST}:(\d+)")


def lbproxy_argv(*args: str, dataplane: str | None = None) -> list[str]:
    """argv running `lbproxy ARGS`, optionally with another data plane class ("mod:Class")."""
    if dataplane is None:
        return [LBPROXY, *args]
    code = (
        "import sys; from lbproxy import cli; from lbproxy.process import startup; "
        f"startup.DEFAULT_DATAPLANE = {dataplane!r}; sys.exit(cli.main(sys.argv[1:]))"
    )
    return [sys.executable, "-c", code, *args]


def subprocess_env() -> dict[str, str]:
    """The environment for lbproxy subprocesses: tests/ importable (the stand-in data
    plane), and no *_proxy variables (clients such as curl go direct)."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    return env


def write_config(path: Path, doc: dict[str, Any] | str) -> Path:
    """Write a config document (TOML unless `path` ends in .json) or text; returns `path`."""
    if isinstance(doc, str):
        text = doc
    elif path.suffix == ".json":
        text = json.dumps(doc)
    else:
        text = toml_document(doc)
    path.write_text(text)
    return path


class LbproxyProcess:
    """A running `lbproxy ARGS`: stdout and stderr collected line by line from threads, so
    it can be awaited from a test's loop (`*_async`) or from plain code alike."""

    def __init__(self, *args: str, dataplane: str | None = None) -> None:
        self.proc = subprocess.Popen(lbproxy_argv(*args, dataplane=dataplane),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=subprocess_env())
        self.out_lines: list[str] = []
        self.err_lines: list[str] = []
        self._cursor = 0  # stderr lines already read by `expect_async` (or `ready`)
        self._readers = [self._collect(self.proc.stdout, self.out_lines),
                         self._collect(self.proc.stderr, self.err_lines)]
        self.listening: list[re.Match[str]] = []
        self.port = 0
        self.admin_port = 0

    @staticmethod
    def _collect(pipe: IO[bytes] | None, into: list[str]) -> threading.Thread:
        def read() -> None:
            assert pipe is not None
            for raw in pipe:
                into.append(raw.decode(errors="replace"))

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, None while it runs."""
        return self.proc.poll()

    @property
    def url(self) -> str:
        """Base URL of the listener."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """Base URL of the admin API."""
        return f"http://127.0.0.1:{self.admin_port}"

    def stderr(self) -> str:
        """Everything it wrote to stderr so far."""
        return "".join(self.err_lines)

    def stdout(self) -> str:
        """Everything it wrote to stdout so far."""
        return "".join(self.out_lines)

    def _scan(self, pattern: re.Pattern[str], count: int, found: list[re.Match[str]],
              seen: list[str]) -> bool:
        """Read new stderr lines into `seen` and matches into `found`; True when done
        (enough matches, or the process ended and every line is read)."""
        ended = not self._readers[1].is_alive()
        while self._cursor < len(self.err_lines) and len(found) < count:
            line = self.err_lines[self._cursor]
            self._cursor += 1
            seen.append(line)
            if m := pattern.search(line):
                found.append(m)
        return len(found) >= count or (ended and self._cursor >= len(self.err_lines))

    async def expect_async(self, pattern: re.Pattern[str], count: int = 1,
                           timeout: float = 20.0) -> tuple[list[re.Match[str]], str]:
        """Read stderr lines not read before until `count` match `pattern` (or the process
        ends, or `timeout` passes): (the matches, the text of the lines read)."""
        found: list[re.Match[str]] = []
        seen: list[str] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not self._scan(pattern, count, found, seen) and loop.time() < end:
            await asyncio.sleep(0.01)
        return found, "".join(seen)

    def _started(self, workers: int) -> bool:
        text = self.stderr()
        self.listening = list(LISTENING.finditer(text))
        admin = ADMIN.search(text)
        if len(self.listening) < workers or admin is None:
            return False
        self.port, self.admin_port = int(self.listening[0].group(2)), int(admin.group(2))
        self._cursor = len(self.err_lines)
        return True

    def ready(self, workers: int = 1, timeout: float = 20.0) -> bool:
        """Wait until each of `workers` logged its listener and the admin API logged its
        port, and take the ports from those lines; False when the process ended first."""
        end = time.monotonic() + timeout
        while not self._started(workers):
            if self.proc.poll() is not None:
                self._readers[1].join(5)
                return self._started(workers)
            if time.monotonic() > end:
                raise TimeoutError(f"lbproxy did not start: {self.stderr()}")
            time.sleep(0.01)
        return True

    async def ready_async(self, workers: int = 1, timeout: float = 20.0) -> bool:
        """`ready`, waiting in the test's loop."""
        return await asyncio.to_thread(self.ready, workers, timeout)

    def send_signal(self, sig: int) -> None:
        """Send a signal."""
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL."""
        self.proc.kill()

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the exit (bounded) and for its last output; returns the status."""
        rc = self.proc.wait(timeout)
        for reader, pipe in zip(self._readers, (self.proc.stdout, self.proc.stderr),
                                strict=True):
            reader.join(5)  # EOF once every process holding the pipe is gone
            if not reader.is_alive() and pipe is not None:
                pipe.close()
        return rc

    async def wait_async(self, timeout: float = 30.0) -> int:
        """`wait`, in the test's loop."""
        return await asyncio.to_thread(self.wait, timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (unless it ended) and wait; returns the exit status (SIGKILL and raise
        after `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.wait()
            raise

    async def stop_async(self, timeout: float = 30.0) -> int:
        """`stop`, in the test's loop (a backend it is draining may run in that loop)."""
        return await asyncio.to_thread(self.stop, timeout)


def start_lbproxy(doc: dict[str, Any] | str, path: Path, *, workers: int = 1,
                  dataplane: str | None = None) -> LbproxyProcess:
    """`lbproxy run --config PATH` with `doc` written there; returns once it is listening
    (its ports read from its log), raises with its stderr when it ends first."""
    args = ["run", "--config", str(write_config(path, doc))]
    if workers != 1:
        args += ["--workers", str(workers)]
    proc = LbproxyProcess(*args, dataplane=dataplane)
    if not proc.ready(workers):
        proc.stop()
        raise RuntimeError(f"lbproxy failed to start: {proc.stderr()}")
    return proc


@contextmanager
def lbproxy_running(doc: dict[str, Any] | str, path: Path) -> Iterator[LbproxyProcess]:
    """`start_lbproxy`, then SIGTERM on exit asserting a clean exit 0."""
    proc = start_lbproxy(doc, path)
    try:
        yield proc
    finally:
        rc = proc.stop()
        assert rc == 0, proc.stderr()


def skip_if_port_taken(proc: LbproxyProcess, *ports: int) -> None:
    """For a process that binds fixed ports (the demo's 8080 and 9901) and did not start:
    skip the test, rather than fail it, when one of them was taken by something else on the
    machine (the test then has nothing to say about lbproxy)."""
    alternatives = "|".join(str(p) for p in ports)
    taken = re.search(rf"cannot listen on \S+:({alternatives})\b.*in use", proc.stderr())
    if taken:
        proc.stop()
        pytest.skip(f"port {taken.group(1)} is in use by another process")


def curl(*args: str, data: bytes | None = None, timeout: float = 60.0
         ) -> subprocess.CompletedProcess[bytes]:
    """Run curl with `args` (stdin from `data`), direct to 127.0.0.1."""
    return subprocess.run(["curl", "-sS", "--noproxy", "*", *args], input=data,
                          capture_output=True, timeout=timeout, env=subprocess_env())


def listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on, from its descriptors and the kernel's socket tables
    (Linux /proc): for a process that logs no port (`--log-level warning`)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):  # a descriptor closed since the listing
            if (target := os.readlink(fd)).startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            # local_address is HEXADDR:HEXPORT; state 0A is LISTEN; field 9 is the inode
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
