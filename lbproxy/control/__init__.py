"""The control plane: configuration, snapshots, and the work that keeps them current.

Modules: ``config`` (schema, decoding, validation with field paths), ``snapshot`` (the
immutable view a request reads, built off the request path), ``controller`` (the config
in force and publishing each new snapshot with one assignment per consumer), ``upkeep``
(health checks and the ejection sweep of a data-plane process). Must not touch the data
plane's internals.
"""
