"""How long the service waits: backoff, leases, the timers' period, grace at a stop.

Beside the flow: one small value the daemon and its delivery process are given when built
(``Timings``), instead of constants read at import. Production uses the defaults; tests give
shorter ones (five failures in a second, a lease that expires in seconds) and ``maildesk``
takes the lease's TTL from ``MAILDESK_LEASE_SECONDS`` for the tests that run it as a process.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

# a database that is down is probed at least this often: work resumes within seconds of it
# answering again
DATABASE_MAX_BACKOFF = 5.0
# Without systemd's watchdog, how long a loop may go without progress before /healthz names it
# (the unit's WatchdogSec); under it, its interval.
STALLED_AFTER = 300.0


@dataclass(frozen=True, slots=True)
class Timings:
    """The service's waits, in seconds unless said otherwise."""

    backoff_base: float = 1.0  # the first retry's wait; each failure doubles it ...
    max_backoff: float = 300.0  # ... up to this
    database_max_backoff: float = DATABASE_MAX_BACKOFF
    # a lease (a mailbox's, the timers') not renewed within this is taken over
    lease_ttl: timedelta = timedelta(seconds=30)
    timer_seconds: float = 60.0  # reminders, auto-close and SLA checks
    stalled_after: float = STALLED_AFTER

    def backoff(self, failures: int, cap: float | None = None) -> float:
        """1 s, 2 s, 4 s ... up to ``cap`` (``max_backoff``), times ``backoff_base``, with
        jitter in the upper half."""
        limit = self.max_backoff if cap is None else cap
        base = min(self.backoff_base * 2.0 ** max(failures - 1, 0), limit)
        return base * random.uniform(0.5, 1.0)

    @property
    def lease_check(self) -> float:
        """How often a lease is renewed (or a taken one looked at again): a third of its TTL."""
        return self.lease_ttl.total_seconds() / 3
