"""The pipe protocol between the supervisor and its workers: typed messages, one JSON line each.

Supervisor → worker (the worker's stdin): `ConfigLine`, the config in force with its
version and the operator's drain marks; the first one starts the worker, each later one
replaces its snapshot. Worker → supervisor (the worker's stdout): a `WorkerEvent`, tagged
by its ``"event"`` field: `Ready` (accepting), `Applied` (a later config line is in force),
`Inflight` (in-flight counts and health/ejection marks), `StatsDeltas` (counter deltas).
A line that does not decode is logged and skipped: a reader never stops on one.
Must not touch processes, sockets or snapshots' consumers; it only encodes and decodes.
"""

from __future__ import annotations

import logging
from typing import Annotated, TypedDict

import msgspec

from lbproxy.admin.stats import FLAT_LENGTH
from lbproxy.balance.latency import N_BUCKETS
from lbproxy.control.config import Config
from lbproxy.control.snapshot import Snapshot
from lbproxy.control.upkeep import MarksView

log = logging.getLogger(__name__)

# How often a worker reports in-flight counts, marks and counter deltas; so also how old
# /clusters' inflight and /stats may be under a supervisor, and how often it re-reads them.
REPORT_INTERVAL_S = 0.25
# The supervisor's reader of a worker's stdout refuses longer lines (asyncio's default is
# 64 KiB). A stats report carries up to ~2 KB per backend that served in the last quarter
# second, so thousands of backends fit.
MAX_LINE_BYTES = 16 << 20
# How much of a bad line goes into its log record.
QUOTED_BYTES = 200


class ConfigLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Supervisor → worker: the config in force, its version and the drain marks."""

    version: int
    config: Config
    drained: dict[str, list[str]] = {}

    @classmethod
    def of(cls, snapshot: Snapshot) -> ConfigLine:
        """The line describing `snapshot`."""
        # Drain marks travel with the config: a worker's snapshot carries both, like ours.
        return cls(snapshot.version, snapshot.config,
                   {name: sorted(addresses) for name, addresses in snapshot.drained.items()})


class WorkerEventBase(msgspec.Struct, frozen=True, tag_field="event"):
    """What every worker → supervisor message shares: the ``"event"`` tag."""


class Ready(WorkerEventBase, frozen=True, tag="ready"):
    """The worker accepts on its listener, with the config `version` it started from."""

    worker: int
    version: int


class Applied(WorkerEventBase, frozen=True, tag="applied"):
    """The worker's snapshot is now the config line of `version`."""

    version: int


class Inflight(WorkerEventBase, frozen=True, tag="inflight"):
    """In-flight requests per cluster and backend, and the worker's health/ejection marks."""

    clusters: dict[str, dict[str, int]]
    marks: MarksView = {}
    # Overload control: each backend's adaptive limit, and per cluster (waiting, oldest
    # wait in ms, admission level 0-1) (lbproxy/admin/stats.py's queue_gauges).
    limits: dict[str, dict[str, int]] = {}
    queues: dict[str, tuple[int, float, float]] = {}


# Checked when the line is decoded, so a report of another shape is skipped whole: adding
# it would stop half-way and leave the supervisor's counters half-updated.
FlatDeltas = Annotated[list[int], msgspec.Meta(min_length=FLAT_LENGTH, max_length=FLAT_LENGTH)]
Bucket = Annotated[int, msgspec.Meta(ge=0, lt=N_BUCKETS)]


class BackendDelta(TypedDict):
    """One backend's counter deltas as `lbproxy.admin.stats` writes and reads them."""

    c: FlatDeltas  # flat counters, in `stats`' order
    h: list[tuple[Bucket, int]]  # (latency bucket, count) for the buckets that changed


class StatsDeltas(WorkerEventBase, frozen=True, tag="stats"):
    """What each backend's counters gained since the worker's previous report."""

    clusters: dict[str, dict[str, BackendDelta]]
    # Per cluster, the overload and refusal counters that moved (stats.overload_counters).
    overload: dict[str, dict[str, int]] = {}


WorkerEvent = Ready | Applied | Inflight | StatsDeltas

_encoder = msgspec.json.Encoder()
_config_lines = msgspec.json.Decoder(ConfigLine)
_worker_events = msgspec.json.Decoder(WorkerEvent)


def encode(message: ConfigLine | WorkerEvent) -> bytes:
    """`message` as one JSON line, newline included."""
    return _encoder.encode(message) + b"\n"


def decode_config(line: bytes, source: str) -> ConfigLine | None:
    """A config line; None, logged as coming from `source`, for a line that is not one."""
    try:
        return _config_lines.decode(line)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
        _skipped(source, exc, line)
        return None


def decode_event(line: bytes, source: str) -> WorkerEvent | None:
    """A worker's event; None, logged as coming from `source`, for a line that is not one."""
    try:
        return _worker_events.decode(line)
    except msgspec.DecodeError as exc:
        _skipped(source, exc, line)
        return None


def _skipped(source: str, exc: msgspec.DecodeError, line: bytes) -> None:
    quoted = line[:QUOTED_BYTES] + (b"..." if len(line) > QUOTED_BYTES else b"")
    log.error("%s: skipped a line that is not a message (%s): %r", source, exc, quoted)
