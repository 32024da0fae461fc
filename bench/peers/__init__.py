"""Proxies under test, each started on the same backends: lbproxy, HAProxy, nginx, aiohttp.

Owns the `Peer` interface and the registry by name. Each peer module owns its own config
template; none of them knows about scenarios or the generator.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench import procs
from bench.backends import Backend, BackendSet


class PeerUnavailable(RuntimeError):
    """The proxy cannot run on this machine; the message says why and how to fix it."""


class Peer:
    """One proxy under test: start on a fresh port in front of `backends`, stop."""

    name = "peer"

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def check(self) -> None:
        """Raise PeerUnavailable when this proxy cannot be run here."""

    def start(self, workdir: Path, backends: BackendSet, cpus: list[int] | None) -> None:
        """Start the proxy and return once it accepts requests."""
        raise NotImplementedError

    def replace_pool(self, cluster: str, addresses: list[str]) -> None:
        """Swap a cluster's backends at run time (the `reload` scenario)."""
        raise PeerUnavailable(f"{self.name}: no run-time way to change its backends")

    def probe_replace_pool(self, backends: BackendSet) -> None:
        """Raise PeerUnavailable unless replace_pool works on the running proxy."""
        if type(self).replace_pool is Peer.replace_pool:
            self.replace_pool("segments", [])

    def require(self, capability: str, backends: BackendSet) -> None:
        """Raise PeerUnavailable unless the running proxy supports `capability`."""
        if capability == "replace_pool":
            self.probe_replace_pool(backends)
        elif capability:
            raise PeerUnavailable(f"{self.name}: unknown capability {capability!r}")

    def launch(self, workdir: Path, subdir: str, conf_name: str, conf_text: str,
               cmd: list[str], cpus: list[int] | None) -> None:
        """Write a generated config into workdir/subdir, run `cmd` ({conf} = its path), wait."""
        d = workdir / subdir
        d.mkdir(parents=True, exist_ok=True)
        conf = d / conf_name
        conf.write_text(conf_text)
        argv = [a.format(conf=conf, dir=d) for a in cmd]
        self.proc = procs.start(argv, d / f"{self.name}.log", cpus)
        procs.wait_port(self.port, self.proc)

    def stop(self) -> None:
        """Stop the proxy (graceful, then forced)."""
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None


def server_lines(line: str, backends: list[Backend]) -> str:
    """One config line per backend: `line` formatted with name= and address=."""
    return "\n".join(line.format(name=b.name, address=b.address) for b in backends)


def ensure_binary(path: str, package: str) -> None:
    """Install a Debian package when its binary is missing and we may; else say how."""
    if os.path.exists(path):
        return
    apt = shutil.which("apt-get")
    allowed = os.environ.get("BENCH_INSTALL", "1") != "0"
    if apt and allowed and hasattr(os, "geteuid") and os.geteuid() == 0:
        print(f"{path} missing: apt-get install {package}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([apt, "update", "-qq"], check=False, env=env)
        subprocess.run([apt, "install", "-y", "-qq", "--no-install-recommends", package],
                       check=False, env=env)
    if not os.path.exists(path):
        raise PeerUnavailable(
            f"{path} not found: install it with `make sysdeps` or `sudo apt-get install {package}`"
        )


def all_peers() -> dict[str, type[Peer]]:
    """Peer classes by name, in the order reports list them."""
    from bench.peers.aiohttp_peer import AiohttpPeer
    from bench.peers.haproxy import HAProxyPeer
    from bench.peers.lbproxy import LbproxyPeer
    from bench.peers.nginx import NginxPeer

    return {
        "lbproxy": LbproxyPeer,
        "haproxy": HAProxyPeer,
        "nginx": NginxPeer,
        "aiohttp": AiohttpPeer,
    }


SURGE_ONLY = ("lbproxy-off", "lbproxy-plain")  # peer names only the surge scenario knows


def surge_peers(names: list[str], concurrency: int, queue_ms: int,
                classes: tuple[tuple[str, str], ...]) -> tuple[list[Peer], dict[str, str]]:
    """The surge scenario's variants for the requested proxy names, and those left out.

    "lbproxy" stands for both of its variants (shedding on with defaults, shedding off);
    "lbproxy-off" and "lbproxy-plain" may be named alone. HAProxy and nginx get their
    capacity settings; the aiohttp proxy has no capacity knob and is left out, saying so.
    """
    from bench.peers.haproxy import SurgeHAProxyPeer
    from bench.peers.lbproxy import SurgeLbproxyPeer
    from bench.peers.nginx import SurgeNginxPeer

    peers: list[Peer] = []
    left_out: dict[str, str] = {}
    for name in names:
        if name == "lbproxy":
            peers += [SurgeLbproxyPeer("on", classes), SurgeLbproxyPeer("off", classes)]
        elif name in SURGE_ONLY:
            peers.append(SurgeLbproxyPeer(name.removeprefix("lbproxy-"), classes))
        elif name == "haproxy":
            peers.append(SurgeHAProxyPeer(concurrency, queue_ms, classes))
        elif name == "nginx":
            peers.append(SurgeNginxPeer(concurrency))
        else:
            left_out[name] = f"{name}: no capacity limit or shedding to configure"
    return peers, left_out
