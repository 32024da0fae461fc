"""Suite-wide test set-up: uvloop for every async test; demo origins for tests that proxy."""

from __future__ import annotations

import pytest
import uvloop


def pytest_asyncio_loop_factories(config, item):
    """pytest-asyncio hook: one loop factory, uvloop's."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def origins():
    """Three demo segment origins on 127.0.0.1 (origin-1..3); yields their addresses."""
    from lbproxy import demo

    runners, addresses = [], []
    for i in range(3):
        runner, port = await demo.start_segment_origin("127.0.0.1", 0, f"origin-{i + 1}")
        runners.append(runner)
        addresses.append(f"127.0.0.1:{port}")
    yield addresses
    for runner in runners:
        await runner.cleanup()
