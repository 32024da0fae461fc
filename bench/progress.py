"""Live progress for long runs (rich): scenario, proxy, elapsed, current req/s and errors.

Owns the terminal only. On a terminal it redraws one status panel; otherwise (CI, `make`
piped to a log) it prints a plain line every couple of seconds so logs stay readable.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.table import Table


class LiveProgress:
    """One status line per run, updated from the generator pool's progress callback."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.live: Live | None = None
        self.label = ""
        self.duration_s = 0.0
        self._last: tuple[float, int, int] = (0.0, 0, 0)
        self._rate = 0.0
        self._err_rate = 0.0
        self._printed_at = 0.0

    def begin(self, label: str, duration_s: float) -> None:
        """A run starts: `label` names scenario, proxy and repeat."""
        self.label = label
        self.duration_s = duration_s
        self._last = (0.0, 0, 0)
        self._rate = self._err_rate = 0.0
        self._printed_at = time.monotonic()
        if self.console.is_terminal:
            self.live = Live(self._panel(0.0), console=self.console, refresh_per_second=8,
                             transient=True)
            self.live.start()

    def update(self, elapsed_s: float, completed: int, failed: int) -> None:
        """Progress from the generators: cumulative completed and failed requests."""
        t0, c0, f0 = self._last
        if elapsed_s - t0 >= max(0.25, min(1.0, self.duration_s / 8)):
            # Rates over the last second or so: "current", not the run's average.
            self._rate = (completed - c0) / (elapsed_s - t0)
            self._err_rate = (failed - f0) / (elapsed_s - t0)
            self._last = (elapsed_s, completed, failed)
        if self.live is not None:
            self.live.update(self._panel(elapsed_s))
        elif time.monotonic() - self._printed_at >= 2.0:
            self._printed_at = time.monotonic()
            self.console.print(self._line(elapsed_s), highlight=False)

    def end(self, summary: str) -> None:
        """The run finished: drop the live panel, print its one-line summary."""
        if self.live is not None:
            self.live.stop()
            self.live = None
        self.console.print(summary, highlight=False)

    def _line(self, elapsed_s: float) -> str:
        shown = min(max(elapsed_s, 0.0), self.duration_s)
        return (f"  {self.label}: {shown:5.1f}/{self.duration_s:.1f}s  "
                f"{self._rate:9.0f} req/s  {self._err_rate:7.0f} err/s")

    def _panel(self, elapsed_s: float) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_row(f"[bold]{self.label}[/]",
                      f"{min(max(elapsed_s, 0.0), self.duration_s):5.1f}/{self.duration_s:.1f}s",
                      f"{self._rate:9.0f} req/s", f"[red]{self._err_rate:7.0f} err/s[/]")
        return table
