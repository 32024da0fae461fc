"""Listening sockets: the port probe, SO_REUSEPORT binding, TLS contexts, `Listener`.

Owns every socket the proxy listens on for clients: probing that the port is free, binding
it with SO_REUSEPORT (each worker binds its own; the kernel spreads connections), the TLS
context of ``listener.tls``, and `Listener`, which serves one such socket with a data plane
and drains it. Sockets are created only by `open_listen_socket`, and `Listener.start` also
takes one made elsewhere, so a socket handed over by another process needs no other change.
Also starts the admin API's socket, so both report a taken port the same way. Must not
touch the control plane or the pipes between supervisor and workers.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from typing import TYPE_CHECKING

from lbproxy.control import config
from lbproxy.control.snapshot import Snapshot
from lbproxy.process.startup import DataPlaneFactory, StartupError
from lbproxy.proxy.protection import SelfProtection

if TYPE_CHECKING:
    from lbproxy.admin.api import AdminAPI

log = logging.getLogger(__name__)


def build_ssl_context(tls: config.TLS) -> ssl.SSLContext:
    """A server-side TLS context for a listener's ``tls = {cert, key}``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8996 deprecates TLS 1.0 and 1.1
    ctx.load_cert_chain(tls.cert, tls.key)
    ctx.set_alpn_protocols(["http/1.1"])  # the data plane speaks HTTP/1.1 only (RFC 7301)
    return ctx


def bind_host(host: str) -> str:
    """The address to bind for a configured host (``*`` is every IPv4 address)."""
    return "0.0.0.0" if host == "*" else host


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def hostport(host: str, port: int) -> str:
    """``host:port`` as an operator writes it (IPv6 in brackets)."""
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
    addr = bind_host(host)
    with socket.socket(_family(addr), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {hostport(host, port)}: {_describe(exc)}") from None
        return int(s.getsockname()[1])


def open_listen_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A non-blocking listening socket with SO_REUSEPORT, so each worker can bind its own."""
    addr = bind_host(host)
    s = socket.socket(_family(addr), socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((addr, port))
        s.listen(backlog)
        s.setblocking(False)
    except OSError as exc:
        s.close()
        raise StartupError(
            f"cannot listen on {hostport(host, port)}: {_describe(exc)}") from None
    return s


async def start_admin_api(admin: AdminAPI, bind: str) -> tuple[str, int]:
    """Start the admin API on ``admin.bind``; returns (host, bound port)."""
    host, port = config.parse_hostport(bind)
    try:
        return host, await admin.start(bind_host(host), port)
    except OSError as exc:
        raise StartupError(
            f"cannot listen on {hostport(host, port)} (admin API): {_describe(exc)}") from None


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
        self._sock: socket.socket | None = None
        self._resuming: asyncio.Task[None] | None = None
        self._stopped = False  # draining: never accept again
        self.protection = SelfProtection(self.dataplane, self._set_accepting)

    async def start(self, sock: socket.socket | None = None) -> None:
        """Start accepting on `sock`, or on a socket bound here to host and `port`."""
        if sock is None:
            sock = open_listen_socket(self.host, self.port, self.cfg.listener.backlog)
        self.port = int(sock.getsockname()[1])
        # The listener keeps `sock`; the server serves a duplicate, so that self-protection
        # can close the server (stop accepting) while the socket stays listening: new
        # connections wait in the kernel's backlog rather than being refused.
        self._sock = sock
        await self._serve()
        self.protection.start(asyncio.get_running_loop())

    async def _serve(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.dataplane.protocol_factory, sock=self._sock.dup(), ssl=self.ssl,
            backlog=self.cfg.listener.backlog,
        )

    def _set_accepting(self, accepting: bool) -> None:
        """Self-protection's switch: stop or resume accepting new connections."""
        if self._stopped or self._sock is None:
            return
        if not accepting:
            if self._server is not None:
                self._server.close()
                self._server = None
        elif self._server is None and self._resuming is None:
            self._resuming = asyncio.get_running_loop().create_task(self._resume())

    async def _resume(self) -> None:
        try:
            if self._server is None and not self._stopped and self._sock is not None:
                await self._serve()
        finally:
            self._resuming = None

    def describe(self, index: int, total: int) -> str:
        """The line saying this listener accepts: ``listening on HOST:PORT (worker i/n)``."""
        tls = ", tls" if self.ssl is not None else ""
        return f"listening on {hostport(self.host, self.port)} (worker {index}/{total}{tls})"

    async def drain(self) -> None:
        """Stop accepting, then let the data plane finish within timeouts.drain."""
        deadline = self.cfg.timeouts.drain
        self._stopped = True
        self.protection.stop()
        if self._server is not None:
            self._server.close()  # closes the listening socket; connections stay
            self._server = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        try:
            await asyncio.wait_for(self.dataplane.drain(deadline), deadline + 1.0)
        except TimeoutError:
            log.warning("drain did not finish within %gs; closing what is left", deadline)
