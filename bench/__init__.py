"""lbproxy's load-test harness: generator, scenarios, peers, reports (see bench/README.md)."""
