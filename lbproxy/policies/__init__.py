"""Resilience and overload policies, each a small module with one job.

Modules: ``outlier`` (passive ejection), ``breaker`` (in-flight cap), ``retry`` (retry
budget), ``health`` (active health checks), ``install`` (putting a cluster's configured
policies into its ``ClusterState``). Policies act only through the cluster gate
(lbproxy/balance/cluster.py); they must not touch HTTP.
"""
