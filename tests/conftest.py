"""Suite-wide test set-up: uvloop for every async test; demo origins for tests that proxy."""

from __future__ import annotations

import pytest
import uvloop


def pytest_asyncio_loop_factories(config, item):
    """pytest-asyncio hook: one loop factory, uvloop's."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """After an async test, while its loop is still open: stop what the support code left
    listening on it (see `support.backends.stop_leftovers`)."""
    try:
        return (yield)
    finally:
        from support.backends import leftover_loops, stop_leftovers

        for loop in leftover_loops():
            loop.run_until_complete(stop_leftovers())


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


@pytest.fixture
def refused_address():
    """host:port where connections are refused for the whole test (see `refused_address`)."""
    from support.backends import refused_address

    with refused_address() as address:
        yield address
