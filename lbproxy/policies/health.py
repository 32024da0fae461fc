"""Active health checks: periodic HTTP GETs to every backend of clusters that configure one.

Owns the probe (a raw HTTP/1.1 GET over asyncio, ``Connection: close``), the rise/fall
counter that turns probe results into a verdict, and one probe task per checked backend,
reconciled with every new snapshot (`HealthChecker.update` is a controller sink). Verdicts
reach selection only through `ClusterState.set_unhealthy` (REFUSE_UNHEALTHY).

Where checks run: in every process that owns a data plane (the single process, or each
worker under a supervisor), as HAProxy's per-process checks did with nbproc. Each worker
has its own `ClusterState`s, so its marks apply to its own selection with no extra channel
and no window where a worker routes on stale health; the cost is N probes per interval per
backend with N workers. Backends start healthy, as HAProxy's default ``init-state up``:
"the server is considered immediately available and will initiate a health check that can
turn it to the DOWN state immediately if it fails" -- a restart never waits for a first
round of checks (Envoy instead starts hosts unhealthy until their first check passes).
Must not touch the data plane or the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

from lbproxy.balance.gate import BackendInfo, ClusterState
from lbproxy.control.config import HealthCheck, parse_status_ranges

if TYPE_CHECKING:  # control/upkeep.py imports this module; the snapshot only for types
    from lbproxy.control.snapshot import Snapshot

log = logging.getLogger("lbproxy.policies.health")
USER_AGENT = b"lbproxy-health-check"
MAX_STATUS_LINE = 1024


@final
class RiseFall:
    """HAProxy's check counter: `rise` passes in a row to come up, `fall` fails to go down."""

    __slots__ = ("fall", "health", "rise")

    def __init__(self, rise: int, fall: int, healthy: bool = True) -> None:
        self.rise = rise
        self.fall = fall
        # 0..rise-1 is down, rise..rise+fall-1 is up (HAProxy's check->health). Starting at
        # `rise` is init-state "up": in service, but one failed probe takes it down; once it
        # has come up through probes it sits at the top and needs `fall` failures.
        self.health = rise if healthy else 0

    @property
    def healthy(self) -> bool:
        """The current verdict."""
        return self.health >= self.rise

    def record(self, passed: bool) -> bool | None:
        """Count one probe; the new verdict when it changed, else None."""
        was = self.healthy
        top = self.rise + self.fall - 1
        if passed:
            if self.health < top:
                self.health += 1
                if self.health >= self.rise:
                    self.health = top  # came up (or stayed up): full credit
        elif self.health > self.rise:
            self.health -= 1
        else:
            self.health = 0  # at the edge of up, or already down
        return None if self.healthy == was else self.healthy


def status_ok(status: int, ranges: list[tuple[int, int]]) -> bool:
    """Whether `status` is in one of the inclusive `ranges`."""
    return any(low <= status <= high for low, high in ranges)


def probe_request(hc: HealthCheck, backend: BackendInfo) -> bytes:
    """The probe's request bytes."""
    host = hc.host if hc.host is not None else backend.address
    return (b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nConnection: close\r\n\r\n"
            % (hc.path.encode(), host.encode(), USER_AGENT))


def parse_status_line(line: bytes) -> int:
    """The status code of ``HTTP/1.x NNN ...``; ValueError otherwise."""
    parts = line.rstrip(b"\r\n").split(b" ", 2)  # the reason phrase may be absent
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3:
        raise ValueError(f"not an HTTP/1 status line: {line[:80]!r}")
    return int(parts[1])


async def probe(hc: HealthCheck, backend: BackendInfo) -> int:
    """One GET; the backend's status, or 0 when it failed (refused, timed out, garbage)."""
    writer: asyncio.StreamWriter | None = None

    async def exchange() -> int:
        nonlocal writer
        reader, writer = await asyncio.open_connection(backend.host, backend.port)
        writer.write(probe_request(hc, backend))
        line = await reader.readuntil(b"\r\n")
        return parse_status_line(line[:MAX_STATUS_LINE])

    try:
        return await asyncio.wait_for(exchange(), hc.timeout)
    except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError,
            asyncio.LimitOverrunError):
        return 0
    finally:
        if writer is not None:
            writer.transport.abort()  # nothing to say goodbye to; never lingers


async def check_forever(hc: HealthCheck, state: ClusterState, backend: BackendInfo) -> None:
    """Probe `backend` every `hc.interval` and apply each verdict change to `state`."""
    ranges = parse_status_ranges(hc.expected_statuses)
    counter = RiseFall(hc.healthy_threshold, hc.unhealthy_threshold,
                       healthy=not state.is_unhealthy(backend.address))
    while True:
        status = await probe(hc, backend)
        verdict = counter.record(status_ok(status, ranges))
        if verdict is not None:
            state.set_unhealthy(backend.address, not verdict)
            log.warning("cluster %s: %s is %s (health check %s: %s)", state.name,
                        backend.address, "healthy" if verdict else "unhealthy", hc.path,
                        status or "no answer")
        await asyncio.sleep(hc.interval)


@dataclass(frozen=True, slots=True)
class _Probe:
    check: HealthCheck
    state: ClusterState
    task: asyncio.Task[None]


@final
class HealthChecker:
    """One probe task per checked backend, matched to the current snapshot by `update`."""

    def __init__(self) -> None:
        self._probes: dict[tuple[str, str], _Probe] = {}

    def update(self, snapshot: Snapshot) -> None:
        """Start, keep or stop probes so they match `snapshot` (a controller sink)."""
        wanted: dict[tuple[str, str], tuple[HealthCheck, ClusterState, BackendInfo]] = {}
        for name, cluster in snapshot.clusters.items():
            hc = cluster.config.health_check
            if hc is not None:
                for b in cluster.backends:
                    wanted[name, b.address] = (hc, cluster.state, b)
        for key, running in list(self._probes.items()):
            want = wanted.get(key)
            if want is None or want[0] != running.check or want[1] is not running.state:
                running.task.cancel()
                del self._probes[key]
                if want is None or want[1] is not running.state:
                    # No longer checked: a stale "unhealthy" must not outlive its check.
                    running.state.set_unhealthy(key[1], False)
        for key, (hc, state, backend) in wanted.items():
            if key not in self._probes:
                task = asyncio.get_running_loop().create_task(
                    check_forever(hc, state, backend), name=f"health-check {key[0]} {key[1]}")
                self._probes[key] = _Probe(hc, state, task)

    async def stop(self) -> None:
        """Cancel every probe and wait for them to finish."""
        probes, self._probes = list(self._probes.values()), {}
        for p in probes:
            p.task.cancel()
        for p in probes:
            with contextlib.suppress(asyncio.CancelledError):
                await p.task
