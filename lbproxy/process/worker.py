"""One worker process: ``python -m lbproxy.process.worker INDEX TOTAL PORT DATAPLANE``.

Owns a worker's life under a supervisor (lbproxy/process/supervisor.py): it starts from
the first `ConfigLine` on stdin, binds its own SO_REUSEPORT listener on PORT and runs its
own data plane (the class named DATAPLANE), `ClusterState`s, health checks and ejection
sweep; it applies each later config line and answers `Applied`; every
`messages.REPORT_INTERVAL_S` it reports in-flight counts, marks and counter deltas on
stdout; it drains on SIGTERM or SIGINT, and when stdin closes (the supervisor is gone: an
orphan must not keep serving).
Must not touch the admin API, which it never imports (each worker holds just the data
plane), nor other workers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys

import uvloop

from lbproxy.admin import stats
from lbproxy.control import upkeep
from lbproxy.control.controller import Controller
from lbproxy.process import logs, messages, signals
from lbproxy.process.listeners import Listener
from lbproxy.process.startup import DataPlaneFactory, StartupError, assign, load_dataplane

# Not __name__: run as ``-m`` this module is __main__, outside the "lbproxy" loggers' level.
log = logging.getLogger("lbproxy.process.worker")


class EventWriter:
    """The worker's stdout, read by the supervisor: one `WorkerEvent` per line."""

    def send(self, event: messages.WorkerEvent) -> None:
        """Write `event` as one line."""
        # The supervisor reads this pipe continuously, so the write does not block for
        # long. If the supervisor is gone it fails; stdin's EOF then starts the drain.
        with contextlib.suppress(BrokenPipeError):
            sys.stdout.buffer.write(messages.encode(event))
            sys.stdout.buffer.flush()


class Worker:
    """One worker's controller, listener, upkeep and reports, from its first config line."""

    def __init__(self, index: int, total: int, port: int, dataplane: DataPlaneFactory,
                 first: messages.ConfigLine, events: EventWriter, stop: asyncio.Event) -> None:
        self.index = index
        self.total = total
        self.events = events
        self.controller = Controller(first.config, first.version, first.drained)
        self.listener = Listener(first.config, self.controller.snapshot, dataplane, port)
        self.controller.sinks.append(assign(self.listener.dataplane))
        self.stop = stop  # set by SIGTERM/SIGINT or by the end of stdin
        self._deltas = stats.DeltaReporter()
        self._overload = stats.OverloadReporter()

    async def run(self) -> None:
        """Serve until `stop` is set, then drain."""
        loop = asyncio.get_running_loop()
        background = upkeep.start(self.controller)  # each worker checks its own states
        # Later config lines arrive on stdin; its EOF means an orphan, which must drain.
        pipe, _ = await loop.connect_read_pipe(lambda: ConfigPipe(self), sys.stdin)
        try:
            await self.listener.start()
            log.info("%s", self.listener.describe(self.index, self.total))
            self.events.send(messages.Ready(self.index, self.controller.snapshot.version))
            reporter = asyncio.create_task(self._report_loop())
            await self.stop.wait()
            await self.listener.drain()
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            self._report_stats()  # what the drain finished counts too
        finally:
            await background.stop()
            pipe.close()

    def apply(self, line: messages.ConfigLine) -> None:
        """Make `line` this worker's snapshot and tell the supervisor."""
        try:
            snap = self.controller.apply(line.config, line.version, line.drained)
        except ValueError as exc:  # a ConfigError, or a selector refusing its input
            # The supervisor built the same snapshot first, so this is a bug: be loud and
            # keep serving the snapshot in force; the supervisor names this worker pending.
            log.error("worker %d/%d could not apply config version %d: %s",
                      self.index, self.total, line.version, exc)
            return
        self.events.send(messages.Applied(snap.version))

    def orphaned(self) -> None:
        """stdin closed: the supervisor is gone, so drain and exit."""
        if not self.stop.is_set():
            log.warning("worker %d/%d: supervisor went away; draining", self.index, self.total)
        self.stop.set()

    def _report_stats(self) -> None:
        snapshot = self.controller.snapshot
        report = self._deltas.collect(snapshot)
        overload = self._overload.collect(snapshot)
        if report or overload:
            self.events.send(messages.StatsDeltas(report, overload))

    async def _report_loop(self) -> None:
        # Off the request path: reads BackendLoad and counters from a timer, never per request.
        last: messages.Inflight | None = None
        while True:
            snapshot = self.controller.snapshot
            view = {name: {b.address: c.state.inflight(b.address) for b in c.backends}
                    for name, c in snapshot.clusters.items()}
            limits = {name: {b.address: int(c.state.overload.limit(b.slot).limit)
                             for b in c.backends}
                      for name, c in snapshot.clusters.items() if c.state.overload is not None}
            queues = {name: stats.queue_gauges(c.state.overload)
                      for name, c in snapshot.clusters.items() if c.state.overload is not None}
            inflight = messages.Inflight(view, upkeep.marks_view(snapshot), limits, queues)
            if inflight != last:  # only when changed: an idle worker stays quiet
                self.events.send(inflight)
                last = inflight
            self._report_stats()
            await asyncio.sleep(messages.REPORT_INTERVAL_S)


class ConfigPipe(asyncio.Protocol):
    """The worker's stdin after the first line: config lines; EOF: the supervisor is gone."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._buf = b""

    def data_received(self, data: bytes) -> None:
        """Apply every complete line; keep a partial one for the next read."""
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            msg = messages.decode_config(line, f"worker {self._worker.index} stdin")
            if msg is not None:
                self._worker.apply(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        """The supervisor closed the pipe or died."""
        self._worker.orphaned()


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lbproxy.process.worker",
        description="One lbproxy worker; started by the supervisor, config lines on stdin.")
    parser.add_argument("index", type=int, help="this worker's number, 1 to TOTAL")
    parser.add_argument("total", type=int, help="how many workers the supervisor runs")
    parser.add_argument("port", type=int, help="the listener port every worker shares")
    parser.add_argument("dataplane", help="the data plane class as module:attribute")
    parser.add_argument("--log-level", choices=logs.LEVELS, default=logs.DEFAULT_LEVEL,
                        help="the lowest level of lbproxy log lines written to stderr")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Run one worker; returns its exit status (1: it could not start)."""
    args = _arguments(argv)
    logs.configure(args.log_level)
    signals.ignore_reload()
    # The raw (unbuffered) stream reads exactly one line, so nothing the supervisor sends
    # later is swallowed by a read-ahead buffer before the event loop watches stdin.
    with open(sys.stdin.fileno(), "rb", buffering=0, closefd=False) as raw:
        first = messages.decode_config(raw.readline(), f"worker {args.index} stdin")
    if first is None:
        log.error("worker %d/%d: no config line to start from", args.index, args.total)
        return 1
    try:
        dataplane = load_dataplane(args.dataplane)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(args, dataplane, first))
    except StartupError as exc:
        log.error("worker %d/%d: %s", args.index, args.total, exc)
        return 1
    return 0


async def _serve(args: argparse.Namespace, dataplane: DataPlaneFactory,
                 first: messages.ConfigLine) -> None:
    stop = signals.install_stop(asyncio.get_running_loop())
    await Worker(args.index, args.total, args.port, dataplane, first, EventWriter(),
                 stop).run()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
