"""The retry budget: how many retries a cluster may add on top of its first attempts.

Owns `RetryBudget`, an `AdmissionPolicy` that `Cluster.begin()` consults for retries only
(`attempt > 0`, via `ClusterState.retry_admission`), so a first attempt pays nothing for
it. Must not touch HTTP, sockets or selection: which failures are safe to retry is the
data plane's decision (lbproxy/proxy/client.py), how many is this module's.

Why a budget: per-request retry limits alone multiply load by (1 + attempts) exactly when
backends are failing, the retry storm (Finagle's RetryBudget docs; Linkerd's "retry
budgets"; the Google SRE book, "Handling Overload"). Finagle's and Linkerd's
`TokenRetryBudget` is used, not Envoy's concurrency ratio (active retries / active
requests): a connect refusal fails in microseconds, so retries are almost never *in
flight* together and a concurrency ratio would not bound a sustained retry rate. The
budget is: retries in the last `ttl` seconds <= budget_percent % of first attempts in that
window + min_retries_per_second x ttl (the reserve, so a quiet cluster can still retry).
Finagle's defaults (finagle.github.io/blog/2016/02/08/retry-budgets: 20 % on top of 10
retries/s, tokens expire after 10 s; tower's `retry::budget::Budget` has the same shape)
except the reserve: 3/s here, the figure of Envoy's `min_retry_concurrency`, because one
lbproxy process fronts far more traffic than one Finagle client and a dead backend should
not be retried at 10/s per worker when the cluster is idle.
"""

from __future__ import annotations

from typing import final

from lbproxy.balance.gate import Cluster, Refusal
from lbproxy.control.config import Retry

# Never answered to a client: past the budget the failed attempt's own error (502/504)
# stands. The code names the reason for tests and logs.
RETRY_BUDGET_EXHAUSTED = Refusal("retry_budget_exhausted", 1)
TTL_S = 10  # Finagle's and Linkerd's default window (deposits expire after it)


@final
class RetryBudget:
    """Finagle/Linkerd token budget over a `ttl_s` window, fed one bucket per second."""

    __slots__ = ("_deposits", "_second", "_seen", "_withdrawals", "ratio", "reserve", "ttl_s")

    def __init__(self, budget_percent: float, min_retries_per_second: float,
                 ttl_s: int = TTL_S) -> None:
        if not 0 <= budget_percent <= 100:
            raise ValueError(f"budget_percent must be 0-100, got {budget_percent}")
        if min_retries_per_second < 0 or ttl_s < 1:
            raise ValueError("min_retries_per_second must be >= 0 and ttl_s >= 1")
        self.ratio = budget_percent / 100.0
        self.reserve = min_retries_per_second * ttl_s
        self.ttl_s = ttl_s
        self._deposits = [0.0] * ttl_s  # first attempts credited to each second (a ring)
        self._withdrawals = [0] * ttl_s  # retries taken in each second
        self._second = -1  # the newest second in the ring; -1 before the first look
        self._seen = 0  # the first-attempt total at the last look

    @classmethod
    def of(cls, cfg: Retry) -> RetryBudget:
        """The budget a cluster's `[retry]` section asks for."""
        return cls(cfg.budget_percent, cfg.min_retries_per_second)

    def admit(self, cluster: Cluster, now_ns: int, attempt: int) -> Refusal | None:
        """None when a retry fits the budget (and is counted), else RETRY_BUDGET_EXHAUSTED."""
        if attempt == 0:
            return None
        state = cluster.state
        first_attempts = state.requests - state.retries
        return None if self.withdraw(first_attempts, now_ns) else RETRY_BUDGET_EXHAUSTED

    def withdraw(self, first_attempts: int, now_ns: int) -> bool:
        """Take one retry if the window allows it; `first_attempts` is a running total."""
        self._advance(first_attempts, now_ns // 1_000_000_000)
        if self.balance() < 1.0:
            return False
        self._withdrawals[self._second % self.ttl_s] += 1
        return True

    def balance(self) -> float:
        """Retries still allowed in the current window (as of the last look)."""
        return self.reserve + self.ratio * sum(self._deposits) - sum(self._withdrawals)

    def _advance(self, first_attempts: int, second: int) -> None:
        # First attempts are counted by the cluster (one increment per begin(), no call into
        # this object), so those since the last look are spread evenly over the seconds in
        # between: exact while traffic is steady, and never credits more than one window
        # of them after a quiet spell.
        new = max(0, first_attempts - self._seen)
        self._seen = first_attempts
        if self._second < 0:
            self._second = second  # the first look: nothing known about when they came
            return
        span = second - self._second
        if span <= 0:
            self._deposits[self._second % self.ttl_s] += new
            return
        share = new / span
        for s in range(max(self._second + 1, second - self.ttl_s + 1), second + 1):
            self._deposits[s % self.ttl_s] = share
            self._withdrawals[s % self.ttl_s] = 0
        self._second = second
