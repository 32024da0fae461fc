"""docs/admin-api.md covers every admin route, every documented path and every proxy error."""

from __future__ import annotations

import re
from pathlib import Path

from lbproxy.admin import openapi
from lbproxy.admin.api import AdminAPI
from lbproxy.control import config
from lbproxy.control.snapshot import build_snapshot
from lbproxy.proxy import errors

PAGE = (Path(__file__).parent.parent / "docs" / "admin-api.md").read_text()
HEADINGS = set(re.findall(r"^## `([A-Z]+ /\S*)`$", PAGE, re.M))


def _rows() -> set[tuple[str, str, str]]:
    """(status, code, body) of each row of the page's tables."""
    return {(m[0], m[1], m[2]) for m in
            re.findall(r"^\| (\d{3}) \| `(\w+)` \| ([^|]+?) \|", PAGE, re.M)}


def test_every_served_route_has_its_section():
    cfg = config.from_dict({"clusters": {"c": {"backends": ["127.0.0.1:1"]}},
                            "routes": [{"cluster": "c"}]})
    served = {f"{r.method} {r.resource.canonical}"  # type: ignore[union-attr]
              for r in AdminAPI(build_snapshot(cfg)).app.router.routes()
              if r.method != "HEAD"}
    assert len(served) >= 7
    assert served <= HEADINGS, served - HEADINGS


def test_every_path_of_the_openapi_document_has_its_section():
    documented = {f"{method.upper()} {path}"
                  for path, ops in openapi.DOCUMENT["paths"].items() for method in ops}
    assert documented <= HEADINGS, documented - HEADINGS


def test_every_proxy_error_is_in_the_table_with_its_status_and_body():
    made = {(str(e.status), e.code, e.reason) for e in errors.TABLE}
    made |= {(str(r.status), r.code, r.reason)
             for r in (errors.refusal(code, 1) for code in errors.REFUSAL_REASONS)}
    assert len(made) >= 16
    assert made <= _rows(), made - _rows()
