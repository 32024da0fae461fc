"""Prometheus exposition of the same counters /stats reads (GET /metrics).

Owns the metric names and labels (all prefixed ``lbproxy_``) and a `prometheus_client`
Collector that reads them at scrape time from the current snapshot's counters; nothing is
recorded twice. Why prometheus_client rather than hand-written text: its exposition writer
is well kept (label-value escaping, float formatting, `_bucket`/`_sum`/`_count` and
`+Inf` rules), so a backend address or cluster name can never break a scrape. A private
`CollectorRegistry` per admin API (not the global one) keeps processes and tests
independent. Must not touch HTTP or the request path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from lbproxy.admin.stats import (
    FAILURE_NAMES,
    RESPONSE_CLASSES,
    OverloadGauges,
    backend_limit,
    overload_view,
)
from lbproxy.balance import latency
from lbproxy.balance.gate import Outcome
from lbproxy.control.snapshot import Snapshot

# The classic text format docs/admin-api.md documents for GET /metrics (prometheus_client's
# "latest" is newer).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StatsSource(Protocol):
    """What the collector reads: the admin API satisfies it."""

    snapshot: Snapshot
    gauges: OverloadGauges | None  # the workers' overload gauges; None: this process's

    def inflight(self, cluster: str, address: str) -> int:
        """Requests in flight to one backend."""
        ...

    def is_ready(self) -> bool:
        """Whether /ready answers 200."""
        ...


class LbproxyCollector(Collector):
    """Builds every lbproxy_ metric family from the source's snapshot at scrape time."""

    def __init__(self, source: StatsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        """One scrape: read the snapshot once, yield each family."""
        src = self._source
        snap = src.snapshot
        requests = CounterMetricFamily(
            "lbproxy_requests", "Finished requests by backend and response status class "
            "(code_class=none: no response, see lbproxy_request_failures_total).",
            labels=["cluster", "backend", "code_class"])
        failures = CounterMetricFamily(
            "lbproxy_request_failures", "Requests that failed at the backend, by outcome.",
            labels=["cluster", "backend", "outcome"])
        retries = CounterMetricFamily(
            "lbproxy_retries", "Requests sent to the backend as a retry of an attempt that "
            "failed on another one (included in lbproxy_requests_total).",
            labels=["cluster", "backend"])
        inflight = GaugeMetricFamily(
            "lbproxy_backend_inflight", "Requests in flight to the backend.",
            labels=["cluster", "backend"])
        weight = GaugeMetricFamily(
            "lbproxy_backend_weight", "Configured weight.", labels=["cluster", "backend"])
        drained = GaugeMetricFamily(
            "lbproxy_backend_drained", "1 if an operator drained the backend.",
            labels=["cluster", "backend"])
        healthy = GaugeMetricFamily(
            "lbproxy_backend_healthy", "1 unless failing its health check or ejected.",
            labels=["cluster", "backend"])
        ejected = GaugeMetricFamily(
            "lbproxy_backend_ejected", "1 while outlier detection ejects the backend.",
            labels=["cluster", "backend"])
        duration = HistogramMetricFamily(
            "lbproxy_request_duration_seconds",
            "Backend request latency, lease start to end (octave buckets, exact).",
            labels=["cluster", "backend"])
        limit = GaugeMetricFamily(
            "lbproxy_backend_limit", "Adaptive concurrency limit of the backend (summed over "
            "the workers).",
            labels=["cluster", "backend"])
        refusals = CounterMetricFamily(
            "lbproxy_refusals", "Requests the gate refused before any backend saw them, by "
            "X-Lbproxy-Error code (overload's own: lbproxy_shed_total).",
            labels=["cluster", "code"])
        shed = CounterMetricFamily(
            "lbproxy_shed", "Requests shed by overload control (503 overloaded), by route "
            "priority and reason.", labels=["cluster", "priority", "reason"])
        queue_length = GaugeMetricFamily(
            "lbproxy_queue_length", "Requests waiting in the admission queue.",
            labels=["cluster"])
        queue_wait = GaugeMetricFamily(
            "lbproxy_queue_oldest_wait_seconds", "How long the longest-waiting request has "
            "waited in the admission queue.", labels=["cluster"])
        queue_admitted = CounterMetricFamily(
            "lbproxy_queue_admitted", "Requests admitted after waiting in the queue.",
            labels=["cluster"])
        queue_wait_total = CounterMetricFamily(
            "lbproxy_queue_wait_seconds", "Total time requests admitted after waiting spent "
            "in the queue.", labels=["cluster"])
        level = GaugeMetricFamily(
            "lbproxy_admission_level", "Share of (priority, cohort) positions admitted "
            "(DAGOR admission level; 1 = everything).", labels=["cluster"])
        for name, cluster in snap.clusters.items():
            state = cluster.state
            for code, n in sorted(state.refusals.items()):
                refusals.add_metric([name, code], n)
            gauges = src.gauges
            view = overload_view(state.overload, None if gauges is None else gauges.queue(name))
            limits = None if gauges is None else gauges.limits(name)
            if view is not None:
                for priority, reasons in view["shed"].items():
                    for reason, n in reasons.items():
                        shed.add_metric([name, priority, reason], n)
                q = view["queue"]
                queue_length.add_metric([name], q["length"])
                queue_wait.add_metric([name], q["oldest_wait_ms"] / 1e3)
                queue_admitted.add_metric([name], q["admitted_after_wait"])
                queue_wait_total.add_metric([name], q["wait_ms_total"] / 1e3)
                level.add_metric([name], view["admission_level"])
                for b in cluster.backends:
                    value = backend_limit(state, b.slot, limits, b.address)
                    if value is not None:
                        limit.add_metric([name, b.address], value)
            for b in cluster.backends:
                labels = [name, b.address]
                c = state.counters[b.slot]
                for cls, n in zip(RESPONSE_CLASSES, c.responses, strict=True):
                    requests.add_metric([*labels, cls], n)
                for outcome in FAILURE_NAMES:
                    failures.add_metric([*labels, outcome], c.by_outcome[Outcome[outcome.upper()]])
                retries.add_metric(labels, c.retries)
                inflight.add_metric(labels, src.inflight(name, b.address))
                weight.add_metric(labels, b.weight)
                drained.add_metric(labels, 1 if state.state_of(b.address) == "drain" else 0)
                healthy.add_metric(labels, 1 if state.is_healthy(b.address) else 0)
                ejected.add_metric(labels, 1 if state.is_ejected(b.address) else 0)
                buckets: list[tuple[str, float]] = [
                    (repr(le), n) for le, n in latency.cumulative_octaves(c.latency)]
                buckets.append(("+Inf", sum(c.latency)))
                duration.add_metric(labels, buckets, c.latency_ns / 1e9)
        yield requests
        yield failures
        yield retries
        yield inflight
        yield weight
        yield drained
        yield healthy
        yield ejected
        yield duration
        yield limit
        yield refusals
        yield shed
        yield queue_length
        yield queue_wait
        yield queue_admitted
        yield queue_wait_total
        yield level
        yield GaugeMetricFamily("lbproxy_config_version", "Version of the snapshot in force.",
                                value=snap.version)
        yield GaugeMetricFamily("lbproxy_ready", "1 while /ready answers 200.",
                                value=1 if src.is_ready() else 0)


def registry_for(source: StatsSource) -> CollectorRegistry:
    """A private registry holding only lbproxy's collector for `source`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LbproxyCollector(source))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition (format 0.0.4) of everything in `registry`."""
    return generate_latest(registry)
