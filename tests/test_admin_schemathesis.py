"""Property-based conformance of the admin API to its own OpenAPI document (schemathesis).

Schemathesis generates valid and invalid calls for every documented operation and checks
each answer: no 5xx, a documented status, content type and body schema, and that a body
the schema forbids is refused (4xx). `lbproxy run` serves it with the stand-in data plane
(only the admin API is under test) and a token, so a call without it must be a 401.
Positive-data acceptance is not checked: the schema cannot say everything the config
validation does (ports <= 65535, no duplicates across string and object entries), so a
schema-valid body can rightly be a 400.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support.admin import TOKEN
from support.subproc import STANDIN, start_lbproxy

from lbproxy.admin import openapi

pytestmark = pytest.mark.timeout(120)

schema = schemathesis.openapi.from_dict(openapi.DOCUMENT)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance, negative_data_rejection]


@pytest.fixture(scope="module")
def admin_url(tmp_path_factory):
    """`lbproxy run` (stand-in data plane) with a token; yields the admin URL."""
    doc = {
        "listener": {"bind": "127.0.0.1:0"},
        "admin": {"bind": "127.0.0.1:0", "token": TOKEN},  # so a missing token is a 401
        "timeouts": {"drain": 2.0},
        "clusters": {"segments": {"backends": ["127.0.0.1:9001", "127.0.0.1:9002"]}},
        "routes": [{"cluster": "segments"}],
    }
    proc = start_lbproxy(doc, tmp_path_factory.mktemp("st") / "c.json", dataplane=STANDIN)
    try:
        yield proc.admin_url
    finally:
        proc.stop(20)


@schema.parametrize()
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_every_operation_conforms_to_the_document(case, admin_url):
    case.call_and_validate(base_url=admin_url, checks=CHECKS,
                           headers={"Authorization": f"Bearer {TOKEN}"})
