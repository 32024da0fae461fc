"""Overload control for one cluster: limits, admission level and queue, held together.

Owns `OverloadControl`, which a `ClusterState` holds as ``state.overload`` (installed by
lbproxy/policies/install.py when ``adaptive_concurrency.enabled``, the default). The gate
(lbproxy/balance/cluster.py) does the per-request work against it:

1. the admission level (lbproxy/policies/admission_level.py) refuses, on arrival, the
   positions (priority class, cohort) DAGOR has cut off;
2. the picked backend, or the next one in the selector's fallback order, must be below
   its adaptive limit (lbproxy/policies/limits.py);
3. else the request waits in the queue (lbproxy/policies/admission_queue.py), highest
   class first, until a lease ends and frees room, or CoDel sheds it;
4. every lease that ends feeds its backend's limit window.

Every refusal is a 503 `overloaded` with Retry-After, counted here by priority and
reason. The window of the admission level is CoDel's interval: once per interval the
level learns whether the queue stood (overloaded) or stayed empty (clear).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, final

from lbproxy.control.config import PRIORITIES, AdaptiveConcurrency, Queue
from lbproxy.policies.admission_level import AdmissionLevel
from lbproxy.policies.admission_queue import AdmissionQueue
from lbproxy.policies.limits import BackendLimit

if TYPE_CHECKING:
    from lbproxy.balance.gate import Refusal

# Why a request was shed (the `reason` label of lbproxy_shed_total).
SHED = 0  # refused on arrival: admission level, queue full, or a retry finding no room
QUEUE_TIMEOUT = 1  # waited in the queue until CoDel or max_wait shed it
SELF_PROTECT = 2  # the proxy itself was overloaded (event-loop lag)
REASONS = ("shed", "queue_timeout", "self_protect")


@final
class OverloadControl:
    """A cluster's adaptive limits (one per backend slot), admission level and queue."""

    __slots__ = ("config", "level", "limits", "queue", "refusal", "shed")

    def __init__(self, cfg: AdaptiveConcurrency, queue: Queue, refusal: Refusal) -> None:
        self.config = cfg
        self.limits: list[BackendLimit] = []  # by slot; survive snapshots like the slots
        self.queue = AdmissionQueue(queue)
        self.queue.on_sweep = self.sweep
        self.level = AdmissionLevel(self.queue.interval_ns)
        self.refusal = refusal  # the 503 every shed request gets
        # shed[priority * len(REASONS) + reason]: requests refused, since start
        self.shed = [0] * (len(PRIORITIES) * len(REASONS))

    def reconfigure(self, cfg: AdaptiveConcurrency, queue: Queue) -> None:
        """New figures from a reload: limits restart only if their algorithm changed."""
        if cfg != self.config:
            self.config = cfg
            self.limits = [BackendLimit(cfg) for _ in self.limits]
        self.queue.reconfigure(queue)

    def release_all(self) -> None:
        """Overload control is being turned off: admit every waiter without a limit."""
        queue = self.queue
        for lane in queue.lanes:
            while lane:
                w = lane.popleft()
                queue.length -= 1
                if w.done:
                    continue
                lease = w.cluster.admit_waiting(w.key, time.monotonic_ns(), w.priority)
                w.done = True
                if lease is None:
                    w.owner.refused(w, self.refusal)
                else:
                    w.owner.admitted(w, lease)

    def limit(self, slot: int) -> BackendLimit:
        """Slot `slot`'s limit (created at the initial limit when first asked)."""
        limits = self.limits
        while len(limits) <= slot:
            limits.append(BackendLimit(self.config))
        return limits[slot]

    def reset_slot(self, slot: int) -> None:
        """A new backend took `slot`: it starts from the initial limit."""
        if slot < len(self.limits):
            self.limits[slot] = BackendLimit(self.config)
        else:
            self.limit(slot)

    def close_window(self, now_ns: int) -> None:
        """End the admission level's window: lower it if the queue stood or shed,
        raise it if nothing had to wait."""
        queue = self.queue
        # standing() closes a lane's CoDel interval that is over even when no request of
        # that class reached the queue (all refused by the level): its verdict ages out.
        standing = [c.standing(now_ns) for c in queue.codels]
        # DAGOR's own signal is the mean queueing time (WeChat: 20 ms); here it is the
        # mean wait of the window's admitted waiters against CoDel's target.
        slow = (queue.window_served > 0 and queue.window_wait_ns
                > queue.window_served * queue.codels[0].target_ns)
        overloaded = any(standing) or slow or queue.window_expired > 0
        clear = queue.window_waited == 0
        self.level.close(now_ns, overloaded, clear)
        queue.window_waited = 0
        queue.window_expired = 0
        queue.window_served = 0
        queue.window_wait_ns = 0

    def shed_count(self, priority: int, reason: int) -> int:
        """Requests of `priority` shed for `reason`, since start."""
        if reason == QUEUE_TIMEOUT:
            return self.queue.refused_by[priority]
        return self.shed[priority * len(REASONS) + reason]

    def sweep(self, now_ns: int = 0) -> None:
        """Shed the waiters CoDel gives up on; close a due window (the queue's timer)."""
        now_ns = now_ns or time.monotonic_ns()
        self.queue.expire(now_ns, self.refusal)
        if self.level.due(now_ns):
            self.close_window(now_ns)
