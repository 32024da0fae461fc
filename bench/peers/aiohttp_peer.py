"""Launches bench/peers/aiohttp_proxy.py as a peer."""

from __future__ import annotations

import sys
from pathlib import Path

from bench import procs
from bench.backends import BackendSet
from bench.peers import Peer


class AiohttpPeer(Peer):
    """The plain aiohttp reverse proxy, one process."""

    name = "aiohttp"

    def start(self, workdir: Path, backends: BackendSet, cpus: list[int] | None) -> None:
        """Start the proxy process and wait for its port."""
        self.port = procs.free_port()
        cmd = [
            sys.executable, "-m", "bench.peers.aiohttp_proxy", str(self.port),
            ",".join(b.address for b in backends.origins),
            ",".join(b.address for b in backends.sinks),
        ]
        self.proc = procs.start(cmd, workdir / "aiohttp-proxy.log", cpus)
        procs.wait_port(self.port, self.proc)
