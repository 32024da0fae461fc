"""The one switch between compiled modules and their sources (lbproxy/native.py).

Fails when a compiled module did not load without LBPROXY_NO_EXTENSIONS set (yarl's
`test_quoting_c_loaded`), checks that the facades hand out the build the switch selects
and that a compiled process never also imports the Python source of a one-source module
(two copies of a class would make `type(x) is Refusal` checks lie), that a missing build
is an error that says how to fix it, and that lbproxy/_codes.pxd declares exactly the
values of lbproxy/codes.py.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lbproxy import codes, native

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("compiled", sorted(native.COMPILED))
def test_compiled_module_loaded(compiled: str) -> None:
    """Every compiled module imports as an extension, unless disabled on purpose."""
    if native.NO_EXTENSIONS:
        pytest.skip("LBPROXY_NO_EXTENSIONS is set")
    module = importlib.import_module(compiled)
    assert module.__file__ is not None and module.__file__.endswith(".so"), module.__file__


def test_facades_serve_the_selected_build() -> None:
    """The facades' classes come from the compiled modules, or the sources when disabled."""
    from lbproxy.balance import gate, selectors
    from lbproxy.proxy import http, protocols

    def origin(name: str) -> str:
        return name if not native.NO_EXTENSIONS else native.COMPILED[name]

    assert protocols.ClientConnection.__module__ == origin("lbproxy.proxy._client_c")
    assert protocols.UpstreamPool.__module__ == origin("lbproxy.proxy._pool_c")
    assert gate.Cluster.__module__ == origin("lbproxy.balance._cluster_c")
    assert selectors.MaglevSelector.__module__ == origin("lbproxy.balance._selectors_c")
    assert http.analyse_request.__module__ == origin("lbproxy.proxy._http_c")
    assert protocols.NATIVE == gate_native() == (not native.NO_EXTENSIONS)


def gate_native() -> bool:
    """Whether the gate facade serves the compiled gate."""
    from lbproxy.balance import gate

    return bool(gate.Cluster.__module__.endswith("_c"))


def _modules_after_start(env_value: str | None) -> set[str]:
    """lbproxy modules a fresh process imports for the proxy and the admin API."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "LBPROXY_NO_EXTENSIONS"}
    if env_value is not None:
        env["LBPROXY_NO_EXTENSIONS"] = env_value
    code = ("import sys, lbproxy.cli, lbproxy.proxy, lbproxy.admin.api, lbproxy.control.upkeep;"
            "import lbproxy.process.run, lbproxy.process.supervisor, lbproxy.process.single;"
            "print(' '.join(m for m in sys.modules if m.startswith('lbproxy')))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return set(out.split())


def test_a_compiled_process_never_imports_one_source_modules_uncompiled() -> None:
    """With extensions on, the Python copies of one-source modules stay unimported."""
    if native.NO_EXTENSIONS:
        pytest.skip("LBPROXY_NO_EXTENSIONS is set")
    loaded = _modules_after_start(None)
    assert set(native.COMPILED) <= loaded
    # Twins may be read for their tables; a one-source module's classes must exist once.
    # latency's functions keep no state and /stats reads its layout helpers as Python.
    for compiled in native.ONE_SOURCE - {"lbproxy.balance._latency_c"}:
        source = native.COMPILED[compiled]
        assert source not in loaded, f"{source} imported beside {compiled}"


@pytest.mark.parametrize(("value", "pure"), [("1", True), ("yes", True), ("0", False),
                                              ("", False), (None, False)])
def test_the_switch_reads_one_variable(value: str | None, pure: bool) -> None:
    """Any non-empty value but 0 selects the sources everywhere; nothing else reads it."""
    loaded = _modules_after_start(value)
    assert ("lbproxy.proxy.client" in loaded) == pure
    assert ("lbproxy.proxy._client_c" in loaded) == (not pure)
    readers = [p.relative_to(ROOT) for p in (ROOT / "lbproxy").rglob("*.py")
               if "LBPROXY_NO_EXTENSIONS" in p.read_text() and "os.environ" in p.read_text()]
    assert readers == [Path("lbproxy/native.py")]


def test_a_missing_build_is_loud(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled module that does not load raises, naming both remedies."""
    monkeypatch.setattr(native, "NO_EXTENSIONS", False)
    monkeypatch.setitem(native.COMPILED, "lbproxy.proxy._no_such_c", "lbproxy.codes")
    with pytest.raises(native.BuildMissing) as err:
        native.load("lbproxy.proxy._no_such_c")
    assert "make build" in str(err.value) and "LBPROXY_NO_EXTENSIONS=1" in str(err.value)
    monkeypatch.setattr(native, "NO_EXTENSIONS", True)
    assert native.load("lbproxy.proxy._no_such_c") is codes


def test_codes_pxd_declares_the_values_of_codes_py() -> None:
    """Each NAME = VALUE in lbproxy/_codes.pxd is codes.py's, and none is missing."""
    text = (ROOT / "lbproxy" / "_codes.pxd").read_text()
    declared = {m[1]: int(m[2]) for m in re.finditer(r"^\s+([A-Z_0-9]+) = (\d+)$", text, re.M)}
    python = {name: value for name, value in vars(codes).items()
              if name.isupper() and isinstance(value, int)}
    assert declared == python
    assert {o.name: int(o) for o in codes.Outcome} == {
        n.removeprefix("OUTCOME_"): v for n, v in python.items() if n.startswith("OUTCOME_")}
