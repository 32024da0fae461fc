"""Versioned, previewable pool changes: If-Match, ?dry_run=1, serialisation, GET /changes.

Real proxy, real origins. Every refused call asserts its status and body, that GET
/clusters shows what it showed before, and that traffic still goes where it went. The
dry run's moved fraction is compared with what the proxy then does: one request per
Maglev table position (keys chosen so that each position is hit exactly once), before and
after the change, counting the keys whose origin changed.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import signal

import aiohttp
import pytest
from support.admin import TOKEN, call, origins_hit, round_robin_segments
from support.configs import config_doc
from support.inproc import serving
from support.subproc import LbproxyProcess, write_config

from lbproxy import demo
from lbproxy.balance.selectors import hash64
from lbproxy.control import config

pytestmark = pytest.mark.timeout(90)

SEG = "/clusters/segments/backends"
TABLE_SIZE = 1009  # a small prime table: one request per position stays quick
_ORIGIN = re.compile(r"origin-\d+")


async def _members(admin_port):
    status, doc, headers = await call(admin_port, "GET", "/clusters")
    assert status == 200
    seg = doc["clusters"]["segments"]
    assert headers["ETag"] == f'"{seg["version"]}"'
    return seg["version"], [(b["address"], b["weight"], b["state"]) for b in seg["backends"]]


def _maglev_segments(backends, **sections):
    """Maglev `segments` over `backends` (table of TABLE_SIZE), keyed on the video id.

    Bounded load is off: it spills a key only while its backend is over its share of the
    requests in flight, which the dry run does not predict (nothing is in flight then).
    """
    cluster = {"policy": "maglev", "backends": backends, "table_size": TABLE_SIZE,
               "balance_factor": 0}
    route = {"path_prefix": "/", "cluster": "segments", "hash_on": "path_regex:^/v/([^/]+)/"}
    return config_doc({"segments": cluster}, [route], timeouts={"drain": 5.0}, **sections)


def _key_per_position():
    """One video id per table position: xxh64(id) % TABLE_SIZE covers every position once,
    so the share of ids that move is exactly the share of positions that do."""
    keys: dict[int, str] = {}
    i = 0
    while len(keys) < TABLE_SIZE:
        key = f"video{i}"
        keys.setdefault(hash64(key.encode()) % TABLE_SIZE, key)
        i += 1
        assert i < 200 * TABLE_SIZE  # bounded
    return [keys[p] for p in range(TABLE_SIZE)]


KEYS = _key_per_position()


async def _origin_of_each_key(port):
    """Each key's origin, one request at a time on one keep-alive connection."""
    out = {}
    conn = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=conn) as s:
        for key in KEYS:
            async with s.get(f"http://127.0.0.1:{port}/v/{key}/0.ts") as r:
                assert r.status == 200, (key, r.status)
                out[key] = r.headers["X-Origin"]
                await r.read()
    return out


def _moved(before, after):
    return sum(before[k] != after[k] for k in KEYS) / len(KEYS)


@pytest.fixture
async def four_origins(origins):
    """The three demo origins and a fourth (origin-4)."""
    runner, port = await demo.start_segment_origin("127.0.0.1", 0, "origin-4")
    yield [*origins, f"127.0.0.1:{port}"]
    await runner.cleanup()


async def test_a_stale_if_match_is_409_and_changes_nothing(origins):
    async with serving(round_robin_segments(origins[:2])) as served:
        port, admin_port = served.port, served.admin_port
        status, doc, headers = await call(admin_port, "PUT", SEG, {"backends": origins[:2]},
                                          headers={"If-Match": '"1"'})
        assert (status, doc, headers["ETag"]) == (200, {"version": 2}, '"2"')
        before = await _members(admin_port)
        assert before[0] == 2
        for stale in ("1", '"1"', "7", 'W/"2"', '"1", "3"'):
            status, doc, headers = await call(admin_port, "PUT", SEG,
                                              {"backends": [origins[2]]},
                                              headers={"If-Match": stale})
            assert status == 409, (stale, doc)
            assert doc["error"] == "version_mismatch" and doc["version"] == 2, doc
            assert headers["ETag"] == '"2"'
            status, doc, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[0]}",
                                        {"state": "drain"}, headers={"If-Match": stale})
            assert (status, doc["error"], doc["version"]) == (409, "version_mismatch", 2)
        assert await _members(admin_port) == before
        assert set(await origins_hit(port, 6)) == {"origin-1", "origin-2"}
        # The current version, quoted or bare, in a list, or *: applied.
        for i, good in enumerate(('"2"', "3", '"1", "4"', "*")):
            status, doc, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[0]}",
                                        {"weight": 2 + i}, headers={"If-Match": good})
            assert (status, doc["version"]) == (200, 3 + i), (good, doc)
        _, changes, _ = await call(admin_port, "GET", "/changes")
        assert [c["version_after"] for c in changes["changes"]] == [2, 3, 4, 5, 6]


