"""Admin API in one process: PUT/PATCH through the real data plane, errors, token, 404/405.

Every refused call asserts its exact status and JSON body, and that /clusters (set and
version) is what it was before.
"""

from __future__ import annotations

import asyncio

import pytest
from support.admin import TOKEN, call, origins_hit, round_robin_segments
from support.inproc import serving

from lbproxy.control import config

pytestmark = pytest.mark.timeout(60)

SEG = "/clusters/segments/backends"


async def _members(admin_port):
    status, doc, _ = await call(admin_port, "GET", "/clusters")
    assert status == 200
    seg = doc["clusters"]["segments"]
    return seg["version"], [(b["address"], b["weight"], b["zone"], b["state"])
                            for b in seg["backends"]]


async def test_put_replaces_the_set_and_traffic_follows(origins):
    async with serving(round_robin_segments(origins[:1])) as served:
        port, admin_port = served.port, served.admin_port
        assert set(await origins_hit(port, 6)) == {"origin-1"}
        body = {"backends": [origins[1], {"address": origins[2], "weight": 2, "zone": "z"}]}
        status, doc, _ = await call(admin_port, "PUT", SEG, body)
        assert (status, doc) == (200, {"version": 2})
        assert await _members(admin_port) == (2, [(origins[1], 1, "", "active"),
                                                  (origins[2], 2, "z", "active")])
        assert await origins_hit(port, 9) == {"origin-2": 3, "origin-3": 6}


BAD_PUTS = [
    (b"not json", "invalid_json", None),
    (b"", "invalid_json", None),
    (b'["127.0.0.1:1"]', "invalid_body", ""),
    (b"{}", "invalid_body", "backends"),
    (b'{"backends": [], "x": 1}', "invalid_body", "x"),
    (b'{"backends": []}', "invalid_body", "backends"),
    (b'{"backends": "127.0.0.1:1"}', "invalid_body", "backends"),
    (b'{"backends": ["127.0.0.1:1", "127.0.0.1:1"]}', "invalid_body", "backends[1]"),
    (b'{"backends": ["127.0.0.1:1", {"address": "127.0.0.1:2", "weight": 0}]}',
     "invalid_body", "backends[1].weight"),
    (b'{"backends": ["127.0.0.1:1", {"address": "127.0.0.1:2", "weight": "2"}]}',
     "invalid_body", "backends[1].weight"),
    (b'{"backends": ["127.0.0.1:1", {"address": "127.0.0.1:2", "port": 2}]}',
     "invalid_body", "backends[1].port"),
    (b'{"backends": [{"weight": 2}]}', "invalid_body", "backends[0].address"),
    (b'{"backends": [{"address": "127.0.0.1:2", "weight": 2147483648}]}', "invalid_body",
     "backends[0].weight"),
    (b'{"backends": ["no-port"]}', "invalid_body", "backends[0]"),
    (b'{"backends": [{"address": "127.0.0.1:99999"}]}', "invalid_body",
     "backends[0].address"),
    (b'{"backends": [7]}', "invalid_body", "backends[0]"),
]


@pytest.mark.parametrize(("raw", "code", "field"), BAD_PUTS)
async def test_an_invalid_put_is_400_naming_the_field_and_keeps_the_old_set(origins, raw,
                                                                             code, field):
    async with serving(round_robin_segments(origins[:2])) as served:
        port, admin_port = served.port, served.admin_port
        before = await _members(admin_port)
        status, doc, headers = await call(admin_port, "PUT", SEG, raw=raw)
        assert status == 400, doc
        assert headers["Content-Type"].startswith("application/json")
        assert doc["error"] == code and doc["message"]
        if field is not None:
            assert field in [e["field"] for e in doc["errors"]], doc
        assert await _members(admin_port) == before
        assert set(await origins_hit(port, 4)) == {"origin-1", "origin-2"}


