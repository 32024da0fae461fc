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
