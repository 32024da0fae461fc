"""The OpenAPI 3.1 description of the admin API (served as GET /openapi.json).

Owns the document only, as plain data; `tests/test_admin_openapi.py` checks that it
validates and that its paths and methods are exactly the routes the admin app serves.
Must not import the admin application (the test compares the two, neither derives the other).
"""

from __future__ import annotations

from typing import Any

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


_ERROR = _json(_ref("Error"), "Error")
_UNAUTHORIZED = {
    **_json(_ref("Error"), "Missing or wrong bearer token (admin.token is set); nothing changed"),
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"},
                                      "description": "Bearer"}},
}
_NAME = {"name": "name", "in": "path", "required": True,
         "schema": {"type": "string", "examples": ["segments"]}, "description": "Cluster name"}
_ADDRESS = {"name": "address", "in": "path", "required": True,
            "schema": {"type": "string", "examples": ["127.0.0.1:9001"]},
            "description": "Backend host:port ([v6]:port for IPv6, percent-encoded)"}
_IF_MATCH = {"name": "If-Match", "in": "header", "required": False,
             "schema": {"type": "string", "examples": ['"3"', "3", "*"]},
             "description": "Apply only if the config is still at this version (the ETag "
                            "of GET /clusters): N, \"N\" or *; stale: 409, not a version: "
                            "400"}
_DRY_RUN = {"name": "dry_run", "in": "query", "required": False,
            "schema": {"type": "string", "enum": ["1", "true", "0", "false"]},
            "description": "1 or true: validate and answer the diff and moved_fraction; "
                           "apply nothing"}
_ETAG = {"ETag": {"required": True, "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
                  "description": "The config version, quoted, for If-Match"}}
_MS = {"type": ["number", "null"], "description": "ms; null before any sample"}
_COUNT = {"type": "integer", "minimum": 0}
_PENDING = {"type": "array", "items": {"type": "integer"},
            "description": "Only when some worker did not confirm the new version within 5 s "
                           "(it was sent; a restarted worker starts from it)"}

_SUMMARY_PROPS: dict[str, Any] = {
    "requests": _COUNT,
    "retries": _COUNT,
    "inflight": _COUNT,
    "responses": {"type": "object",
                  "properties": {k: _COUNT for k in ("none", "1xx", "2xx", "3xx", "4xx",
                                                     "5xx")}},
    "failures": {"type": "object",
                 "properties": {k: _COUNT for k in ("http_5xx", "connect_failed", "reset",
                                                    "timeout")}},
    "client_aborts": _COUNT,
    "latency_ms": {"type": "object",
                   "properties": {k: _MS for k in ("p50", "p90", "p99", "p999")}},
}

_LIMIT = {"type": ["integer", "null"], "minimum": 1,
          "description": "Adaptive concurrency limit (this process); null when off"}
_BY_REASON = {"type": "object", "properties": {
    r: _COUNT for r in ("shed", "queue_timeout", "self_protect")}}
