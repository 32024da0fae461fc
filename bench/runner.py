"""Runs scenarios against every proxy on the same backends and collects per-run summaries.

Owns the order of a bench run: backends up, generator ceiling, capacities, then for each
repeat, scenario and proxy: start the proxy on its core, run the load on the generator's
core(s), fire the scenario's events, stop the proxy, restore killed backends.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs
from bench.backends import BackendSet
from bench.peers import Peer, PeerUnavailable, all_peers
from bench.pool import Event, GeneratorPool
from bench.progress import LiveProgress
from bench.scenarios import Scenario

GENERATOR_BOUND_SHARE = 0.8  # a proxy measured above this share of the ceiling: generator-bound
GENERATOR_BUSY = 0.9  # generator processes this busy (CPU share of their cores): generator-bound
CEILING_HEADROOM = 0.9  # open-loop rates are capped at this share of the generator's ceiling


@dataclass
class Layout:
    """Which cores the proxy, the backends and the generator get."""

    proxy_cpus: list[int] | None
    backend_cpus: list[int] | None
    gen_cpus: list[int] | None
    gen_procs: int

    @classmethod
    def for_machine(cls, gen_procs: int | None = None) -> Layout:
        """Generator alone on its core(s); proxy and backends on the rest.

        On two cores the backends share core 0 with the proxy: the generator's core must stay
        its own, or the backends' time slices show up as the generator's latency.
        """
        cores = sorted(procs.available_cpus())
        if len(cores) < 2:
            return cls(None, None, None, gen_procs or 1)
        if len(cores) < 4:
            return cls(cores[:1], cores[:1], cores[1:], gen_procs or len(cores) - 1)
        quarter = len(cores) // 4
        proxy, backends, gen = cores[:quarter], cores[quarter:2 * quarter], cores[2 * quarter:]
        return cls(proxy, backends, gen, gen_procs or len(gen))

    def describe(self) -> str:
        """Human-readable pinning."""
        if self.proxy_cpus is None:
            return "one core: proxy, generator and backends share it (no pinning)"
        return (f"proxy on cpu {_cpus(self.proxy_cpus)}, backends on cpu "
                f"{_cpus(self.backend_cpus or [])}, generator ({self.gen_procs} process(es)) on "
                f"cpu {_cpus(self.gen_cpus or [])}")


def _cpus(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


@dataclass
class BenchRun:
    """State shared by every scenario of one invocation."""

    quick: bool
    layout: Layout
    console_progress: LiveProgress
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lbbench-")))
    backends: BackendSet | None = None
    pool: GeneratorPool | None = None
    ceiling_rps: float = 0.0
    capacity: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # proxy -> reason

    def __enter__(self) -> BenchRun:
        self.backends = BackendSet(self.workdir, cpus=self.layout.backend_cpus)
        self.backends.start()
        self.pool = GeneratorPool(self.layout.gen_procs, self.layout.gen_cpus)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.close()
        if self.backends is not None:
            self.backends.stop()
        procs.kill_all()

    # workloads
    def workload(self, scenario: Scenario, targets: list[tuple[str, int]], rate: float,
                 rate_to: float | None, seed: int) -> dict[str, Any]:
        """Generator workload for `scenario` at absolute rates (req/s)."""
        assert self.backends is not None
        return {
            "targets": targets,
            "mode": scenario.mode,
            "connections": scenario.connections,
            "duration_s": scenario.duration_s,
            "warmup_s": scenario.warmup_s,
            "bucket_s": scenario.bucket_s,
            "rate": rate,
            "rate_to": rate_to if rate_to is not None else rate,
            "timeout_s": scenario.timeout_s,
            "keys": scenario.keys,
            "segments": self.backends.segment_files,
            "segment_bytes": self.backends.segment_bytes,
            "range_bytes": scenario.range_bytes,
            "upload_connections": scenario.upload_connections,
            "upload_bytes": scenario.upload_bytes,
            "seed": seed,
        }

    def run_load(self, label: str, scenario: Scenario, workload: dict[str, Any],
                 events: list[Event] | None = None) -> dict[str, Any]:
        """Run one workload with live progress; return the merged measurements."""
        assert self.pool is not None
        self.console_progress.begin(label, scenario.duration_s)
        try:
            return self.pool.run(workload, events, self.console_progress.update)
        finally:
            self.console_progress.end(f"  {label}: done")

    def measure_ceiling(self, steady: Scenario) -> dict[str, Any]:
        """The generator's own ceiling: the steady workload straight at the origins."""
        assert self.backends is not None
        targets = [("127.0.0.1", b.port) for b in self.backends.origins]
        merged = self.run_load("ceiling (no proxy)", steady,
                               self.workload(steady, targets, 0.0, None, seed=1))
        summary = summarize(merged, steady)
        self.ceiling_rps = summary["throughput_rps"]
        return summary

    def rates(self, scenario: Scenario, proxy: str, proxies: list[str]) -> tuple[float, float]:
        """Absolute (rate, rate_to) for an open-loop scenario, capped below the ceiling."""
        scale = 1.0
        if scenario.rate_unit == "capacity":
            scale = self.capacity[proxy]
        elif scenario.rate_unit == "min_capacity":
            scale = min(self.capacity[p] for p in proxies if p in self.capacity)
        cap = CEILING_HEADROOM * self.ceiling_rps if self.ceiling_rps else float("inf")
        rate_to = scenario.rate_to if scenario.rate_to is not None else scenario.rate
        return min(scenario.rate * scale, cap), min(rate_to * scale, cap)

    # one proxy, one scenario
    def run_scenario(self, scenario: Scenario, peer: Peer, proxies: list[str],
                     repeat: int) -> dict[str, Any]:
        """Start `peer`, run `scenario` through it, stop it; the run's summary."""
        assert self.backends is not None
        self.backends.restart_dead()
        peer.start(self.workdir, self.backends, self.layout.proxy_cpus)
        try:
            peer.require(scenario.requires, self.backends)
            rate, rate_to = (0.0, 0.0)
            if scenario.mode == "open":
                rate, rate_to = self.rates(scenario, peer.name, proxies)
            events = [(e.at_s, self._event_action(e, peer)) for e in scenario.events]
            label = f"{scenario.name} · {peer.name} · run {repeat + 1}"
            workload = self.workload(scenario, [("127.0.0.1", peer.port)], rate, rate_to,
                                     seed=repeat + 7)
            started = time.time()
            merged = self.run_load(label, scenario, workload, events)
        finally:
            peer.stop()
        summary = summarize(merged, scenario)
        summary.update(scenario=scenario.name, proxy=peer.name, repeat=repeat,
                       started=started, offered_rps=[round(rate), round(rate_to)])
        return summary

    def _event_action(self, event: Any, peer: Peer) -> Any:
        assert self.backends is not None
        backends = self.backends
        if event.action == "kill_backend":
            return lambda: backends.kill(event.backend)
        by_name = {b.name: b.address for b in backends.origins + backends.sinks}
        addresses = [by_name[n] for n in event.backends]
        return lambda: peer.replace_pool(event.cluster, addresses)

    def probe_capacity(self, steady: Scenario, peer: Peer) -> float:
        """Closed-loop throughput of `peer` on a short steady run (when steady isn't run)."""
        short = steady.scaled(0.4)
        result = self.run_scenario(short, peer, [peer.name], repeat=0)
        return float(result["ok_rps"])


