"""Test support: recording backends, the proxy in-process or as `lbproxy run`, wire helpers.

`backends` (recording origins), `wire` (the body pattern, HTTP/1.x parsing, raw clients),
`configs` (config documents), `inproc` (the data plane in the test's loop), `subproc`
(`lbproxy run` as a process), `admin` (admin API calls), `standin` (a stand-in data plane
for server tests). Test modules import them as ``support.NAME``: pytest puts tests/ on
sys.path, and subprocesses get it on PYTHONPATH (see `subproc.subprocess_env`).
"""
