"""Fault injection for the tests: crash points, loops that fail as a bug would, loops that stall.

Beside the flow: a value (``Faults``) the daemon and its delivery process are given when built;
empty in production. ``maildesk`` reads the test hooks of its environment in one place
(``from_environment``: ``MAILDESK_CRASH_AT``, ``MAILDESK_TEST_FAULTS``,
``MAILDESK_LEASE_SECONDS``) and passes what they say in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from maildesk.service.timings import Timings


class Loop(StrEnum):
    """The daemon's loops, by the names fault injection uses."""

    MAILBOX = "mailbox"  # each mailbox's loop (IMAP, ingestion)
    PARSER = "parser"  # a mailbox loop's use of the parse workers, in its worker thread
    TIMERS = "timers"
    OUTBOX = "outbox"  # the delivery loop (in the delivery process under ``run``)
    COURIER = "courier"  # the daemon's supervision of its delivery process
    METRICS = "metrics"  # the /metrics and /healthz server's thread


class InjectedFault(RuntimeError):
    """Raised by a loop that the daemon's ``Faults.raises`` name (tests): an error no outage
    explains, as a bug would raise."""


@dataclass(frozen=True, slots=True)
class Faults:
    """Where to fail (tests): die like ``kill -9`` at a named point (``crash_at``: after_fetch,
    after_commit, after_move, after_send); raise ``InjectedFault`` in these loops once they run
    (``raises``); make no more progress in these (mailbox, timers, outbox), as if stuck, until
    stopped (``stalls``)."""

    crash_at: frozenset[str] = frozenset()
    raises: frozenset[Loop] = frozenset()
    stalls: frozenset[Loop] = frozenset()

    def crash_point(self, name: str) -> None:
        """Die here, as ``kill -9`` would, when ``crash_at`` names this point."""
        if name in self.crash_at:
            os._exit(137)

    def check(self, where: Loop) -> None:
        """Fail here as a bug would, when ``raises`` names ``where``."""
        if where in self.raises:
            raise InjectedFault(f"fault injected into the {where} loop")


def from_environment(environ: Mapping[str, str]) -> tuple[Faults, Timings]:
    """The test hooks: ``MAILDESK_CRASH_AT`` (crash points, separated by commas),
    ``MAILDESK_TEST_FAULTS`` (``Loop`` names) and ``MAILDESK_LEASE_SECONDS`` (the lease TTL).
    A ``ValueError`` names a hook that makes no sense."""
    crash_at = frozenset(filter(None, environ.get("MAILDESK_CRASH_AT", "").split(",")))
    names = [n.strip() for n in environ.get("MAILDESK_TEST_FAULTS", "").split(",")]
    try:
        raises = frozenset(Loop(name) for name in names if name)
    except ValueError as exc:
        raise ValueError(f"MAILDESK_TEST_FAULTS: {exc}") from None
    try:
        seconds = float(environ.get("MAILDESK_LEASE_SECONDS", "30"))
    except ValueError as exc:
        raise ValueError(f"MAILDESK_LEASE_SECONDS: {exc}") from None
    return Faults(crash_at, raises), Timings(lease_ttl=timedelta(seconds=seconds))
