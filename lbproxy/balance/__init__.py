"""Load balancing: the selector core and the cluster gate every request passes.

Modules: ``selectors`` (facade over the compiled selector core ``_selectors_c`` and its
pure-Python twin ``_selectors_py``: Maglev, bounded load, P2C on peak-EWMA, smooth WRR,
per-backend load in C arrays), ``cluster`` (``ClusterState``, ``Cluster``, ``Lease``: the
one place where admission, selection and outcome accounting happen), ``latency`` (the
latency histogram layout). Must not touch HTTP or sockets.
"""
