"""HAProxy (Debian package) as a peer: the baseline every ratio in the report is against."""

from __future__ import annotations

import socket
import string
from pathlib import Path

from bench import procs
from bench.backends import BackendSet
from bench.peers import Peer, PeerUnavailable, ensure_binary, server_lines

HAPROXY = "/usr/sbin/haproxy"

# Same routing as lbproxy's bench config: /upload* to the sinks (least connections), the rest
# hashed on the video id (third "/" field of /v/{video}/{n}) with consistent hashing, so
# every segment of a video hits one origin. Active checks stand in for lbproxy's passive
# outlier detection; redispatch retries a refused connect on another server.
_CONF = string.Template("""\
global
    maxconn 8000
    nbthread 1
    pidfile $dir/haproxy.pid
    stats socket $dir/admin.sock mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 120s
    option http-keep-alive
    http-reuse always
    retries 2
    option redispatch 1

frontend fe
    bind 127.0.0.1:$port
    use_backend uploads if { path_beg /upload }
    default_backend segments

backend segments
    balance hash path,field(3,/)
    hash-type consistent
$segment_servers

backend uploads
    balance leastconn
$upload_servers
""")


class HAProxyPeer(Peer):
    """haproxy -db -f generated.cfg, one thread."""

    name = "haproxy"

    def check(self) -> None:
        """HAProxy binary present (installed when missing and allowed)."""
        ensure_binary(HAPROXY, "haproxy")

    def start(self, workdir: Path, backends: BackendSet, cpus: list[int] | None) -> None:
        """Write the config, start haproxy, wait for its port."""
        self.port = procs.free_port()
        self.admin_socket = workdir / "haproxy" / "admin.sock"
        self.servers = {"segments": {b.address: b.name for b in backends.origins},
                        "uploads": {b.address: b.name for b in backends.sinks}}
        server = "    server {name} {address} check inter 500ms fall 2 rise 2"
        text = _CONF.substitute(
            dir=workdir / "haproxy",
            port=self.port,
            segment_servers=server_lines(server, backends.origins),
            upload_servers=server_lines(server, backends.sinks),
        )
        self.launch(workdir, "haproxy", "haproxy.cfg", text, [HAPROXY, "-db", "-f", "{conf}"],
                    cpus)

    def replace_pool(self, cluster: str, addresses: list[str]) -> None:
        """Runtime API: servers in `addresses` ready, the rest in maintenance.

        HAProxy cannot add servers it was not started with (2.6 without dynamic servers in
        a hashed backend), so the bench's pools are always subsets of the initial set.
        """
        for address, server in self.servers[cluster].items():
            state = "ready" if address in addresses else "maint"
            self._command(f"set server {cluster}/{server} state {state}")

    def _command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.admin_socket))
            s.sendall(line.encode() + b"\n")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        text = reply.decode(errors="replace").strip()
        if text:
            raise PeerUnavailable(f"haproxy runtime API: {line!r} answered {text!r}")
        return text


# The surge scenario's oracle: HAProxy told the true capacity. Each server takes at most 4
# requests at once (maxconn 4, the origins' own concurrency); the rest wait in the backend's
# queue, ordered by priority class (playback first, prefetch last: the same priorities
# lbproxy's routes get), and a request still queued after `timeout queue` gets a 503. Round
# robin, as every surge peer. maxconn and the bind backlog are raised so the generator's
# few thousand connections are all accepted.
_SURGE_CONF = string.Template("""\
global
    maxconn 9000
    nbthread 1
    pidfile $dir/haproxy.pid

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout queue ${queue_ms}ms
    timeout http-keep-alive 120s
    option http-keep-alive
    http-reuse always

frontend fe
    bind 127.0.0.1:$port backlog 8192
    maxconn 9000
$priorities
    default_backend segments

backend segments
    balance roundrobin
$servers
""")
SURGE_PRIORITY_CLASS = {"critical": -10, "normal": 0, "sheddable": 10}  # lower is served first


class SurgeHAProxyPeer(HAProxyPeer):
    """HAProxy with the origins' true capacity (maxconn per server) and a timed queue."""

    def __init__(self, concurrency: int = 4, queue_ms: int = 100,
                 classes: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__()
        self.concurrency = concurrency
        self.queue_ms = queue_ms
        self.classes = classes  # (path prefix, priority) per class

    def start(self, workdir: Path, backends: BackendSet, cpus: list[int] | None) -> None:
        """Write the surge config, start haproxy, wait for its port."""
        self.port = procs.free_port()
        priorities = "\n".join(
            f"    http-request set-priority-class int({SURGE_PRIORITY_CLASS[priority]}) "
            f"if {{ path_beg {prefix} }}"
            for prefix, priority in self.classes if SURGE_PRIORITY_CLASS[priority])
        text = _SURGE_CONF.substitute(
            dir=workdir / "haproxy-surge", port=self.port, queue_ms=self.queue_ms,
            priorities=priorities,
            servers=server_lines(f"    server {{name}} {{address}} maxconn {self.concurrency}",
                                 backends.capacity_origins),
        )
        self.launch(workdir, "haproxy-surge", "haproxy.cfg", text,
                    [HAPROXY, "-db", "-f", "{conf}"], cpus)
