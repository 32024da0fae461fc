"""Configuration: the msgspec schema, decoding (TOML, YAML, JSON) and validation.

Owns turning a file or a dict into a frozen, validated `Config`, and every error a config
can have, each named by its field path (``clusters.uploads.backends[1].weight``). It must
not open sockets or build selectors: `snapshot.py` turns a `Config` into runtime objects.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from lbproxy.balance._selectors_check import MAX_WEIGHT  # the selectors' bound, named once

Policy = Literal["maglev", "p2c", "round_robin"]
Limiter = Literal["gradient2", "aimd", "vegas"]
Priority = Literal["critical", "normal", "sheddable"]
PRIORITIES: tuple[str, ...] = ("critical", "normal", "sheddable")  # most valuable first
POLICIES: tuple[str, ...] = ("maglev", "p2c", "round_robin")
HASH_ON_KINDS = ("path", "path_regex:", "header:", "query:", "cookie:")
DEFAULT_TABLE_SIZE = 65537


class ConfigError(ValueError):
    """An invalid configuration; `errors` holds one ``(field_path, message)`` per problem."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{path}: {msg}" if path else msg for path, msg in errors))


class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Shared base: unknown fields are errors, instances are immutable."""


# Each subclass restates frozen=True: msgspec inherits it, but mypy's dataclass_transform
# reads a subclass without it as non-frozen.


class TLS(_Base, frozen=True):
    """TLS termination for a listener (PEM files)."""

    cert: str  # PEM certificate chain file, leaf first; must exist when the config loads
    key: str  # PEM private key file for `cert`; must exist when the config loads


class Listener(_Base, frozen=True):
    """Where the data plane accepts client connections."""

    bind: str = "127.0.0.1:8080"  # host:port ([v6]:port) of an IP address, `localhost` or `*`
    tls: TLS | None = None  # terminate TLS on this listener; plain HTTP when unset
    backlog: int = 1024  # the listen(2) accept queue length


class Admin(_Base, frozen=True):
    """Where the admin API listens; `token` guards every mutating call."""

    bind: str = "127.0.0.1:9901"  # host:port of the admin API; must differ from listener.bind
    # Bearer token every mutating call (PUT, PATCH) must send; reads stay open. Unset: no
    # check, so bind the admin API to a trusted address. Must not be empty.
    token: str | None = None
    # More bearer tokens, by name (`[admin.tokens]`, `alice = "..."`): each is accepted like
    # `token`, and GET /changes names the token a change came with. Names are 1-64 of
    # A-Z a-z 0-9 . _ -; tokens must not be empty and no two alike (nor like `token`).
    tokens: dict[str, str] | None = None


class Timeouts(_Base, frozen=True):
    """Timeouts in seconds (names follow Envoy/HAProxy: each bounds one wait)."""

    request_headers: float = 10.0  # whole request head; slowloris gets 408
    client_body_idle: float = 30.0  # no body byte from the client for this long: 408
    client_idle: float = 60.0  # keep-alive client connection with no request: closed
    connect: float = 2.0  # TCP connect to a backend
    upstream_headers: float = 30.0  # request sent, no response head yet: 504
    upstream_idle: float = 60.0  # no byte from the backend mid-response
    drain: float = 30.0  # graceful shutdown deadline


class Limits(_Base, frozen=True):
    """Request size limits (HAProxy tune.bufsize / nginx large_client_header_buffers)."""

    max_request_line: int = 8192  # bytes of the request line; 414 past this
    max_header_bytes: int = 65536  # bytes of all header lines together; 431 past this
    max_headers: int = 100  # 431 past this many header fields
    max_body_bytes: int = 0  # bytes of a request body; 413 past this; 0 = unlimited


class Upstream(_Base, frozen=True):
    """Per-backend connection pool settings."""

    max_connections: int = 1024  # per backend and worker: connecting + in use + idle
    max_idle: int = 128  # idle keep-alive connections kept per backend
    idle_timeout: float = 60.0  # an idle pooled connection is closed after this


class Backend(_Base, frozen=True):
    """One backend of a cluster: ``{address, weight, zone}``."""

    address: str  # host:port ([v6]:port for IPv6); unique within the cluster
    weight: int = 1  # relative share of traffic, 1 to 2^31-1
    zone: str = ""  # a label shown in /clusters; selection does not use it yet


class OutlierDetection(_Base, frozen=True):
    """Passive ejection on consecutive failures (Envoy's outlier_detection, same defaults)."""

    enabled: bool = True  # on with no configuration; false turns ejection off
    consecutive_5xx: int = 5  # 5xx responses and connect/reset/timeout failures in a row
    consecutive_gateway_failure: int = 5  # 502/503/504 and connect/reset/timeout in a row
    base_ejection_time: float = 30.0  # seconds; x the number of times ejected
    max_ejection_time: float = 300.0  # cap on one ejection (seconds)
    max_ejection_percent: float = 10.0  # share of backends ejected at once; one always may be
    interval: float = 10.0  # the ejection multiplier drops by one per interval not ejected


class HealthCheck(_Base, frozen=True):
    """Active HTTP GET health checks; only clusters that configure one are checked."""

    path: str  # request path of the probe (starts with '/'; ASCII, no spaces)
    interval: float = 5.0  # seconds between probes of one backend
    timeout: float = 1.0  # a probe with no status line by then failed
    unhealthy_threshold: int = 3  # failed probes in a row before marking unhealthy
    healthy_threshold: int = 2  # passed probes in a row before marking healthy again
    # Statuses that pass: integers or "LOW-HIGH" ranges, inclusive, within 100-599.
    expected_statuses: list[int | str] = msgspec.field(default_factory=lambda: ["200-399"])
    host: str | None = None  # Host header; the backend's address when unset


class CircuitBreaker(_Base, frozen=True):
    """Envoy-style thresholds per cluster (not a state machine); 0 = unlimited."""

    max_requests: int = 0  # requests in flight to the cluster at once (this process)


class Retry(_Base, frozen=True):
    """Retrying a failed attempt on another backend (HAProxy retries + redispatch, nginx
    proxy_next_upstream), limited by a Finagle/Linkerd-style retry budget."""

    attempts: int = 2  # extra attempts after the first (nginx proxy_next_upstream_tries - 1)
    budget_percent: float = 20.0  # retries may add this share of first attempts (Envoy: 20)
    min_retries_per_second: float = 3.0  # always allowed, however few requests (Finagle)


class AdaptiveConcurrency(_Base, frozen=True):
    """A concurrency limit per backend learned from latency (Netflix concurrency-limits);
    no capacity is configured. On for every cluster unless `enabled = false`."""

    enabled: bool = True  # on with no configuration, as outlier detection is
    algorithm: Limiter = "gradient2"  # "gradient2" (default) | "aimd" | "vegas"
    initial_limit: int = 20  # each backend's limit before its first window (Netflix: 20)
    # Netflix's Gradient2 floors at 20; an origin serving 2-4 requests at once would then
    # never be protected, so the floor here is 1 (the limit itself is never pinned low).
    min_limit: int = 1
    max_limit: int = 1000  # Netflix: maxConcurrency 200 (Gradient2), 1000 (Vegas)
    smoothing: float = 0.2  # Gradient2/Vegas: share of a new estimate taken per window
    # Gradient2: how much the limit may grow per window (Netflix: 4); 0 = sqrt(limit)
    # while the RTT is at its baseline, then 1 (Netflix's Log10RootFunction under 100).
    queue_size: int = 0
    long_window: int = 600  # Gradient2: samples in the long-term RTT average
    # Gradient2: the window RTT may reach this x the no-load RTT before the limit falls
    # (Netflix's GradientLimit uses 2.0; lower keeps the backends' queues shorter).
    rtt_tolerance: float = 1.25
    # Gradient2: RTT above the baseline by less than this is never queueing (a backend
    # answering in 1 ms shows the proxy's own scheduling noise as multiples of its RTT).
    rtt_slack_ms: float = 1.0
    backoff_ratio: float = 0.9  # AIMD: the limit is multiplied by this on a drop
    # The sampling window (Netflix's WindowedLimit): at least `window_size` samples and
    # min_window..max_window seconds (2x the window's RTT in between). Netflix uses 1 s;
    # shorter here so a surge is met within a few hundred milliseconds.
    min_window: float = 0.1
    max_window: float = 1.0  # seconds; the longest a sampling window lasts
    window_size: int = 10  # samples a window needs before it updates the limit


class Queue(_Base, frozen=True):
    """The bounded admission queue in front of a cluster's backends, governed by CoDel
    (Nichols & Jacobson 2012; Facebook's "Fail at Scale" and folly/executors/Codel.cpp)."""

    max_pending: int = 1000  # requests waiting at once (this process); more are shed
    # When the minimum queueing delay over one interval exceeds the target, the queue is
    # overloaded: requests waiting longer than 2 x target are shed and it serves LIFO.
    codel_target_ms: float = 5.0
    codel_interval_ms: float = 100.0  # CoDel's interval: how long a delay must stand
    max_wait_ms: float = 500.0  # no request waits longer than this, overloaded or not


class ClusterConfig(_Base, frozen=True):
    """A named pool of backends and the policy that picks among them."""

    backends: list[str | Backend]  # at least one; "host:port" or a backend table
    # maglev: consistent hashing on the route's hash_on key; p2c: the cheaper of two random
    # backends (peak-EWMA latency x in-flight, per weight); round_robin: smooth weighted.
    policy: Policy = "round_robin"
    table_size: int = DEFAULT_TABLE_SIZE  # Maglev lookup table size: a prime >= the backends
    # Maglev only: no backend takes more than c x the mean in-flight load (bounded-load
    # consistent hashing, Mirrokni et al. 2018); >= 1, or 0 to disable.
    balance_factor: float = 1.25
    seed: int = 0  # P2C's random stream; fixed so tests are deterministic
    # Percent of backends that must be usable (not ejected or unhealthy) before those marks
    # are ignored (Envoy's healthy_panic_threshold, default 50); 0 disables panic routing.
    panic_threshold: float = 50.0
    outlier_detection: OutlierDetection = msgspec.field(default_factory=OutlierDetection)
    health_check: HealthCheck | None = None
    circuit_breaker: CircuitBreaker = msgspec.field(default_factory=CircuitBreaker)
    retry: Retry = msgspec.field(default_factory=Retry)
    adaptive_concurrency: AdaptiveConcurrency = msgspec.field(
        default_factory=AdaptiveConcurrency)
    queue: Queue = msgspec.field(default_factory=Queue)


class RouteConfig(_Base, frozen=True):
    """First-match-wins route: prefix (+ methods, host, headers) to a cluster."""

    cluster: str  # the name of a cluster under [clusters]
    # A plain byte prefix of the path: "/upload" also matches "/uploads"; write "/upload/"
    # to require a segment boundary. Must start with '/'.
    path_prefix: str = "/"
    methods: list[str] | None = None  # only these methods (upper case, e.g. ["GET", "HEAD"])
    host: str | None = None  # only this Host (case-insensitive, port ignored)
    headers: dict[str, str] | None = None  # only when each named header has exactly this value
    # The key a maglev cluster hashes: "path" (default), "path_regex:RE" (first capture
    # group; the whole path when it does not match), "header:NAME", "query:NAME" or
    # "cookie:NAME" (an absent one hashes as the empty key). Other policies ignore it.
    hash_on: str | None = None
    max_body_bytes: int | None = None  # overrides limits.max_body_bytes for this route
    # Under overload the least valuable work is shed first: "sheddable" (prefetch) before
    # "normal" before "critical" (playback).
    priority: Priority = "normal"
    # What puts a request in a cohort (hash_on syntax; the client address when unset): in
    # deep overload whole cohorts of one class are shed, so the same viewers stay served
    # (DAGOR, Zhou et al., SoCC 2018, user-level priorities).
    cohort_on: str | None = None


class SelfProtection(_Base, frozen=True):
    """The proxy protecting itself when its own event loop falls behind (Envoy's overload
    manager as the model): each step holds while the smoothed loop lag stays above its
    threshold, and ends once the lag falls under half of it."""

    enabled: bool = True  # on with no configuration; false turns every step off
    # Step 1: sheddable requests are answered 503 overloaded right after their head.
    shed_lag_ms: float = 50.0
    stop_accepting_lag_ms: float = 150.0  # step 2: new connections wait in the backlog
    # Step 3: responses carry Connection: close, so the load balancer in front moves
    # clients to other proxies.
    close_connections_lag_ms: float = 300.0


class Config(_Base, frozen=True):
    """The whole proxy configuration."""

    clusters: dict[str, ClusterConfig]  # at least one, by name
    routes: list[RouteConfig]  # at least one; the first that matches a request wins (else 404)
    listener: Listener = msgspec.field(default_factory=Listener)
    admin: Admin = msgspec.field(default_factory=Admin)
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    limits: Limits = msgspec.field(default_factory=Limits)
    upstream: Upstream = msgspec.field(default_factory=Upstream)
    self_protection: SelfProtection = msgspec.field(default_factory=SelfProtection)


def backend_of(entry: str | Backend) -> Backend:
    """Normalise a backend entry (``"host:port"`` or a table) to a `Backend`."""
    return Backend(address=entry) if isinstance(entry, str) else entry


def parse_hostport(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` too); ValueError naming what is wrong."""
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected '[ipv6]:port', got {value!r}")
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ValueError(f"expected 'host:port', got {value!r}")
    if not host:
        raise ValueError(f"missing host in {value!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be 0-65535 in {value!r}")
    return host, int(port)


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


def validate_backends(entries: list[str | Backend], path: str) -> list[tuple[str, str]]:
    """Errors in one backend list (shared by config load and the admin API's PUT)."""
    errors: list[tuple[str, str]] = []
    if not entries:
        errors.append((path, "must list at least one backend"))
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        b = backend_of(entry)
        where = f"{path}[{i}]"
        try:
            parse_hostport(b.address)
        except ValueError as exc:
            errors.append((where if isinstance(entry, str) else f"{where}.address", str(exc)))
        if not 1 <= b.weight <= MAX_WEIGHT:
            errors.append((f"{where}.weight", f"must be 1-{MAX_WEIGHT}, got {b.weight}"))
        if b.address in seen:
            errors.append((where, f"duplicate address {b.address!r} (also at [{seen[b.address]}])"))
        seen.setdefault(b.address, i)
    return errors


def validate_cluster(cl: ClusterConfig, base: str) -> list[tuple[str, str]]:
    """Errors in one cluster (config load and the admin API); paths start at `base`."""
    def at(name: str) -> str:
        return f"{base}.{name}" if base else name

    errors = validate_backends(cl.backends, at("backends"))
    if cl.policy == "maglev":
        if not _is_prime(cl.table_size):
            errors.append((at("table_size"), f"must be prime, got {cl.table_size}"))
        elif cl.table_size < len(cl.backends):
            errors.append((at("table_size"), "must be >= the number of backends"))
    if cl.balance_factor != 0 and cl.balance_factor < 1:
        errors.append((at("balance_factor"), "must be >= 1 (or 0 to disable)"))
    errors += validate_resilience(cl, base)
    return errors


# RFC 9110 §5.6.2: field names (and methods) are tokens of tchar.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _validate_hash_on(value: str) -> str | None:
    if value == "path":
        return None
    for kind in HASH_ON_KINDS[1:]:
        if value.startswith(kind):
            arg = value[len(kind) :]
            if not arg:
                return f"{kind!r} needs an argument"
            if kind == "path_regex:":
                try:
                    rx = re.compile(arg)
                except re.error as exc:
                    return f"invalid regex: {exc}"
                if rx.groups < 1:
                    return "path_regex needs a capture group (its first group is the key)"
            elif kind == "header:" and not _TOKEN.fullmatch(arg):
                return f"not a header field name (RFC 9110 token): {arg!r}"
            elif kind in ("query:", "cookie:") and any(c in arg for c in "&=; \t"):
                return f"{kind[:-1]} name must not contain '&', '=', ';' or whitespace"
            return None
    return (
        f"unknown hash_on {value!r}; expected one of "
        "path, path_regex:RE, header:NAME, query:NAME, cookie:NAME"
    )


def parse_status_ranges(entries: list[int | str]) -> list[tuple[int, int]]:
    """``[200, "300-399"]`` → inclusive ``(low, high)`` pairs; ValueError naming the entry."""
    out = []
    for entry in entries:
        if isinstance(entry, int):
            low = high = entry
        else:
            lo, sep, hi = entry.partition("-")
            if not (lo.strip().isdigit() and (not sep or hi.strip().isdigit())):
                raise ValueError(f"expected a status or 'LOW-HIGH', got {entry!r}")
            low, high = int(lo), int(hi) if sep else int(lo)
        if not 100 <= low <= high <= 599:
            raise ValueError(f"statuses must be 100-599, low <= high; got {entry!r}")
        out.append((low, high))
    return out


def validate_resilience(cl: ClusterConfig, base: str) -> list[tuple[str, str]]:
    """Errors in a cluster's panic threshold, outlier detection, health check, breaker, retry."""
    errors: list[tuple[str, str]] = []

    def need(ok: bool, field: str, msg: str) -> None:
        if not ok:
            errors.append((f"{base}.{field}" if base else field, msg))

    need(0 <= cl.panic_threshold <= 100, "panic_threshold", "must be 0-100 (percent)")
    od = cl.outlier_detection
    for name in ("consecutive_5xx", "consecutive_gateway_failure"):
        need(getattr(od, name) >= 1, f"outlier_detection.{name}", "must be >= 1")
    for name in ("base_ejection_time", "max_ejection_time", "interval"):
        need(getattr(od, name) > 0, f"outlier_detection.{name}", "must be > 0 (seconds)")
    need(0 <= od.max_ejection_percent <= 100, "outlier_detection.max_ejection_percent",
         "must be 0-100 (percent)")
    hc = cl.health_check
    if hc is not None:
        need(hc.path.startswith("/"), "health_check.path", "must start with '/'")
        need(hc.path.isascii() and hc.path.isprintable() and " " not in hc.path,
             "health_check.path", "must be ASCII without spaces or control characters")
        for name in ("interval", "timeout"):
            need(getattr(hc, name) > 0, f"health_check.{name}", "must be > 0 (seconds)")
        for name in ("unhealthy_threshold", "healthy_threshold"):
            need(getattr(hc, name) >= 1, f"health_check.{name}", "must be >= 1")
        need(bool(hc.expected_statuses), "health_check.expected_statuses",
             "must list at least one status or range")
        for i, entry in enumerate(hc.expected_statuses):
            try:
                parse_status_ranges([entry])
            except ValueError as exc:
                need(False, f"health_check.expected_statuses[{i}]", str(exc))
        if hc.host is not None:
            need(hc.host.isascii() and hc.host.isprintable() and bool(hc.host.strip()),
                 "health_check.host", "must be a non-empty printable ASCII host")
    need(cl.circuit_breaker.max_requests >= 0, "circuit_breaker.max_requests",
         "must be >= 0 (0 = unlimited)")
    need(0 <= cl.retry.attempts <= 10, "retry.attempts", "must be 0-10 (0 disables retries)")
    need(0 <= cl.retry.budget_percent <= 100, "retry.budget_percent", "must be 0-100 (percent)")
    need(cl.retry.min_retries_per_second >= 0, "retry.min_retries_per_second", "must be >= 0")
    ac = cl.adaptive_concurrency
    for name in ("initial_limit", "min_limit", "max_limit", "window_size", "long_window"):
        need(getattr(ac, name) >= 1, f"adaptive_concurrency.{name}", "must be >= 1")
    need(ac.queue_size >= 0, "adaptive_concurrency.queue_size", "must be >= 0")
    need(ac.min_limit <= ac.max_limit, "adaptive_concurrency.max_limit",
         f"must be >= min_limit ({ac.min_limit})")
    need(ac.min_limit <= ac.initial_limit <= ac.max_limit, "adaptive_concurrency.initial_limit",
         f"must be within min_limit..max_limit ({ac.min_limit}..{ac.max_limit})")
    need(0 < ac.smoothing <= 1, "adaptive_concurrency.smoothing", "must be > 0 and <= 1")
    need(ac.rtt_tolerance >= 1, "adaptive_concurrency.rtt_tolerance", "must be >= 1")
    need(ac.rtt_slack_ms >= 0, "adaptive_concurrency.rtt_slack_ms", "must be >= 0")
    need(0 < ac.backoff_ratio < 1, "adaptive_concurrency.backoff_ratio", "must be > 0 and < 1")
    need(ac.min_window > 0, "adaptive_concurrency.min_window", "must be > 0 (seconds)")
    need(ac.max_window >= ac.min_window, "adaptive_concurrency.max_window",
         f"must be >= min_window ({ac.min_window})")
    q = cl.queue
    need(q.max_pending >= 1, "queue.max_pending", "must be >= 1")
    need(q.codel_target_ms > 0, "queue.codel_target_ms", "must be > 0 (milliseconds)")
    need(q.codel_interval_ms > q.codel_target_ms, "queue.codel_interval_ms",
         f"must be > codel_target_ms ({q.codel_target_ms})")
    need(q.max_wait_ms >= 2 * q.codel_target_ms, "queue.max_wait_ms",
         f"must be >= 2 x codel_target_ms ({2 * q.codel_target_ms})")
    return errors


_TOKEN_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _token_errors(admin: Admin) -> list[tuple[str, str]]:
    """admin.tokens: names as `_TOKEN_NAME`, tokens not empty and each unique."""
    errors: list[tuple[str, str]] = []
    seen = set() if admin.token is None else {admin.token}
    for name, token in (admin.tokens or {}).items():
        where = f"admin.tokens.{name}"
        if not _TOKEN_NAME.fullmatch(name):
            errors.append((where, "a token name is 1-64 of A-Z a-z 0-9 . _ -"))
        if not token.strip():
            errors.append((where, "must not be empty"))
        elif token in seen:
            # Two names for one secret: a change could not say which of them made it.
            errors.append((where, "the same token as another one; each must differ"))
        seen.add(token)
    return errors


def validate(cfg: Config) -> list[tuple[str, str]]:
    """Semantic checks msgspec's types cannot express; returns every error found."""
    errors: list[tuple[str, str]] = []
    for path, bind in (("listener.bind", cfg.listener.bind), ("admin.bind", cfg.admin.bind)):
        try:
            host, _ = parse_hostport(bind)
            if host not in ("localhost", "*"):
                ipaddress.ip_address(host)
        except ValueError as exc:
            errors.append((path, str(exc)))
    if cfg.admin.token is not None and not cfg.admin.token.strip():
        # An empty token would let "Authorization: Bearer " through: omit it instead.
        errors.append(("admin.token", "must not be empty (omit it to leave the API open)"))
    errors += _token_errors(cfg.admin)
    if cfg.admin.bind == cfg.listener.bind and not cfg.admin.bind.endswith(":0"):
        errors.append(("admin.bind", f"must differ from listener.bind ({cfg.listener.bind})"))
    if cfg.listener.tls is not None:
        for name in ("cert", "key"):
            f = getattr(cfg.listener.tls, name)
            if not Path(f).is_file():
                errors.append((f"listener.tls.{name}", f"file not found: {f}"))
    for name, value in msgspec.structs.asdict(cfg.timeouts).items():
        if value <= 0:
            errors.append((f"timeouts.{name}", f"must be > 0, got {value}"))
    lim = cfg.limits
    for name in ("max_request_line", "max_header_bytes", "max_headers"):
        if getattr(lim, name) < 1:
            errors.append((f"limits.{name}", "must be >= 1"))
    if lim.max_body_bytes < 0:
        errors.append(("limits.max_body_bytes", "must be >= 0 (0 = unlimited)"))
    sp = cfg.self_protection
    steps = ("shed_lag_ms", "stop_accepting_lag_ms", "close_connections_lag_ms")
    for name in steps:
        if getattr(sp, name) <= 0:
            errors.append((f"self_protection.{name}", "must be > 0 (milliseconds)"))
    for lower, higher in itertools.pairwise(steps):
        if getattr(sp, higher) < getattr(sp, lower):
            errors.append((f"self_protection.{higher}", f"must be >= {lower}"))
    if cfg.upstream.max_connections < 1:
        errors.append(("upstream.max_connections", "must be >= 1"))
    if cfg.upstream.max_idle < 0:
        errors.append(("upstream.max_idle", "must be >= 0"))
    if not cfg.clusters:
        errors.append(("clusters", "must define at least one cluster"))
    for cname, cl in cfg.clusters.items():
        errors += validate_cluster(cl, f"clusters.{cname}")
    if not cfg.routes:
        errors.append(("routes", "must define at least one route"))
    for i, rt in enumerate(cfg.routes):
        base = f"routes[{i}]"
        if rt.cluster not in cfg.clusters:
            errors.append((f"{base}.cluster", f"unknown cluster {rt.cluster!r}"))
        if not rt.path_prefix.startswith("/"):
            errors.append((f"{base}.path_prefix", "must start with '/'"))
        if rt.hash_on is not None and (msg := _validate_hash_on(rt.hash_on)):
            errors.append((f"{base}.hash_on", msg))
        if rt.cohort_on is not None and (msg := _validate_hash_on(rt.cohort_on)):
            errors.append((f"{base}.cohort_on", msg))
        if rt.host is not None and not rt.host.strip():
            errors.append((f"{base}.host", "must not be empty"))
        if rt.max_body_bytes is not None and rt.max_body_bytes < 0:
            errors.append((f"{base}.max_body_bytes", "must be >= 0"))
        for name in rt.headers or {}:
            if not _TOKEN.fullmatch(name):
                errors.append((field_path(f"{base}.headers", name),
                               "not a header field name (RFC 9110 token)"))
        if rt.methods is not None:
            for j, m in enumerate(rt.methods):
                if not m or not m.isalpha() or not m.isupper():
                    errors.append((f"{base}.methods[{j}]", f"not an HTTP method: {m!r}"))
    return errors


_PATH_RE = re.compile(r" - at `\$(.*)`$")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `(.*)`")


def field_path(base: str, key: str) -> str:
    """``base.key``, or ``base["key"]`` when the key would not read as one path segment."""
    seg = f".{key}" if _PLAIN_KEY.fullmatch(key) else f"[{json.dumps(key)}]"
    return f"{base}{seg}" if base else seg.lstrip(".")


def located(exc: msgspec.ValidationError, base: str) -> tuple[str, str]:
    """(field path re-rooted at `base`, message without msgspec's location suffix)."""
    # msgspec appends " - at `$.a[1].b`" relative to what it converted; re-root it at `base`.
    msg = str(exc)
    m = _PATH_RE.search(msg)
    rest = m.group(1) if m else ""
    msg = _PATH_RE.sub("", msg)
    # An unknown field is located at its parent object; name the field itself, so the
    # path points at the typo (`listener.bnd`, not `listener`).
    unknown = _UNKNOWN_FIELD.fullmatch(msg)
    if unknown:
        return field_path(base + rest, unknown.group(1)), "unknown field"
    return base + rest, msg


def _convert_clusters(clusters: Any, errors: list[tuple[str, str]]) -> Any:
    # Converted one entry at a time: msgspec reports a dict value's path as `clusters[...]`,
    # which hides the cluster's name; here each error carries `clusters.NAME....`.
    if not isinstance(clusters, Mapping):
        return clusters  # let msgspec name the type error at `clusters`
    converted: dict[str, ClusterConfig] = {}
    for name, entry in clusters.items():
        if not isinstance(name, str):
            errors.append(("clusters", f"cluster name must be a string, got {name!r}"))
            continue
        try:
            converted[name] = msgspec.convert(entry, ClusterConfig)
        except msgspec.ValidationError as exc:
            errors.append(located(exc, field_path("clusters", name)))
    return converted


def _check_route_headers(routes: Any, errors: list[tuple[str, str]]) -> None:
    # Same reason as _convert_clusters: name the header key instead of `headers[...]`.
    if not isinstance(routes, list):
        return
    for i, rt in enumerate(routes):
        headers = rt.get("headers") if isinstance(rt, Mapping) else None
        if isinstance(headers, Mapping):
            for name, value in headers.items():
                if not isinstance(value, str):
                    where = field_path(f"routes[{i}].headers", str(name))
                    errors.append((where, f"Expected `str`, got `{type(value).__name__}`"))


def from_dict(data: Any) -> Config:
    """Convert plain data (as decoded from any format) to a validated `Config`."""
    if not isinstance(data, Mapping):
        raise ConfigError([("", "top level must be a table/object")])
    errors: list[tuple[str, str]] = []
    # Each top-level section is converted on its own so one run reports an error in every
    # section, not just the first msgspec meets.
    known = {f.encode_name: f for f in msgspec.structs.fields(Config)}
    for key in data:
        if key not in known:
            errors.append((str(key), f"unknown field {key!r}; expected one of {', '.join(known)}"))
    sections: dict[str, Any] = {}
    for name, f in known.items():
        if name not in data:
            if f.required:
                errors.append((name, "missing required section"))
            continue
        value = data[name]
        if name == "clusters":
            value = _convert_clusters(value, errors)
        elif name == "routes":
            _check_route_headers(value, errors)
        try:
            sections[name] = msgspec.convert(value, f.type)
        except msgspec.ValidationError as exc:
            where, msg = located(exc, name)
            if "[...]" not in where or not any(p.startswith(name) for p, _ in errors):
                errors.append((where, msg))  # else: already named precisely above
    if errors:
        raise ConfigError(errors)
    cfg = Config(**sections)
    errors = validate(cfg)
    if errors:
        raise ConfigError(errors)
    return cfg


def load(path: str | Path) -> Config:
    """Read and validate a config file; the format follows the extension."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError([("", f"cannot read {p}: {exc.strerror}")]) from None
    suffix = p.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(raw)
        elif suffix == ".json":
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except Exception as exc:  # every parser has its own error type
        raise ConfigError([("", f"{p}: not valid {suffix.lstrip('.') or 'toml'}: {exc}")]) from None
    return from_dict(data)


def restart_required(old: Config, new: Config) -> list[tuple[str, str]]:
    """What differs between two configs that a running process cannot apply (sockets)."""
    return [
        (name, f"changing {name} needs a restart")
        for name in ("listener", "admin")
        if getattr(old, name) != getattr(new, name)
    ]
