"""`Supervisor` in this event loop with real worker processes: restart and drain paths.

The command-line tests (test_server.py) see a restart from outside; these look at the
supervisor's own state: which config line a restarted worker starts from, and what a drain
does with a worker that does not exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest
from support.admin import origins_hit, round_robin_segments
from support.waiting import until

from lbproxy.control import config
from lbproxy.process.startup import DEFAULT_DATAPLANE
from lbproxy.process.supervisor import Supervisor, WorkerProcess

pytestmark = pytest.mark.timeout(90)


def _pid(p: WorkerProcess) -> int:
    assert p.proc is not None
    return p.proc.pid


@pytest.fixture
async def supervised(origins):
    """A `Supervisor` of 2 real workers over the demo origins; yields it once ready."""
    stop = asyncio.Event()
    sup = Supervisor(config.from_dict(round_robin_segments(origins)), 2, DEFAULT_DATAPLANE,
                     stop=stop)
    task = asyncio.create_task(sup.run())
    try:
        assert await until(lambda: sup.admin.accepting or task.done())
        assert not task.done()
        yield sup, task
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.shield(task), 30)


async def test_a_worker_killed_after_ready_restarts_from_the_config_in_force(supervised,
                                                                             origins, caplog):
    sup, _ = supervised
    victim, other = sup.workers
    old_pid = _pid(victim)
    with caplog.at_level(logging.WARNING, logger="lbproxy.process.supervisor"):
        os.kill(old_pid, signal.SIGKILL)
        assert await until(lambda: victim.proc is not None
                           and victim.proc.returncode is not None)
        # While it is down (the restart waits restart_delay_s): a new snapshot.
        snap = sup.controller.apply(sup.cfg, drained={"segments": [origins[0]]})
        assert snap.version == 2
        assert await sup.propagated(2) == []  # the one running worker confirmed it
        assert other.version == 2
        assert await until(lambda: _pid(victim) != old_pid and victim.ready.is_set())
    assert victim.version == 2  # its Ready names the newest line, not the one it first had
    assert "worker 1/2 exited (-9); restarting" in caplog.messages
    assert await until(lambda: sup.admin.accepting)  # /ready recovers once every worker is back
    hits = await origins_hit(sup.port, 20)  # both workers keep origin-1 drained
    assert "origin-1" not in hits and sum(hits.values()) == 20, hits


async def test_a_worker_that_does_not_drain_in_time_is_killed_and_the_exit_is_1(supervised,
                                                                              caplog):
    sup, task = supervised
    sup.drain_grace_s = 0.5  # the wait is timeouts.drain (5 s) plus this
    stuck = sup.workers[0]
    os.kill(_pid(stuck), signal.SIGSTOP)  # it cannot act on SIGTERM; SIGKILL still works
    with caplog.at_level(logging.ERROR, logger="lbproxy.process.supervisor"):
        sup.stop.set()
        assert await asyncio.wait_for(asyncio.shield(task), 30) == 1
    assert "worker 1/2 did not exit; killing it" in caplog.messages
    assert stuck.proc is not None and stuck.proc.returncode == -signal.SIGKILL
    assert sup.workers[1].proc is not None and sup.workers[1].proc.returncode == 0
