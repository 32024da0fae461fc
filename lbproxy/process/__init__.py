"""Processes: listeners, the single-process server, the supervisor and its workers, signals.

Owns turning a validated config into running processes. Modules: ``run`` (`run`, what the
CLI calls), ``single`` (one process does everything: `serve`), ``supervisor``
(``--workers N``: `Supervisor`, `WorkerProcess`), ``worker`` (one worker process, run as
``python -m lbproxy.process.worker``), ``listeners`` (sockets, TLS, `Listener`),
``messages`` (the supervisor↔worker pipe protocol), ``signals``, ``logs`` (logging's one
format) and ``startup`` (`StartupError`, the data plane by name). This file imports none
of them, so a worker or `lbproxy check` loads only what it uses. Must not touch the
request path.
"""