@pytest.mark.parametrize("value", ["abc", "", '"2', "1.5", "-1", 'W/"x"', "2, x", '"*"'])
async def test_a_non_numeric_if_match_is_400_and_changes_nothing(origins, value):
    async with serving(round_robin_segments(origins[:2])) as served:
        port, admin_port = served.port, served.admin_port
        before = await _members(admin_port)
        for method, path, body in (("PUT", SEG, {"backends": [origins[2]]}),
                                   ("PATCH", f"{SEG}/{origins[0]}", {"state": "drain"})):
            status, doc, _ = await call(admin_port, method, path, body,
                                        headers={"If-Match": value})
            assert (status, doc["error"]) == (400, "invalid_if_match"), doc
            assert "If-Match" in doc["message"]
        assert await _members(admin_port) == before
        assert set(await origins_hit(port, 4)) == {"origin-1", "origin-2"}
        assert (await call(admin_port, "GET", "/changes"))[1] == {"changes": []}


async def test_dry_run_changes_nothing_and_its_moved_fraction_is_what_happens(four_origins):
    o = four_origins
    async with serving(_maglev_segments(o[:3])) as served:
        port, admin_port = served.port, served.admin_port
        before = await _origin_of_each_key(port)
        assert set(before.values()) == {"origin-1", "origin-2", "origin-3"}

        # A PUT that adds a backend, removes one and changes a weight.
        change = {"backends": [o[0], {"address": o[1], "weight": 3}, o[3]]}
        status, preview, headers = await call(admin_port, "PUT", f"{SEG}?dry_run=1", change,
                                              headers={"If-Match": "1"})
        assert status == 200, preview
        assert headers["ETag"] == '"1"'
        assert preview["dry_run"] is True and preview["version"] == 1
        assert preview["cluster"] == "segments"
        assert preview["diff"] == {
            "added": [{"address": o[3], "weight": 1, "zone": ""}],
            "removed": [{"address": o[2], "weight": 1, "zone": ""}],
            "weights": [{"address": o[1], "from": 1, "to": 3}],
            "zones": [], "states": []}
        # Nothing applied: the same version and set, the same origin for every key.
        assert await _members(admin_port) == (1, [(a, 1, "active") for a in o[:3]])
        assert await _origin_of_each_key(port) == before
        assert (await call(admin_port, "GET", "/changes"))[1] == {"changes": []}

        status, doc, _ = await call(admin_port, "PUT", SEG, change, headers={"If-Match": "1"})
        assert (status, doc) == (200, {"version": 2})
        after = await _origin_of_each_key(port)
        real = _moved(before, after)
        assert real > 0.3  # a change that moves keys, or the comparison would prove little
        assert abs(preview["moved_fraction"] - real) <= 0.01, (preview["moved_fraction"], real)

        # A PATCH that drains one backend: its keys (only) move to their next entry.
        path = f"{SEG}/{o[1]}"
        status, preview, _ = await call(admin_port, "PATCH", f"{path}?dry_run=true",
                                        {"state": "drain"})
        assert status == 200, preview
        assert preview["diff"]["states"] == [{"address": o[1], "from": "active", "to": "drain"}]
        assert await _origin_of_each_key(port) == after
        status, doc, _ = await call(admin_port, "PATCH", path, {"state": "drain"})
        assert (status, doc["version"]) == (200, 3)
        drained = await _origin_of_each_key(port)
        real = _moved(after, drained)
        assert real == sum(v == "origin-2" for v in after.values()) / len(KEYS)
        assert abs(preview["moved_fraction"] - real) <= 0.01, (preview["moved_fraction"], real)


