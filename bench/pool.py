"""Generator processes: spawned once per bench run, pinned to their cores, fed workloads.

Owns the processes and the shared start time; the parent's loop polls their progress and
fires scenario events (kill a backend, replace a pool) at their times while they run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any, cast

from bench.generator import worker_main
from bench.recorder import merge_results

ProgressFn = Callable[[float, int, int], None]  # elapsed s, completed, failed
Event = tuple[float, Callable[[], None]]  # seconds after start, action


class GeneratorPool:
    """N generator processes, each pinned to the generator's cores."""

    def __init__(self, procs: int, cpus: list[int] | None) -> None:
        # spawn, not fork: the parent runs rich's refresh thread, and forking threads is unsafe.
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.workers = []
        for _ in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, cpus), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.workers.append(proc)

    @property
    def size(self) -> int:
        """Number of generator processes."""
        return len(self.pipes)

    def run(
        self,
        workload: dict[str, Any],
        events: list[Event] | None = None,
        progress: ProgressFn | None = None,
        lead_s: float = 0.02,
    ) -> dict[str, Any]:
        """Run `workload` split over every process; fire `events`; return merged results."""
        n = self.size
        for i, pipe in enumerate(self.pipes):
            pipe.send({
                **workload,
                "procs": n,
                "proc_index": i,
                "seed": workload.get("seed", 0) * 1000 + i,
                "connections": _share(int(workload["connections"]), n, i),
                "upload_connections": _share(int(workload.get("upload_connections", 0)), n, i),
            })
        # Every process connects first and says "ready"; then one shared start time.
        ready: set[int] = set()
        ready_by = time.monotonic() + 15
        while len(ready) < n:
            if time.monotonic() > ready_by:
                raise RuntimeError("generator processes did not connect in time")
            for pipe in _readable(self.pipes, 0.5):
                if _receive(pipe)[0] == "ready":
                    ready.add(self.pipes.index(pipe))
        start_ns = time.monotonic_ns() + int(lead_s * 1e9)
        for pipe in self.pipes:
            pipe.send(("start", start_ns))
        pending_events = sorted(events or [], key=lambda e: e[0])
        done: dict[int, dict[str, Any]] = {}
        counts = [(0, 0)] * n
        event_error: Exception | None = None
        deadline = start_ns + int((workload["duration_s"] + 30) * 1e9)
        while len(done) < n:
            now = time.monotonic_ns()
            if now > deadline:
                raise RuntimeError("generator processes did not finish in time")
            while pending_events and now >= start_ns + int(pending_events[0][0] * 1e9):
                try:
                    pending_events.pop(0)[1]()
                except Exception as exc:
                    # Leaving now would let a worker's late result leak into the next run.
                    event_error = event_error or exc
            running = [p for i, p in enumerate(self.pipes) if i not in done]
            for pipe in _readable(running, 0.05):
                i = self.pipes.index(pipe)
                msg = _receive(pipe)
                if msg[0] == "progress":
                    counts[i] = (msg[1], msg[2])
                else:
                    done[i] = msg[1]
            if progress is not None:
                progress(
                    (time.monotonic_ns() - start_ns) / 1e9,
                    sum(c[0] for c in counts),
                    sum(c[1] for c in counts),
                )
        if event_error is not None:
            raise event_error
        return merge_results([done[i] for i in range(n)])

    def close(self) -> None:
        """Ask every process to exit, then make sure it has."""
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for proc in self.workers:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()


def _readable(pipes: list[Connection], timeout: float) -> list[Connection]:
    """Those of `pipes` with something to read within `timeout` seconds."""
    # wait() returns the objects it was given, here Connections only.
    return cast(list[Connection], wait(pipes, timeout=timeout))


def _receive(pipe: Any) -> Any:
    """One message from a generator process; a clear error if the process died."""
    try:
        return pipe.recv()
    except (EOFError, OSError) as exc:
        raise RuntimeError("a generator process died (see its traceback above)") from exc


def _share(total: int, parts: int, index: int) -> int:
    """Index-th of `parts` near-equal integer shares of `total`."""
    return total // parts + (1 if index < total % parts else 0)
