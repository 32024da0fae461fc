"""Config decoding and validation: every error names its field path."""

import pytest

from lbproxy.control import config

CONTRACT_TOML = """
[listener]
bind = "127.0.0.1:8080"

[admin]
bind = "127.0.0.1:9901"

[clusters.segments]
policy = "maglev"
backends = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]

[clusters.uploads]
policy = "p2c"
backends = [{ address = "127.0.0.1:9101", weight = 2 }, { address = "127.0.0.1:9102" }]

[[routes]]
path_prefix = "/upload"
cluster = "uploads"

[[routes]]
path_prefix = "/"
cluster = "segments"
hash_on = "path_regex:^/v/([^/]+)/"
"""


def test_contract_minimal_file_loads(tmp_path):
    p = tmp_path / "lbproxy.toml"
    p.write_text(CONTRACT_TOML)
    cfg = config.load(p)
    assert cfg.listener.bind == "127.0.0.1:8080"
    assert cfg.clusters["segments"].policy == "maglev"
    ups = [config.backend_of(b) for b in cfg.clusters["uploads"].backends]
    assert [(b.address, b.weight) for b in ups] == [("127.0.0.1:9101", 2), ("127.0.0.1:9102", 1)]
    assert cfg.routes[1].hash_on == "path_regex:^/v/([^/]+)/"


@pytest.mark.parametrize(
    ("patch", "path"),
    [
        ({"clusters": {"a": {"backends": ["127.0.0.1:1", {"address": "127.0.0.1:2",
                                                          "weight": 0}]}}},
         "clusters.a.backends[1].weight"),
        ({"clusters": {"a": {"backends": ["127.0.0.1:1", "127.0.0.1:1"]}}},
         "clusters.a.backends[1]"),
        ({"clusters": {"a": {"backends": []}}}, "clusters.a.backends"),
        ({"clusters": {"a": {"backends": ["nohost"]}}}, "clusters.a.backends[0]"),
        ({"clusters": {"a": {"backends": ["127.0.0.1:1"], "policy": "maglev", "table_size": 100}}},
         "clusters.a.table_size"),
        ({"routes": [{"cluster": "zzz"}]}, "routes[0].cluster"),
        ({"routes": [{"cluster": "a", "hash_on": "path_regex:^/v/"}]}, "routes[0].hash_on"),
        ({"listener": {"bind": "127.0.0.1:99999"}}, "listener.bind"),
        ({"listener": {"bindx": "127.0.0.1:1"}}, "listener.bindx"),
        ({"listener": {"bind": "127.0.0.1:5"}, "admin": {"bind": "127.0.0.1:5"}}, "admin.bind"),
    ],
)
def test_invalid_config_names_field_path(patch, path):
    data = {"clusters": {"a": {"backends": ["127.0.0.1:1"]}}, "routes": [{"cluster": "a"}]}
    data.update(patch)
    with pytest.raises(config.ConfigError) as exc:
        config.from_dict(data)
    assert any(p == path for p, _ in exc.value.errors), exc.value.errors


@pytest.mark.parametrize(
    ("clusters", "path"),
    [
        ({"uploads": {"backends": ["127.0.0.1:1", {"address": "127.0.0.1:2", "weight": "x"}]}},
         "clusters.uploads.backends[1].weight"),
        ({"uploads": {"backends": ["127.0.0.1:1"], "policy": "random"}}, "clusters.uploads.policy"),
        ({"uploads": {"backends": ["127.0.0.1:1"], "colour": 1}}, "clusters.uploads.colour"),
        ({"uploads": {}}, "clusters.uploads"),
        ({"odd.name": {"backends": 3}}, 'clusters["odd.name"].backends'),
    ],
)
def test_type_errors_name_the_real_cluster_key(clusters, path):
    data = {"clusters": clusters, "routes": [{"cluster": "uploads"}]}
    with pytest.raises(config.ConfigError) as exc:
        config.from_dict(data)
    paths = [p for p, _ in exc.value.errors]
    assert path in paths, exc.value.errors
    assert not any("[...]" in p for p in paths)


def test_every_section_reports_its_error_in_one_run():
    data = {
        "clusters": {"a": {"backends": ["127.0.0.1:1"]}, "b": {"backends": [{"weight": 2}]}},
        "routes": [{"cluster": "a", "headers": {"X-Tier": 1}}],
        "listener": {"bind": 8080},
        "surprise": True,
    }
    with pytest.raises(config.ConfigError) as exc:
        config.from_dict(data)
    paths = {p for p, _ in exc.value.errors}
    assert {"clusters.b.backends[0]", "routes[0].headers.X-Tier", "listener.bind",
            "surprise"} <= paths, exc.value.errors


def test_missing_sections_are_named():
    with pytest.raises(config.ConfigError) as exc:
        config.from_dict({})
    assert {p for p, _ in exc.value.errors} == {"clusters", "routes"}


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_yaml_and_json_by_extension(tmp_path, suffix):
    import json

    data = {"clusters": {"a": {"backends": ["127.0.0.1:1"]}}, "routes": [{"cluster": "a"}]}
    p = tmp_path / f"c{suffix}"
    p.write_text(json.dumps(data))  # JSON is valid YAML too
    assert config.load(p).clusters["a"].policy == "round_robin"


def test_unreadable_and_unparsable_files(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[clusters\n")
    with pytest.raises(config.ConfigError, match="not valid toml"):
        config.load(bad)


@pytest.mark.parametrize(
    ("route", "path"),
    [
        ({"cluster": "a", "hash_on": "header:X User"}, "routes[0].hash_on"),
        ({"cluster": "a", "hash_on": "cookie:a=b"}, "routes[0].hash_on"),
        ({"cluster": "a", "hash_on": "query:"}, "routes[0].hash_on"),
        ({"cluster": "a", "hash_on": "host"}, "routes[0].hash_on"),
        ({"cluster": "a", "headers": {"X Tier": "gold"}}, 'routes[0].headers["X Tier"]'),
        ({"cluster": "a", "host": " "}, "routes[0].host"),
        ({"cluster": "a", "methods": ["get"]}, "routes[0].methods[0]"),
        ({"cluster": "a", "path_prefix": "v/"}, "routes[0].path_prefix"),
    ],
)
def test_route_errors_name_their_field(route, path):
    data = {"clusters": {"a": {"backends": ["127.0.0.1:1"]}}, "routes": [route]}
    with pytest.raises(config.ConfigError) as exc:
        config.from_dict(data)
    assert path in [p for p, _ in exc.value.errors], exc.value.errors


@pytest.mark.parametrize("hash_on", ["path", "header:X-User", "query:sid", "cookie:sid",
                                     "path_regex:^/v/([^/]+)/"])
def test_valid_hash_on(hash_on):
    data = {"clusters": {"a": {"backends": ["127.0.0.1:1"]}},
            "routes": [{"cluster": "a", "hash_on": hash_on, "headers": {"X-Tier": "gold"}}]}
    assert config.from_dict(data).routes[0].hash_on == hash_on
