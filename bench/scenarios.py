"""Scenarios: TOML files in bench/scenarios/ describing a workload and its timed events.

Owns loading, validating and scaling (`--quick`) scenarios. Knows nothing of processes:
the runner turns a `Scenario` into generator workloads and event callbacks.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

SCENARIO_DIR = Path(__file__).parent / "scenarios"
ORDER = ("steady", "viral", "backend-failure", "upload-storm", "reload", "overload", "surge")
# origin_capacity: a share of the capacity-limited origins' known capacity (bench/origin.py).
RATE_UNITS = ("rps", "capacity", "min_capacity", "origin_capacity")
EVENT_ACTIONS = ("kill_backend", "replace_pool")
PRIORITIES = ("critical", "normal", "sheddable")
ORIGIN_FIELDS = ("count", "concurrency", "service_ms")


@dataclass(frozen=True)
class ScenarioEvent:
    """Something the runner does to the system under test at `at_s` into the run."""

    at_s: float
    action: str  # "kill_backend" | "replace_pool"
    backend: str = ""  # kill_backend: which backend (e.g. "origin2")
    cluster: str = ""  # replace_pool: which cluster
    backends: tuple[str, ...] = ()  # replace_pool: backend names for the new set


@dataclass(frozen=True)
class TrafficClass:
    """One class of a class mix: its path prefix, share of requests and route priority."""

    name: str
    path_prefix: str
    share: float
    priority: str = "normal"  # "critical" | "normal" | "sheddable"


@dataclass(frozen=True)
class Phase:
    """One run of a phased scenario: an offered load (x capacity), optionally one step."""

    name: str
    load: float
    duration_s: float
    warmup_s: float
    step_at_s: float | None = None  # the load changes to step_to at this time into the run
    step_to: float | None = None
    baseline: bool = False  # the unloaded reference that latency targets are relative to
    goals: dict[str, float] = field(default_factory=dict)

    @property
    def peak(self) -> float:
        """The highest load this phase offers (x capacity)."""
        return max(self.load, self.step_to or 0.0)

    def steps(self) -> list[tuple[float, float]]:
        """The load as (at_s, load) steps."""
        if self.step_at_s is None or self.step_to is None:
            return [(0.0, self.load)]
        return [(0.0, self.load), (self.step_at_s, self.step_to)]


@dataclass(frozen=True)
class Scenario:
    """One scenario as read from TOML (times in seconds, rates per `rate_unit`)."""

    name: str
    description: str
    duration_s: float
    warmup_s: float
    mode: str  # "closed" | "open"
    connections: int
    rate: float = 0.0
    rate_to: float | None = None
    rate_unit: str = "rps"
    timeout_s: float = 5.0
    keys: dict[str, Any] = field(default_factory=dict)
    range_bytes: int = 16384
    upload_connections: int = 0
    upload_bytes: int = 0
    requires: str = ""  # a peer capability, e.g. "replace_pool"; peers without it are skipped
    events: tuple[ScenarioEvent, ...] = ()
    # Phased scenarios (surge): capacity-limited origins, a class mix, one run per phase.
    origins: dict[str, float] = field(default_factory=dict)
    classes: tuple[TrafficClass, ...] = ()
    phases: tuple[Phase, ...] = ()
    goals: dict[str, float] = field(default_factory=dict)

    def scaled(self, factor: float) -> Scenario:
        """The same scenario with every duration, event time and upload size times `factor`."""
        keys = dict(self.keys)
        if isinstance(keys.get("hot"), dict):
            hot = dict(keys["hot"])
            for k in ("start_s", "ramp_s"):
                if k in hot:
                    hot[k] = float(hot[k]) * factor
            keys["hot"] = hot
        return replace(
            self,
            duration_s=self.duration_s * factor,
            warmup_s=self.warmup_s * factor,
            keys=keys,
            upload_bytes=int(self.upload_bytes * factor),
            events=tuple(replace(e, at_s=e.at_s * factor) for e in self.events),
            phases=tuple(
                replace(p, duration_s=p.duration_s * factor, warmup_s=p.warmup_s * factor,
                        step_at_s=None if p.step_at_s is None else p.step_at_s * factor)
                for p in self.phases),
        )

    @property
    def capacity_rps(self) -> float:
        """The capacity-limited origins' total capacity: count x concurrency / service time."""
        o = self.origins
        return float(o["count"] * o["concurrency"] / (o["service_ms"] / 1000)) if o else 0.0

    @property
    def bucket_s(self) -> float:
        """Timeline resolution: about 40 points per run, never finer than 50 ms."""
        return max(0.05, round(self.duration_s / 40, 3))


