"""Resilience and overload policies, each a small module with one job.

Modules: ``outlier`` (passive ejection), ``breaker`` (in-flight cap), ``retry`` (retry
budget), ``health`` (active health checks), ``limits`` (adaptive concurrency limits per
backend), ``codel`` (when a queue stands), ``admission_level`` (DAGOR's priority cut-off),
``admission_queue`` (where requests wait for room), ``overload`` (the three together for a
cluster), ``install`` (putting a cluster's configured
policies into its ``ClusterState``). Policies act only through the cluster gate
(lbproxy/balance/cluster.py); they must not touch HTTP.
"""
