"""Outages: each logged once when it starts and once when it ends, alerted to the admin at five.

Beside the flow: the mailbox loops, the delivery loop and the metrics server report each
failure and success of a dependency (a mailbox, SMTP, the database) here. A loop that meets the
database down waits until a probe finds it answering again (every few seconds), then goes on by
itself. In a delivery process the database's outages are told to the daemon, which logs and
alerts them; the database is down while either process finds it so.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime

from maildesk.act.outbox import Mail
from maildesk.mail import smtp
from maildesk.models import DatabaseError
from maildesk.service.runtime import Runtime, Tell
from maildesk.service.watchdog import Pulse

log = logging.getLogger("maildesk.daemon")  # the logs name the job, not the module path

ALERT_AFTER = 5
HERE = "daemon"  # where a database outage is seen: in the daemon's own loops ...
ELSEWHERE = "delivery process"  # ... or in its delivery process


@dataclass
class Dependency:
    """Consecutive failures of one dependency, for one log line per outage and one alert."""

    name: str
    failures: int = 0
    alerted: bool = False
    last_ok: datetime | None = None
    last_error: str = ""
    down_since: datetime | None = None
    # who sees it failing (the database: the daemon, its delivery process); down while any does
    failing: set[str] = field(default_factory=set)

    def failed(self, error: str, now: datetime, seen_by: str = "") -> tuple[bool, bool]:
        """Record a failure; returns (first failure of the outage, time to alert)."""
        first = not self.failing
        self.failing.add(seen_by)
        self.failures += 1
        self.last_error = error
        if first:
            self.down_since = now
        alert = self.failures >= ALERT_AFTER and not self.alerted
        if alert:
            self.alerted = True
        return first, alert

    def ok(self, now: datetime, seen_by: str = "") -> tuple[bool, bool]:
        """Record a success; returns (recovered from an outage, send a recovery alert). The
        outage goes on while another still sees it failing."""
        self.failing.discard(seen_by)
        if self.failing:
            return False, False
        recovered = self.failures > 0
        recovery_alert = self.alerted
        self.failures = 0
        self.alerted = False
        self.last_ok = now
        self.down_since = None
        return recovered, recovery_alert


class Outages:
    """The health of every dependency (``health``: ``mailbox:NAME``, ``smtp``, ``database``)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.health: dict[str, Dependency] = {}
        for box in rt.settings.watched:  # a pipe mailbox is fed by ``ingest``, not watched
            self.health[f"mailbox:{box.name}"] = Dependency(box.name)
        self.health["smtp"] = Dependency("smtp")
        self.health["database"] = Dependency("database")
        self.database_up = asyncio.Event()  # cleared while this process finds it down
        self.database_up.set()
        self.probe: asyncio.Task[None] | None = None
        self._waiting: set[Pulse] = set()  # loops waiting for the database to answer

    def failing(self) -> list[str]:
        """What is failing now, by key (``mailbox:NAME``, ``smtp``, ``database``)."""
        return sorted(key for key, h in self.health.items() if h.failures)

    # ------------------------------------------------------------------ mailboxes and SMTP

    async def failed(self, health: Dependency, what: str, error: str) -> None:
        first, alert = health.failed(error, self.rt.desk.clock())
        if first:
            log.error("%s unreachable: %s (retrying with backoff)", what, error)
        admin = self.rt.settings.desk.admin_address
        if alert and admin:
            log.error("%s has failed %d times in a row: alerting %s", what, health.failures, admin)
            await self.tell_admin(
                f"{what} is failing",
                f"{what} has failed {health.failures} times in a row.\nLast error: {error}",
            )

    async def healthy(self, health: Dependency, what: str) -> None:
        recovered, recovery_alert = health.ok(self.rt.desk.clock())
        if recovered:
            log.info("%s is back", what)
        if recovery_alert:
            await self.tell_admin(f"{what} recovered", f"{what} is working again.")

    # ------------------------------------------------------------------ the database

    async def database_down(self, error: str, pulse: Pulse) -> None:
        """A loop met a ``DatabaseError``: count it (the outage's first is logged), then wait
        until the database answers again (or the daemon stops). The loop's ``pulse`` goes
        with the probes: a probe that never returns stops the watchdog's pings."""
        await self.database_failed(error, HERE)
        self._waiting.add(pulse)
        pulse.beat()
        try:
            while not self.database_up.is_set() and not self.rt.stop.is_set():
                await self.rt.until(self.database_up)
        finally:
            self._waiting.discard(pulse)
            pulse.beat()

    async def database_failed(self, error: str, seen_by: str) -> None:
        """One failure of the database, seen here or in the delivery process: the first of an
        outage is logged (or, in a delivery process, told to the daemon), the fifth alerted."""
        health = self.health["database"]
        first, alert = health.failed(error, self.rt.desk.clock(), seen_by)
        if seen_by == HERE:
            self.database_up.clear()
            if self.probe is None or self.probe.done():
                self.probe = self.rt.task("the database probe", self._probe_database())
        if self.rt.parent is not None:  # a delivery process: the daemon logs and alerts
            if first:
                self.rt.parent(f"{Tell.DATABASE_DOWN} {error}")
            return
        if first:
            log.error(
                "database unavailable: %s (mail waits; trying again every few seconds)", error
            )
        admin = self.rt.settings.desk.admin_address
        if alert and admin:
            log.error(
                "the database has failed %d times in a row: alerting %s", health.failures, admin
            )
            # straight over SMTP (the outbox is in the database), beside the loops: a slow
            # SMTP server must not hold up the probes
            self.rt.task(
                "the alert to the admin",
                self.tell_admin(
                    "the database is failing",
                    f"maildesk could not use its database {health.failures} times in a row. "
                    "Mail waits where it is (in the mailboxes, in the outbox) and nothing is "
                    "lost; work resumes by itself when the database answers again.\n"
                    f"Last error: {error}",
                    now=True,
                ),
            )

    async def database_answers(self, seen_by: str) -> None:
        health = self.health["database"]
        if seen_by == HERE:
            self.database_up.set()
        recovered, recovery_alert = health.ok(self.rt.desk.clock(), seen_by)
        if self.rt.parent is not None:
            if recovered:
                self.rt.parent(Tell.DATABASE_UP)
            return
        if recovered:
            log.info("database is back")
        if recovery_alert:
            await self.tell_admin("the database recovered", "The database is working again.")

    async def database_works(self) -> None:
        """A loop got work done in the database: an outage seen here is over."""
        if HERE in self.health["database"].failing:
            await self.database_answers(HERE)

    def database_failed_elsewhere(self, error: str) -> None:
        """The metrics server's thread found the database down: the outage begins."""
        if self.rt.loop is not None:
            asyncio.run_coroutine_threadsafe(
                self.rt.guarded("the database's health", self.database_failed(error, HERE)),
                self.rt.loop,
            )

    async def _probe_database(self) -> None:
        """While the database is down here: probe it, at least every ``database_max_backoff``
        seconds; each failed probe counts, the first that passes lets the loops go on."""
        health = self.health["database"]
        timings = self.rt.timings
        while not self.rt.stop.is_set():
            seconds = timings.backoff(health.failures, timings.database_max_backoff)
            for pulse in self._waiting:
                pulse.rest(seconds)
            await self.rt.pause(seconds)
            if self.rt.stop.is_set():
                return
            try:
                await asyncio.to_thread(self.rt.db.probe)
            except DatabaseError as exc:
                for pulse in self._waiting:
                    pulse.beat()
                await self.database_failed(str(exc), HERE)
                continue
            # the loops go on; the outage ends when one of them gets real work done (a probe
            # can pass where work fails: a full disk), so that it is not logged twice
            self.database_up.set()
            return

    # ------------------------------------------------------------------ alerts

    async def tell_admin(self, subject: str, text: str, *, now: bool = False) -> None:
        """Alert the admin: through the outbox, or (``now``, or the database down) straight
        over SMTP, once: nothing of it is kept."""
        admin = self.rt.settings.desk.admin_address
        if not admin:
            return
        if not now:
            try:
                await asyncio.to_thread(self.alert, subject, text)
                return
            except DatabaseError:
                pass  # the outage is the loops' to report
        mail = _alert_mail(admin, subject, text)
        desk = self.rt.desk
        mail_from, body = desk.mailer.compose_now(mail, desk.clock())
        sender = smtp.Sender(self.rt.settings.smtp, self.rt.smtp_token)
        try:
            result = await sender.send(mail_from, admin, body)
        finally:
            await sender.close()
        if result.outcome != "sent":
            log.error("could not alert %s (%s): %s", admin, subject, result.detail)

    def token_failed(self, name: str, error: str) -> None:
        """Called (from a worker thread) once when a run of token failures begins."""
        try:
            self.alert(
                f"{name}: OAuth2 token refresh failing",
                f"maildesk cannot get an OAuth2 access token for {name}, so it cannot log in.\n"
                f"Error: {error}\n\nRenew the grant (refresh token) or fix oauth_token_command.",
            )
        except DatabaseError as exc:
            log.error("could not queue the alert about %s's token: %s", name, exc)

    def alert(self, subject: str, text: str) -> None:
        """Queue an alert to the admin in the outbox (its own transaction) and wake delivery."""
        admin = self.rt.settings.desk.admin_address
        if not admin:
            return
        desk = self.rt.desk
        with self.rt.db.transaction() as session:
            desk.mailer.enqueue(session, _alert_mail(admin, subject, text), desk.clock())
        self.rt.wake()


def _alert_mail(admin: str, subject: str, text: str) -> Mail:
    return Mail(
        kind="alert",
        template="admin_alert",
        to=admin,
        context={"subject": subject, "text": text},
        to_agent=True,
    )
