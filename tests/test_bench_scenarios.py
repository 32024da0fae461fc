"""Scenario files: every one loads, --quick scales times, bad files name their problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.scenarios import ORDER, load, load_all


def test_every_scenario_loads_in_report_order() -> None:
    names = [s.name for s in load_all()]
    assert names == [n for n in ORDER if n in names]
    assert set(ORDER) <= set(names)


def test_quick_scales_durations_events_and_hot_key() -> None:
    viral = load_all(["viral"])[0]
    quick = viral.scaled(0.1)
    assert quick.duration_s == pytest.approx(viral.duration_s / 10)
    assert quick.keys["hot"]["ramp_s"] == pytest.approx(viral.keys["hot"]["ramp_s"] / 10)
    failure = load_all(["backend-failure"])[0]
    assert failure.scaled(0.1).events[0].at_s == pytest.approx(failure.events[0].at_s / 10)


def test_reload_needs_pool_replacement() -> None:
    assert load_all(["reload"])[0].requires == "replace_pool"


def test_unknown_field_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('duration_s = 1\nmode = "closed"\nconnections = 1\nspeed = 3\n')
    with pytest.raises(ValueError, match=r"bad.toml: unknown fields \['speed'\]"):
        load(bad)


def test_open_loop_needs_a_rate(tmp_path: Path) -> None:
    bad = tmp_path / "open.toml"
    bad.write_text('duration_s = 1\nmode = "open"\nconnections = 1\n')
    with pytest.raises(ValueError, match="needs rate > 0"):
        load(bad)


def test_unknown_scenario_name() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        load_all(["nope"])
