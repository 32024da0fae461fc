"""lbproxy vs HAProxy, one worker each on one pinned core, nginx backends, wrk load.

``python bench/dataplane/compare.py [--duration 5] [--runs 3] [--sizes 100,65536]
[--adaptive-off]`` prints req/s, CPU use and p99 latency per run, medians, and
lbproxy/HAProxy ratios (CPU time per request is the inverse of req/cpu-s), with the load
average before and after. `--adaptive-off` adds `lbproxy-off` (overload control disabled)
to every round and prints lbproxy/lbproxy-off too: what adaptive concurrency costs when
nothing is overloaded.
Everything binds 127.0.0.1; every run is bounded by --duration. The proxies run on CPU 0
(taskset), nginx and wrk on CPU 1, so both proxies get the same single core.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
NGINX_PORTS = (19001, 19002)
PROXY_PORT = 18080

NGINX_CONF = """
user root;
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{p0} backlog=4096;
        listen 127.0.0.1:{p1} backlog=4096;
        location / {{ root {tmp}/www; }}
    }}
}}
"""

HAPROXY_CONF = """
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    balance roundrobin
    server s0 127.0.0.1:{p0}
    server s1 127.0.0.1:{p1}
"""


def start(cmd: list[str], cpu: int, **kw: object) -> subprocess.Popen[bytes]:
    """Start `cmd` pinned to `cpu`."""
    return subprocess.Popen(["taskset", "-c", str(cpu), *cmd], **kw)  # type: ignore[call-overload]


def wait_port(port: int, timeout: float = 10) -> None:
    """Wait until 127.0.0.1:`port` accepts."""
    import socket

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(path: str, duration: int, connections: int) -> tuple[float, float]:
    """Run wrk on CPU 1 against the proxy; return (requests/s, p99 ms) (fails on errors)."""
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "--latency", "-t1", f"-c{connections}", f"-d{duration}s",
         f"http://127.0.0.1:{PROXY_PORT}{path}"],
        capture_output=True, text=True, timeout=duration + 30, check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        print(out, file=sys.stderr)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    return rps, (float(p99.group(1)) * _UNITS[p99.group(2)] if p99 else float("nan"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (/proc/PID/stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate and reap."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    """Run the comparison and print medians and ratios."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--sizes", default="100,65536")
    ap.add_argument("--adaptive-off", action="store_true",
                    help="also run lbproxy with adaptive concurrency off")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        www = Path(tmp, "www")
        www.mkdir()
        for size in sizes:
            (www / f"b{size}").write_bytes(b"x" * size)
        Path(tmp, "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, p0=NGINX_PORTS[0],
                                                             p1=NGINX_PORTS[1]))
        Path(tmp, "haproxy.cfg").write_text(HAPROXY_CONF.format(port=PROXY_PORT,
                                                                p0=NGINX_PORTS[0],
                                                                p1=NGINX_PORTS[1]))
        nginx = start(["/usr/sbin/nginx", "-c", f"{tmp}/nginx.conf"], 1)
        results: dict[tuple[str, int], list[float]] = {}
        per_cpu: dict[tuple[str, int], list[float]] = {}
        p99s: dict[tuple[str, int], list[float]] = {}
        print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
        try:
            wait_port(NGINX_PORTS[0])
            backends = ",".join(f"127.0.0.1:{p}" for p in NGINX_PORTS)
            peers = {
                "haproxy": ["/usr/sbin/haproxy", "-f", f"{tmp}/haproxy.cfg"],
                "lbproxy": [sys.executable, str(HERE / "serve.py"), str(PROXY_PORT), backends],
            }
            if args.adaptive_off:
                peers["lbproxy-off"] = [*peers["lbproxy"], "off"]
            for _ in range(args.runs):
                for name, cmd in peers.items():
                    proc = start(cmd, 0, stdout=subprocess.DEVNULL,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
                    try:
                        wait_port(PROXY_PORT)
                        wrk(f"/b{sizes[0]}", 1, args.connections)  # warm-up
                        for size in sizes:
                            cpu0 = cpu_seconds(proc.pid)
                            rps, p99 = wrk(f"/b{size}", args.duration, args.connections)
                            cpu = (cpu_seconds(proc.pid) - cpu0) / args.duration
                            results.setdefault((name, size), []).append(rps)
                            # requests per CPU-second: capacity of one core, robust to a
                            # load generator that saturates first (HAProxy rarely uses
                            # its whole core here) and to noisy neighbours
                            per_cpu.setdefault((name, size), []).append(rps / max(cpu, 1e-3))
                            p99s.setdefault((name, size), []).append(p99)
                            print(f"{name:8} {size:>6} B  {rps:>10.0f} req/s  "
                                  f"cpu {cpu:4.0%}  {rps / max(cpu, 1e-3):>10.0f} req/cpu-s  "
                                  f"p99 {p99:7.2f} ms",
                                  flush=True)
                    finally:
                        stop(proc)
        finally:
            stop(nginx)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    for title, table in (("req/s", results), ("req/cpu-s", per_cpu), ("p99 ms", p99s)):
        print(f"\nmedians ({title}) and lbproxy/haproxy ratio:")
        for size in sizes:
            h = statistics.median(table[("haproxy", size)])
            lb = statistics.median(table[("lbproxy", size)])
            fmt = ".1f" if title == "p99 ms" else ".0f"  # latency in ms wants a decimal
            print(f"{size:>6} B  haproxy {h:>9{fmt}}  lbproxy {lb:>9{fmt}}  ratio {lb / h:.2f}")
            if ("lbproxy-off", size) in table:
                off = statistics.median(table[("lbproxy-off", size)])
                print(f"{size:>6} B  lbproxy-off {off:>9{fmt}}  lbproxy/lbproxy-off "
                      f"{lb / off:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
