"""Processes: listeners, the single-process server, the supervisor and its workers, signals.

Owns turning a validated config into running processes. Must not touch the request path.
"""
