"""Logging: one line format for every logger and process, `--log-level`, whole lines only."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys

import pytest
from support.configs import segments_doc
from support.subproc import LISTENING, STANDIN, LbproxyProcess, listening_ports, write_config
from support.waiting import until
from support.wire import http_get

from lbproxy.process import logs

pytestmark = pytest.mark.timeout(90)

# TIME lbproxy[PID] LEVEL LOGGER: message
LINE = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) lbproxy\[(\d+)\] "
                  rb"(DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): (.*)$")


def _parse(line: bytes) -> re.Match[bytes]:
    """`line` matched by LINE; fails the test, showing the line, when it does not match."""
    m = LINE.match(line)
    assert m, line[:200]
    return m


@pytest.fixture
def root_logging():
    """Puts the root and lbproxy loggers back as they were after a test configures them."""
    root, ours = logging.getLogger(), logging.getLogger("lbproxy")
    saved = (list(root.handlers), root.level, ours.level)
    yield
    for h in root.handlers:
        if isinstance(h, logs.LineHandler):
            root.removeHandler(h)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    ours.setLevel(saved[2])


def test_a_record_has_utc_time_pid_level_logger_and_message():
    record = logging.LogRecord("lbproxy.policies.outlier", logging.WARNING, __file__, 1,
                               "cluster %s: %s ejected", ("segments", "127.0.0.1:9002"), None)
    record.created, record.msecs = 1796098116.123, 123.0  # 2026-12-01T04:08:36.123 UTC
    assert logs.LineFormatter().format(record) == (
        f"2026-12-01T04:08:36.123Z lbproxy[{os.getpid()}] WARNING "
        "lbproxy.policies.outlier: cluster segments: 127.0.0.1:9002 ejected")


def _written(fd: int) -> list[bytes]:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1 << 16).splitlines()
    except BlockingIOError:
        return []


def test_configure_sets_lbproxy_s_level_and_keeps_libraries_at_warning(root_logging):
    r, w = os.pipe()
    try:
        logs.configure("debug", fd=w)
        logging.getLogger("lbproxy.process.test").debug("ours at debug")
        logging.getLogger("asyncio").info("a library's info")
        logging.getLogger("asyncio").warning("a library's warning")
        lines = _written(r)
        assert [_parse(ln).group(3, 4, 5) for ln in lines] == [
            (b"DEBUG", b"lbproxy.process.test", b"ours at debug"),
            (b"WARNING", b"asyncio", b"a library's warning")]
        logs.configure("warning", fd=w)  # again: replaces the handler, never adds a second
        logging.getLogger("lbproxy.process.test").info("ours at info")
        logging.getLogger("lbproxy.process.test").error("ours at error")
        assert [_parse(ln).group(5) for ln in _written(r)] == [b"ours at error"]
        assert sum(isinstance(h, logs.LineHandler) for h in logging.getLogger().handlers) == 1
    finally:
        os.close(r)
        os.close(w)


def test_only_the_four_level_names_are_accepted():
    assert [logs.level_number(n) for n in logs.LEVELS] == [10, 20, 30, 40]
    with pytest.raises(ValueError, match="debug, info, warning, error"):
        logs.level_number("verbose")


# Logs `count` lines of ~3 KB tagged `tag`, as a worker logging beside another would.
CHATTY = ("import logging, sys; from lbproxy.process import logs; logs.configure('info'); "
          "tag, count = sys.argv[1], int(sys.argv[2]); "
          "[logging.getLogger('lbproxy.test').info('%s %d %s', tag, i, tag * 3000) "
          "for i in range(count)]")


def test_lines_from_processes_sharing_stderr_never_interleave():
    count = 300
    r, w = os.pipe()
    try:
        procs = [subprocess.Popen([sys.executable, "-c", CHATTY, tag, str(count)], stderr=w)
                 for tag in ("A", "B")]
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as shared:
        lines = shared.read().splitlines()  # EOF once both exited
    assert [p.wait(30) for p in procs] == [0, 0]
    seen: dict[bytes, list[int]] = {b"A": [], b"B": []}
    for line in lines:
        m = LINE.match(line)
        assert m, line[:200]
        tag, i, payload = m.group(5).split(b" ")
        assert payload == tag * 3000, line[:200]  # whole: no other line cut into it
        seen[tag].append(int(i))
    assert seen == {b"A": list(range(count)), b"B": list(range(count))}


async def test_run_at_info_logs_formatted_lines_from_supervisor_and_workers(tmp_path):
    path = write_config(tmp_path / "c.toml", segments_doc())
    proc = LbproxyProcess("run", "-c", str(path), "--workers", "2", dataplane=STANDIN)
    try:
        assert await proc.ready_async(2), proc.stderr()
    finally:
        rc = await proc.stop_async()
    assert rc == 0, proc.stderr()
    lines = proc.stderr().encode().splitlines()
    parsed = [LINE.match(ln) for ln in lines]
    assert all(parsed), lines
    def first(prefix: bytes) -> re.Match[bytes]:
        return next(m for m in parsed if m and m.group(5).startswith(prefix))

    for prefix, logger in [(b"listening on", b"lbproxy.process.worker"),
                           (b"admin API on", b"lbproxy.process.supervisor"),
                           (b"draining", b"lbproxy.process.supervisor"),
                           (b"stopped", b"lbproxy.process.supervisor")]:
        assert first(prefix).group(3, 4) == (b"INFO", logger), lines
    worker_pids = {m.group(2) for m in parsed if m and LISTENING.search(m.group(5).decode())}
    assert len(worker_pids) == 2  # each worker writes its own lines, under its own pid
    assert first(b"admin API on").group(2) not in worker_pids

@pytest.mark.parametrize("workers", ["1", "2"])
async def test_run_at_warning_logs_no_info_line(tmp_path, workers):
    path = write_config(tmp_path / "c.toml", segments_doc())
    proc = LbproxyProcess("run", "-c", str(path), "--workers", workers,
                          "--log-level", "warning", dataplane=STANDIN)

    async def admin_ready() -> bool:
        # No "admin API on" line at this level: the admin API is the socket of this process
        # that answers /ready as the admin API does (the stand-in data plane says pid=N).
        for port in listening_ports(proc.pid):
            with contextlib.suppress(OSError, ValueError):
                status, body = await http_get("127.0.0.1", port, "/ready")
                if status == 200 and json.loads(body) == {"ready": True}:
                    return True
        return False

    try:
        assert await until(admin_ready, timeout=10, interval=0.05)
    finally:
        rc = await proc.stop_async()
    err = proc.stderr().encode()
    assert rc == 0, err
    assert b" INFO " not in err and b"listening on" not in err, err


async def test_run_logs_an_invalid_config_as_error_lines(tmp_path):
    doc = segments_doc()
    doc["clusters"]["segments"]["policy"] = "random"
    path = write_config(tmp_path / "bad.toml", doc)
    proc = LbproxyProcess("run", "-c", str(path), dataplane=STANDIN)
    assert await proc.wait_async(30) == 1
    err = proc.stderr().encode()
    lines = err.splitlines()
    parsed = [LINE.match(ln) for ln in lines]
    assert parsed and all(m and m.group(3, 4) == (b"ERROR", b"lbproxy.cli") for m in parsed), err
    assert b"clusters.segments.policy" in _parse(lines[0]).group(5)
    assert _parse(lines[-1]).group(5) == f"invalid config {path}; not starting".encode()
