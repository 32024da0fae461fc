"""The admin API (JSON over HTTP on `admin.bind`, aiohttp): every route in docs/admin-api.md.

Owns the HTTP surface: reading views (/ready, /clusters, /stats, /metrics, /openapi.json),
turning PUT/PATCH bodies into a new `Config` (or new drain marks) handed to
`Controller.apply`, which publishes the next snapshot to every sink (data plane, this API,
under a supervisor every worker), the bearer-token check, and JSON errors for every status.
It reads the current `Snapshot` through `AdminAPI.snapshot`, which the controller replaces
with one assignment, and in-flight counts through an `InflightSource` (the local
`ClusterState`s in a single process; the workers' reports under a supervisor). Must not
touch the data plane's internals.

Mutations are serialised by one `asyncio.Lock` held from the `If-Match` check through
`apply()` to the workers' confirmation, so of two calls naming one version exactly one
applies and the other gets 409. The version is the config's (the snapshot's), one for all
clusters: any applied change, or a reload, makes an older `If-Match` stale; that is the
number GET /clusters shows for every cluster and PUT/PATCH answer. `?dry_run=1` validates
and answers the diff and the share of hash keys that would move, applying nothing. Every
applied snapshot (a reload too) goes into `history` (GET /changes) through `take`, this
API's controller sink. With `admin.token` or `admin.tokens` set, every non-safe method
needs one of the bearer tokens (the documented rule: "every mutating admin call"); safe
methods (GET, HEAD) stay open, so monitoring needs no secret.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
from aiohttp import web

from lbproxy.admin import changes, metrics, openapi
from lbproxy.admin.stats import InflightSource, OverloadGauges, backend_limit, stats_view
from lbproxy.admin.webapp import start_app
from lbproxy.balance.gate import BackendInfo, Cluster
from lbproxy.control import config
from lbproxy.control.controller import Controller
from lbproxy.control.snapshot import Snapshot

# Under a supervisor: wait (bounded) until every running worker applied this version;
# returns the workers that had not when the wait ended (normally none).
Propagation = Callable[[int], Awaitable[list[int]]]

log = logging.getLogger("lbproxy.admin.api")
MAX_BODY_BYTES = 1 << 20
# RFC 9110 §9.2.1: the safe methods; everything else mutates and needs the token.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The name of the named token (admin.tokens) a call came with; None: unnamed or none.
TOKEN_NAME: web.RequestKey[str | None] = web.RequestKey(
    "token_name", str | None)  # type: ignore[arg-type]
# RFC 9110 §8.8.3: entity-tag = [ "W/" ] DQUOTE etagc DQUOTE; a bare number is accepted
# too, since GET /clusters and PUT show the version unquoted.
_ENTITY_TAG = re.compile(r'(W/)?"(\d+)"|(\d+)')
_DRY_RUN = {"1": True, "true": True, "0": False, "false": False}


class BackendSet(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """PUT /clusters/{name}/backends body."""

    backends: list[str | config.Backend]


class BackendPatch(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """PATCH /clusters/{name}/backends/{address} body."""

    # UNSET, not None: an explicit `null` is an error, as the OpenAPI schema says.
    weight: int | msgspec.UnsetType = msgspec.UNSET
    state: Literal["drain", "active"] | msgspec.UnsetType = msgspec.UNSET


class _Problem(Exception):
    """A request the API refuses: status, stable code, message, field errors."""

    def __init__(self, status: int, code: str, message: str,
                 errors: list[tuple[str, str]] | None = None, *,
                 extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.errors = errors or []
        self.extra, self.headers = extra, headers


def error_response(status: int, code: str, message: str,
                   errors: list[tuple[str, str]] | None = None,
                   headers: dict[str, str] | None = None,
                   extra: dict[str, Any] | None = None) -> web.Response:
    """The one JSON error shape: {"error": code, "message": ..., "errors": [{field, message}]}
    (plus `extra` members, such as a 409's current "version")."""
    body: dict[str, Any] = {"error": code, "message": message, **(extra or {})}
    if errors:
        body["errors"] = [{"field": f, "message": m} for f, m in errors]
    return web.json_response(body, status=status, headers=headers)


def etag(version: int) -> dict[str, str]:
    """The ETag header naming a config version (a strong tag, RFC 9110 §8.8.3)."""
    return {"ETag": f'"{version}"'}


def _if_match(request: web.Request) -> tuple[int, ...] | None:
    """The versions `If-Match` accepts; None when any will do (absent, or `*`)."""
    lines = request.headers.getall("If-Match", [])
    if not lines:
        return None
    versions: list[int] = []
    for part in ",".join(lines).split(","):  # RFC 9110 §5.3: lines combine as a list
        part = part.strip()
        if part == "*":  # RFC 9110 §13.1.1: any current representation; there always is one
            return None
        m = _ENTITY_TAG.fullmatch(part)
        if m is None:
            raise _Problem(400, "invalid_if_match",
                           f"If-Match must name a config version (N, \"N\" or *), got "
                           f"{part!r}")
        if m.group(1) is None:  # a weak tag never matches (§13.1.1: strong comparison)
            versions.append(int(m.group(2) or m.group(3)))
    return tuple(versions)


def _dry_run(request: web.Request) -> bool:
    """Whether the call asks `?dry_run=1` (or true); 400 for any other value."""
    values = request.query.getall("dry_run", [])
    if not values:
        return False
    if len(values) > 1 or values[0] not in _DRY_RUN:
        raise _Problem(400, "invalid_query", "dry_run must be one of 1, true, 0, false",
                       [("dry_run", f"got {', '.join(map(repr, values))}")])
    return _DRY_RUN[values[0]]


_FIELD_NAMED = re.compile(r"(?:unknown|missing required) field `([^`]+)`")


def _body_errors(exc: msgspec.ValidationError) -> list[tuple[str, str]]:
    # msgspec says "... - at `$.backends[1].weight`"; an unknown or missing field is named
    # in the message instead, so it is appended to the path: `backends[0].port`.
    where, msg = config.located(exc, "")
    m = _FIELD_NAMED.search(msg)
    if m:
        where = f"{where}.{m.group(1)}"
    return [(where.lstrip("."), msg)]


def _decode(body: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise _Problem(400, "invalid_body", "invalid body", _body_errors(exc)) from None
    except msgspec.DecodeError as exc:
        raise _Problem(400, "invalid_json", f"body is not valid JSON: {exc}") from None


class AdminAPI:
    """The admin application; `snapshot`, `accepting` and `draining` are set by the server."""

    def __init__(self, snapshot: Snapshot, inflight: InflightSource | None = None, *,
                 controller: Controller | None = None,
                 propagation: Propagation | None = None,
                 gauges: OverloadGauges | None = None) -> None:
        self.snapshot = snapshot  # replaced whole by the controller, never mutated
        # Overload gauges from the workers (the supervisor); None: this process's own.
        self.gauges = gauges
        self.accepting = False  # every listener is accepting
        self.draining = False  # shutting down: readiness goes 503 so balancers move away
        self._inflight = inflight
        self._controller = controller  # None: read-only (mutating calls answer 503)
        self._propagation = propagation
        self._registry = metrics.registry_for(self)
        # Held from a change's If-Match check to its workers' confirmation: changes apply
        # one at a time, in the order they got it.
        self._lock = asyncio.Lock()
        self.history = changes.ChangeHistory()
        self._origin: changes.Origin | None = None  # set while this API applies a change
        self.app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY_BYTES)
        r = self.app.router
        r.add_get("/ready", self.ready)
        r.add_get("/clusters", self.clusters)
        r.add_put("/clusters/{name}/backends", self.put_backends)
        r.add_patch("/clusters/{name}/backends/{address}", self.patch_backend)
        r.add_get("/changes", self.list_changes)
        r.add_get("/stats", self.stats)
        r.add_get("/metrics", self.metrics)
        r.add_get("/openapi.json", self.openapi)
        self._runner: web.AppRunner | None = None

    # ---- cross-cutting: token, JSON errors -------------------------------------------

    def _caller(self, request: web.Request) -> tuple[bool, str | None]:
        """(authorized, the name of the named token it used, if any)."""
        admin = self.snapshot.config.admin
        known = [*([(None, admin.token)] if admin.token is not None else []),
                 *(admin.tokens or {}).items()]
        if not known:
            return True, None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        presented = given.strip().encode()
        found: tuple[str | None] | None = None
        for name, token in known:
            # compare_digest, and every token compared: the time taken does not depend on
            # how much of a token matched, nor on which one did.
            if hmac.compare_digest(presented, token.encode()):
                found = (name,)
        # RFC 9110 §11.1: the auth scheme is case-insensitive.
        if found is None or scheme.lower() != "bearer":
            return False, None
        return True, found[0]

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                     ) -> web.StreamResponse:
        # The token check comes before routing's 404/405 too, so an unauthenticated
        # client learns nothing about which mutating routes exist.
        if request.method not in SAFE_METHODS:
            authorized, name = self._caller(request)
            request[TOKEN_NAME] = name
            if not authorized:
                return error_response(401, "unauthorized",
                                      "this call needs Authorization: Bearer <admin.token>",
                                      headers={"WWW-Authenticate": 'Bearer realm="lbproxy"'})
        try:
            return await handler(request)
        except _Problem as p:
            return error_response(p.status, p.code, p.message, p.errors, p.headers, p.extra)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            code = {404: "not_found", 405: "method_not_allowed",
                    413: "body_too_large"}.get(exc.status, "bad_request")
            return error_response(exc.status, code, exc.reason, headers=headers)
        except Exception as exc:
            # A bug, not the caller's fault: say so in the one JSON shape, and log it.
            log.exception("admin %s %s failed", request.method, request.path)
            return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")

    # ---- reading ---------------------------------------------------------------------

    def inflight(self, cluster: str, address: str) -> int:
        """In-flight requests to one backend, from the configured source."""
        if self._inflight is not None:
            return self._inflight(cluster, address)
        c = self.snapshot.clusters.get(cluster)
        return 0 if c is None else c.state.inflight(address)

    def is_ready(self) -> bool:
        """Whether /ready answers 200."""
        return self.accepting and not self.draining

    async def ready(self, request: web.Request) -> web.Response:
        """GET /ready: 200 once every listener accepts; 503 while starting or draining."""
        if self.is_ready():
            return web.json_response({"ready": True})
        reason = "draining" if self.draining else "starting"
        return web.json_response({"ready": False, "reason": reason}, status=503)

    def _backend_view(self, cluster: Cluster, b: BackendInfo) -> dict[str, Any]:
        return {
            "address": b.address,
            "weight": b.weight,
            "zone": b.zone,
            "state": cluster.state.state_of(b.address),
            "healthy": cluster.state.is_healthy(b.address),  # health check and ejection
            "ejected": cluster.state.is_ejected(b.address),
            "inflight": self.inflight(cluster.name, b.address),
            # the adaptive concurrency limit in this process (null: overload control off)
            "limit": backend_limit(cluster.state, b.slot,
                                   None if self.gauges is None
                                   else self.gauges.limits(cluster.name), b.address),
        }

    def clusters_view(self) -> dict[str, Any]:
        """The /clusters document for the current snapshot (the shape docs/admin-api.md shows)."""
        snap = self.snapshot  # read once: one consistent view
        out: dict[str, Any] = {}
        for name, cluster in snap.clusters.items():
            out[name] = {
                "policy": cluster.policy,
                "version": snap.version,
                "backends": [self._backend_view(cluster, b) for b in cluster.backends],
            }
        return {"clusters": out}

    async def clusters(self, request: web.Request) -> web.Response:
        """GET /clusters: policy, version and backends of every cluster (read-only); the
        ETag names the version, for If-Match."""
        view = self.clusters_view()
        return web.json_response(view, headers=etag(self.snapshot.version))

    async def list_changes(self, request: web.Request) -> web.Response:
        """GET /changes: the last applied changes, oldest first."""
        return web.json_response({"changes": self.history.entries()})

    async def stats(self, request: web.Request) -> web.Response:
        """GET /stats: counters and latency percentiles per cluster and backend."""
        return web.json_response(stats_view(self.snapshot, self.inflight, self.gauges))

    async def metrics(self, request: web.Request) -> web.Response:
        """GET /metrics: Prometheus text exposition of the same counters."""
        return web.Response(body=metrics.exposition(self._registry),
                            headers={"Content-Type": metrics.CONTENT_TYPE})

    async def openapi(self, request: web.Request) -> web.Response:
        """GET /openapi.json: the OpenAPI 3.1 description of this API."""
        return web.json_response(openapi.DOCUMENT)

    # ---- mutating --------------------------------------------------------------------

    def _cluster_config(self, name: str) -> tuple[Controller, config.ClusterConfig]:
        if self._controller is None:
            raise _Problem(503, "read_only", "this admin API has no controller")
        cc = self._controller.config.clusters.get(name)
        if cc is None:
            raise _Problem(404, "unknown_cluster", f"no cluster named {name!r}")
        return self._controller, cc

    @staticmethod
    def _check_version(controller: Controller, wanted: tuple[int, ...] | None) -> None:
        """409 unless `If-Match` names the version in force (or any version)."""
        current = controller.snapshot.version
        if wanted is not None and current not in wanted:
            named = ", ".join(map(str, wanted)) or "only weak tags"
            raise _Problem(409, "version_mismatch",
                           f"the config is at version {current}, If-Match named {named}; "
                           "read GET /clusters again and retry", extra={"version": current},
                           headers=etag(current))

    def take(self, snap: Snapshot) -> None:
        """A controller sink: `snap` replaces the snapshot in one assignment, and the
        change goes into the history (a change this API did not apply is a reload)."""
        old, self.snapshot = self.snapshot, snap
        origin = self._origin
        try:
            if origin is None:
                origin = changes.Origin("reload", None, None, "SIGHUP")
            else:  # a reload logs its own line (lbproxy/process/signals.py)
                log.info("%s %s by %s: version %d -> %d", origin.kind, origin.cluster,
                         origin.token or origin.client, old.version, snap.version)
            self.history.record(origin, old, snap)
        except Exception:
            # A bug in the history must not keep the snapshot from the sinks after this
            # one (the workers' pipes): the change is applied whatever the record does.
            log.exception("recording the change to version %d failed", snap.version)

    def _apply(self, request: web.Request, kind: str, name: str, controller: Controller,
               cfg: config.Config,
               drained: dict[str, set[str]] | None = None) -> Snapshot:
        """Apply `cfg` (holding the lock), recording who asked for it."""
        self._origin = changes.Origin(kind, name, request.get(TOKEN_NAME),
                                      request.remote or "unknown")
        try:
            return controller.apply(cfg, drained=drained)
        finally:
            self._origin = None

    async def _preview(self, controller: Controller, name: str, cfg: config.Config,
                       drained: dict[str, set[str]] | None = None) -> web.Response:
        """200 with what applying `cfg` would change in cluster `name`; applies nothing."""
        snap = controller.snapshot
        old_cc, new_cc = snap.config.clusters[name], cfg.clusters[name]
        new_members = changes.members(new_cc)
        old_drained = snap.drained.get(name, frozenset())
        new_drained = old_drained if drained is None else frozenset(
            drained.get(name, ())) & frozenset(new_members)
        diff = changes.pool_diff(changes.members(old_cc), old_drained,
                                 new_members, new_drained)
        moved: float | None = None  # only hashing moves keys; p2c and round robin have none
        if new_cc.policy == "maglev":
            state = snap.clusters[name].state
            unusable = {a for a in (*changes.members(old_cc), *new_members)
                        if state.is_ejected(a) or state.is_unhealthy(a)}
            # Two table builds: in a thread, so the data plane sharing this loop
            # (--workers 1) keeps serving meanwhile.
            moved = await asyncio.to_thread(changes.moved_keys, old_cc, old_drained, new_cc,
                                            new_drained, unusable, state.panic_threshold)
        return web.json_response({"dry_run": True, "version": snap.version, "cluster": name,
                                  "diff": diff, "moved_fraction": moved},
                                 headers=etag(snap.version))

    async def _published(self, snap: Snapshot, answer: dict[str, Any]) -> web.Response:
        """200 with `answer`, once the workers applied `snap` (or the wait gave up)."""
        if self._propagation is not None:
            pending = await self._propagation(snap.version)
            if pending:  # applied here and sent; these workers did not confirm in time
                answer = {**answer, "pending_workers": pending}
        return web.json_response(answer, headers=etag(snap.version))

    async def put_backends(self, request: web.Request) -> web.Response:
        """PUT /clusters/{name}/backends: replace the backend set atomically."""
        name = request.match_info["name"]
        self._cluster_config(name)  # 404 before reading a body for nothing
        wanted, dry_run = _if_match(request), _dry_run(request)
        body: BackendSet = _decode(await request.read(), BackendSet)
        async with self._lock:
            # Re-read after the awaits: the config in force may have changed meanwhile.
            controller, cc = self._cluster_config(name)
            self._check_version(controller, wanted)
            new_cc = msgspec.structs.replace(cc, backends=list(body.backends))
            errors = config.validate_cluster(new_cc, "")
            if errors:
                raise _Problem(400, "invalid_body", "invalid backend set", errors)
            cfg = controller.config
            new_cfg = msgspec.structs.replace(cfg, clusters={**cfg.clusters, name: new_cc})
            if dry_run:
                return await self._preview(controller, name, new_cfg)
            snap = self._apply(request, "put", name, controller, new_cfg)
            return await self._published(snap, {"version": snap.version})

    def _member_index(self, cc: config.ClusterConfig, address: str) -> int:
        for i, entry in enumerate(cc.backends):
            if config.backend_of(entry).address == address:
                return i
        raise _Problem(404, "unknown_backend", f"no backend {address!r} in this cluster")

    async def patch_backend(self, request: web.Request) -> web.Response:
        """PATCH /clusters/{name}/backends/{address}: weight and/or drain state."""
        name, address = request.match_info["name"], request.match_info["address"]
        self._member_index(self._cluster_config(name)[1], address)
        wanted, dry_run = _if_match(request), _dry_run(request)
        body: BackendPatch = _decode(await request.read(), BackendPatch)
        if body.weight is msgspec.UNSET and body.state is msgspec.UNSET:
            raise _Problem(400, "invalid_body", "set weight and/or state",
                           [("", "expected at least one of: weight, state")])
        if body.weight is not msgspec.UNSET:
            # The same checks as a config entry, named by this body's field.
            errors = config.validate_backends(
                [config.Backend(address=address, weight=body.weight)], "")
            if errors:
                raise _Problem(400, "invalid_body", "invalid weight",
                               [("weight", msg) for _, msg in errors])
        async with self._lock:
            controller, cc = self._cluster_config(name)  # re-read after the awaits
            index = self._member_index(cc, address)
            self._check_version(controller, wanted)
            backends = list(cc.backends)
            if body.weight is not msgspec.UNSET:
                old = config.backend_of(backends[index])
                backends[index] = msgspec.structs.replace(old, weight=body.weight)
            drained = {n: set(a) for n, a in controller.snapshot.drained.items()}
            if body.state == "drain":
                drained.setdefault(name, set()).add(address)
            elif body.state == "active":
                drained.get(name, set()).discard(address)
            cfg = controller.config
            new_cc = msgspec.structs.replace(cc, backends=backends)
            new_cfg = msgspec.structs.replace(cfg, clusters={**cfg.clusters, name: new_cc})
            if dry_run:
                return await self._preview(controller, name, new_cfg, drained)
            snap = self._apply(request, "patch", name, controller, new_cfg, drained)
            cluster = snap.clusters[name]
            # Found in this snapshot's tuple: a later PUT may have removed it from the state.
            info = next(b for b in cluster.backends if b.address == address)
            return await self._published(snap, {"version": snap.version,
                                                "backend": self._backend_view(cluster, info)})

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (OSError when it cannot); returns the bound port."""
        self._runner, bound = await start_app(self.app, host, port)
        return bound

    async def stop(self) -> None:
        """Stop listening and close admin connections."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