_OVERLOAD = {
    "type": ["object", "null"],
    "description": "Overload control; null when adaptive_concurrency is disabled",
    "properties": {
        "algorithm": {"type": "string", "enum": ["gradient2", "aimd", "vegas"]},
        "admission_level": {"type": "number", "minimum": 0, "maximum": 1,
                            "description": "Share of (priority, cohort) positions admitted"},
        "queue": {"type": "object", "properties": {
            "length": _COUNT, "oldest_wait_ms": {"type": "number"},
            "admitted_after_wait": _COUNT, "wait_ms_total": {"type": "number"},
            "standing": {"type": "array", "items": {"type": "string"}}}},
        "shed": {"type": "object", "properties": {
            p: _BY_REASON for p in ("critical", "normal", "sheddable")}},
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "stable machine-readable code"},
            "message": {"type": "string"},
            "version": {"type": "integer",
                        "description": "409 version_mismatch: the version in force"},
            "errors": {"type": "array", "items": {
                "type": "object", "required": ["field", "message"],
                "properties": {"field": {"type": "string",
                                         "description": "path in the body, e.g. "
                                                        "backends[1].weight"},
                               "message": {"type": "string"}}}},
        },
    },
    "BackendEntry": {
        "description": "As in the config file: \"host:port\" or an object",
        "oneOf": [
            {"type": "string", "examples": ["127.0.0.1:9001"]},
            {"type": "object", "required": ["address"], "additionalProperties": False,
             "properties": {"address": {"type": "string"},
                            "weight": {"type": "integer", "minimum": 1, "default": 1},
                            "zone": {"type": "string", "default": ""}}},
        ],
    },
    "BackendSet": {
        "type": "object", "required": ["backends"], "additionalProperties": False,
        "properties": {"backends": {"type": "array", "minItems": 1,
                                    "items": _ref("BackendEntry")}},
    },
    "BackendPatch": {
        "type": "object", "additionalProperties": False, "minProperties": 1,
        "properties": {"weight": {"type": "integer", "minimum": 1},
                       "state": {"type": "string", "enum": ["drain", "active"]}},
    },
    "Version": {"type": "object", "required": ["version"],
                "properties": {"version": {"type": "integer"}, "pending_workers": _PENDING}},
    "Diff": {
        "type": "object", "required": ["added", "removed", "weights", "zones", "states"],
        "properties": {
            "added": {"type": "array", "items": _ref("DiffEntry")},
            "removed": {"type": "array", "items": _ref("DiffEntry")},
            **{k: {"type": "array", "items": {
                "type": "object", "required": ["address", "from", "to"],
                "properties": {"address": {"type": "string"}, "from": {"type": t},
                               "to": {"type": t}}}}
               for k, t in (("weights", "integer"), ("zones", "string"),
                            ("states", "string"))}},
    },
    "DiffEntry": {"type": "object", "required": ["address", "weight", "zone"],
                  "properties": {"address": {"type": "string"}, "weight": {"type": "integer"},
                                 "zone": {"type": "string"}}},
    "DryRun": {
        "type": "object", "required": ["dry_run", "version", "cluster", "diff",
                                       "moved_fraction"],
        "properties": {
            "dry_run": {"const": True}, "version": {"type": "integer"},
            "cluster": {"type": "string"}, "diff": _ref("Diff"),
            "moved_fraction": {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                               "description": "Share of hash keys that would change "
                                              "backend (Maglev); null for p2c, round_robin"}},
    },
    "Changes": {
        "type": "object", "required": ["changes"],
        "properties": {"changes": {"type": "array", "items": {
            "type": "object",
            "required": ["id", "time", "cluster", "version_before", "version_after", "kind",
                         "who", "client", "diff"],
            "properties": {
                "id": {"type": "integer"},
                "time": {"type": "string", "description": "UTC, RFC 3339, ms"},
                "cluster": {"type": ["string", "null"],
                            "description": "null: a reload that changed no pool"},
                "version_before": {"type": "integer"}, "version_after": {"type": "integer"},
                "kind": {"type": "string", "enum": ["put", "patch", "reload"]},
                "who": {"type": "string",
                        "description": "The named token used (admin.tokens), else client"},
                "client": {"type": "string",
                           "description": "The caller's address; SIGHUP for a reload"},
                "diff": _ref("Diff")}}}},
    },
    "BackendView": {
        "type": "object",
        "required": ["address", "weight", "zone", "state", "healthy", "ejected", "inflight"],
        "properties": {"address": {"type": "string"}, "weight": {"type": "integer"},
                       "zone": {"type": "string"},
                       "state": {"type": "string", "enum": ["drain", "active"]},
                       "healthy": {"type": "boolean"}, "ejected": {"type": "boolean"},
                       "inflight": _COUNT, "limit": _LIMIT},
    },
    "Clusters": {
        "type": "object", "required": ["clusters"],
        "properties": {"clusters": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["policy", "version", "backends"],
            "properties": {"policy": {"type": "string",
                                      "enum": ["maglev", "p2c", "round_robin"]},
                           "version": {"type": "integer"},
                           "backends": {"type": "array", "items": _ref("BackendView")}}}}},
    },
    "Stats": {
        "type": "object", "required": ["version", "clusters"],
        "properties": {
            "version": {"type": "integer"},
            "clusters": {"type": "object", "additionalProperties": {
                "type": "object",
                "properties": {
                    **_SUMMARY_PROPS,
                    "refusals": {"type": "object", "additionalProperties": _COUNT,
                                 "description": "503s the gate answered before any backend "
                                                "saw the request, by X-Lbproxy-Error code"},
                    "overload": _OVERLOAD,
                    "backends": {"type": "array", "items": {
                        "type": "object",
                        "properties": {"address": {"type": "string"}, **_SUMMARY_PROPS,
                                       "limit": _LIMIT}}}}}},
        },
    },
    "Ready": {"type": "object", "required": ["ready"],
              "properties": {"ready": {"type": "boolean"},
                             "reason": {"type": "string", "enum": ["starting", "draining"]}}},
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "lbproxy admin API",
        "version": "1",
        "description": "JSON over HTTP on admin.bind. With admin.token (or admin.tokens) "
                       "set, every mutating call (PUT, PATCH) needs `Authorization: Bearer "
                       "<token>`; GETs stay open. PUT and PATCH take If-Match (the config "
                       "version, one for all clusters; stale: 409) and ?dry_run=1. Unknown "
                       "paths: 404, wrong method: 405 with Allow, both JSON.",
    },
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "paths": {
        "/ready": {"get": {
            "operationId": "ready", "summary": "Readiness",
            "responses": {"200": _json(_ref("Ready"), "Every listener accepts"),
                          "503": _json(_ref("Ready"), "Starting or draining")}}},
        "/clusters": {"get": {
            "operationId": "listClusters", "summary": "Clusters and their backends",
            "responses": {"200": {**_json(_ref("Clusters"), "Current snapshot"),
                                  "headers": _ETAG}}}},
        "/clusters/{name}/backends": {"put": {
            "operationId": "replaceBackends",
            "summary": "Replace a cluster's backend set atomically (all workers)",
            "parameters": [_NAME, _IF_MATCH, _DRY_RUN], "security": [{"bearer": []}],
            "requestBody": {"required": True,
                            "content": {_JSON: {"schema": _ref("BackendSet")}}},
            "responses": {"200": {**_json({"anyOf": [_ref("Version"), _ref("DryRun")]},
                                          "Applied (the new version), or the dry run"),
                                  "headers": _ETAG},
                          "400": {**_ERROR, "description": "Invalid body, If-Match or "
                                                           "dry_run; old set kept"},
                          "401": _UNAUTHORIZED,
                          "404": {**_ERROR, "description": "Unknown cluster"},
                          "409": {**_ERROR, "description": "If-Match is stale; nothing "
                                                           "changed", "headers": _ETAG},
                          "413": {**_ERROR, "description": "Body over 1 MiB"}}}},
        "/clusters/{name}/backends/{address}": {"patch": {
            "operationId": "patchBackend",
            "summary": "Change one backend's weight and/or drain state (all workers)",
            "parameters": [_NAME, _ADDRESS, _IF_MATCH, _DRY_RUN],
            "security": [{"bearer": []}],
            "requestBody": {"required": True,
                            "content": {_JSON: {"schema": _ref("BackendPatch")}}},
            "responses": {"200": {**_json({"anyOf": [
                {"type": "object", "required": ["version", "backend"],
                 "properties": {"version": {"type": "integer"},
                                "backend": _ref("BackendView"),
                                "pending_workers": _PENDING}},
                _ref("DryRun")]}, "Applied, or the dry run"), "headers": _ETAG},
                          "400": {**_ERROR, "description": "Invalid body, If-Match or "
                                                           "dry_run; nothing changed"},
                          "401": _UNAUTHORIZED,
                          "404": {**_ERROR, "description": "Unknown cluster or backend"},
                          "409": {**_ERROR, "description": "If-Match is stale; nothing "
                                                           "changed", "headers": _ETAG},
                          "413": {**_ERROR, "description": "Body over 1 MiB"}}}},
        "/changes": {"get": {
            "operationId": "changes",
            "summary": "The last 256 applied changes (PUT, PATCH, reload), oldest first",
            "responses": {"200": _json(_ref("Changes"), "History")}}},
        "/stats": {"get": {
            "operationId": "stats",
            "summary": "Counters and latency percentiles per cluster and backend",
            "responses": {"200": _json(_ref("Stats"), "Since each backend took its slot; "
                                                      "summed over workers")}}},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus text exposition (0.0.4)",
            "responses": {"200": {"description": "lbproxy_* metrics",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document",
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document")}}},
    },
}
