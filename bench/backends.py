"""The backends every proxy under test forwards to: nginx segment origins and upload sinks.

Owns generating segment files, starting one process per backend (so `backend-failure` can
kill exactly one) and stopping them. nginx serves static files with sendfile so the origins
are not what limits a run; the sinks are bench/sink.py (uvloop + httptools).
"""

from __future__ import annotations

import json
import os
import string
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

from bench import procs

NGINX = "/usr/sbin/nginx"

# The head of every generated nginx config: in the foreground, one worker, files in $dir.
NGINX_HEAD = """\
daemon off;
master_process on;
worker_processes 1;
$user
pid $dir/nginx.pid;
error_log $dir/error.log $log_level;
"""

_ORIGIN_CONF = string.Template(NGINX_HEAD + """\
events { worker_connections 8192; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    open_file_cache max=64;
    default_type application/octet-stream;
$temp_paths
    server {
        listen 127.0.0.1:$port backlog=4096;
        add_header X-Backend $name always;
        # Every video shares the same few segment files: /v/{video}/{n} -> segments/{n}.
        location ~ ^/v/[^/]+/(\\d+)$$ { alias $segments/$$1; }
        location = /health { return 200 "ok\\n"; }
    }
}
""")


def nginx_temp_paths(d: Path) -> str:
    """nginx's temp directories inside `d` (the packaged defaults need /var/lib/nginx)."""
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    return "\n".join(f"    {k}_temp_path {d}/{k};" for k in kinds)


def nginx_user_line() -> str:
    """`user root;` when running as root: temp dirs are ours, not nobody's."""
    return "user root;" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""


@dataclass
class Backend:
    """One running backend process."""

    name: str
    port: int
    role: str  # "segments" or "uploads"
    proc: Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """host:port as proxies' configs want it."""
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        """The process is still running."""
        return self.proc is not None and self.proc.poll() is None


@dataclass
class BackendSet:
    """Segment origins and upload sinks for one bench run."""

    workdir: Path
    segment_files: int = 8
    segment_bytes: int = 131072
    cpus: list[int] | None = None  # where backends run; None = anywhere
    origins: list[Backend] = field(default_factory=list)
    sinks: list[Backend] = field(default_factory=list)
    # bench/origin.py processes for phased scenarios (surge), started on first use.
    capacity_origins: list[Backend] = field(default_factory=list)

    def write_segments(self) -> Path:
        """Create the segment files (random bytes, so nothing compresses) once."""
        seg_dir = self.workdir / "segments"
        seg_dir.mkdir(parents=True, exist_ok=True)
        for n in range(self.segment_files):
            path = seg_dir / str(n)
            if not path.exists() or path.stat().st_size != self.segment_bytes:
                path.write_bytes(os.urandom(self.segment_bytes))
        return seg_dir

    def start(self, n_origins: int = 3, n_sinks: int = 2) -> None:
        """Start every backend and wait until each accepts connections."""
        seg_dir = self.write_segments()
        for i in range(n_origins):
            self.origins.append(Backend(f"origin{i + 1}", procs.free_port(), "segments"))
        for i in range(n_sinks):
            self.sinks.append(Backend(f"sink{i + 1}", procs.free_port(), "uploads"))
        for b in self.origins:
            self._start_origin(b, seg_dir)
        for b in self.sinks:
            self._start_sink(b)
        for b in self.origins + self.sinks:
            assert b.proc is not None
            procs.wait_port(b.port, b.proc)

    def _start_origin(self, b: Backend, seg_dir: Path) -> None:
        d = self.workdir / b.name
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "nginx.conf"
        conf.write_text(
            _ORIGIN_CONF.substitute(
                dir=d, port=b.port, name=b.name, segments=seg_dir, user=nginx_user_line(),
                log_level="warn",
                temp_paths=nginx_temp_paths(d),
            )
        )
        b.proc = procs.start([NGINX, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")],
                             d / "stdout.log", self.cpus)

    def _start_sink(self, b: Backend) -> None:
        b.proc = procs.start([sys.executable, "-m", "bench.sink", str(b.port), b.name],
                             self.workdir / f"{b.name}.log", self.cpus)

    def start_capacity_origins(self, count: int, concurrency: int, service_ms: float) -> None:
        """Start `count` capacity-limited origins (bench/origin.py) unless already up."""
        if self.capacity_origins:
            return
        for i in range(count):
            b = Backend(f"origin{i + 1}", procs.free_port(), "capacity")
            b.proc = procs.start(
                [sys.executable, "-m", "bench.origin", str(b.port), b.name, str(concurrency),
                 str(service_ms)], self.workdir / f"capacity-{b.name}.log", self.cpus)
            self.capacity_origins.append(b)
        for b in self.capacity_origins:
            assert b.proc is not None
            procs.wait_port(b.port, b.proc)

    def capacity_stats(self) -> list[dict[str, int]]:
        """Each capacity-limited origin's counters (its /health, answered outside the queue)."""
        out = []
        for b in self.capacity_origins:
            with urllib.request.urlopen(f"http://{b.address}/health", timeout=2) as resp:
                out.append(json.loads(resp.read()))
        return out

    def wait_capacity_idle(self, timeout_s: float = 10.0) -> bool:
        """Block until no capacity-limited origin has work in service or queued (bounded)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(s["busy"] == 0 and s["queued"] == 0 for s in self.capacity_stats()):
                return True
            time.sleep(0.05)
        return False

    def restart_dead(self) -> None:
        """Bring back any backend a scenario killed, so the next run starts whole."""
        seg_dir = self.workdir / "segments"
        for b in self.origins + self.sinks:
            if not b.alive:
                if b.proc is not None:
                    procs.kill(b.proc)
                if b.role == "segments":
                    self._start_origin(b, seg_dir)
                else:
                    self._start_sink(b)
                assert b.proc is not None
                procs.wait_port(b.port, b.proc)

    def kill(self, name: str) -> None:
        """SIGKILL one backend (and its workers): the `backend-failure` event."""
        for b in self.origins + self.sinks:
            if b.name == name and b.proc is not None:
                procs.kill(b.proc)
                return
        raise KeyError(f"no backend named {name!r}")

    def stop(self) -> None:
        """Stop every backend (SIGTERM, so nginx masters reap their workers)."""
        for b in self.origins + self.sinks + self.capacity_origins:
            if b.proc is not None:
                procs.stop(b.proc)
