"""nginx (Debian package) as a reverse-proxy peer."""

from __future__ import annotations

import string
from pathlib import Path

from bench import procs
from bench.backends import NGINX, BackendSet, nginx_user_line
from bench.peers import Peer, ensure_binary

# Same routing as the other peers: consistent hash on the video id, least_conn for uploads,
# upstream keep-alive, uploads streamed (proxy_request_buffering off) rather than spooled.
_CONF = string.Template("""\
daemon off;
master_process on;
worker_processes 1;
$user
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_max_body_size 0;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
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
        d = workdir / "nginx-proxy"
        d.mkdir(parents=True, exist_ok=True)
        self.port = procs.free_port()
        server = "        server {0} max_fails=1 fail_timeout=5s;"
        conf = d / "nginx.conf"
        conf.write_text(_CONF.substitute(
            dir=d,
            port=self.port,
            user=nginx_user_line(),
            segment_servers="\n".join(server.format(b.address) for b in backends.origins),
            upload_servers="\n".join(server.format(b.address) for b in backends.sinks),
        ))
        self.proc = procs.start([NGINX, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")],
                                d / "stdout.log", cpus)
        procs.wait_port(self.port, self.proc)
