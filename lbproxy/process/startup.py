"""What every process kind needs to start: the data plane class by name, the start-up error.

Owns `StartupError` (a failure the operator can fix, its message says which), the
`DataPlaneLike` protocol the process layer needs of a data plane, loading a data plane class
from ``module:attribute`` (workers get it by name on their command line), and the sink that
hands a new snapshot to a consumer with one assignment. Must not touch sockets.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from typing import Protocol

from lbproxy.control.snapshot import Snapshot

# The data plane class, as "module:attribute"; workers import it by this name. Read at call
# time (`run` looks it up here), so tests can point a whole `lbproxy run` at a stand-in.
DEFAULT_DATAPLANE = "lbproxy.proxy:DataPlane"


class StartupError(Exception):
    """Start-up failed for a reason the operator can fix; the message says which."""


class DataPlaneLike(Protocol):
    """What the process layer needs of `lbproxy.proxy.DataPlane` (ARCHITECTURE.md)."""

    snapshot: Snapshot
    protect: int  # self-protection's step (lbproxy/proxy/protection.py)

    def protocol_factory(self) -> asyncio.Protocol:
        """A new client-connection protocol for `loop.create_server`."""
        ...

    async def drain(self, deadline_s: float) -> None:
        """Stop keep-alive and finish in-flight requests within `deadline_s`."""
        ...


DataPlaneFactory = Callable[[Snapshot], DataPlaneLike]


class SnapshotHolder(Protocol):
    """Anything that reads `.snapshot` once per use: the data plane, the admin API."""

    snapshot: Snapshot


def load_dataplane(name: str) -> DataPlaneFactory:
    """Import a data plane class given as ``module:attribute``."""
    module, _, attr = name.partition(":")
    try:
        cls: DataPlaneFactory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise StartupError(f"cannot load the data plane {name}: {exc}") from None
    return cls


def assign(consumer: SnapshotHolder) -> Callable[[Snapshot], None]:
    """A controller sink that gives `consumer` each new snapshot in one assignment."""

    # The one-assignment swap of ARCHITECTURE.md rule 1.
    def sink(snapshot: Snapshot) -> None:
        consumer.snapshot = snapshot

    return sink
