"""Memory of one lbproxy worker: RSS after start, after load, and per idle keep-alive client.

``memory.py [--idle 1000] [--duration 5]``: runs the real ``lbproxy run`` (one worker) in
front of nginx serving a 100-byte and a 64 KiB file, drives it with ``wrk -t1 -c64`` for
each size, then opens ``--idle`` client connections that each make one keep-alive request
and stay idle, and reads the worker's VmRSS from /proc before and after each step.
Issue targets: RSS under 40 MiB after load; 1,000 idle keep-alive clients under 20 MiB.
All on 127.0.0.1; bounded by --duration and the connection count.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare import NGINX_CONF, stop, wait_port  # same directory

ROOT = Path(__file__).resolve().parents[2]


def rss_mib(pid: int) -> float:
    """VmRSS of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def free_port() -> int:
    """An ephemeral port on 127.0.0.1 (closed again; the proxy binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def idle_clients(port: int, n: int) -> list[asyncio.StreamWriter]:
    """Open `n` connections, each completing one keep-alive GET, and keep them open."""
    writers = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:40]
        length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n")
                      if h.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        writers.append(writer)
    return writers


def wrk(port: int, path: str, duration: int) -> float:
    """wrk -t1 -c64 against the proxy; requests/s (errors are printed, not hidden)."""
    out = subprocess.run(["wrk", "-t1", "-c64", f"-d{duration}s", f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        print(out, file=sys.stderr)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def main() -> int:
    """Run the measurement and print one line per figure."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1,
                    help="with N > 1 the figures are for one worker (the supervisor is apart)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        www = Path(tmp, "www")
        www.mkdir()
        (www / "small").write_bytes(b"x" * 100)
        (www / "large").write_bytes(b"y" * 65536)
        origins = (free_port(), free_port())
        Path(tmp, "nginx.conf").write_text(
            NGINX_CONF.format(tmp=tmp, p0=origins[0], p1=origins[1]))
        port, admin = free_port(), free_port()
        Path(tmp, "lbproxy.toml").write_text(f"""
[listener]
bind = "127.0.0.1:{port}"
[admin]
bind = "127.0.0.1:{admin}"
[clusters.c]
policy = "round_robin"
backends = ["127.0.0.1:{origins[0]}", "127.0.0.1:{origins[1]}"]
[[routes]]
path_prefix = "/"
cluster = "c"
""")
        nginx = subprocess.Popen(["nginx", "-c", f"{tmp}/nginx.conf"])
        proxy = subprocess.Popen([str(ROOT / ".venv/bin/lbproxy"), "run", "-c",
                                  f"{tmp}/lbproxy.toml", "--workers", str(args.workers)],
                                 stdout=subprocess.DEVNULL)
        try:
            wait_port(origins[0])
            wait_port(port)
            time.sleep(0.5)
            pid = proxy.pid
            if args.workers > 1:  # measure the first worker: one data plane, no admin API
                children = Path(f"/proc/{proxy.pid}/task/{proxy.pid}/children").read_text()
                pid = int(children.split()[0])
                print(f"supervisor rss: {rss_mib(proxy.pid):.1f} MiB; measuring worker {pid}")
            print(f"rss after start: {rss_mib(pid):.1f} MiB")
            for path in ("/small", "/large"):
                rate = wrk(port, path, args.duration)
                print(f"rss after wrk -c64 {args.duration}s {path}: {rss_mib(pid):.1f} MiB"
                      f" ({rate:.0f} req/s)")
            before = rss_mib(pid)

            async def hold() -> float:
                writers = await idle_clients(port, args.idle)
                await asyncio.sleep(1.0)
                after = rss_mib(pid)
                for w in writers:
                    w.close()
                return after

            after = asyncio.run(hold())
            grew = after - before
            print(f"rss with {args.idle} idle keep-alive clients: {after:.1f} MiB "
                  f"(+{grew:.1f} MiB, {grew * 1024 / args.idle:.1f} KiB each)")
        finally:
            stop(proxy)
            stop(nginx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