async def test_a_bad_dry_run_call_is_400_and_a_round_robin_preview_moves_no_keys(origins):
    async with serving(round_robin_segments(origins[:2])) as served:
        admin_port = served.admin_port
        before = await _members(admin_port)
        status, doc, _ = await call(admin_port, "PUT", f"{SEG}?dry_run=1",
                                    {"backends": [origins[0], origins[0]]})
        assert (status, doc["errors"][0]["field"]) == (400, "backends[1]"), doc
        status, doc, _ = await call(admin_port, "PUT", f"{SEG}?dry_run=yes",
                                    {"backends": [origins[2]]})
        assert (status, doc["error"]) == (400, "invalid_query"), doc
        status, doc, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[0]}?dry_run=1",
                                    {"weight": 0})
        assert (status, doc["errors"][0]["field"]) == (400, "weight"), doc
        status, doc, _ = await call(admin_port, "PUT", f"{SEG}?dry_run=0",
                                    {"backends": [origins[2]]}, headers={"If-Match": "1"})
        assert (status, doc) == (200, {"version": 2})  # dry_run=0 applies
        status, doc, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[2]}?dry_run=1",
                                    {"weight": 5}, headers={"If-Match": "1"})
        assert (status, doc["error"]) == (409, "version_mismatch")  # checked in a dry run too
        status, doc, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[2]}?dry_run=1",
                                    {"weight": 5})
        assert status == 200 and doc["moved_fraction"] is None
        assert doc["diff"]["weights"] == [{"address": origins[2], "from": 1, "to": 5}]
        assert (await _members(admin_port))[1] == [(origins[2], 1, "active")]
        assert before[0] == 1  # the first call refused changed nothing either


async def test_concurrent_changes_are_serialised(origins):
    async with serving(round_robin_segments(origins[:1])) as served:
        port, admin_port = served.port, served.admin_port
        # Eight PUTs naming version 1 at once: exactly one applies.
        sets = [[origins[i % 3]] for i in range(8)]
        answers = await asyncio.gather(*(
            call(admin_port, "PUT", SEG, {"backends": s}, headers={"If-Match": "1"})
            for s in sets))
        statuses = sorted(a[0] for a in answers)
        assert statuses == [200] + [409] * 7, answers
        winner = sets[next(i for i, a in enumerate(answers) if a[0] == 200)]
        assert all(a[1]["version"] == 2 for a in answers), answers
        version, members = await _members(admin_port)
        assert (version, [m[0] for m in members]) == (2, winner)
        # Eight without If-Match: each applies, one after another, none lost.
        answers = await asyncio.gather(*(
            call(admin_port, "PATCH", f"{SEG}/{winner[0]}", {"weight": w})
            for w in range(1, 9)))
        assert sorted(a[1]["version"] for a in answers) == list(range(3, 11))
        _, doc, _ = await call(admin_port, "GET", "/changes")
        entries = doc["changes"]
        assert len(entries) == 9
        assert [(c["version_before"], c["version_after"]) for c in entries] == [
            (v, v + 1) for v in range(1, 10)]
        last = max(answers, key=lambda a: a[1]["version"])
        assert (await _members(admin_port))[1][0][1] == last[1]["backend"]["weight"]
        assert set(await origins_hit(port, 3)) == {f"origin-{origins.index(winner[0]) + 1}"}


async def test_changes_name_the_token_or_the_client(origins):
    tokens = {"alice": "alice-secret", "bob": "bob-secret"}
    doc = round_robin_segments(origins[:2], token=TOKEN)
    doc["admin"]["tokens"] = tokens
    async with serving(doc) as served:
        admin_port = served.admin_port
        status, _, _ = await call(admin_port, "PUT", SEG, {"backends": origins},
                                  token="carol-secret")
        assert status == 401
        status, _, _ = await call(admin_port, "PUT", SEG, {"backends": origins},
                                  token="alice-secret")
        assert status == 200
        status, _, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[1]}",
                                  {"state": "drain", "weight": 4}, token="bob-secret")
        assert status == 200
        status, _, _ = await call(admin_port, "PATCH", f"{SEG}/{origins[1]}",
                                  {"state": "active"}, token=TOKEN)
        assert status == 200
        status, doc, _ = await call(admin_port, "GET", "/changes")
        assert status == 200
        entries = doc["changes"]
        for e in entries:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e.pop("time"))
        empty: dict[str, list[dict[str, object]]] = {
            "added": [], "removed": [], "weights": [], "zones": [], "states": []}
        assert entries == [
            {"id": 1, "cluster": "segments", "version_before": 1, "version_after": 2,
             "kind": "put", "who": "alice", "client": "127.0.0.1",
             "diff": {**empty, "added": [{"address": origins[2], "weight": 1, "zone": ""}]}},
            {"id": 2, "cluster": "segments", "version_before": 2, "version_after": 3,
             "kind": "patch", "who": "bob", "client": "127.0.0.1",
             "diff": {**empty,
                      "weights": [{"address": origins[1], "from": 1, "to": 4}],
                      "states": [{"address": origins[1], "from": "active", "to": "drain"}]}},
            # The unnamed admin.token: the client's address says who.
            {"id": 3, "cluster": "segments", "version_before": 3, "version_after": 4,
             "kind": "patch", "who": "127.0.0.1", "client": "127.0.0.1",
             "diff": {**empty,
                      "states": [{"address": origins[1], "from": "drain", "to": "active"}]}},
        ]


