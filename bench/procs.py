"""Child processes of a bench run: start, wait for a port, pin to cores, kill every one on exit.

Owns process lifetimes only. Every process started here is killed when the run ends,
including on Ctrl-C or an exception (atexit and the SIGTERM handler both call kill_all).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

_CHILDREN: list[subprocess.Popen[bytes]] = []


def free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available_cpus() -> set[int]:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


# Everything a run starts gets a higher priority than the machine's other work (when we may
# raise it), so a shared machine's background load disturbs the measurement less.
BENCH_NICE = -10


def may_raise_priority() -> bool:
    """True when running as root (lowering nice needs CAP_SYS_NICE)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def raise_priority() -> None:
    """Give this process BENCH_NICE when allowed; silently keep it otherwise."""
    if may_raise_priority():
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, BENCH_NICE)


def pinned(cmd: Sequence[str], cpus: Sequence[int] | None) -> list[str]:
    """`cmd` prefixed with taskset so it (and every child it forks) stays on `cpus`, and with
    nice when the priority may be raised."""
    argv = list(cmd)
    nice = shutil.which("nice")
    if nice is not None and may_raise_priority():
        argv = [nice, "-n", str(BENCH_NICE), *argv]
    taskset = shutil.which("taskset")
    if not cpus or taskset is None:
        return argv
    return [taskset, "-c", ",".join(map(str, cpus)), *argv]


def start(
    cmd: Sequence[str],
    log: Path,
    cpus: Sequence[int] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `cmd` in its own process group, output to `log`; tracked for kill_all."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            pinned(cmd, cpus),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    _CHILDREN.append(proc)
    return proc


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Block until 127.0.0.1:port accepts, or raise naming the process that failed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"{proc.args!r} did not listen on {port} within {timeout_s}s")


def wait_http_ok(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """Block until GET url answers 200 (e.g. an admin /ready), or raise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before ready")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready within {timeout_s}s")


def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the process group of `proc` (nginx workers too) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    else:
        # The leader may be gone while children it forked (nginx workers) live on.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc in _CHILDREN:
        _CHILDREN.remove(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Graceful stop: SIGTERM, then SIGKILL after 5 s."""
    kill(proc, signal.SIGTERM)


def kill_all() -> None:
    """Kill every process this module started and is still tracking."""
    for proc in list(_CHILDREN):
        kill(proc)


def _on_sigterm(signum: int, frame: object) -> None:
    kill_all()
    raise SystemExit(128 + signum)


atexit.register(kill_all)


def install_signal_handlers() -> None:
    """Make SIGTERM clean up like Ctrl-C does (KeyboardInterrupt unwinds to atexit)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