async def test_put_and_patch_on_an_unknown_cluster_or_backend_are_404(origins):
    async with serving(round_robin_segments(origins[:2])) as served:
        admin_port = served.admin_port
        before = await _members(admin_port)
        body = {"backends": [origins[2]]}
        status, doc, _ = await call(admin_port, "PUT", "/clusters/nope/backends", body)
        assert (status, doc["error"]) == (404, "unknown_cluster")
        status, doc, _ = await call(admin_port, "PATCH", f"/clusters/nope/backends/{origins[0]}",
                                    {"state": "drain"})
        assert (status, doc["error"]) == (404, "unknown_cluster")
        status, doc, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[2]}",
                                    {"state": "drain"})
        assert (status, doc["error"]) == (404, "unknown_backend")
        assert await _members(admin_port) == before


async def test_patch_drain_then_active_moves_traffic_and_keeps_the_set(origins):
    async with serving(round_robin_segments(origins)) as served:
        port, admin_port = served.port, served.admin_port
        status, doc, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[1]}",
                                    {"state": "drain"})
        assert status == 200
        assert doc == {"version": 2, "backend": {"address": origins[1], "weight": 1, "zone": "",
                                                 "state": "drain", "healthy": True,
                                                 "ejected": False, "inflight": 0,
                                                 "limit": 20}}
        hits = await origins_hit(port, 30)
        assert set(hits) == {"origin-1", "origin-3"} and sum(hits.values()) == 30
        version, members = await _members(admin_port)
        assert version == 2 and [m[3] for m in members] == ["active", "drain", "active"]

        status, doc, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[1]}",
                                    {"state": "active"})
        assert (status, doc["version"], doc["backend"]["state"]) == (200, 3, "active")
        assert set(await origins_hit(port, 6)) == {"origin-1", "origin-2", "origin-3"}


async def test_drain_marks_survive_a_put_that_keeps_the_backend(origins):
    async with serving(round_robin_segments(origins)) as served:
        port, admin_port = served.port, served.admin_port
        await call(admin_port, "PATCH", f"{SEG}/{origins[0]}", {"state": "drain"})
        status, _, _ = await call(admin_port, "PUT", SEG, {"backends": origins[:2]})
        assert status == 200
        assert await _members(admin_port) == (3, [(origins[0], 1, "", "drain"),
                                                  (origins[1], 1, "", "active")])
        assert set(await origins_hit(port, 6)) == {"origin-2"}


async def test_patch_weight_changes_the_share(origins):
    async with serving(round_robin_segments(origins[:2])) as served:
        port, admin_port = served.port, served.admin_port
        status, doc, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[0]}",
                                    {"weight": 3, "state": "active"})
        assert (status, doc["version"], doc["backend"]["weight"]) == (200, 2, 3)
        assert await _members(admin_port) == (2, [(origins[0], 3, "", "active"),
                                                  (origins[1], 1, "", "active")])
        assert await origins_hit(port, 8) == {"origin-1": 6, "origin-2": 2}


BAD_PATCHES = [
    (b"{}", "invalid_body", ""),
    (b'{"weight": 0}', "invalid_body", "weight"),
    (b'{"weight": 1.5}', "invalid_body", "weight"),
    (b'{"weight": 2147483648}', "invalid_body", "weight"),  # over the selectors' bound
    (b'{"weight": true}', "invalid_body", "weight"),
    (b'{"state": "off"}', "invalid_body", "state"),
    (b'{"state": null, "weight": 2}', "invalid_body", "state"),
    (b'{"state": "drain", "zone": "x"}', "invalid_body", "zone"),
    (b"[1]", "invalid_body", ""),
    (b"{", "invalid_json", None),
]


@pytest.mark.parametrize(("raw", "code", "field"), BAD_PATCHES)
async def test_an_invalid_patch_is_400_and_changes_nothing(origins, raw, code, field):
    async with serving(round_robin_segments(origins[:2])) as served:
        admin_port = served.admin_port
        before = await _members(admin_port)
        status, doc, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[0]}", raw=raw)
        assert (status, doc["error"]) == (400, code), doc
        if field is not None:
            assert [e["field"] for e in doc["errors"]] == [field], doc
        assert await _members(admin_port) == before


