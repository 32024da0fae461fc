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
ORDER = ("steady", "viral", "backend-failure", "upload-storm", "reload", "overload")
RATE_UNITS = ("rps", "capacity", "min_capacity")
EVENT_ACTIONS = ("kill_backend", "replace_pool")


@dataclass(frozen=True)
class ScenarioEvent:
    """Something the runner does to the system under test at `at_s` into the run."""

    at_s: float
    action: str  # "kill_backend" | "replace_pool"
    backend: str = ""  # kill_backend: which backend (e.g. "origin2")
    cluster: str = ""  # replace_pool: which cluster
    backends: tuple[str, ...] = ()  # replace_pool: backend names for the new set


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
        )

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
        scenario = Scenario(
            name=data.pop("name", path.stem),
            description=data.pop("description", ""),
            duration_s=float(data.pop("duration_s")),
            warmup_s=float(data.pop("warmup_s", 0.0)),
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
        )
        data.pop("rate_to", None)
    except KeyError as exc:
        raise ValueError(f"{where}: missing field {exc.args[0]}") from exc
    if data or request:
        raise ValueError(f"{where}: unknown fields {sorted({*data, *request})}")
    if scenario.mode not in ("closed", "open"):
        raise ValueError(f"{where}: mode must be 'closed' or 'open', not {scenario.mode!r}")
    if scenario.mode == "open" and scenario.rate <= 0:
        raise ValueError(f"{where}: an open-loop scenario needs rate > 0")
    if scenario.rate_unit not in RATE_UNITS:
        raise ValueError(f"{where}: rate_unit must be one of {RATE_UNITS}")
    for e in scenario.events:
        if e.action not in EVENT_ACTIONS:
            raise ValueError(f"{where}: event action must be one of {EVENT_ACTIONS}")
    return scenario


def load_all(names: list[str] | None = None) -> list[Scenario]:
    """Scenarios by name (every file in bench/scenarios/ when None), in report order."""
    found = {p.stem: p for p in SCENARIO_DIR.glob("*.toml")}
    wanted = names or sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else 99, n))
    missing = [n for n in wanted if n not in found]
    if missing:
        raise ValueError(f"unknown scenario(s) {missing}; have {sorted(found)}")
    return [load(found[n]) for n in wanted]
