"""Overload control's configuration: defaults, and every bad value named by its path."""

from __future__ import annotations

import subprocess

import pytest
from support.subproc import lbproxy_argv, subprocess_env

from lbproxy.control import config


def _doc(cluster: dict | None = None, route: dict | None = None) -> dict:
    return {"clusters": {"seg": {"backends": ["127.0.0.1:1"], **(cluster or {})}},
            "routes": [{"cluster": "seg", **(route or {})}]}


def test_on_by_default_with_netflix_style_defaults():
    cfg = config.from_dict(_doc())
    ac = cfg.clusters["seg"].adaptive_concurrency
    assert ac.enabled and ac.algorithm == "gradient2"
    assert (ac.initial_limit, ac.smoothing, ac.long_window, ac.window_size) == (20, 0.2, 600, 10)
    q = cfg.clusters["seg"].queue
    assert (q.codel_target_ms, q.codel_interval_ms, q.max_pending) == (5.0, 100.0, 1000)
    assert cfg.routes[0].priority == "normal" and cfg.routes[0].cohort_on is None


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        (_doc({"adaptive_concurrency": {"min_limit": 0}}),
         "clusters.seg.adaptive_concurrency.min_limit"),
        (_doc({"adaptive_concurrency": {"initial_limit": -3}}),
         "clusters.seg.adaptive_concurrency.initial_limit"),
        (_doc({"adaptive_concurrency": {"max_limit": 0}}),
         "clusters.seg.adaptive_concurrency.max_limit"),
        (_doc({"adaptive_concurrency": {"min_limit": 50, "max_limit": 10}}),
         "clusters.seg.adaptive_concurrency.max_limit"),
        (_doc({"adaptive_concurrency": {"initial_limit": 500, "max_limit": 100}}),
         "clusters.seg.adaptive_concurrency.initial_limit"),
        (_doc({"adaptive_concurrency": {"algorithm": "bbr"}}),
         "clusters.seg.adaptive_concurrency.algorithm"),
        (_doc({"adaptive_concurrency": {"smoothing": 0}}),
         "clusters.seg.adaptive_concurrency.smoothing"),
        (_doc({"adaptive_concurrency": {"backoff_ratio": 1.0}}),
         "clusters.seg.adaptive_concurrency.backoff_ratio"),
        (_doc({"adaptive_concurrency": {"rtt_tolerance": 0.5}}),
         "clusters.seg.adaptive_concurrency.rtt_tolerance"),
        (_doc({"adaptive_concurrency": {"min_window": 0}}),
         "clusters.seg.adaptive_concurrency.min_window"),
        (_doc({"adaptive_concurrency": {"colour": "red"}}),
         "clusters.seg.adaptive_concurrency.colour"),
        (_doc({"queue": {"max_pending": 0}}), "clusters.seg.queue.max_pending"),
        (_doc({"queue": {"codel_target_ms": -1}}), "clusters.seg.queue.codel_target_ms"),
        (_doc({"queue": {"codel_target_ms": 50, "codel_interval_ms": 20}}),
         "clusters.seg.queue.codel_interval_ms"),
        (_doc({"queue": {"max_wait_ms": 1}}), "clusters.seg.queue.max_wait_ms"),
        (_doc(route={"priority": "urgent"}), "routes[0].priority"),
        (_doc(route={"cohort_on": "ip"}), "routes[0].cohort_on"),
    ],
)
def test_bad_values_name_their_field(doc, path):
    with pytest.raises(config.ConfigError) as exc:
        config.from_dict(doc)
    assert path in [p for p, _ in exc.value.errors], exc.value.errors


def test_lbproxy_check_rejects_a_bad_overload_config(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("""
[clusters.seg]
backends = ["127.0.0.1:1"]

[clusters.seg.adaptive_concurrency]
algorithm = "unknown"
min_limit = 0

[clusters.seg.queue]
max_pending = 0

[[routes]]
cluster = "seg"
priority = "vip"
""")
    r = subprocess.run(lbproxy_argv("check", "-c", str(p)), capture_output=True, text=True,
                       timeout=30, env=subprocess_env())
    assert r.returncode == 1
    errors = r.stderr.splitlines()
    for path in ("clusters.seg.adaptive_concurrency.algorithm", "routes[0].priority"):
        assert any(line.startswith(f"error: {path}:") for line in errors), r.stderr
