"""Database leases: one daemon at a time consumes a mailbox or runs the timers.

Beside the flow: each mailbox loop holds ``mailbox:NAME`` while it consumes the mailbox and
renews it on every round; the timers take ``timers`` for each pass. A lease not renewed within
its TTL (its holder died) is taken over and its fence counted; a holder on this host that no
longer runs is not waited out. A lease given up (at a clean stop, and by the timers after each
pass) names no holder, so the next daemon takes it without logging a takeover: with two
daemons the timers change hands every minute. Real time, not the injected clock: leases are
about live processes.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from maildesk.database import Database
from maildesk.models import DatabaseError, Lease

log = logging.getLogger("maildesk.daemon")  # the logs name the job, not the module path

RELEASED = ""  # the holder of a lease given up: nobody


def new_holder() -> str:
    """This process's name on the leases and claims it holds: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Leases:
    """The leases of one holder (a daemon), each lasting ``ttl`` unless renewed."""

    def __init__(self, db: Database, holder: str, ttl: timedelta) -> None:
        self.db = db
        self.holder = holder
        self.ttl = ttl

    def take(self, name: str) -> bool:
        """Take or renew the lease ``name``: False while another live holder has it."""
        now = datetime.now(UTC)
        try:
            with self.db.transaction() as session:
                query = select(Lease).where(Lease.name == name)
                if not self.db.is_sqlite:
                    query = query.with_for_update()
                lease = session.scalar(query)
                if lease is None:
                    session.add(
                        Lease(name=name, holder=self.holder, expires_at=now + self.ttl, fence=1)
                    )
                    return True
                if (
                    lease.holder != self.holder
                    and lease.expires_at > now
                    and holder_alive(lease.holder)
                ):
                    return False
                if lease.holder != self.holder:
                    _log_takeover(name, lease.holder, lease.expires_at > now)
                    lease.fence += 1
                lease.holder = self.holder
                lease.expires_at = now + self.ttl
                return True
        except IntegrityError:  # another daemon created it first
            return False

    def release(self, name: str) -> None:
        """Give the lease up at a clean stop, so another daemon need not wait for it to expire."""
        try:
            with self.db.transaction() as session:
                lease = session.get(Lease, name)
                if lease is not None and lease.holder == self.holder:
                    lease.holder = RELEASED
                    lease.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        except DatabaseError as exc:  # an outage, which the loops report: it expires by itself
            log.debug("could not release %s: %s", name, exc)


def _log_takeover(name: str, holder: str, running: bool) -> None:
    """One line when a lease changes hands: at INFO when its holder failed to give it up."""
    if holder == RELEASED:
        log.debug("taking %s (given up by the daemon before)", name)
    elif running:
        log.info("taking over %s from %s (its process no longer runs)", name, holder)
    else:
        log.info("taking over %s from %s (lease expired)", name, holder)


def holder_alive(holder: str) -> bool:
    """False when ``holder`` was a process on this host that no longer runs (killed or crashed):
    its lease need not be waited out. Holders on other hosts count as alive until they expire."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # killed but not yet reaped by its parent (or init): a zombie holds nothing
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[:1]
    except OSError:  # no /proc here
        return True
    return state not in ([b"Z"], [b"X"])
