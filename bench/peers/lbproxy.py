"""lbproxy itself as a peer: `.venv/bin/lbproxy run --config generated.toml`, as a user runs it."""

from __future__ import annotations

import json
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from bench import procs
from bench.backends import BackendSet
from bench.peers import Peer, PeerUnavailable

_CONF = """\
[listener]
bind = "127.0.0.1:{port}"

[admin]
bind = "127.0.0.1:{admin}"

[clusters.segments]
policy = "maglev"
backends = [{segments}]

[clusters.uploads]
policy = "p2c"
backends = [{uploads}]

[[routes]]
path_prefix = "/upload"
cluster = "uploads"

[[routes]]
path_prefix = "/"
cluster = "segments"
hash_on = "path_regex:^/v/([^/]+)/"
"""


def lbproxy_command() -> list[str]:
    """The lbproxy entry point next to this interpreter (the project's .venv), else PATH."""
    beside = Path(sys.executable).parent / "lbproxy"
    found = str(beside) if beside.exists() else shutil.which("lbproxy")
    if found is None:
        raise PeerUnavailable("lbproxy not installed: run `make build`")
    return [found]


class LbproxyPeer(Peer):
    """lbproxy with one worker, ready when its admin API's GET /ready answers 200."""

    name = "lbproxy"

    def __init__(self) -> None:
        super().__init__()
        self.admin_port = 0

    def check(self) -> None:
        """The entry point exists (whether `run` works is found out by starting it)."""
        lbproxy_command()

    def start(self, workdir: Path, backends: BackendSet, cpus: list[int] | None) -> None:
        """Write a TOML config (the documented format), start `lbproxy run`, wait for /ready."""
        d = workdir / "lbproxy"
        d.mkdir(parents=True, exist_ok=True)
        self.port, self.admin_port = procs.free_port(), procs.free_port()
        conf = d / "lbproxy.toml"
        conf.write_text(_CONF.format(
            port=self.port,
            admin=self.admin_port,
            segments=", ".join(f'"{b.address}"' for b in backends.origins),
            uploads=", ".join(f'"{b.address}"' for b in backends.sinks),
        ))
        log = d / "lbproxy.log"
        self.proc = procs.start([*lbproxy_command(), "run", "--config", str(conf)], log, cpus)
        try:
            procs.wait_http_ok(f"http://127.0.0.1:{self.admin_port}/ready", self.proc)
        except RuntimeError as exc:
            self.stop()
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [str(exc)]
            raise PeerUnavailable(f"lbproxy run not available: {tail[0]}") from exc

    def probe_replace_pool(self, backends: BackendSet) -> None:
        """Re-send the current segment set: a no-op where supported, 404 before that issue."""
        self.replace_pool("segments", [b.address for b in backends.origins])

    def replace_pool(self, cluster: str, addresses: list[str]) -> None:
        """PUT /clusters/{cluster}/backends on the admin API."""
        body = json.dumps({"backends": addresses}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}/clusters/{cluster}/backends",
            data=body, method="PUT", headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            raise PeerUnavailable(
                f"lbproxy admin PUT /clusters/{cluster}/backends answered {exc.code} "
                "(pool changes through the admin API come in a later issue)"
            ) from exc
