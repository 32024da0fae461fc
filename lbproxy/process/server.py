"""Process start-up: event loop, listeners, worker processes, signals and graceful drain.

Owns turning a validated `Config` into running processes. One worker (the default) runs
everything in this process: listener, `DataPlane`, admin API. With ``--workers N`` this
process becomes a supervisor that spawns N worker processes, each binding its own listener
socket with SO_REUSEPORT (the kernel spreads connections across them) and running its own
`DataPlane`; the admin API stays in the supervisor.

Why the supervisor, not worker 0, serves the admin API: the admin API is the controller
(it replaces backend sets and drain marks and must push every new snapshot to every
worker, then waits until each has applied it before answering), it must
keep answering ``/ready`` with 503 while the workers drain, and a worker busy with traffic
or restarting must not take the control plane with it. In-flight counts live in each
worker's `BackendLoad`; workers report theirs every `REPORT_INTERVAL_S` over their stdout
pipe, so under a supervisor ``/clusters`` shows the sum across workers as of their last
reports (at most that old), not a live count. Request counters and latency histograms
travel the same way, as deltas the supervisor adds to its own (otherwise idle) counters, so
``/stats`` and ``/metrics`` show the sum over workers, at most one report interval old.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import json
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import msgspec
import uvloop

from lbproxy.admin import stats
from lbproxy.control import config, upkeep
from lbproxy.control.controller import Controller
from lbproxy.control.snapshot import Snapshot

if TYPE_CHECKING:
    # The admin API (aiohttp, prometheus_client: ~17 MiB resident) is imported only where
    # it runs: the single process or the supervisor. Workers exec `-m lbproxy.process.server` and
    # never load it, so each worker holds just the data plane.
    from lbproxy.admin.api import AdminAPI

# The data plane class, as "module:attribute"; workers import it by this name.
DEFAULT_DATAPLANE = "lbproxy.proxy:DataPlane"
REPORT_INTERVAL_S = 0.25
# A worker gets this long past timeouts.drain to exit before the supervisor kills it.
DRAIN_GRACE_S = 5.0
# A worker that dies after it was ready is restarted after this pause (crash-loop brake).
RESTART_DELAY_S = 1.0
# An admin mutation waits at most this long for every worker to apply the new snapshot.
PROPAGATION_TIMEOUT_S = 5.0


class DataPlaneLike(Protocol):
    """What the server needs of `lbproxy.proxy.DataPlane` (ARCHITECTURE.md)."""

    snapshot: Snapshot

    def protocol_factory(self) -> asyncio.Protocol:
        """A new client-connection protocol for `loop.create_server`."""
        ...

    async def drain(self, deadline_s: float) -> None:
        """Stop keep-alive and finish in-flight requests within `deadline_s`."""
        ...


DataPlaneFactory = Callable[[Snapshot], DataPlaneLike]


class StartupError(Exception):
    """Start-up failed for a reason the operator can fix; the message says which."""


def log(message: str) -> None:
    """One line on stderr, prefixed like every lbproxy line."""
    # One write per line: workers share stderr, and a single short write() to a pipe is
    # atomic (POSIX PIPE_BUF), so lines from different workers never interleave.
    sys.stderr.write(f"lbproxy: {message}\n")
    sys.stderr.flush()


def load_dataplane(name: str) -> DataPlaneFactory:
    """Import a data plane class given as ``module:attribute``."""
    module, _, attr = name.partition(":")
    try:
        cls: DataPlaneFactory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise StartupError(f"cannot load the data plane {name}: {exc}") from None
    return cls


def build_ssl_context(tls: config.TLS) -> ssl.SSLContext:
    """A server-side TLS context for a listener's ``tls = {cert, key}``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8996 deprecates TLS 1.0 and 1.1
    ctx.load_cert_chain(tls.cert, tls.key)
    ctx.set_alpn_protocols(["http/1.1"])  # the data plane speaks HTTP/1.1 only (RFC 7301)
    return ctx


