"""The admin API and what it serves: views, statistics, metrics, the OpenAPI document.

Modules: ``api`` (the aiohttp application), ``stats`` (the /stats document and the
worker-to-supervisor counter deltas), ``metrics`` (Prometheus exposition), ``openapi``,
``webapp`` (starting an aiohttp app on one address). Importing this package must stay
cheap: workers import ``stats`` and must not load aiohttp.
"""
