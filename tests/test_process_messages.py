"""The supervisor↔worker pipe protocol: round trips, and bad lines skipped and logged.

The codec is tested on its own, then each reader with a real process on the other end of
the pipe: the supervisor's `WorkerProcess` against a small script, and a real worker
(`python -m lbproxy.process.worker`) against lines this test writes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tomllib

import pytest
from support.subproc import STANDIN, subprocess_env
from test_config import CONTRACT_TOML

from lbproxy.admin import stats
from lbproxy.balance.latency import N_BUCKETS
from lbproxy.control import config
from lbproxy.control.controller import Controller
from lbproxy.control.snapshot import build_snapshot
from lbproxy.process import messages
from lbproxy.process.supervisor import WORKER_MODULE, WorkerProcess

pytestmark = pytest.mark.timeout(60)

CFG = config.from_dict(tomllib.loads(CONTRACT_TOML))
EVENTS = [
    messages.Ready(worker=2, version=7),
    messages.Applied(version=3),
    messages.Inflight(clusters={"segments": {"127.0.0.1:9001": 4, "127.0.0.1:9002": 0}},
                      marks={"segments": {"unhealthy": ["127.0.0.1:9002"], "ejected": []}}),
    messages.StatsDeltas(clusters={"segments": {"127.0.0.1:9001": {
        "c": [5, 1, 9_000_000] + [0] * (stats.FLAT_LENGTH - 3), "h": [(12, 4), (40, 1)]}}}),
]


def test_a_config_line_round_trips_config_version_and_drain_marks():
    snap = build_snapshot(CFG, {}, 7, {"segments": ["127.0.0.1:9003", "127.0.0.1:9001"]})
    line = messages.encode(messages.ConfigLine.of(snap))
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # exactly one line
    back = messages.decode_config(line, "test")
    assert back is not None
    assert back.config == CFG and back.version == 7
    assert back.drained == {"segments": ["127.0.0.1:9001", "127.0.0.1:9003"]}


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_worker_event_round_trips_with_its_event_tag(event):
    line = messages.encode(event)
    assert line.count(b"\n") == 1
    tag = json.loads(line)["event"]
    assert tag == {"Ready": "ready", "Applied": "applied", "Inflight": "inflight",
                   "StatsDeltas": "stats"}[type(event).__name__]
    assert messages.decode_event(line, "worker 1/1") == event


@pytest.mark.parametrize("line", [
    b"not json at all\n",
    b"\n",
    b'{"event": "exploded", "version": 1}\n',  # an event nobody defined
    b'{"event": "ready", "worker": 1}\n',  # a field missing
    b'{"event": "applied", "version": "two"}\n',  # a field of the wrong type
    b'{"version": 2}\n',  # no tag
    b'{"event": "inflight", "clusters": {"c": {"a": -0.5}}}\n',
])
def test_a_malformed_event_line_is_skipped_and_logged(caplog, line):
    with caplog.at_level(logging.ERROR, logger="lbproxy.process.messages"):
        assert messages.decode_event(line, "worker 2/3") is None
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith("worker 2/3: skipped a line that is not a message")


@pytest.mark.parametrize("line", [
    b'{"version": 2, "drained": {}}\n',  # no config
    b'{"version": 2, "config": {"clusters": {}, "routes": [], "nonsense": 1}}\n',
    b'{"version": 2, "config": {"clusters": {}, "routes": []}, "extra": 1}\n',
])
def test_a_malformed_config_line_is_skipped_and_logged(caplog, line):
    with caplog.at_level(logging.ERROR, logger="lbproxy.process.messages"):
        assert messages.decode_config(line, "worker 1 stdin") is None
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["worker 1 stdin"]


# Stands in for a worker: checks the config line it was handed, then writes the lines it
# was given; exits 3 if the config line was not the one expected.
FAKE_WORKER = r"""
import sys
if sys.stdin.buffer.readline() != sys.argv[1].encode() + b"\n":
    sys.exit(3)
for line in sys.argv[2:]:
    sys.stdout.buffer.write(line.encode() + b"\n")