def _bind_host(host: str) -> str:
    return "0.0.0.0" if host == "*" else host


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _describe(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    return exc.strerror or str(exc)


def probe_port(host: str, port: int) -> int:
    """Fail with StartupError if host:port is taken; returns the port (chosen, for port 0).

    SO_REUSEPORT lets any number of same-user sockets share a port, so binding the real
    listeners would not notice another lbproxy already there. This probe binds *without*
    SO_REUSEPORT, which Linux refuses while any socket listens on the port; SO_REUSEADDR
    keeps our own old connections in TIME_WAIT from counting as "taken". It never listens,
    so closing it leaves nothing behind.
    """
    bind_host = _bind_host(host)
    with socket.socket(_family(bind_host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind_host, port))
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {_hostport(host, port)}: {_describe(exc)}") from None
        return int(s.getsockname()[1])


def bind_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket with SO_REUSEPORT, so each worker can bind its own."""
    bind_host = _bind_host(host)
    s = socket.socket(_family(bind_host), socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((bind_host, port))
        s.listen(backlog)
        s.setblocking(False)
    except OSError as exc:
        s.close()
        raise StartupError(
            f"cannot listen on {_hostport(host, port)}: {_describe(exc)}") from None
    return s


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _install_stop(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    stop = asyncio.Event()

    def first_signal() -> None:
        # Once draining, further SIGTERM/SIGINT are ignored (the drain has its own deadline):
        # a second signal must not kill the process after the loop removed its handlers,
        # which would turn a clean exit 0 into death by signal.
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, first_signal)
    return stop


async def _start_admin(admin: AdminAPI, host: str, port: int) -> int:
    try:
        return await admin.start(_bind_host(host), port)
    except OSError as exc:
        raise StartupError(
            f"cannot listen on {_hostport(host, port)} (admin API): {_describe(exc)}") from None


class Listener:
    """One accepting socket with its `DataPlane` (one per process)."""

    def __init__(self, cfg: config.Config, snapshot: Snapshot, dataplane: DataPlaneFactory,
                 port: int) -> None:
        self.cfg = cfg
        self.host, _ = config.parse_hostport(cfg.listener.bind)
        self.port = port
        self.ssl: ssl.SSLContext | None = None
        if cfg.listener.tls is not None:
            try:
                self.ssl = build_ssl_context(cfg.listener.tls)
            except (ssl.SSLError, OSError) as exc:
                raise StartupError(f"cannot load listener.tls cert/key: {exc}") from None
        self.dataplane = dataplane(snapshot)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind and start accepting."""
        sock = bind_listener(self.host, self.port, self.cfg.listener.backlog)
        self.port = int(sock.getsockname()[1])
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.dataplane.protocol_factory, sock=sock, ssl=self.ssl,
            backlog=self.cfg.listener.backlog,
        )

    async def drain(self) -> None:
        """Stop accepting, then let the data plane finish within timeouts.drain."""
        deadline = self.cfg.timeouts.drain
        if self._server is not None:
            self._server.close()  # closes the listening socket; connections stay
        try:
            await asyncio.wait_for(self.dataplane.drain(deadline), deadline + 1.0)
        except TimeoutError:
            log(f"drain did not finish within {deadline:g}s; closing what is left")


def _listening(cfg: config.Config, host: str, port: int, index: int, total: int) -> str:
    tls = ", tls" if cfg.listener.tls else ""
    return f"listening on {_hostport(host, port)} (worker {index}/{total}{tls})"


async def serve(cfg: config.Config, *, dataplane: DataPlaneFactory,
                stop: asyncio.Event | None = None,
                on_ready: Callable[[Listener, AdminAPI], Awaitable[None] | None] | None = None,
                config_path: str | None = None) -> None:
    """Run one listener, its data plane and the admin API in this process until `stop`.

    With `config_path`, SIGHUP reloads that file (see `_install_reload`).
    """
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = _install_stop(loop)
    host, port = config.parse_hostport(cfg.listener.bind)
    port = probe_port(host, port)
    admin_host, admin_port = config.parse_hostport(cfg.admin.bind)
    controller = Controller(cfg)
    listener = Listener(cfg, controller.snapshot, dataplane, port)
    from lbproxy.admin.api import AdminAPI

    admin = AdminAPI(controller.snapshot, controller=controller)
    controller.sinks += [_assign(listener.dataplane), _assign(admin)]
    admin_port = await _start_admin(admin, admin_host, admin_port)
    if config_path is not None:
        _install_reload(loop, controller, config_path)
    background = upkeep.start(controller)  # health checks run where the data plane is
    try:
        await listener.start()
        admin.accepting = True
        log(_listening(cfg, host, listener.port, 1, 1))
        log(f"admin API on {_hostport(admin_host, admin_port)}")
        if on_ready is not None:
            result = on_ready(listener, admin)
            if result is not None:
                await result
        await stop.wait()
        log("draining")
        admin.draining = True
        await listener.drain()
    finally:
        await background.stop()
        await admin.stop()
    log("stopped")


