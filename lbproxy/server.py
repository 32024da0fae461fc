"""Process start-up: event loop, listeners, worker processes, signals and graceful drain.

Owns turning a validated `Config` into running processes. One worker (the default) runs
everything in this process: listener, `DataPlane`, admin API. With ``--workers N`` this
process becomes a supervisor that spawns N worker processes, each binding its own listener
socket with SO_REUSEPORT (the kernel spreads connections across them) and running its own
`DataPlane`; the admin API stays in the supervisor.

Why the supervisor, not worker 0, serves the admin API: the admin API is the controller
(later it replaces backend sets and must push every new snapshot to every worker), it must
keep answering ``/ready`` with 503 while the workers drain, and a worker busy with traffic
or restarting must not take the control plane with it. In-flight counts live in each
worker's `BackendLoad`; workers report theirs every `REPORT_INTERVAL_S` over their stdout
pipe, so under a supervisor ``/clusters`` shows the sum across workers as of their last
reports (at most that old), not a live count.
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
from typing import Protocol

import msgspec
import uvloop

from lbproxy import config
from lbproxy.admin import AdminAPI
from lbproxy.snapshot import Snapshot, build_snapshot

# The data plane class, as "module:attribute"; workers import it by this name.
DEFAULT_DATAPLANE = "lbproxy.proxy:DataPlane"
REPORT_INTERVAL_S = 0.25
# A worker gets this long past timeouts.drain to exit before the supervisor kills it.
DRAIN_GRACE_S = 5.0
# A worker that dies after it was ready is restarted after this pause (crash-loop brake).
RESTART_DELAY_S = 1.0


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
        self.dataplane = dataplane(snapshot)
        self.ssl = build_ssl_context(cfg.listener.tls) if cfg.listener.tls else None
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
                ) -> None:
    """Run one listener, its data plane and the admin API in this process until `stop`."""
    if stop is None:
        stop = _install_stop(asyncio.get_running_loop())
    host, port = config.parse_hostport(cfg.listener.bind)
    port = probe_port(host, port)
    admin_host, admin_port = config.parse_hostport(cfg.admin.bind)
    snapshot = build_snapshot(cfg, {}, 1)
    listener = Listener(cfg, snapshot, dataplane, port)
    admin = AdminAPI(snapshot)
    admin_port = await _start_admin(admin, admin_host, admin_port)
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
        await admin.stop()
    log("stopped")


# ---- workers (--workers N > 1) -------------------------------------------------------


async def _report_loop(snapshot: Snapshot) -> None:
    # Off the request path: reads BackendLoad from a timer, never from a request.
    last = ""
    while True:
        view = {name: {b.address: c.state.inflight(b.address) for b in c.backends}
                for name, c in snapshot.clusters.items()}
        line = json.dumps({"event": "inflight", "clusters": view})
        if line != last:
            _emit_line(line)
            last = line
        await asyncio.sleep(REPORT_INTERVAL_S)


def _emit_line(line: str) -> None:
    # The pipe to the supervisor; lines are short (well under PIPE_BUF is not needed: one
    # writer per pipe), and a supervisor that went away makes this process exit on EPIPE.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _worker(cfg: config.Config, index: int, total: int, port: int,
                  dataplane: DataPlaneFactory) -> None:
    stop = _install_stop(asyncio.get_running_loop())
    snapshot = build_snapshot(cfg, {}, 1)
    listener = Listener(cfg, snapshot, dataplane, port)
    await listener.start()
    host, _ = config.parse_hostport(cfg.listener.bind)
    log(_listening(cfg, host, listener.port, index, total))
    _emit_line(json.dumps({"event": "ready", "worker": index}))
    reporter = asyncio.create_task(_report_loop(snapshot))
    await stop.wait()
    await listener.drain()
    reporter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reporter


def worker_main(argv: list[str]) -> int:
    """Entry of one worker process: ``python -m lbproxy.server INDEX TOTAL PORT DATAPLANE``.

    The supervisor writes the config as one JSON line on stdin (already validated there).
    """
    index, total, port, dataplane_name = int(argv[0]), int(argv[1]), int(argv[2]), argv[3]
    cfg = config.from_dict(json.loads(sys.stdin.readline()))
    try:
        dataplane = load_dataplane(dataplane_name)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_worker(cfg, index, total, port, dataplane))
    except StartupError as exc:
        log(f"worker {index}/{total}: {exc}")
        return 1
    return 0


class _WorkerProcess:
    """The supervisor's handle on one worker: its process and its last in-flight report."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.inflight: dict[str, dict[str, int]] = {}

    async def spawn(self, cfg_line: bytes, total: int, port: int, dataplane: str) -> None:
        """Start the process and hand it the config."""
        self.ready.clear()
        self.inflight = {}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lbproxy.server",
            str(self.index), str(total), str(port), dataplane,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(cfg_line)
        await self.proc.stdin.drain()

    async def read_reports(self) -> None:
        """Consume the worker's JSON lines until it exits."""
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if msg.get("event") == "ready":
                self.ready.set()
            elif msg.get("event") == "inflight":
                self.inflight = msg["clusters"]


async def supervise(cfg: config.Config, workers: int, dataplane: str,
                    stop: asyncio.Event | None = None) -> int:
    """Run `workers` worker processes and the admin API here; returns the exit status."""
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = _install_stop(loop)
    host, port = config.parse_hostport(cfg.listener.bind)
    port = probe_port(host, port)  # also fixes port 0 to one port that every worker shares
    admin_host, admin_port = config.parse_hostport(cfg.admin.bind)
    procs = [_WorkerProcess(i + 1) for i in range(workers)]

    def inflight(cluster: str, address: str) -> int:
        return sum(p.inflight.get(cluster, {}).get(address, 0) for p in procs)

    # The supervisor's own snapshot only describes the config (its loads stay idle).
    admin = AdminAPI(build_snapshot(cfg, {}, 1), inflight)
    admin_port = await _start_admin(admin, admin_host, admin_port)
    cfg_line = json.dumps(msgspec.to_builtins(cfg)).encode() + b"\n"
    draining = False
    status = 0

    async def keep(p: _WorkerProcess) -> None:
        nonlocal status
        while True:
            await p.spawn(cfg_line, workers, port, dataplane)
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


async def _all_ready(procs: list[_WorkerProcess]) -> None:
    for p in procs:
        await p.ready.wait()


async def _track_readiness(procs: list[_WorkerProcess], admin: AdminAPI) -> None:
    # /ready is 200 only while every worker is accepting (a restarting one flips it to 503).
    while True:
        admin.accepting = all(p.ready.is_set() for p in procs)
        await asyncio.sleep(REPORT_INTERVAL_S)


def run(cfg: config.Config, workers: int = 1, dataplane: str | None = None) -> int:
    """Run the proxy until SIGTERM/SIGINT; returns the process exit status."""
    dataplane = dataplane or DEFAULT_DATAPLANE
    async def main() -> int:
        if workers == 1:
            await serve(cfg, dataplane=load_dataplane(dataplane))
            return 0
        return await supervise(cfg, workers, dataplane)

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    except StartupError as exc:
        log(str(exc))
        return 1


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
