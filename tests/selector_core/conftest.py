"""Fixtures for the selector core: every test runs on the twin and on the native module."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

IMPLS = ["py", "native"]


def load_impl(name: str) -> ModuleType:
    """The twin (`py`) or the compiled module (`native`); skip when native is not built."""
    if name == "py":
        return importlib.import_module("lbproxy.balance._selectors_py")
    try:
        return importlib.import_module("lbproxy.balance._selectors_c")
    except ImportError:
        pytest.skip("lbproxy.balance._selectors_c is not built")


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The selector implementation under test, as multidict's conftest parametrises them."""
    return load_impl(request.param)


@pytest.fixture
def py_impl() -> ModuleType:
    """The pure-Python twin."""
    return load_impl("py")


@pytest.fixture
def native_impl() -> ModuleType:
    """The compiled module (skipped when it is not built)."""
    return load_impl("native")
