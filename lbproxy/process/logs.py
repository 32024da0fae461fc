"""Logging set-up: one line format for every logger, in the supervisor and in each worker.

Owns configuring Python's `logging` once per process (the CLI for `run` and `demo`; each
worker with the level its supervisor passes down on its command line): the format
``2026-12-01T04:08:36.123Z lbproxy[1234] INFO lbproxy.policies.outlier: message``, the
level of the ``lbproxy`` loggers, and a handler that writes each record with one write(2),
so lines from workers sharing the supervisor's stderr never interleave. Must not touch
what is logged: each module logs through ``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import logging
import os
import sys
import time

LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LEVEL = "info"
# The operator's level applies to lbproxy's own loggers. Libraries (asyncio, aiohttp) log
# their internals below WARNING; at `--log-level debug` that would bury lbproxy's lines.
LIBRARY_LEVEL = logging.WARNING
FORMAT = "%(asctime)s lbproxy[%(process)d] %(levelname)s %(name)s: %(message)s"


class LineFormatter(logging.Formatter):
    """``TIME lbproxy[PID] LEVEL LOGGER: message``; TIME is UTC, ISO 8601, milliseconds."""

    def __init__(self) -> None:
        super().__init__(FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The record's time as ``2026-12-01T04:08:36.123Z`` (UTC: no zone to guess)."""
        whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{whole}.{int(record.msecs):03d}Z"


class LineHandler(logging.Handler):
    """Writes each formatted record, newline included, to a file descriptor in one write."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        """Format `record` and write it with os.write, not through a buffered stream."""
        try:
            data = memoryview((self.format(record) + "\n").encode("utf-8", "backslashreplace"))
            # A buffered stream may split a record into several write(2) calls. One write of
            # at most PIPE_BUF (4096) bytes to a pipe is atomic (POSIX), so workers writing
            # to the same stderr never interleave within a line. Only a longer record (a
            # traceback) can come back partly written; the rest follows at once.
            while data:
                data = data[os.write(self.fd, data):]
        except Exception:
            self.handleError(record)


def level_number(name: str) -> int:
    """The `logging` level for one of `LEVELS`; ValueError for another name."""
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {name!r}")
    return int(logging.getLevelName(name.upper()))


def configure(level: str = DEFAULT_LEVEL, fd: int | None = None) -> None:
    """Send every logger's records through one `LineHandler` (stderr by default).

    lbproxy's loggers log at `level`; other libraries' at WARNING and above. Calling it
    again replaces the handler it installed before, so a process never prints a line twice.
    """
    number = level_number(level)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, LineHandler)]:
        root.removeHandler(old)
    handler = LineHandler(sys.stderr.fileno() if fd is None else fd)
    handler.setFormatter(LineFormatter())
    root.addHandler(handler)
    root.setLevel(max(number, LIBRARY_LEVEL))
    # Records of lbproxy.* reach the root's handler whatever the root's own level is:
    # propagation consults handlers' levels, not ancestors'.
    logging.getLogger("lbproxy").setLevel(number)