def _assign(consumer: DataPlaneLike | AdminAPI) -> Callable[[Snapshot], None]:
    # The one-assignment swap of ARCHITECTURE.md rule 1.
    def sink(snapshot: Snapshot) -> None:
        consumer.snapshot = snapshot

    return sink


def _install_reload(loop: asyncio.AbstractEventLoop, controller: Controller, path: str) -> None:
    """SIGHUP re-reads `path`; a valid file becomes the next snapshot, else nothing changes."""

    def reload() -> None:
        try:
            snap = controller.apply(config.load(path))
        except config.ConfigError as exc:
            for field, msg in exc.errors:
                log(f"reload rejected, keeping version {controller.snapshot.version}: "
                    + (f"{field}: {msg}" if field else msg))
            return
        log(f"reloaded {path} (version {snap.version})")

    loop.add_signal_handler(signal.SIGHUP, reload)


# ---- workers (--workers N > 1) -------------------------------------------------------


def _report_stats(controller: Controller, deltas: stats.DeltaReporter) -> None:
    report = deltas.collect(controller.snapshot)
    if report:
        _emit_line(json.dumps({"event": "stats", "clusters": report}))


async def _report_loop(controller: Controller, deltas: stats.DeltaReporter) -> None:
    # Off the request path: reads BackendLoad and counters from a timer, never per request.
    last = ""
    while True:
        view = {name: {b.address: c.state.inflight(b.address) for b in c.backends}
                for name, c in controller.snapshot.clusters.items()}
        line = json.dumps({"event": "inflight", "clusters": view,
                           "marks": upkeep.marks_view(controller.snapshot)})
        if line != last:
            _emit_line(line)
            last = line
        _report_stats(controller, deltas)
        await asyncio.sleep(REPORT_INTERVAL_S)


def _emit_line(line: str) -> None:
    # The pipe to the supervisor, which reads it continuously, so this short write does not
    # block. If the supervisor is gone the write fails; stdin's EOF then starts the drain.
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class _SupervisorPipe(asyncio.Protocol):
    """The worker's stdin: new configs as JSON lines; EOF means the supervisor is gone."""

    def __init__(self, stop: asyncio.Event, controller: Controller) -> None:
        self._stop = stop
        self._controller = controller
        self._buf = b""

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            try:
                msg = json.loads(line)
                snap = self._controller.apply(config.from_dict(msg["config"]), msg["version"],
                                              msg.get("drained", {}))
            except (ValueError, KeyError, TypeError) as exc:  # ConfigError is a ValueError
                # The supervisor validated it, so this is a bug: be loud, keep serving.
                log(f"worker could not apply a config line: {exc}")
                continue
            _emit_line(json.dumps({"event": "applied", "version": snap.version}))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._stop.is_set():
            log("supervisor went away; draining")
        self._stop.set()


async def _worker(cfg: config.Config, version: int, drained: dict[str, list[str]], index: int,
                  total: int, port: int, dataplane: DataPlaneFactory) -> None:
    loop = asyncio.get_running_loop()
    stop = _install_stop(loop)
    controller = Controller(cfg, version, drained)
    listener = Listener(cfg, controller.snapshot, dataplane, port)
    controller.sinks.append(_assign(listener.dataplane))
    background = upkeep.start(controller)  # each worker checks its own ClusterStates
    # Later configs arrive on stdin; its EOF means an orphan, which must not keep serving.
    pipe, _ = await loop.connect_read_pipe(lambda: _SupervisorPipe(stop, controller), sys.stdin)
    await listener.start()
    host, _ = config.parse_hostport(cfg.listener.bind)
    log(_listening(cfg, host, listener.port, index, total))
    _emit_line(json.dumps({"event": "ready", "worker": index, "version": version}))
    deltas = stats.DeltaReporter()
    reporter = asyncio.create_task(_report_loop(controller, deltas))
    await stop.wait()
    await listener.drain()
    await background.stop()
    reporter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reporter
    _report_stats(controller, deltas)  # what the drain finished counts too
    pipe.close()


