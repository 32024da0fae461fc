"""The supervisor (``--workers N``): N worker processes, the admin API, restarts and drain.

Owns `Supervisor` and its `WorkerProcess` handles: spawning each worker
(``python -m lbproxy.process.worker``, lbproxy/process/worker.py) with the config line in
force, restarting one that dies after it was ready (one that dies during start-up fails
the whole start), broadcasting every new snapshot as a config line and waiting until each
running worker applied it, readiness (``/ready`` is 200 only while every worker accepts),
and the drain. Must not touch the request path: it runs no data plane; its `ClusterState`s
only describe the config and hold the sum of the workers' counter deltas.

Why the supervisor, not worker 0, serves the admin API: the admin API is the controller
(it replaces backend sets and drain marks and must push every new snapshot to every
worker, then waits until each has applied it before answering), it must keep answering
``/ready`` with 503 while the workers drain, and a worker busy with traffic or restarting
must not take the control plane with it. In-flight counts live in each worker's
`BackendLoad`; workers report theirs every `messages.REPORT_INTERVAL_S`, so ``/clusters``
shows the sum across workers as of their last reports, not a live count. Request counters
and latency histograms travel the same way, as deltas added to this process's otherwise
idle counters, so ``/stats`` and ``/metrics`` are sums over workers.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from lbproxy.admin import stats
from lbproxy.control import config, upkeep
from lbproxy.control.controller import Controller
from lbproxy.control.snapshot import Snapshot
from lbproxy.process import logs, messages, signals
from lbproxy.process.listeners import hostport, probe_port, start_admin_api

log = logging.getLogger(__name__)

WORKER_MODULE = "lbproxy.process.worker"
# A worker gets this long past timeouts.drain to exit before the supervisor kills it.
DRAIN_GRACE_S = 5.0
# A worker that dies after it was ready is restarted after this pause (crash-loop brake).
RESTART_DELAY_S = 1.0
# An admin mutation waits at most this long for every worker to apply the new snapshot.
PROPAGATION_TIMEOUT_S = 5.0
# How often `propagated` looks at the workers' confirmed versions.
PROPAGATION_POLL_S = 0.005


class WorkerProcess:
    """The supervisor's handle on one worker: its process, its pipes and its last reports."""

    def __init__(self, index: int, total: int,
                 on_stats: Callable[[messages.StatsDeltas], None]) -> None:
        self.index = index
        self.total = total
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()  # set by its `Ready`, cleared when it is respawned
        self.inflight: dict[str, dict[str, int]] = {}
        self.marks: upkeep.MarksView = {}  # its unhealthy/ejected backends
        self.limits: dict[str, dict[str, int]] = {}  # its adaptive limits
        self.queues: dict[str, tuple[int, float, float]] = {}  # its admission queues
        self.version = 0  # the snapshot version it last said it applied
        self._on_stats = on_stats

    @property
    def name(self) -> str:
        """``worker i/n``, as every log line about it says."""
        return f"worker {self.index}/{self.total}"

    @property
    def running(self) -> bool:
        """Whether its process exists and has not exited."""
        return self.proc is not None and self.proc.returncode is None

    async def spawn(self, argv: list[str], config_line: Callable[[], bytes]) -> None:
        """Start the process and hand it the config line in force once it exists."""
        self.ready.clear()
        self.inflight = {}
        self.marks = {}
        self.limits = {}
        self.queues = {}
        self.version = 0
        self.proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=messages.MAX_LINE_BYTES,
        )
        assert self.proc.stdin is not None
        # Read after the await above: a broadcast during it skipped this process, so it
        # must start from the newest line, not the one in force when spawn() was called.
        self.proc.stdin.write(config_line())
        await self.proc.stdin.drain()

    def send(self, line: bytes) -> None:
        """Hand a running worker a new config line (buffered by the pipe transport)."""
        if self.proc is not None and self.running and self.proc.stdin is not None:
            self.proc.stdin.write(line)

    async def read_events(self) -> None:
        """Consume the worker's event lines until its stdout closes (it exited)."""
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            try:
                line = await self.proc.stdout.readline()
            except ValueError:
                # Longer than MAX_LINE_BYTES: the reader dropped it (its tail, if it comes
                # apart, fails to decode and is skipped below). This loop must go on: it
                # also watches for the worker's exit.
                log.error("%s: skipped a line longer than %d bytes", self.name,
                          messages.MAX_LINE_BYTES)
                continue
            if not line:
                return
            event = messages.decode_event(line, self.name)
            if event is not None:
                self.handle(event)

    def handle(self, event: messages.WorkerEvent) -> None:
        """Take in one event from the worker."""
        match event:
            case messages.Ready(version=version):
                self.version = version
                self.ready.set()
            case messages.Applied(version=version):
                self.version = version
            case messages.Inflight(clusters=clusters, marks=marks, limits=limits,
                                   queues=queues):
                self.inflight = clusters
                self.marks = marks
                self.limits = limits
                self.queues = queues
            case messages.StatsDeltas():
                try:
                    self._on_stats(event)
                except (IndexError, ValueError) as exc:
                    # Decoding checked the report's shape; should adding it still fail,
                    # this loop must go on: it also watches for the worker's exit.
                    log.error("%s: bad stats report ignored: %r", self.name, exc)

    def terminate(self) -> None:
        """SIGTERM: the worker drains and exits."""
        if self.proc is not None and self.running:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, for a worker that did not exit in time."""
        if self.proc is not None and self.running:
            self.proc.kill()

    async def wait(self) -> int:
        """Wait for the process to exit; its exit status (negative: killed by a signal)."""
        assert self.proc is not None
        return await self.proc.wait()


class Supervisor:
    """Runs `workers` worker processes and the admin API in this process until `stop`."""

    def __init__(self, cfg: config.Config, workers: int, dataplane: str, *,
                 stop: asyncio.Event | None = None, config_path: str | None = None,
                 log_level: str = logs.DEFAULT_LEVEL) -> None:
        self.cfg = cfg
        self.dataplane = dataplane  # module:attribute, on each worker's command line
        self.config_path = config_path
        self.log_level = log_level  # passed down: workers log like this process
        self._signals = stop is None  # without a `stop` of the caller's, signals set ours
        self.stop = asyncio.Event() if stop is None else stop
        self.propagation_timeout_s = PROPAGATION_TIMEOUT_S
        self.restart_delay_s = RESTART_DELAY_S
        self.drain_grace_s = DRAIN_GRACE_S
        self.port = 0  # the listener port every worker binds; fixed by the probe in `run`
        self.draining = False
        self.status = 0  # the exit status `run` returns
        # This process's snapshot only describes the config (its loads stay idle); its
        # counters hold the sum of the workers' reported deltas.
        self.controller = Controller(cfg)
        self.workers = [WorkerProcess(i + 1, workers, self._add_stats) for i in range(workers)]
        # What every worker gets, and what a restarted one starts from.
        self.config_line = messages.encode(messages.ConfigLine.of(self.controller.snapshot))
        # Imported here, not at the top: run.py imports this module for --workers 1 too,
        # and the admin API (aiohttp, prometheus_client) is loaded only where it runs.
        from lbproxy.admin.api import AdminAPI

        self.admin = AdminAPI(self.controller.snapshot, self.inflight,
                              controller=self.controller, propagation=self.propagated,
                              gauges=self)
        self.controller.sinks += [self.admin.take, self.broadcast]

    def inflight(self, cluster: str, address: str) -> int:
        """In-flight requests to `address` summed over the workers' last reports."""
        return sum(p.inflight.get(cluster, {}).get(address, 0) for p in self.workers)

    def limits(self, cluster: str) -> dict[str, int]:
        """Each backend's adaptive limit summed over the workers (the cluster-wide limit)."""
        out: dict[str, int] = {}
        for p in self.workers:
            for address, limit in p.limits.get(cluster, {}).items():
                out[address] = out.get(address, 0) + limit
        return out

    def queue(self, cluster: str) -> tuple[int, float, float]:
        """(waiting, oldest wait in ms, admission level) over the workers: the sum, the
        longest, the lowest."""
        reports = [p.queues[cluster] for p in self.workers if cluster in p.queues]
        if not reports:
            return 0, 0.0, 1.0
        return (sum(r[0] for r in reports), max(r[1] for r in reports),
                min(r[2] for r in reports))

    def broadcast(self, snapshot: Snapshot) -> None:
        """Send `snapshot` to every running worker (a controller sink)."""
        self.config_line = messages.encode(messages.ConfigLine.of(snapshot))
        for p in self.workers:
            p.send(self.config_line)

    async def propagated(self, version: int) -> list[int]:
        """Wait (bounded) until every ready worker applied `version`; those that did not."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.propagation_timeout_s
        while (behind := self._behind(version)) and loop.time() < end:
            await asyncio.sleep(PROPAGATION_POLL_S)
        return behind

    def _behind(self, version: int) -> list[int]:
        # A worker that is not ready (restarting) is left out: it starts from the newest line.
        return [p.index for p in self.workers
                if p.ready.is_set() and p.running and p.version < version]

    def worker_argv(self, p: WorkerProcess) -> list[str]:
        """The command line of worker `p` (lbproxy/process/worker.py)."""
        return [sys.executable, "-m", WORKER_MODULE, str(p.index), str(p.total),
                str(self.port), self.dataplane, "--log-level", self.log_level]

    async def run(self) -> int:
        """Start the admin API and the workers, serve until `stop`, drain; the exit status."""
        loop = asyncio.get_running_loop()
        if self._signals:
            signals.install_stop(loop, self.stop)
        host, port = config.parse_hostport(self.cfg.listener.bind)
        self.port = probe_port(host, port)  # also fixes port 0 to one port every worker shares
        admin_host, admin_port = await start_admin_api(self.admin, self.cfg.admin.bind)
        if self.config_path is not None:
            signals.install_reload(loop, self.controller, self.config_path)
        keepers = [asyncio.create_task(self.keep(p)) for p in self.workers]
        try:
            readiness = asyncio.create_task(self._all_ready())
            stopped = asyncio.create_task(self.stop.wait())
            await asyncio.wait([readiness, stopped], return_when=asyncio.FIRST_COMPLETED)
            if not self.stop.is_set():
                self.admin.accepting = True
                log.info("admin API on %s", hostport(admin_host, admin_port))
                watch = asyncio.create_task(self._track_readiness())
                await stopped
                watch.cancel()
            readiness.cancel()
            await self._drain(keepers)
        finally:
            for t in keepers:
                t.cancel()
            await self.admin.stop()
        log.info("stopped")
        return self.status

    async def keep(self, p: WorkerProcess) -> None:
        """Run worker `p` until the drain; restart it when it dies after it was ready."""
        while not self.draining:  # a worker due for restart when the drain begins stays down
            await p.spawn(self.worker_argv(p), lambda: self.config_line)
            await p.read_events()
            rc = await p.wait()
            if self.draining:
                if rc != 0:
                    self.status = 1
                return
            if not p.ready.is_set():
                log.error("%s failed to start (exit %d)", p.name, rc)
                self.status = 1
                self.stop.set()
                return
            log.warning("%s exited (%d); restarting", p.name, rc)
            self.admin.accepting = False
            await asyncio.sleep(self.restart_delay_s)

    async def _drain(self, keepers: list[asyncio.Task[None]]) -> None:
        log.info("draining")
        self.draining = True
        self.admin.draining = True
        for p in self.workers:
            p.terminate()
        _, pending = await asyncio.wait(keepers,
                                        timeout=self.cfg.timeouts.drain + self.drain_grace_s)
        for p in self.workers:
            if p.running:
                log.error("%s did not exit; killing it", p.name)
                p.kill()
                self.status = 1
        if pending:
            await asyncio.wait(pending, timeout=self.drain_grace_s)

    def _add_stats(self, event: messages.StatsDeltas) -> None:
        stats.add_deltas(self.controller.states, event.clusters)
        stats.add_overload_deltas(self.controller.states, event.overload)

    async def _all_ready(self) -> None:
        for p in self.workers:
            await p.ready.wait()

    async def _track_readiness(self) -> None:
        # /ready is 200 only while every worker is accepting (a restarting one flips it to
        # 503); the workers' health and ejection marks are mirrored for /clusters on the
        # same beat.
        while True:
            self.admin.accepting = all(p.ready.is_set() for p in self.workers)
            upkeep.mirror_marks(self.admin.snapshot, [p.marks for p in self.workers])
            await asyncio.sleep(messages.REPORT_INTERVAL_S)
