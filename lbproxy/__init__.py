"""lbproxy: an edge load balancer and reverse proxy for short-video traffic."""

__version__ = "0.1.0"
