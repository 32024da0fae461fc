"""GET /openapi.json: a valid OpenAPI 3.1 document, exactly the served routes, true schemas."""

from __future__ import annotations

import jsonschema
import pytest
from openapi_spec_validator import validate
from support.admin import call, origins_hit, round_robin_segments
from support.inproc import serving

from lbproxy.admin import openapi
from lbproxy.admin.api import AdminAPI
from lbproxy.control import config
from lbproxy.control.snapshot import snapshot_of

pytestmark = pytest.mark.timeout(60)


def test_the_document_is_valid_openapi():
    validate(openapi.DOCUMENT)  # raises on any structural error


def test_documented_paths_and_methods_are_exactly_the_served_routes():
    cfg = config.from_dict(round_robin_segments(["127.0.0.1:1"]))
    api = AdminAPI(snapshot_of(cfg))
    served = {(r.resource.canonical, r.method.lower())  # type: ignore[union-attr]
              for r in api.app.router.routes() if r.method != "HEAD"}
    documented = {(path, method) for path, ops in openapi.DOCUMENT["paths"].items()
                  for method in ops}
    assert served == documented


def _schema(name):
    # Resolve #/components/... refs against the document itself (JSON Schema 2020-12
    # ignores the OpenAPI keywords beside them).
    return jsonschema.Draft202012Validator({**openapi.DOCUMENT,
                                           "$ref": f"#/components/schemas/{name}"})


async def test_served_bodies_match_their_documented_schemas(origins):
    async with serving(round_robin_segments(origins[:2])) as served:
        port, admin_port = served.port, served.admin_port
        await origins_hit(port, 3)
        status, doc, _ = await call(admin_port, "GET", "/openapi.json")
        assert (status, doc) == (200, openapi.DOCUMENT)
        for path, schema in (("/clusters", "Clusters"), ("/stats", "Stats"),
                             ("/ready", "Ready")):
            status, doc, _ = await call(admin_port, "GET", path)
            assert status == 200
            _schema(schema).validate(doc)
        body = {"backends": [origins[0], {"address": origins[1], "weight": 2}]}
        _schema("BackendSet").validate(body)
        status, doc, _ = await call(admin_port, "PUT", "/clusters/segments/backends", body)
        assert status == 200
        _schema("Version").validate(doc)
        for method, path, payload in (("PUT", "/clusters/segments/backends", {"backends": []}),
                                      ("GET", "/nope", None),
                                      ("DELETE", "/stats", None)):
            status, doc, _ = await call(admin_port, method, path, payload)
            assert status in (400, 404, 405)
            _schema("Error").validate(doc)
        bad = _schema("BackendSet")
        assert not bad.is_valid({"backends": []}) and not bad.is_valid({"backends": [1]})
