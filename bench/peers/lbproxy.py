"""lbproxy itself as a peer: `.venv/bin/lbproxy run --config generated.toml`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from bench import procs
from bench.backends import BackendSet
from bench.peers import Peer, PeerUnavailable, server_lines

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

    def config(self, backends: BackendSet) -> str:
        """The generated TOML config for this run (ports already chosen)."""
        return _CONF.format(
            port=self.port,
            admin=self.admin_port,
            segments=", ".join(f'"{b.address}"' for b in backends.origins),
            uploads=", ".join(f'"{b.address}"' for b in backends.sinks),
        )

    def start(self, workdir: Path, backends: BackendSet, cpus: list[int] | None) -> None:
        """Write a TOML config (docs/configuration.md), start `lbproxy run`, wait for /ready."""
        d = workdir / self.name
        d.mkdir(parents=True, exist_ok=True)
        self.port, self.admin_port = procs.free_port(), procs.free_port()
        conf = d / "lbproxy.toml"
        conf.write_text(self.config(backends))
        self.check_config(conf)
        log = d / "lbproxy.log"
        self.proc = procs.start([*lbproxy_command(), "run", "--config", str(conf)], log, cpus)
        try:
            procs.wait_http_ok(f"http://127.0.0.1:{self.admin_port}/ready", self.proc)
        except RuntimeError as exc:
            self.stop()
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [str(exc)]
            raise PeerUnavailable(f"lbproxy run not available: {tail[0]}") from exc

    def check_config(self, conf: Path) -> None:
        """Nothing to check for the standard config (it is what every build accepts)."""

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


# The surge scenario's config: round robin over the capacity-limited origins, the class
# routes with their priorities; {adaptive} is the variant's shedding section. The listener
# backlog is raised (as for HAProxy and nginx) so the generator's few thousand connections
# are not refused at start-up.
_SURGE_CONF = """\
[listener]
bind = "127.0.0.1:{port}"
backlog = 8192

[admin]
bind = "127.0.0.1:{admin}"

[clusters.segments]
policy = "round_robin"
backends = [{segments}]
{adaptive}
{routes}
"""

_SURGE_ROUTE = """
[[routes]]
path_prefix = "{prefix}"
cluster = "segments"
{priority}"""
# Every request comes from 127.0.0.1, so cohorts come from the generator's viewer header.
_SURGE_COHORT = 'cohort_on = "header:x-viewer"\n'


class SurgeLbproxyPeer(LbproxyPeer):
    """lbproxy on the surge routes; `variant` picks the shedding configuration.

    "on": shedding with its defaults, no capacity given (the issue's default). "off":
    `[clusters.segments.adaptive_concurrency] enabled = false`. "plain": neither the
    shedding table nor route priorities: what a build without shedding accepts (shedding
    off there; the defaults without priority classes on a build that has it).
    A build whose config loader rejects the variant's keys (`lbproxy check` fails) is
    reported as unsupported rather than run.
    """

    VARIANTS = {"on": "lbproxy", "off": "lbproxy-off", "plain": "lbproxy-plain"}

    def __init__(self, variant: str = "on", classes: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__()
        self.variant = variant
        self.name = self.VARIANTS[variant]
        self.classes = classes  # (path prefix, priority) per class

    def config(self, backends: BackendSet) -> str:
        """Round robin over the capacity-limited origins, one route per class."""
        adaptive = ("\n[clusters.segments.adaptive_concurrency]\nenabled = false\n"
                    if self.variant == "off" else "")
        routes = "".join(
            _SURGE_ROUTE.format(prefix=prefix, priority="" if self.variant == "plain"
                                else f'priority = "{priority}"\n{_SURGE_COHORT}')
            for prefix, priority in self.classes)
        return _SURGE_CONF.format(
            port=self.port, admin=self.admin_port, adaptive=adaptive, routes=routes,
            segments=server_lines('"{address}"', backends.capacity_origins).replace("\n", ", "))

    def check_config(self, conf: Path) -> None:
        """`lbproxy check`: a build that rejects this variant's keys cannot run it."""
        proc = subprocess.run([*lbproxy_command(), "check", "--config", str(conf)],
                              capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["rejected"])[0]
            raise PeerUnavailable(f"{self.name}: unsupported by this build "
                                  f"(lbproxy check: {first.removeprefix('error: ')})")
