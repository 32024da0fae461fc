"""Run one DataPlane in its own process (for RSS measurements): ``python proxy_subprocess.py
CONFIG_JSON``; prints the listening port on stdout, serves until killed."""

from __future__ import annotations

import asyncio
import json
import sys

import uvloop

from lbproxy.control import config
from lbproxy.control.snapshot import snapshot_of
from lbproxy.proxy import DataPlane


async def main(cfg_json: str) -> None:
    """Listen on 127.0.0.1, port 0; print the port; serve forever."""
    cfg = config.from_dict(json.loads(cfg_json))
    plane = DataPlane(snapshot_of(cfg), asyncio.get_running_loop())
    server = await asyncio.get_running_loop().create_server(
        plane.protocol_factory, "127.0.0.1", 0
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
