"""docs/configuration.md: generated from the schema, complete, and its examples valid."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from lbproxy.control import config, configdoc

ROOT = Path(__file__).parent.parent
PAGE = ROOT / "docs" / "configuration.md"


def test_the_committed_page_is_what_the_schema_generates():
    assert PAGE.read_text() == configdoc.render(), (
        "docs/configuration.md is stale: run `make docs` and commit it")


def test_a_field_without_a_description_stops_the_generator():
    class Undocumented(msgspec.Struct):
        knob: int = 0

    with pytest.raises(LookupError, match=r"Undocumented\.knob has no comment"):
        configdoc.field_doc(Undocumented, "knob")


# ---- the page read back, checked against msgspec's JSON Schema (not the generator) ------


def _sections(text: str) -> dict[str, dict[str, list[str]]]:
    """heading → key → [type, default, meaning] cells of its table."""
    out: dict[str, dict[str, list[str]]] = {}
    for block in re.split(r"^### ", text, flags=re.M)[1:]:
        heading, _, body = block.partition("\n")
        rows = {}
        for line in body.splitlines():
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if len(cells) == 4 and re.fullmatch(r"`\w+`", cells[0]):
                rows[cells[0].strip("`")] = cells[1:]
        out[heading.strip()] = rows
    return out


def _heading(path: str, array: bool) -> str:
    if not path:
        return "Top level"
    return f"`[[{path}]]`" if array else f"`[{path}]`"


def _refs(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """(struct name, how it nests: "", "[]" or "{}") for every struct a property leads to."""
    out = []
    for alt in schema.get("anyOf", [schema]):
        if "$ref" in alt:
            out.append((alt["$ref"].rsplit("/", 1)[1], ""))
        for key, how in (("items", "[]"), ("additionalProperties", "{}")):
            inner = alt.get(key)
            if isinstance(inner, dict):
                out += [(name, how) for name, _ in _refs(inner)]
    return out


def _json_types(schema: dict[str, Any]) -> set[str]:
    types: set[str] = set()
    for alt in schema.get("anyOf", [schema]):
        t = alt.get("type")
        types.update([t] if isinstance(t, str) else t or [])
        for key in ("items", "additionalProperties"):
            if isinstance(alt.get(key), dict):
                types |= _json_types(alt[key])
    return types - {"null", "object"}


def _walk_schema() -> list[tuple[str, bool, str, dict[str, Any], bool, type]]:
    """(section path, array?, field, its schema, required?, struct) over the whole schema."""
    schema = msgspec.json.schema(config.Config)
    defs = schema["$defs"]
    out = []

    def walk(name: str, path: str, array: bool) -> None:
        d = defs[name]
        for field, prop in d["properties"].items():
            out.append((path, array, field, prop, field in d.get("required", []),
                        getattr(config, name)))
            for child, how in _refs(prop):
                sub = f"{path}.{field}" if path else field
                walk(child, f"{sub}.NAME" if how == "{}" else sub, how == "[]")

    walk("Config", "", False)
    return out


def test_every_schema_field_is_on_the_page_with_its_type_and_default():
    page = _sections(PAGE.read_text())
    walked = _walk_schema()
    # The walk itself reaches structs behind a dict, a list, a union and an optional.
    assert {(p, a) for p, a, *_ in walked} >= {
        ("clusters.NAME", False), ("routes", True), ("clusters.NAME.backends", True),
        ("clusters.NAME.health_check", False), ("listener.tls", False)}
    for path, array, field, prop, required, struct in walked:
        heading = _heading(path, array)
        assert heading in page, f"no section {heading}"
        assert field in page[heading], f"{heading} lacks `{field}`"
        type_cell, default_cell, meaning = page[heading][field]
        where = f"{heading} {field}"
        assert meaning, f"{where}: no description"
        for t in _json_types(prop):
            word = {"array": "array of"}.get(t, t)
            assert word in type_cell, f"{where}: type {t} not in {type_cell!r}"
        for value in prop.get("enum", []):
            assert f'`"{value}"`' in type_cell, f"{where}: {value!r} not in {type_cell!r}"
        if _refs(prop):
            assert "](#" in type_cell, f"{where}: no link to its section"
        if required:
            assert default_cell == "required", where
        elif prop.get("default", ...) is None:
            assert default_cell == "unset", where
        elif "default" in prop or default_cell.startswith("`"):
            # msgspec leaves factory defaults out of the JSON Schema; take them from the struct.
            f = next(f for f in msgspec.structs.fields(struct) if f.encode_name == field)
            expected = prop.get("default", f.default if f.default is not msgspec.NODEFAULT
                                else f.default_factory())
            shown = tomllib.loads(f"v = {default_cell.strip('`')}")["v"]
            assert shown == expected and type(shown) is type(expected), where
        else:
            assert default_cell == "its defaults" and _refs(prop), where


# ---- every example on the page loads, merged into a small valid config ------------------

BASE: dict[str, Any] = {
    "clusters": {"segments": {"backends": ["127.0.0.1:9001"]},
                 "uploads": {"backends": ["127.0.0.1:9101"]}},
    "routes": [{"cluster": "segments"}],
}


def _merge(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        return {k: _merge(base[k], v) if k in base else v for k, v in top.items()} | {
            k: v for k, v in base.items() if k not in top}
    return top


def toml_blocks(text: str) -> list[str]:
    """The ```toml fenced blocks of a markdown text."""
    return re.findall(r"^```toml\n(.*?)^```", text, re.S | re.M)


def load_fragment(fragment: str, tmp_path: Path) -> config.Config:
    """A config fragment merged into BASE; TLS file paths replaced by real (empty) files."""
    data = _merge(BASE, tomllib.loads(fragment))
    tls = data.get("listener", {}).get("tls")
    if tls:
        for name in ("cert", "key"):
            (tmp_path / name).touch()
            tls[name] = str(tmp_path / name)
    return config.from_dict(data)


def test_every_section_has_an_example():
    for block in re.split(r"^### ", PAGE.read_text(), flags=re.M)[1:]:
        assert toml_blocks(block), f"no example under ### {block.partition(chr(10))[0]}"


@pytest.mark.parametrize("index", range(len(toml_blocks(PAGE.read_text()))))
def test_each_example_on_the_page_is_a_valid_config(index, tmp_path):
    fragment = toml_blocks(PAGE.read_text())[index]
    load_fragment(fragment, tmp_path)  # raises ConfigError naming the field if not