@pytest.mark.parametrize("authorization", [
    None, "Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer ",
])
async def test_a_mutating_call_without_the_right_token_is_401_and_changes_nothing(
        origins, authorization):
    async with serving(round_robin_segments(origins[:2], token=TOKEN)) as served:
        port, admin_port = served.port, served.admin_port
        before = await _members(admin_port)  # GETs stay open without a token
        headers = {} if authorization is None else {"Authorization": authorization}
        calls = [("PUT", SEG, {"backends": [origins[2]]}),
                 ("PATCH", f"{SEG}/{origins[0]}", {"state": "drain"}),
                 ("PATCH", f"{SEG}/{origins[0]}", {"weight": 5}),
                 ("DELETE", "/clusters", None),  # not even routing is revealed
                 ("POST", "/nowhere", None)]
        for method, path, body in calls:
            status, doc, hdrs = await call(admin_port, method, path, body, headers=headers)
            assert status == 401, (method, path, doc)
            assert doc["error"] == "unauthorized"
            assert hdrs["WWW-Authenticate"].startswith("Bearer")
        assert await _members(admin_port) == before
        assert set(await origins_hit(port, 4)) == {"origin-1", "origin-2"}
        status, doc, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[0]}",
                                    {"state": "drain"}, token=TOKEN)
        assert (status, doc["version"]) == (200, 2)
        status, _, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[0]}",
                                  {"state": "active"},
                                  headers={"Authorization": f"bearer {TOKEN}"})
        assert status == 200  # the scheme is case-insensitive (RFC 9110 §11.1)


async def test_unknown_routes_are_404_and_wrong_methods_405_with_allow(origins):
    async with serving(round_robin_segments(origins[:1])) as served:
        admin_port = served.admin_port
        status, doc, hdrs = await call(admin_port, "GET", "/nope")
        assert (status, doc["error"]) == (404, "not_found")
        assert hdrs["Content-Type"].startswith("application/json")
        status, doc, hdrs = await call(admin_port, "DELETE", "/clusters")
        assert (status, doc["error"]) == (405, "method_not_allowed")
        assert set(hdrs["Allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
        status, doc, hdrs = await call(admin_port, "GET", SEG)
        assert (status, hdrs["Allow"]) == (405, "PUT")
        status, doc, hdrs = await call(admin_port, "POST", "/stats")
        assert status == 405 and "GET" in hdrs["Allow"]


async def test_concurrent_patches_are_all_applied(origins):
    addresses = [f"127.0.0.1:{9001 + i}" for i in range(6)]
    async with serving(round_robin_segments(addresses)) as served:
        admin_port = served.admin_port
        results = await asyncio.gather(*(
            call(admin_port, "PATCH", f"{SEG}/{a}", {"state": "drain"}) for a in addresses[:5]))
        assert sorted(doc["version"] for _, doc, _ in results) == [2, 3, 4, 5, 6]
        version, members = await _members(admin_port)
        assert version == 6
        assert [m[3] for m in members] == ["drain"] * 5 + ["active"]


async def test_an_ipv6_backend_is_addressed_percent_encoded():
    async with serving(round_robin_segments(["[::1]:9001", "127.0.0.1:9002"])) as served:
        admin_port = served.admin_port
        status, doc, _ = await call(admin_port, "PATCH", f"{SEG}/%5B::1%5D:9001",
                                    {"weight": 4})
        assert (status, doc["backend"]["address"], doc["backend"]["weight"]) == (
            200, "[::1]:9001", 4)


async def test_a_body_over_1_mib_is_413_json_and_changes_nothing(origins):
    async with serving(round_robin_segments(origins[:1])) as served:
        admin_port = served.admin_port
        before = await _members(admin_port)
        raw = b'{"backends": ["' + b"x" * (2 << 20) + b'"]}'
        status, doc, _ = await call(admin_port, "PUT", SEG, raw=raw)
        assert (status, doc["error"]) == (413, "body_too_large")
        assert await _members(admin_port) == before


def test_an_empty_token_is_a_config_error():
    with pytest.raises(config.ConfigError) as err:
        config.from_dict(round_robin_segments(["127.0.0.1:1"], token=" "))
    assert [path for path, _ in err.value.errors] == ["admin.token"]