def test_history_is_bounded():
    from lbproxy.admin.changes import ChangeHistory, Origin
    from lbproxy.control.snapshot import snapshot_of

    cfg = config.from_dict(round_robin_segments(["127.0.0.1:1"]))
    history = ChangeHistory(length=4)
    snaps = [snapshot_of(cfg, version=v) for v in range(1, 8)]
    for old, new in itertools.pairwise(snaps):
        history.record(Origin("put", "segments", None, "127.0.0.1"), old, new)
    assert [e["id"] for e in history.entries()] == [3, 4, 5, 6]
    assert [e["version_after"] for e in history.entries()] == [4, 5, 6, 7]


@pytest.mark.parametrize(("tokens", "field"), [
    ({"alice": ""}, "admin.tokens.alice"),
    ({"alice": "x", "bob": "x"}, "admin.tokens.bob"),
    ({"alice": TOKEN}, "admin.tokens.alice"),  # the same as admin.token
    ({"a b": "x"}, "admin.tokens.a b"),
    ({"alice": 7}, "admin.tokens[...]"),  # msgspec does not name a dict's key
])
def test_bad_named_tokens_are_config_errors_naming_the_field(tokens, field):
    doc = round_robin_segments(["127.0.0.1:1"], token=TOKEN)
    doc["admin"]["tokens"] = tokens
    with pytest.raises(config.ConfigError) as info:
        config.from_dict(doc)
    assert field in [f for f, _ in info.value.errors], info.value.errors


async def test_unknown_route_and_wrong_method_are_json(origins):
    async with serving(round_robin_segments(origins[:1])) as served:
        admin_port = served.admin_port
        for path in ("/nope", "/changes/1", "/clusters/segments"):
            status, doc, headers = await call(admin_port, "GET", path)
            assert status == 404 and headers["Content-Type"].startswith("application/json")
            assert doc["error"] == "not_found" and doc["message"], doc
        status, doc, headers = await call(admin_port, "POST", "/changes", {})
        assert (status, doc["error"]) == (405, "method_not_allowed")
        assert headers["Content-Type"].startswith("application/json")
        assert "GET" in headers["Allow"]
        assert (await call(admin_port, "GET", "/changes"))[1] == {"changes": []}


@pytest.mark.parametrize("workers", [1, 2])
async def test_if_match_dry_run_and_reload_under_lbproxy_run(tmp_path, four_origins, workers):
    o = four_origins
    path = write_config(tmp_path / "c.json", _maglev_segments(o[:3]))
    proc = LbproxyProcess("run", "-c", str(path), "--workers", str(workers))
    try:
        assert await proc.ready_async(workers), proc.stderr()
        port, admin_port = proc.port, proc.admin_port
        before = await _origin_of_each_key(port)
        status, preview, _ = await call(admin_port, "PATCH", f"{SEG}/{o[0]}?dry_run=1",
                                        {"weight": 4}, headers={"If-Match": '"1"'})
        assert status == 200, preview
        status, doc, _ = await call(admin_port, "PATCH", f"{SEG}/{o[0]}", {"weight": 4},
                                    headers={"If-Match": '"1"'})
        assert (status, doc["version"]) == (200, 2)
        found, _ = await proc.expect_async(
            re.compile(r"INFO lbproxy\.admin\.api: patch segments by 127\.0\.0\.1: "
                       r"version 1 -> 2$"))
        assert found, proc.stderr()
        real = _moved(before, await _origin_of_each_key(port))
        assert real > 0.2 and abs(preview["moved_fraction"] - real) <= 0.01, (preview, real)
        status, doc, _ = await call(admin_port, "PUT", SEG, {"backends": [o[3]]},
                                    headers={"If-Match": '"1"'})
        assert (status, doc["version"]) == (409, 2)
        assert set((await _origin_of_each_key(port)).values()) <= {
            "origin-1", "origin-2", "origin-3"}

        write_config(path, _maglev_segments([o[0], o[3]]))
        proc.send_signal(signal.SIGHUP)
        await proc.expect_async(re.compile(r"reloaded .* \(version 3\)"))
        status, doc, _ = await call(admin_port, "GET", "/changes")
        kinds = [(c["kind"], c["who"], c["version_after"]) for c in doc["changes"]]
        assert kinds == [("patch", "127.0.0.1", 2), ("reload", "SIGHUP", 3)], doc
        diff = doc["changes"][1]["diff"]
        assert {b["address"] for b in diff["removed"]} == {o[1], o[2]}
        assert diff["added"] == [{"address": o[3], "weight": 1, "zone": ""}]
        assert diff["weights"] == [{"address": o[0], "from": 4, "to": 1}]
        assert await proc.stop_async() == 0, proc.stderr()
    finally:
        if proc.returncode is None:
            await proc.stop_async()