def worker_main(argv: list[str]) -> int:
    """Entry of one worker process: ``python -m lbproxy.process.server INDEX TOTAL PORT DATAPLANE``.

    The supervisor writes ``{"version": N, "config": {...}, "drained": {...}}`` lines on
    stdin (validated there): the first one to start with, each later one to replace the
    snapshot; the worker answers each later one with ``{"event": "applied", "version": N}``.
    """
    index, total, port, dataplane_name = int(argv[0]), int(argv[1]), int(argv[2]), argv[3]
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reload is the supervisor's to do
    # The raw (unbuffered) stream reads exactly one line, so nothing the supervisor sends
    # later is swallowed by a read-ahead buffer before the event loop watches stdin.
    with open(sys.stdin.fileno(), "rb", buffering=0, closefd=False) as raw:
        first = json.loads(raw.readline())
    cfg = config.from_dict(first["config"])
    try:
        dataplane = load_dataplane(dataplane_name)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_worker(cfg, first["version"], first.get("drained", {}), index, total,
                               port, dataplane))
    except StartupError as exc:
        log(f"worker {index}/{total}: {exc}")
        return 1
    return 0


class _WorkerProcess:
    """The supervisor's handle on one worker: its process and its last reports."""

    def __init__(self, index: int,
                 on_stats: Callable[[dict[str, dict[str, object]]], None]) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.inflight: dict[str, dict[str, int]] = {}
        self.marks: upkeep.MarksView = {}  # its unhealthy/ejected backends
        self.version = 0  # the snapshot version it last said it applied
        self._on_stats = on_stats

    async def spawn(self, cfg_line: Callable[[], bytes], total: int, port: int,
                    dataplane: str) -> None:
        """Start the process and hand it the config line in force once it exists."""
        self.ready.clear()
        self.inflight = {}
        self.marks = {}
        self.version = 0
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lbproxy.process.server",
            str(self.index), str(total), str(port), dataplane,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdin is not None
        # Read after the await above: a broadcast during it skipped this process, so it
        # must start from the newest line, not the one in force when spawn() was called.
        self.proc.stdin.write(cfg_line())
        await self.proc.stdin.drain()

    def send(self, line: bytes) -> None:
        """Hand a running worker a new config line (buffered by the pipe transport)."""
        if self.proc is not None and self.proc.returncode is None and self.proc.stdin:
            self.proc.stdin.write(line)

    async def read_reports(self) -> None:
        """Consume the worker's JSON lines until it exits."""
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            event = msg.get("event")
            if event == "ready":
                self.version = msg.get("version", 0)
                self.ready.set()
            elif event == "applied":
                self.version = msg["version"]
            elif event == "inflight":
                self.inflight = msg["clusters"]
                self.marks = msg.get("marks", {})
            elif event == "stats":
                try:
                    self._on_stats(msg["clusters"])
                except (KeyError, TypeError, ValueError, IndexError) as exc:
                    # A bad report must not end this loop (it also watches for the exit).
                    log(f"worker {self.index}: bad stats report ignored: {exc!r}")


