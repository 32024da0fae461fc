"""Per-request CPU cost of the data plane without sockets: ``inproc.py [N]``.

Drives one ClientConnection and one pooled UpstreamConnection with in-memory transports:
request bytes in, the nginx-like response fed back, N times. Prints microseconds per
request (best of 5), i.e. the Python + llhttp + cluster-gate cost with no syscalls. Use
it to compare changes on a noisy machine; LBPROXY_NO_EXTENSIONS=1 measures the twin.
"""

from __future__ import annotations

import asyncio
import sys
import time

import uvloop

from lbproxy.control import config
from lbproxy.control.snapshot import snapshot_of
from lbproxy.proxy import DataPlane, http
from lbproxy.proxy.protocols import NATIVE, UpstreamConnection

REQUEST = b"GET /b100 HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 22:30:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 100\r\n"
    b"Last-Modified: Wed, 25 Nov 2026 22:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "abc-64"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 100
)


class MemoryTransport(asyncio.Transport):
    """Collects writes; reading and closing are no-ops."""

    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__()
        self.peer = peer
        self.written = 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def writelines(self, parts) -> None:
        for p in parts:
            self.written += len(p)

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def is_closing(self) -> bool:
        return False
    def close(self) -> None: ...
    def abort(self) -> None: ...


async def main(n: int) -> None:
    """Run n request/response cycles, best of 5, print µs per request."""
    cfg = config.from_dict({"clusters": {"c": {"backends": ["127.0.0.1:9"]}},
                            "routes": [{"path_prefix": "/", "cluster": "c"}]})
    plane = DataPlane(snapshot_of(cfg), asyncio.get_running_loop())
    pool = plane.pool("127.0.0.1", 9)
    up = UpstreamConnection(pool)
    up.connection_made(MemoryTransport(("127.0.0.1", 9)))
    pool.total = 1
    pool.idle.append(up)
    client = plane.protocol_factory()
    client.connection_made(MemoryTransport(("127.0.0.1", 40000)))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            client.data_received(REQUEST)
            up.data_received(RESPONSE)
        best = min(best, time.perf_counter() - t0)
    assert not pool.idle or pool.idle[0] is up
    print(f"native={http.NATIVE} protocols={NATIVE} {best / n * 1e6:.2f} us/request")


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000))
