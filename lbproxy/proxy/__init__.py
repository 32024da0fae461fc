"""The data plane: client protocol, upstream pools, streaming, validation, errors.

Modules: ``plane`` (DataPlane: snapshot, pools, timers, drain), ``client`` (request parser
glue, exchanges, the cluster gate call), ``pool`` (upstream connections and pools),
``http`` (facade over the compiled head code and its twin ``_http_py``), ``errors``
(the one table of locally generated responses). Must not touch the control plane.
"""

from lbproxy.proxy.plane import DataPlane

__all__ = ["DataPlane"]