@pytest.mark.parametrize("accepting", [{0, 1, 2, 3}, {1, 3}, {2}, set()])
def test_key_owners_are_where_the_selector_sends_each_position_s_key(accepting):
    # The dry run's model of Maglev (an entry's keys go to the first accepting entry at
    # or after it, wrapping) against the selector core's own pick, key by key.
    from lbproxy.balance import moved, selectors

    addresses = [f"10.0.0.{i}:80" for i in range(4)]
    weights = [1, 3, 1, 2]
    load = selectors.BackendLoad(4)
    for slot in range(4):
        load.set_accept(slot, slot in accepting)
    maglev = selectors.MaglevSelector(list(range(4)), addresses, weights, load, TABLE_SIZE)
    owners = moved.key_owners(addresses, weights, TABLE_SIZE,
                              {addresses[s] for s in accepting})
    picked = [maglev.pick(key.encode()) for key in KEYS]
    assert owners == [addresses[s] if s >= 0 else None for s in picked]


def test_accepted_ignores_health_marks_only_in_panic():
    from lbproxy.balance.moved import accepted

    members = ["a", "b", "c", "d"]
    assert accepted(members, {"a"}, {"b"}, 50) == {"c", "d"}  # 2 of 3 usable: no panic
    assert accepted(members, {"a"}, {"b", "c"}, 50) == {"b", "c", "d"}  # 1 of 3: panic
    assert accepted(members, {"a"}, {"b", "c"}, 0) == {"d"}  # panic routing off
    assert accepted(members, set(members), set(), 50) == set()


async def test_a_reload_that_changes_no_pool_is_one_entry_without_a_cluster(tmp_path, origins):
    path = write_config(tmp_path / "c.json", round_robin_segments(origins[:2]))
    proc = LbproxyProcess("run", "-c", str(path))
    try:
        assert await proc.ready_async(1), proc.stderr()
        doc = round_robin_segments(origins[:2])
        doc["timeouts"]["drain"] = 4.0  # not a pool change
        write_config(path, doc)
        proc.send_signal(signal.SIGHUP)
        await proc.expect_async(re.compile(r"reloaded .* \(version 2\)"))
        _, doc, _ = await call(proc.admin_port, "GET", "/changes")
        [entry] = doc["changes"]
        assert (entry["cluster"], entry["kind"], entry["version_before"],
                entry["version_after"]) == (None, "reload", 1, 2)
        assert not any(entry["diff"].values())
        assert await proc.stop_async() == 0, proc.stderr()
    finally:
        if proc.returncode is None:
            await proc.stop_async()


async def test_concurrent_changes_are_serialised_under_workers(tmp_path, origins):
    # Under a supervisor a change holds the lock until both workers confirmed it.
    path = write_config(tmp_path / "c.json", round_robin_segments(origins[:1]))
    proc = LbproxyProcess("run", "-c", str(path), "--workers", "2")
    try:
        assert await proc.ready_async(2), proc.stderr()
        sets = [[origins[i % 3]] for i in range(4)]
        answers = await asyncio.gather(*(
            call(proc.admin_port, "PUT", SEG, {"backends": s}, headers={"If-Match": "1"})
            for s in sets))
        assert sorted(a[0] for a in answers) == [200, 409, 409, 409], answers
        winner = sets[next(i for i, a in enumerate(answers) if a[0] == 200)]
        assert "pending_workers" not in next(a[1] for a in answers if a[0] == 200)
        hits = await origins_hit(proc.port, 20)
        assert set(hits) == {f"origin-{origins.index(winner[0]) + 1}"}, hits
        answers = await asyncio.gather(*(
            call(proc.admin_port, "PATCH", f"{SEG}/{winner[0]}", {"weight": w})
            for w in range(1, 5)))
        assert sorted(a[1]["version"] for a in answers) == [3, 4, 5, 6], answers
        _, doc, _ = await call(proc.admin_port, "GET", "/changes")
        assert [(c["version_before"], c["version_after"]) for c in doc["changes"]] == [
            (v, v + 1) for v in range(1, 6)]
        assert await proc.stop_async() == 0, proc.stderr()
    finally:
        if proc.returncode is None:
            await proc.stop_async()