sys.stdout.flush()
"""


def _stats_line(address: str, flat: list[int], hist: list[list[int]]) -> str:
    return json.dumps({"event": "stats",
                       "clusters": {"segments": {address: {"c": flat, "h": hist}}}})


async def test_the_supervisor_reader_skips_bad_lines_and_keeps_reading(caplog, monkeypatch):
    monkeypatch.setattr(messages, "MAX_LINE_BYTES", 4096)
    supervisor_view = Controller(CFG)
    p = WorkerProcess(1, 1, lambda e: stats.add_deltas(supervisor_view.states, e.clusters))
    first = messages.encode(messages.ConfigLine.of(supervisor_view.snapshot))
    one_request = [1] + [0] * (stats.FLAT_LENGTH - 1)
    lines = [
        "garbage",
        "x" * 10_000,  # past the reader's limit
        _stats_line("127.0.0.1:9001", [1], []),  # a counter list of another length
        _stats_line("127.0.0.1:9001", one_request, [[N_BUCKETS, 1]]),  # no such bucket
        _stats_line("127.0.0.1:9002", one_request, [[3, 1]]),
        '{"event": "inflight", "clusters": {"segments": {"127.0.0.1:9001": 2}}}',
        '{"event": "ready", "worker": 1, "version": 5}',
        '{"event": "applied", "version": 6}',
    ]
    argv = [sys.executable, "-c", FAKE_WORKER, first.decode().rstrip("\n"), *lines]
    with caplog.at_level(logging.ERROR, logger="lbproxy.process"):
        await p.spawn(argv, lambda: first)
        await asyncio.wait_for(p.read_events(), 30)
        assert await asyncio.wait_for(p.wait(), 10) == 0
    assert p.ready.is_set() and p.version == 6
    assert p.inflight == {"segments": {"127.0.0.1:9001": 2}}
    logged = [r.getMessage() for r in caplog.records]
    assert sum("worker 1/1: skipped a line that is not a message" in m for m in logged) >= 3
    assert "worker 1/1: skipped a line longer than 4096 bytes" in logged
    # Bad reports were skipped whole; the good one reached the supervisor's counters.
    state = supervisor_view.states["segments"]
    assert [state.counters[state.slots[a]].requests
            for a in ("127.0.0.1:9001", "127.0.0.1:9002")] == [0, 1]
    assert state.counters[state.slots["127.0.0.1:9002"]].latency[3] == 1


async def _next_event(stdout: asyncio.StreamReader, kind: type) -> object:
    """Read the worker's events until one of `kind` (bounded by the caller's timeout)."""
    while True:
        line = await stdout.readline()
        assert line, "the worker closed stdout"
        event = messages.decode_event(line, "test")
        if isinstance(event, kind):
            return event


async def test_a_worker_skips_a_bad_config_line_and_applies_the_next():
    cfg = config.from_dict({"listener": {"bind": "127.0.0.1:0"},
                            "clusters": {"c": {"backends": ["127.0.0.1:9001"]}},
                            "routes": [{"cluster": "c"}]})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", WORKER_MODULE, "1", "1", "0", STANDIN, "--log-level", "info",
        env=subprocess_env(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(messages.encode(messages.ConfigLine(1, cfg)))
        ready = await asyncio.wait_for(_next_event(proc.stdout, messages.Ready), 20)
        assert ready == messages.Ready(worker=1, version=1)
        later = messages.encode(messages.ConfigLine(2, cfg, {"c": ["127.0.0.1:9001"]}))
        proc.stdin.write(b'{"version": 9, "config": "not a config"}\n')
        # The good line in two writes: the reader must keep a partial line for the next.
        proc.stdin.write(later[:10])
        await proc.stdin.drain()
        await asyncio.sleep(0.05)
        proc.stdin.write(later[10:])
        applied = await asyncio.wait_for(_next_event(proc.stdout, messages.Applied), 20)
        assert applied == messages.Applied(version=2)
        proc.stdin.close()  # what the supervisor's death looks like: the worker drains
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err
    text = err.decode()
    assert "ERROR lbproxy.process.messages: worker 1 stdin: skipped a line that is not a " \
           "message" in text, text
    assert "supervisor went away; draining" in text
