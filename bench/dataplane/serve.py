"""Serve one lbproxy DataPlane worker for benchmarks:
``serve.py PORT BACKEND[,BACKEND...] [off]``.

One process, one uvloop loop, round robin over the backends; no admin, no control plane.
Overload control runs with its defaults, as it does for every cluster; ``off`` turns the
cluster's adaptive concurrency off (compare.py's `--adaptive-off` measures what it costs).
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

from lbproxy.control import config
from lbproxy.control.snapshot import snapshot_of
from lbproxy.proxy import DataPlane


async def main(port: int, backends: list[str], adaptive: bool = True) -> None:
    """Listen on 127.0.0.1:`port` until killed."""
    cfg = config.from_dict({
        "clusters": {"c": {"policy": "round_robin", "backends": backends,
                           "adaptive_concurrency": {"enabled": adaptive}}},
        "routes": [{"path_prefix": "/", "cluster": "c"}],
    })
    loop = asyncio.get_running_loop()
    plane = DataPlane(snapshot_of(cfg), loop)
    await loop.create_server(plane.protocol_factory, "127.0.0.1", port, backlog=1024)
    print(f"lbproxy data plane on 127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2].split(","),
                    adaptive=sys.argv[3:4] != ["off"]))