def load(path: Path) -> Scenario:
    """Read and validate one scenario file; ValueError names the file and the field."""
    data = tomllib.loads(path.read_text())
    where = path.name
    try:
        events = tuple(
            ScenarioEvent(
                at_s=float(e["at_s"]),
                action=str(e["action"]),
                backend=str(e.get("backend", "")),
                cluster=str(e.get("cluster", "")),
                backends=tuple(e.get("backends", ())),
            )
            for e in data.pop("events", [])
        )
        request = data.pop("request", {})
        duration_s = float(data.pop("duration_s"))
        warmup_s = float(data.pop("warmup_s", 0.0))
        classes = tuple(TrafficClass(**c) for c in data.pop("classes", []))
        phases = tuple(_phase(p, duration_s, warmup_s) for p in data.pop("phases", []))
        scenario = Scenario(
            name=data.pop("name", path.stem),
            description=data.pop("description", ""),
            duration_s=duration_s,
            warmup_s=warmup_s,
            mode=data.pop("mode"),
            connections=int(data.pop("connections")),
            rate=float(data.pop("rate", 0.0)),
            rate_to=float(data["rate_to"]) if "rate_to" in data else None,
            rate_unit=data.pop("rate_unit", "rps"),
            timeout_s=float(data.pop("timeout_s", 5.0)),
            keys=data.pop("keys", {}),
            range_bytes=int(request.pop("range_bytes", 16384)),
            upload_connections=int(request.pop("upload_connections", 0)),
            upload_bytes=int(request.pop("upload_mib", 0) * 1024 * 1024),
            requires=data.pop("requires", ""),
            events=events,
            origins=data.pop("origins", {}),
            classes=classes,
            phases=phases,
            goals=data.pop("goals", {}),
        )
        data.pop("rate_to", None)
    except KeyError as exc:
        raise ValueError(f"{where}: missing field {exc.args[0]}") from exc
    except TypeError as exc:  # a class or phase table with an unknown or missing key
        raise ValueError(f"{where}: {exc}") from exc
    if data or request:
        raise ValueError(f"{where}: unknown fields {sorted({*data, *request})}")
    if scenario.mode not in ("closed", "open"):
        raise ValueError(f"{where}: mode must be 'closed' or 'open', not {scenario.mode!r}")
    _check_phased(scenario, where)
    if scenario.mode == "open" and scenario.rate <= 0 and not scenario.phases:
        raise ValueError(f"{where}: an open-loop scenario needs rate > 0")
    if scenario.rate_unit not in RATE_UNITS:
        raise ValueError(f"{where}: rate_unit must be one of {RATE_UNITS}")
    for e in scenario.events:
        if e.action not in EVENT_ACTIONS:
            raise ValueError(f"{where}: event action must be one of {EVENT_ACTIONS}")
    return scenario


def _phase(data: dict[str, Any], duration_s: float, warmup_s: float) -> Phase:
    """A [[phases]] table; durations default to the scenario's."""
    return Phase(**{"duration_s": duration_s, "warmup_s": warmup_s, **data})


def _check_phased(s: Scenario, where: str) -> None:
    """A phased scenario's origins, classes and phases are complete and consistent."""
    if not s.phases and not s.classes and not s.origins:
        return
    if not s.phases:
        raise ValueError(f"{where}: classes and origins need [[phases]]")
    if sorted(s.origins) != sorted(ORIGIN_FIELDS):
        raise ValueError(f"{where}: [origins] needs exactly {list(ORIGIN_FIELDS)}")
    if s.rate_unit != "origin_capacity":
        raise ValueError(f"{where}: a phased scenario's rate_unit is 'origin_capacity'")
    if not s.classes or abs(sum(c.share for c in s.classes) - 1.0) > 1e-9:
        raise ValueError(f"{where}: the [[classes]] shares must add up to 1")
    for c in s.classes:
        if c.priority not in PRIORITIES:
            raise ValueError(f"{where}: class {c.name!r} priority must be one of {PRIORITIES}")
    for p in s.phases:
        if p.load <= 0 or (p.step_at_s is None) != (p.step_to is None):
            raise ValueError(f"{where}: phase {p.name!r} needs load > 0, and step_at_s and "
                             "step_to together")
    if sum(p.baseline for p in s.phases) > 1:
        raise ValueError(f"{where}: at most one baseline phase")


def load_all(names: list[str] | None = None) -> list[Scenario]:
    """Scenarios by name (every file in bench/scenarios/ when None), in report order."""
    found = {p.stem: p for p in SCENARIO_DIR.glob("*.toml")}
    wanted = names or sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else 99, n))
    missing = [n for n in wanted if n not in found]
    if missing:
        raise ValueError(f"unknown scenario(s) {missing}; have {sorted(found)}")
    return [load(found[n]) for n in wanted]
