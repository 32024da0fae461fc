"""Config documents for the tests: one builder for the in-process, admin and subprocess
tests, and a TOML writer for `lbproxy run --config FILE`.

Every listener and admin API binds 127.0.0.1 port 0 unless a test says otherwise: the
kernel picks a free port at bind time, and the test reads it back (in-process from the
socket, from a subprocess from its log lines), so no two tests can race for a port.
"""

from __future__ import annotations

import json
from typing import Any

ANY_PORT = "127.0.0.1:0"


def config_doc(clusters: dict[str, Any], routes: list[dict[str, Any]] | None = None,
               **sections: Any) -> dict[str, Any]:
    """A config document: listener and admin on 127.0.0.1:0; `clusters` by name (a list
    of addresses is a round-robin cluster, a dict is the cluster's table as it is);
    `routes` in order (default: every path to the first cluster); other top-level
    `sections` are added, a dict merged over the default of the same name."""
    doc: dict[str, Any] = {
        "listener": {"bind": ANY_PORT},
        "admin": {"bind": ANY_PORT},
        "clusters": {name: ({"policy": "round_robin", "backends": c} if isinstance(c, list)
                            else c) for name, c in clusters.items()},
        "routes": routes if routes is not None else [{"path_prefix": "/",
                                                       "cluster": next(iter(clusters))}],
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return doc


def segments_doc(backends: list[str] | None = None, **sections: Any) -> dict[str, Any]:
    """The demo's shape: Maglev cluster `segments` (by default three ports nothing needs to
    listen on), every video's segments hashed to one backend, drain 5 s."""
    cluster = {"policy": "maglev",
               "backends": backends or ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]}
    route = {"path_prefix": "/", "cluster": "segments", "hash_on": "path_regex:^/v/([^/]+)/"}
    timeouts = {"drain": 5.0, **sections.pop("timeouts", {})}
    return config_doc({"segments": cluster}, [route], timeouts=timeouts, **sections)


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # strings, numbers and booleans are spelled alike


def _table(header: str, table: dict[str, Any]) -> list[str]:
    return [header, *(f"{k} = {_toml_value(v)}" for k, v in table.items()), ""]


def toml_document(doc: dict[str, Any]) -> str:
    """`doc` as TOML: sections as tables, each cluster as [clusters.NAME], lists of
    tables (routes) as [[NAME]], dicts within a table as inline tables."""
    out: list[str] = []
    for key, value in doc.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                out += _table(f"[[{key}]]", item)
        elif key == "clusters":
            for name, cluster in value.items():
                out += _table(f"[clusters.{name}]", cluster)
        elif isinstance(value, dict):
            out += _table(f"[{key}]", value)
        else:  # a top-level key must come before the first table
            out.insert(0, f"{key} = {_toml_value(value)}")
    return "\n".join(out)