def available_peers(names: list[str], progress: LiveProgress) -> tuple[list[Peer], dict[str, str]]:
    """Instantiate the named peers; those that cannot run here are returned with the reason."""
    registry = all_peers()
    peers: list[Peer] = []
    skipped: dict[str, str] = {}
    for name in names:
        if name not in registry:
            raise ValueError(f"unknown proxy {name!r}; have {sorted(registry)}")
        peer = registry[name]()
        try:
            peer.check()
        except PeerUnavailable as exc:
            skipped[name] = str(exc)
            progress.console.print(f"[yellow]skipping {name}: {exc}[/]")
            continue
        peers.append(peer)
    return peers, skipped


def summarize(merged: dict[str, Any], scenario: Scenario) -> dict[str, Any]:
    """Throughput, percentiles, errors, uploads and timeline of one run, JSON-safe."""
    window = max(scenario.duration_s - scenario.warmup_s, 1e-9)
    get_hist = merged["latency"]["get"]
    up_hist = merged["latency"]["upload"]
    statuses = merged["statuses"]["get"]
    up_statuses = merged["statuses"]["upload"]
    failures = {k: v for kind in ("get", "upload") for k, v in merged["errors"][kind].items()}
    ok = sum(v for k, v in statuses.items() if 200 <= int(k) < 400)
    bad_status = sum(v for k, v in {**statuses}.items() if not 200 <= int(k) < 400)
    up_ok = sum(v for k, v in up_statuses.items() if 200 <= int(k) < 400)
    up_bad = sum(v for k, v in up_statuses.items() if not 200 <= int(k) < 400)
    n_fail = sum(failures.values())
    attempts = get_hist.total + up_hist.total + n_fail
    errors_by = {k: v for k, v in {**statuses, **up_statuses}.items() if not 200 <= int(k) < 400}
    for k, v in failures.items():
        errors_by[k] = errors_by.get(k, 0) + v
    return {
        "throughput_rps": round(get_hist.total / window, 1),
        "ok_rps": round(ok / window, 1),
        "latency_us": get_hist.summary(),
        "send_lag_us": merged["send_lag"].summary((50, 99)),
        "service_us": merged["service"].summary((50, 90, 99)),
        "generator_cpu": merged["generator_cpu"],
        "statuses": merged["statuses"],
        "errors_by": errors_by,
        "errors": bad_status + up_bad + n_fail,
        "error_rate": round((bad_status + up_bad + n_fail) / attempts, 5) if attempts else 0.0,
        "uploads": {
            "completed": up_ok,
            "mib_per_s": round(up_ok * scenario.upload_bytes / 2**20 / window, 1),
            "latency_us": up_hist.summary((50, 99)),
        },
        "bytes_in": merged["bytes_in"],
        "bytes_out": merged["bytes_out"],
        "timeline": timeline(merged["timeline"], scenario.bucket_s, scenario.duration_s),
    }


def timeline(buckets: list[dict[str, Any]], bucket_s: float,
             duration_s: float) -> list[dict[str, Any]]:
    """Per-bucket req/s, errors/s and each backend's share of responses, within the run."""
    out = []
    whole = int(duration_s / bucket_s + 1e-6)  # the drain after the end is not plotted
    for i, b in enumerate(buckets[:whole]):
        total = sum(b["backends"].values())
        out.append({
            "t": round(i * bucket_s, 3),
            "rps": round(b["responses"] / bucket_s, 1),
            "errors_per_s": round(b["errors"] / bucket_s, 1),
            "share": {k: round(v / total, 4) for k, v in sorted(b["backends"].items())}
            if total else {},
        })
    return out


@contextlib.contextmanager
def bench_run(quick: bool, gen_procs: int | None, progress: LiveProgress) -> Any:
    """A BenchRun with backends and generator processes up; everything torn down after."""
    run = BenchRun(quick=quick, layout=Layout.for_machine(gen_procs), console_progress=progress)
    with run:
        yield run