async def supervise(cfg: config.Config, workers: int, dataplane: str,
                    stop: asyncio.Event | None = None, config_path: str | None = None) -> int:
    """Run `workers` worker processes and the admin API here; returns the exit status."""
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = _install_stop(loop)
    host, port = config.parse_hostport(cfg.listener.bind)
    port = probe_port(host, port)  # also fixes port 0 to one port that every worker shares
    admin_host, admin_port = config.parse_hostport(cfg.admin.bind)
    # The supervisor's own snapshot only describes the config (its loads stay idle); its
    # counters hold the sum of the workers' reported deltas.
    controller = Controller(cfg)
    procs = [_WorkerProcess(i + 1, lambda r: stats.add_deltas(controller.states, r))
             for i in range(workers)]

    def inflight(cluster: str, address: str) -> int:
        return sum(p.inflight.get(cluster, {}).get(address, 0) for p in procs)

    async def propagated(version: int) -> list[int]:
        # A worker that is not ready (restarting) is skipped: it starts from the newest line.
        def pending() -> list[int]:
            return [p.index for p in procs
                    if p.ready.is_set() and p.proc is not None and p.proc.returncode is None
                    and p.version < version]

        end = loop.time() + PROPAGATION_TIMEOUT_S
        while pending() and loop.time() < end:
            await asyncio.sleep(0.005)
        return pending()

    from lbproxy.admin.api import AdminAPI

    admin = AdminAPI(controller.snapshot, inflight, controller=controller,
                     propagation=propagated)
    cfg_line = _config_line(controller.snapshot)

    def broadcast(snapshot: Snapshot) -> None:
        nonlocal cfg_line
        cfg_line = _config_line(snapshot)  # also what a restarted worker starts from
        for p in procs:
            p.send(cfg_line)

    controller.sinks += [_assign(admin), broadcast]
    admin_port = await _start_admin(admin, admin_host, admin_port)
    if config_path is not None:
        _install_reload(loop, controller, config_path)
    draining = False
    status = 0

    async def keep(p: _WorkerProcess) -> None:
        nonlocal status
        while not draining:  # a worker due for restart when the drain begins stays down
            await p.spawn(lambda: cfg_line, workers, port, dataplane)
            assert p.proc is not None
            await p.read_reports()
            rc = await p.proc.wait()
            if draining:
                if rc != 0:
                    status = 1
                return
            if not p.ready.is_set():
                log(f"worker {p.index}/{workers} failed to start (exit {rc})")
                status = 1
                stop.set()
                return
            log(f"worker {p.index}/{workers} exited ({rc}); restarting")
            admin.accepting = False
            await asyncio.sleep(RESTART_DELAY_S)

    keepers = [asyncio.create_task(keep(p)) for p in procs]
    try:
        readiness = asyncio.create_task(_all_ready(procs))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([readiness, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            admin.accepting = True
            log(f"admin API on {_hostport(admin_host, admin_port)}")
            watch = asyncio.create_task(_track_readiness(procs, admin))
            await stopped
            watch.cancel()
        readiness.cancel()
        log("draining")
        draining = True
        admin.draining = True
        for p in procs:
            if p.proc is not None and p.proc.returncode is None:
                p.proc.send_signal(signal.SIGTERM)
        _, pending = await asyncio.wait(keepers, timeout=cfg.timeouts.drain + DRAIN_GRACE_S)
        for p in procs:
            if p.proc is not None and p.proc.returncode is None:
                log(f"worker {p.index}/{workers} did not exit; killing it")
                p.proc.kill()
                status = 1
        if pending:
            await asyncio.wait(pending, timeout=DRAIN_GRACE_S)
    finally:
        for t in keepers:
            t.cancel()
        await admin.stop()
    log("stopped")
    return status


def _config_line(snapshot: Snapshot) -> bytes:
    # Drain marks travel with the config: a worker's snapshot carries both, like ours.
    body = {"version": snapshot.version, "config": msgspec.to_builtins(snapshot.config),
            "drained": {name: sorted(a) for name, a in snapshot.drained.items()}}
    return json.dumps(body).encode() + b"\n"


async def _all_ready(procs: list[_WorkerProcess]) -> None:
    for p in procs:
        await p.ready.wait()


async def _track_readiness(procs: list[_WorkerProcess], admin: AdminAPI) -> None:
    # /ready is 200 only while every worker is accepting (a restarting one flips it to 503);
    # the workers' health and ejection marks are mirrored for /clusters on the same beat.
    while True:
        admin.accepting = all(p.ready.is_set() for p in procs)
        upkeep.mirror_marks(admin.snapshot, [p.marks for p in procs])
        await asyncio.sleep(REPORT_INTERVAL_S)


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one; returns the limit now in force."""
    # Every client and every upstream connection is a descriptor; a distribution's default
    # soft limit (often 1024) would cap a proxy at a few hundred clients. nginx raises it
    # with worker_rlimit_nofile, HAProxy from maxconn; workers inherit it across exec.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(cfg: config.Config, workers: int = 1, dataplane: str | None = None,
        config_path: str | None = None) -> int:
    """Run the proxy until SIGTERM/SIGINT (SIGHUP reloads `config_path`); returns the status."""
    dataplane = dataplane or DEFAULT_DATAPLANE
    raise_fd_limit()

    async def main() -> int:
        if workers == 1:
            await serve(cfg, dataplane=load_dataplane(dataplane), config_path=config_path)
            return 0
        return await supervise(cfg, workers, dataplane, config_path=config_path)

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    except StartupError as exc:
        log(str(exc))
        return 1


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
