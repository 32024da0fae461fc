"""Suite-wide test set-up: every async test runs on uvloop, as production does."""

from __future__ import annotations

import uvloop


def pytest_asyncio_loop_factories(config, item):
    """pytest-asyncio hook: one loop factory, uvloop's."""
    return {"uvloop": uvloop.new_event_loop}
