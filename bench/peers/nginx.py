"""nginx (Debian package) as a reverse-proxy peer."""

from __future__ import annotations

import os
import signal
import string
from pathlib import Path

from bench import procs
from bench.backends import NGINX, NGINX_HEAD, BackendSet, nginx_temp_paths, nginx_user_line
from bench.peers import Peer, ensure_binary

# Same routing as the other peers: consistent hash on the video id, least_conn for uploads,
# upstream keep-alive, uploads streamed (proxy_request_buffering off) rather than spooled.
_CONF = string.Template(NGINX_HEAD + """\
events { worker_connections 16384; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_max_body_size 0;
$temp_paths
    map $$uri $$video {
        "~^/v/(?<v>[^/]+)/" $$v;
        default $$uri;
    }
    upstream segments {
        hash $$video consistent;
$segment_servers
        keepalive 256;
    }
    upstream uploads {
        least_conn;
$upload_servers
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_connect_timeout 2s;
        proxy_next_upstream error timeout;
        location /upload {
            proxy_pass http://uploads;
            proxy_request_buffering off;
        }
        location / {
            proxy_pass http://segments;
        }
    }
}
""")


class NginxPeer(Peer):
    """nginx with one worker process and a generated config."""

    name = "nginx"

    def check(self) -> None:
        """nginx binary present (installed when missing and allowed)."""
        ensure_binary(NGINX, "nginx-light")

    def start(self, workdir: Path, backends: BackendSet, cpus: list[int] | None) -> None:
        """Write the config, start nginx, wait for its port."""
        self.port = procs.free_port()
        self.dir = workdir / "nginx-proxy"
        self.pools = {"segments": [b.address for b in backends.origins],
                      "uploads": [b.address for b in backends.sinks]}
        self.launch(workdir, "nginx-proxy", "nginx.conf", self._config(),
                    [NGINX, "-p", "{dir}", "-c", "{conf}", "-e", "{dir}/error.log"], cpus)

    def _config(self) -> str:
        server = "        server {0} max_fails=1 fail_timeout=5s;"
        return _CONF.substitute(
            dir=self.dir,
            port=self.port,
            user=nginx_user_line(),
            log_level="warn",
            temp_paths=nginx_temp_paths(self.dir),
            segment_servers="\n".join(server.format(a) for a in self.pools["segments"]),
            upload_servers="\n".join(server.format(a) for a in self.pools["uploads"]),
        )

    def replace_pool(self, cluster: str, addresses: list[str]) -> None:
        """nginx's way: rewrite the config and SIGHUP the master (graceful reload)."""
        assert self.proc is not None
        self.pools[cluster] = list(addresses)
        (self.dir / "nginx.conf").write_text(self._config())
        os.kill(self.proc.pid, signal.SIGHUP)  # taskset and nice exec: this pid is the master


# The surge scenario's nginx. Open-source nginx's only capacity knob is max_conns per
# server (the upstream `queue` directive is NGINX Plus only): each origin gets max_conns=4,
# its true concurrency, so nginx forwards at most the origins' capacity and answers the rest
# at once with a 502 ("no live upstreams"): a fast refusal without priorities or a queue.
# Without max_conns it would forward everything and the origins' queues would grow until
# the deadline (what lbproxy-off shows). Round robin, as every surge peer. error_log at crit:
# every refusal logs an error line, and writing thousands a second would be measured too.
_SURGE_CONF = string.Template(NGINX_HEAD + """\
worker_rlimit_nofile 40000;
events { worker_connections 16384; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
$temp_paths
    upstream segments {
$servers
        keepalive 32;
    }
    server {
        listen 127.0.0.1:$port backlog=8192;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_connect_timeout 2s;
        location / {
            proxy_pass http://segments;
        }
    }
}
""")


class SurgeNginxPeer(NginxPeer):
    """nginx with max_conns set to each origin's concurrency, no queue (open source)."""

    def __init__(self, concurrency: int = 4) -> None:
        super().__init__()
        self.concurrency = concurrency

    def start(self, workdir: Path, backends: BackendSet, cpus: list[int] | None) -> None:
        """Write the surge config, start nginx, wait for its port."""
        self.port = procs.free_port()
        self.dir = workdir / "nginx-surge"
        servers = "\n".join(f"        server {b.address} max_conns={self.concurrency};"
                            for b in backends.capacity_origins)
        text = _SURGE_CONF.substitute(dir=self.dir, port=self.port, user=nginx_user_line(),
                                      log_level="crit", temp_paths=nginx_temp_paths(self.dir),
                                      servers=servers)
        self.launch(workdir, "nginx-surge", "nginx.conf", text,
                    [NGINX, "-p", "{dir}", "-c", "{conf}", "-e", "{dir}/error.log"], cpus)
